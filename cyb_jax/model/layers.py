"""Building blocks of the transformer: RMSNorm, rotary positions, the gated MLP, soft-capping.

Shape letters (DESIGN.md section 2) plus: Q queries, Dh features per head, F MLP hidden width.
Norms, rotary angles and soft-caps are computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyb_jax.model.config import RopeSpec


def lift(vector: jax.Array, ndim: int) -> jax.Array:
  """Reshapes a `[F]` vector to broadcast against `[..., F]` explicitly (rank promotion is an error in tests)."""
  return vector.reshape((1,) * (ndim - 1) + vector.shape)


class RMSNorm(nn.Module):
  """Root-mean-square normalisation over the last axis with a learned per-feature scale, in float32.

  y = x / sqrt(mean(x^2) + epsilon) * s, where s = w (Llama, Qwen) or, with `offset`, s = 1 + w (Gemma,
  whose checkpoints store the offset w; it is initialised to 0 here so a fresh norm is the identity).
  The parameter is called `scale` in both cases.
  """

  epsilon: float = 1e-6
  offset: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    if self.offset:
      scale = 1.0 + scale
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (normed * lift(scale, normed.ndim)).astype(self.dtype)


def rope_inverse_frequencies(head_size: int, spec: RopeSpec) -> jax.Array:
  """Rotation speeds `[Dh/2]` (radians per position), float32, of rotary embedding `spec`.

  Default: base^(-2k/Dh). "linear" divides them all by `factor` (positions stretched by it). "llama3"
  (Llama 3.1 and 3.2; the formula of transformers' `_compute_llama3_parameters`) divides the slow ones,
  whose wavelength 2 pi / f exceeds original_max_len / low_freq_factor, by `factor`, keeps the fast ones,
  with wavelength below original_max_len / high_freq_factor, and interpolates smoothly in between.
  """
  half = head_size // 2
  inv_freq = 1.0 / (spec.base ** (jnp.arange(half, dtype=jnp.float32) / half))
  if spec.scaling == "linear":
    return inv_freq / spec.factor
  if spec.scaling == "llama3":
    low_freq_wavelen = spec.original_max_len / spec.low_freq_factor
    high_freq_wavelen = spec.original_max_len / spec.high_freq_factor
    wavelen = 2.0 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / spec.factor, inv_freq)
    smooth = ((spec.original_max_len / wavelen - spec.low_freq_factor) /
              (spec.high_freq_factor - spec.low_freq_factor))
    smoothed = (1.0 - smooth) * scaled / spec.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(medium, smoothed, scaled)
  return inv_freq


def rotary(x_BQHd: jax.Array, positions_BQ: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary position embedding (rotate-half form: feature k pairs with k + Dh/2) at integer positions."""
  half = inv_freq.shape[0]
  angles_BQh = positions_BQ.astype(jnp.float32)[..., None] * lift(inv_freq, positions_BQ.ndim + 1)
  sin = jnp.sin(angles_BQh)[..., None, :]
  cos = jnp.cos(angles_BQh)[..., None, :]
  x32 = x_BQHd.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:2 * half]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin,
                             x32[..., 2 * half:]], axis=-1)
  return rotated.astype(x_BQHd.dtype)


def softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap) (Gemma 2's logit soft-capping); the identity when cap is 0."""
  if not cap:
    return x
  return cap * jnp.tanh(x / cap)


def softcap_slope(x: jax.Array, cap: float) -> jax.Array:
  """d softcap(x, cap) / dx = 1 - tanh(x / cap)^2, for the hand-written attention backward passes
  (blockwise.py, pallas_attention.py); cap must be nonzero."""
  return 1.0 - jnp.square(jnp.tanh(x / cap))


ACTIVATIONS = {
    "silu": jax.nn.silu,
    # torch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh.
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gated(gate_up: jax.Array, activation: str) -> jax.Array:
  """act(gate) * up of `gate_up` `[..., 2, F]` (gate first), `[..., F]`.

  Its gradient is written as one `[..., 2, F]` array; differentiating the two slices instead gives each
  cotangent padded back to `[..., 2, F]` and the two summed, two more full-size passes per layer.
  """
  return ACTIVATIONS[activation](gate_up[..., 0, :]) * gate_up[..., 1, :]


def _gated_forward(gate_up, activation):
  return gated(gate_up, activation), gate_up


def _gated_backward(activation, gate_up, d_out):
  activated, act_vjp = jax.vjp(ACTIVATIONS[activation], gate_up[..., 0, :])
  d_gate, = act_vjp(d_out * gate_up[..., 1, :])
  return (jnp.stack([d_gate, d_out * activated], axis=-2),)


gated.defvjp(_gated_forward, _gated_backward)


class GatedMLP(nn.Module):
  """down(act(gate(x)) * up(x)); `gate_up` holds gate and up as one kernel `[D, 2, F]` (gate first).

  `activations` is the part up to the gated product `[..., F]`, `project` the down projection to `width`:
  the layer loop recomputes the first in the backward pass (transformer.run_layers).
  """

  hidden: int
  width: int
  activation: str = "silu"
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.gate_up = nn.DenseGeneral((2, self.hidden), use_bias=self.use_bias, dtype=self.dtype)
    self.down = nn.Dense(self.width, use_bias=self.use_bias, dtype=self.dtype)

  def activations(self, x_BQD: jax.Array) -> jax.Array:
    """act(gate(x)) * up(x), `[B, Q, F]`."""
    return gated(self.gate_up(x_BQD), self.activation)

  def project(self, hidden_BQF: jax.Array) -> jax.Array:
    return self.down(hidden_BQF)

  def __call__(self, x_BQD: jax.Array) -> jax.Array:
    return self.project(self.activations(x_BQD))
