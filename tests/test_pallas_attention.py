"""Tests for cyb_jax/model/pallas_attention.py: the fused Pallas kernels equal the portable blockwise form and
a dense softmax, in values and gradients.

Run in Pallas's interpret mode on CPU (no TPU or GPU lowering is exercised here). Every case compares the
kernels' output and log-sum-exp, and the gradients with respect to q, k and v of a loss that uses both
(so gradients flow in through the log-sum-exp too), against two independent computations: a dense
reference written here (the whole masked `[Q, T]` score matrix, a softmax over it, rows that see no key
set to 0 / NEG) and `blockwise.blockwise_attention`. The cases cover causal masking alone, a sliding
window, packed segments, soft-capping, pause-like queries at random (repeated, unsorted) positions with
Q != T, queries that see no key at all (output 0, log-sum-exp NEG, no NaN anywhere, gradients too), key
counts that leave a partial last block, grouped heads (R = 2 query heads per KV head) and bfloat16 keys
and values. Shapes are tiny: interpret mode is slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax.model import blockwise
from cyb_jax.model import pallas_attention

B, T, G, R, DH, BLOCK = 2, 37, 2, 2, 8, 16  # 37 keys: blocks of 16 leave a partial last block; H = 4


def _inputs(seed, num_queries, pause_queries, kv_dtype):
  rs = np.random.RandomState(seed)
  q32 = jnp.asarray(0.5 * rs.randn(B, num_queries, G, R, DH), jnp.float32)
  k = jnp.asarray(rs.randn(B, T, G, DH), kv_dtype)
  v = jnp.asarray(rs.randn(B, T, G, DH), kv_dtype)
  k_positions = np.broadcast_to(np.arange(T), (B, T))
  k_segments = np.minimum((rs.rand(B, T) < 0.12).cumsum(-1), 4)
  if pause_queries:  # arbitrary (unsorted, repeated) positions, as pause chains have
    q_positions = rs.randint(0, T, (B, num_queries))
    q_segments = np.take_along_axis(k_segments, q_positions, axis=1)
    q_positions[0, 3] = -2  # before every key: sees nothing under any mask
    q_segments[1, 5] = 9  # a segment no key has: sees nothing when segments are used
  else:
    q_positions, q_segments = k_positions, k_segments
  as_int = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
  return q32, k, v, as_int(q_positions), as_int(k_positions), as_int(q_segments), as_int(k_segments)


def _dense(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap):
  """The plain definition: masked `[B, G, R, Q, T]` scores, a softmax, rows that see nothing zeroed."""
  delta = q_positions[:, :, None] - k_positions[:, None, :]
  visible = delta >= 0
  if window:
    visible = visible & (delta < window)
  if q_segments is not None:
    visible = visible & (q_segments[:, :, None] == k_segments[:, None, :])
  scores = jnp.einsum("bqgrd,btgd->bgrqt", q32, k.astype(jnp.float32))
  if softcap:
    scores = softcap * jnp.tanh(scores / softcap)
  visible = visible[:, None, None]
  scores = jnp.where(visible, scores, -jnp.inf)
  seen = visible.any(-1)  # [B, 1, 1, Q]
  safe_scores = jnp.where(seen[..., None], scores, 0.0)  # no -inf - -inf in rows that see nothing
  probs = jax.nn.softmax(safe_scores, axis=-1)
  out = jnp.einsum("bgrqt,btgd->bqgrd", probs, v.astype(jnp.float32))
  out = jnp.where(jnp.moveaxis(seen, 3, 1)[..., None], out, 0.0)
  lse = jnp.where(seen, jax.nn.logsumexp(safe_scores, axis=-1), blockwise.NEG)
  return out, lse


def _value_and_grads(attention_fn, inputs, weights):
  """(out, lse, (d_q, d_k, d_v)) of sum(out * w_out) + sum(lse * w_lse) over the rows that see a key."""
  q32, k, v, *masks = inputs
  w_out, w_lse = weights

  def loss(q32, k, v):
    out, lse = attention_fn(q32, k, v, *masks)
    lse_clipped = jnp.where(lse > blockwise.NEG / 2, lse, 0.0)
    return jnp.sum(out * w_out) + jnp.sum(lse_clipped * w_lse), (out, lse)

  (_, (out, lse)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q32, k, v)
  return out, lse, grads


CASES = {  # name: window, softcap, segments, pause queries (Q = 11 at random positions), k/v dtype
    "causal": (0, 0.0, False, False, jnp.float32),
    "window": (5, 0.0, False, False, jnp.float32),
    "segments_softcap": (0, 1.5, True, False, jnp.float32),
    "pause_window_segments_no_key": (7, 2.0, True, True, jnp.float32),
    "bfloat16_kv": (6, 0.0, False, True, jnp.bfloat16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flash_attention_equals_dense_and_blockwise(name):
  window, softcap, segments, pause_queries, kv_dtype = CASES[name]
  num_queries = 11 if pause_queries else T
  inputs = _inputs(0, num_queries, pause_queries, kv_dtype)
  if not segments:
    inputs = inputs[:5] + (None, None)
  rs = np.random.RandomState(1)
  weights = (jnp.asarray(rs.randn(B, num_queries, G, R, DH), jnp.float32),
             jnp.asarray(rs.randn(B, G, R, num_queries), jnp.float32))

  flash = _value_and_grads(
      lambda *a: pallas_attention.flash_attention(*a, window, softcap, BLOCK, "interpret"), inputs, weights)
  dense = _value_and_grads(lambda *a: _dense(*a, window, softcap), inputs, weights)
  blocked = _value_and_grads(
      lambda *a: blockwise.blockwise_attention(*a, window, softcap, BLOCK), inputs, weights)

  low_precision = kv_dtype == jnp.bfloat16
  # bfloat16 k/v: the dense oracle and the kernels see the same bf16 inputs, but d_k, d_v are rounded
  # to bf16 on the way out, one ulp apart from an f32 sum.
  tol = dict(rtol=2e-2, atol=2e-2) if low_precision else dict(rtol=1e-5, atol=1e-5)
  for reference in (dense, blocked):
    np.testing.assert_allclose(flash[0], reference[0], **tol)
    np.testing.assert_allclose(flash[1], reference[1], **tol)
    for got, want in zip(flash[2], reference[2]):
      assert got.dtype == want.dtype
      np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)

  out, lse, grads = flash
  assert out.shape == (B, num_queries, G, R, DH) and lse.shape == (B, G, R, num_queries)
  assert out.dtype == lse.dtype == jnp.float32
  assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in (out, lse) + tuple(grads))
  assert all(np.abs(np.asarray(g, np.float32)).max() > 1e-3 for g in grads)  # the gradients are not zero
  if pause_queries:  # the queries placed to see nothing: output 0, log-sum-exp NEG, no gradient
    blind = [(0, 3)] + ([(1, 5)] if segments else [])
    for b, query in blind:
      np.testing.assert_array_equal(out[b, query], 0.0)
      np.testing.assert_array_equal(lse[b, :, :, query], np.float32(blockwise.NEG))
      np.testing.assert_array_equal(grads[0][b, query], 0.0)


def test_segments_on_one_side_only_are_rejected():
  q32, k, v, q_positions, k_positions, q_segments, _ = _inputs(0, 11, True, jnp.float32)
  with pytest.raises(ValueError, match="segment"):
    pallas_attention.flash_attention(q32, k, v, q_positions, k_positions, q_segments, None, 0, 0.0,
                                     BLOCK, "interpret")
