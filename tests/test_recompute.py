"""Tests for cyb_jax/model/recompute.py: same values and gradients as the plain function, less memory.

The reference gradients are JAX's own differentiation of the plain function; the memory is XLA's
temp-buffer size of the compiled gradient (deterministic, not timed).
"""

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax.model.recompute import recompute_in_backward

N, D, F, LAYERS = 512, 32, 256, 6


def _wide(params, x_ND, positions_N):
  """A norm, a wide projection with a position-dependent phase, a gated activation: `[N, F]` outputs."""
  w_DF2, scale_D = params
  normed = x_ND * jax.lax.rsqrt(jnp.mean(x_ND * x_ND, -1, keepdims=True) + 1e-6) * scale_D[None]
  gate_up = jnp.einsum("nd,dfk->nfk", normed, w_DF2) + 0.01 * positions_N[:, None, None]
  return jax.nn.silu(gate_up[..., 0]) * gate_up[..., 1]


def _params(seed):
  rs = np.random.RandomState(seed)
  return [(jnp.asarray(rs.randn(D, F, 2) / np.sqrt(D), jnp.float32), jnp.asarray(1 + 0.1 * rs.randn(D),
                                                                                   jnp.float32)),
          jnp.asarray(rs.randn(F, D) / np.sqrt(F), jnp.float32)]


def _loss(layer_params, x_ND, positions_N, wide):
  for wide_params, down_FD in layer_params:
    x_ND = x_ND + wide(wide_params, x_ND, positions_N) @ down_FD
  return jnp.sum(jnp.sin(x_ND))


def test_values_and_gradients_equal_the_plain_function():
  layer_params = [_params(seed) for seed in range(2)]
  x = jnp.asarray(np.random.RandomState(9).randn(N, D), jnp.float32)
  positions = jnp.arange(N)
  value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)), static_argnums=3)
  plain = value_and_grad(layer_params, x, positions, _wide)
  recomputed = value_and_grad(layer_params, x, positions, recompute_in_backward(_wide))
  # A float32 sum of N x D terms of size <= 1 in another order (XLA may fuse the two programs differently).
  np.testing.assert_allclose(recomputed[0], plain[0], rtol=0, atol=N * D * np.finfo(np.float32).eps)
  for got, want in zip(jax.tree.leaves(recomputed[1]), jax.tree.leaves(plain[1])):
    # Float32 sums over 512 rows in another order: differences of a few ulps of the largest entry.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  assert np.abs(np.asarray(plain[1][1])).max() > 1e-2


def _temp_bytes(wide):
  layer_params = jax.eval_shape(lambda: [_params(seed) for seed in range(LAYERS)])
  grad = jax.grad(lambda p, x, pos: _loss(p, x, pos, wide), argnums=(0, 1))
  compiled = jax.jit(grad).lower(layer_params, jax.ShapeDtypeStruct((N, D), jnp.float32),
                                 jax.ShapeDtypeStruct((N,), jnp.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_the_wide_intermediates_are_not_kept_for_the_backward_pass():
  # Plain: each layer keeps its [N, 2F] projection and [N, F] activation intermediates (about 4 MiB per
  # layer here). Recomputed: only the [N, F] output (for the down projection's gradient) and the [N, D]
  # input stay, and the recomputation runs one layer at a time in the backward pass.
  plain, recomputed = _temp_bytes(_wide), _temp_bytes(recompute_in_backward(_wide))
  assert recomputed < 0.6 * plain, (recomputed, plain)
