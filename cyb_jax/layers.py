"""Transformer building blocks: RMSNorm, rotary positions, gated MLP, and the two-part attention.

Shape letters (DESIGN.md section 2) plus: Q queries, T real-token keys, C own-chain (pause) keys,
Dh = D / H head width.

Attention is split in two so the pause rollout can reuse the step-0 keys/values: every query attends to
(a) real-token keys shared by the whole sequence and (b) optionally a short chain of keys private to that
query. Both parts meet in one softmax.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Finite stand-in for -inf in attention scores, so a fully masked part never yields NaN (the other part
# always holds at least the query's own key or the first real token).
_MASKED_SCORE = -1e30


def _lift(vector: jax.Array, ndim: int) -> jax.Array:
  """Reshapes a `[F]` vector to broadcast against `[..., F]` explicitly (rank promotion is an error in tests)."""
  return vector.reshape((1,) * (ndim - 1) + vector.shape)


class RMSNorm(nn.Module):
  """Root-mean-square normalisation with a learned per-feature scale (computed in float32)."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (normed * _lift(scale, normed.ndim)).astype(self.dtype)


def rotary(x_BQHd: jax.Array, positions_BQ: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) of queries or keys at integer `positions_BQ`."""
  head_dim = x_BQHd.shape[-1]
  half = head_dim // 2
  inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BQh = positions_BQ.astype(jnp.float32)[..., None] * _lift(inv_freq, positions_BQ.ndim + 1)
  sin = jnp.sin(angles_BQh)[..., None, :]
  cos = jnp.cos(angles_BQh)[..., None, :]
  x32 = x_BQHd.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:2 * half]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin,
                             x32[..., 2 * half:]], axis=-1)
  return rotated.astype(x_BQHd.dtype)


def two_part_attention(q_BQHd: jax.Array, k_BTHd: jax.Array, v_BTHd: jax.Array, mask_BQT: jax.Array,
                       chain_k_BQCHd: Optional[jax.Array] = None,
                       chain_v_BQCHd: Optional[jax.Array] = None,
                       chain_mask_BQC: Optional[jax.Array] = None) -> jax.Array:
  """Softmax attention over shared keys plus each query's private chain keys, in one normalisation.

  Scores and the softmax are float32. Returns `[B, Q, H, Dh]` in the dtype of `v_BTHd`.
  """
  scale = q_BQHd.shape[-1] ** -0.5
  q32 = q_BQHd.astype(jnp.float32) * scale
  scores_BHQT = jnp.einsum("bqhd,bthd->bhqt", q32, k_BTHd.astype(jnp.float32))
  scores_BHQT = jnp.where(mask_BQT[:, None], scores_BHQT, _MASKED_SCORE)
  if chain_k_BQCHd is None:
    probs_BHQT = jax.nn.softmax(scores_BHQT, axis=-1)
    out = jnp.einsum("bhqt,bthd->bqhd", probs_BHQT, v_BTHd.astype(jnp.float32))
    return out.astype(v_BTHd.dtype)
  chain_scores_BHQC = jnp.einsum("bqhd,bqchd->bhqc", q32, chain_k_BQCHd.astype(jnp.float32))
  chain_scores_BHQC = jnp.where(chain_mask_BQC[:, None], chain_scores_BHQC, _MASKED_SCORE)
  # Joint log-sum-exp: the real and chain parts are one softmax, never two renormalised halves.
  joint_max = jnp.maximum(scores_BHQT.max(-1, keepdims=True), chain_scores_BHQC.max(-1, keepdims=True))
  joint_max = jax.lax.stop_gradient(joint_max)
  weights_BHQT = jnp.exp(scores_BHQT - joint_max)
  chain_weights_BHQC = jnp.exp(chain_scores_BHQC - joint_max)
  normaliser = weights_BHQT.sum(-1, keepdims=True) + chain_weights_BHQC.sum(-1, keepdims=True)
  out = (jnp.einsum("bhqt,bthd->bqhd", weights_BHQT, v_BTHd.astype(jnp.float32)) +
         jnp.einsum("bhqc,bqchd->bqhd", chain_weights_BHQC, chain_v_BQCHd.astype(jnp.float32)))
  out = out / jnp.swapaxes(normaliser, 1, 2)  # [B, Q, H, 1]
  return out.astype(v_BTHd.dtype)


class GatedMLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BQD: jax.Array) -> jax.Array:
    width = x_BQD.shape[-1]
    gate_up = nn.DenseGeneral((2, self.hidden), use_bias=False, dtype=self.dtype, name="gate_up")(x_BQD)
    hidden = jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
    return nn.Dense(width, use_bias=False, dtype=self.dtype, name="down")(hidden)


class Block(nn.Module):
  """One pre-norm transformer layer, split at the attention so callers choose which keys a query sees.

  `qkv` projects a residual stream to rotated queries, keys and values; `finish` adds the attention
  output projection and the MLP. The attention itself is `two_part_attention`, called by the model.
  The residual stream stays float32; matmuls run in `dtype`.
  """

  width: int
  num_heads: int
  mlp_hidden: int
  rope_base: float
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    head_dim = self.width // self.num_heads
    self.attn_norm = RMSNorm(dtype=self.dtype)
    self.qkv_proj = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=False, dtype=self.dtype)
    self.out_proj = nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, dtype=self.dtype)
    self.mlp_norm = RMSNorm(dtype=self.dtype)
    self.mlp = GatedMLP(self.mlp_hidden, dtype=self.dtype)

  def qkv(self, x_BQD: jax.Array, positions_BQ: jax.Array):
    """Rotated queries and keys, and values, each `[B, Q, H, Dh]`."""
    q_k_v = self.qkv_proj(self.attn_norm(x_BQD))
    q_BQHd, k_BQHd, v_BQHd = q_k_v[..., 0, :, :], q_k_v[..., 1, :, :], q_k_v[..., 2, :, :]
    return (rotary(q_BQHd, positions_BQ, self.rope_base), rotary(k_BQHd, positions_BQ, self.rope_base),
            v_BQHd)

  def finish(self, x_BQD: jax.Array, attended_BQHd: jax.Array) -> jax.Array:
    """Residual stream after the attention output projection and the MLP, `[B, Q, D]` float32."""
    x_BQD = x_BQD + self.out_proj(attended_BQHd).astype(x_BQD.dtype)
    return x_BQD + self.mlp(self.mlp_norm(x_BQD)).astype(x_BQD.dtype)

  def __call__(self, x_BQD: jax.Array, positions_BQ: jax.Array):
    """Only used to create the parameters: a plain causal pass."""
    q, k, v = self.qkv(x_BQD, positions_BQ)
    causal_BQQ = positions_BQ[:, :, None] >= positions_BQ[:, None, :]
    return self.finish(x_BQD, two_part_attention(q, k, v, causal_BQQ))
