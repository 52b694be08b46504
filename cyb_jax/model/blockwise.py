"""Memory-linear attention over real-token keys: online softmax over key blocks (DESIGN.md section 9).

`blockwise_attention` computes, for every query, the softmax attention over the real-token keys it may
see (causal by position, same segment, within the layer's window; logits soft-capped) without ever
holding the `[Q, T]` score matrix: it scans over blocks of `block` keys keeping a running maximum,
normaliser and weighted sum per query, and returns the normalised output together with the per-query
log-sum-exp of the scores, so a caller can merge further keys (a pause chain) into the same softmax
exactly. The backward pass is a second scan that recomputes each block's probabilities from the saved
log-sum-exp (the flash-attention recipe), so memory stays O(Q x block) there too, and gradients flow
through the log-sum-exp as well as the output.

Shapes: B batch, Q queries, T keys (padded here to a multiple of the block), G KV heads, R query heads
per KV head, Dh features per head. Scores are float32 whatever the inputs' dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from cyb_jax.model.layers import softcap as softcap_scores
from cyb_jax.model.layers import softcap_slope

# A finite stand-in for -inf: masked scores and the log-sum-exp of a query that sees no key.
NEG = -1e30
UNWRITTEN_POSITION = 2 ** 30


def visible(q_positions, k_positions, q_segments, k_segments, window: int):
  """The visibility rule on broadcastable arrays: k <= p, p - k < window (if windowed), same segment (if
  segments are given). Shared with the Pallas kernels, which apply it to a column of queries and a row of
  keys."""
  delta = q_positions - k_positions
  is_visible = delta >= 0
  if window:
    is_visible = is_visible & (delta < window)
  if q_segments is not None:
    is_visible = is_visible & (q_segments == k_segments)
  return is_visible


def visible_mask(q_positions_BQ, k_positions_BT, q_segments_BQ, k_segments_BT, window: int):
  """bool `[B, Q, T]`: k <= p, p - k < window (if windowed), same segment (if segments are given)."""
  if q_segments_BQ is not None:
    q_segments_BQ, k_segments_BT = q_segments_BQ[:, :, None], k_segments_BT[:, None, :]
  return visible(q_positions_BQ[:, :, None], k_positions_BT[:, None, :], q_segments_BQ, k_segments_BT, window)


def _padded(x, block: int, fill):
  """[B, T, ...] padded with `fill` along T to a multiple of `block` (x itself when it is one)."""
  pad = (-x.shape[1]) % block
  if pad:
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  return x


def _key_block(x, index, block: int):
  """Block `index` (traced) `[B, block, ...]` of padded keys `[B, T, ...]`, read in place (no copy of x)."""
  return None if x is None else jax.lax.dynamic_slice_in_dim(x, index * block, block, axis=1)


def _block_scores(q32_BQGRd, k_BbGd, q_positions_BQ, kpos_Bb, q_segments_BQ, kseg_Bb, window, softcap):
  """Raw scores, capped scores and the visibility mask of one key block, `[B, G, R, Q, b]`."""
  raw = jnp.einsum("bqgrd,btgd->bgrqt", q32_BQGRd, k_BbGd.astype(jnp.float32))
  # The mask depends on integer positions only. Differentiated inside another scan (the pause steps),
  # JAX's partial evaluation would then compute it in a separate loop and stack every block's mask as a
  # residual, a [T / b, Q, b] array: the quadratic memory this module exists to avoid. Passing the
  # positions through one barrier with the scores ties the mask to the scores' side of that split.
  raw, q_positions_BQ, kpos_Bb, q_segments_BQ, kseg_Bb = jax.lax.optimization_barrier(
      (raw, q_positions_BQ, kpos_Bb, q_segments_BQ, kseg_Bb))
  mask_BQb = visible_mask(q_positions_BQ, kpos_Bb, q_segments_BQ, kseg_Bb, window)
  return raw, softcap_scores(raw, softcap), mask_BQb[:, None, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def blockwise_attention(q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ,
                        k_segments_BT, window: int, softcap: float, block: int):
  """(out `[B, Q, G, R, Dh]` float32, log-sum-exp `[B, G, R, Q]` float32) of attention over real keys.

  q32_BQGRd: queries already multiplied by the score scale, float32. k, v: `[B, T, G, Dh]` (any float
  dtype). Positions int `[B, Q]`, `[B, T]`; segments int of the same shapes, or None for one document.
  A query that sees no key gets output 0 and log-sum-exp NEG (weight 0 when merged with other keys).
  """
  return _forward(q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ,
                  k_segments_BT, window, softcap, block)[0]


def _forward(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap, block):
  batch, num_queries, num_kv, group, head_size = q32.shape
  # Padded once; each scan step slices its block out of these arrays, which are also the residuals, so
  # the forward and backward passes share one copy of the keys (a reshaped, blocks-first copy made for
  # each would be merged between the two by the compiler and held from one to the other).
  k, v = _padded(k, block, 0), _padded(v, block, 0)
  k_positions = _padded(k_positions, block, UNWRITTEN_POSITION)
  k_segments = _padded(k_segments, block, -1) if q_segments is not None else None

  def step(carry, index):
    running_max, normaliser, weighted = carry
    _, scores, mask = _block_scores(q32, _key_block(k, index, block), q_positions,
                                    _key_block(k_positions, index, block), q_segments,
                                    _key_block(k_segments, index, block), window, softcap)
    scores = jnp.where(mask, scores, NEG)
    new_max = jnp.maximum(running_max, scores.max(-1))
    probs = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
    rescale = jnp.exp(running_max - new_max)
    normaliser = rescale * normaliser + probs.sum(-1)
    weighted = (jnp.moveaxis(rescale, 3, 1)[..., None] * weighted +
                jnp.einsum("bgrqt,btgd->bqgrd", probs, _key_block(v, index, block).astype(jnp.float32)))
    return (new_max, normaliser, weighted), None

  init = (jnp.full((batch, num_kv, group, num_queries), NEG, jnp.float32),
          jnp.zeros((batch, num_kv, group, num_queries), jnp.float32),
          jnp.zeros((batch, num_queries, num_kv, group, head_size), jnp.float32))
  (running_max, normaliser, weighted), _ = jax.lax.scan(step, init, jnp.arange(k.shape[1] // block))
  seen = normaliser > 0
  lse = jnp.where(seen, running_max + jnp.log(jnp.where(seen, normaliser, 1.0)), NEG)
  out = weighted / jnp.moveaxis(jnp.where(seen, normaliser, 1.0), 3, 1)[..., None]
  return (out, lse), (q32, k, v, q_positions, k_positions, q_segments, k_segments, out, lse)


def _forward_vjp(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap, block):
  num_keys = k.shape[1]
  outputs, residuals = _forward(q32, k, v, q_positions, k_positions, q_segments, k_segments, window,
                                softcap, block)
  return outputs, (num_keys,) + residuals


def _backward(window, softcap, block, residuals, cotangents):
  num_keys, q32, k, v, q_positions, k_positions, q_segments, k_segments, out, lse = residuals
  d_out, d_lse = cotangents
  # d score_t = p_t (dO . v_t - dO . out + d lse): the last two terms are the same for every key.
  delta = jnp.moveaxis(jnp.sum(d_out * out, axis=-1), 1, 3) - d_lse  # [B, G, R, Q]

  def step(d_q, index):
    k_b = _key_block(k, index, block)
    raw, scores, mask = _block_scores(q32, k_b, q_positions, _key_block(k_positions, index, block),
                                      q_segments, _key_block(k_segments, index, block), window, softcap)
    probs = jnp.where(mask, jnp.exp(scores - lse[..., None]), 0.0)
    v32 = _key_block(v, index, block).astype(jnp.float32)
    d_v = jnp.einsum("bgrqt,bqgrd->btgd", probs, d_out)
    d_probs = jnp.einsum("bqgrd,btgd->bgrqt", d_out, v32)
    d_scores = probs * (d_probs - delta[..., None])
    if softcap:
      d_scores = d_scores * softcap_slope(raw, softcap)
    d_q = d_q + jnp.einsum("bgrqt,btgd->bqgrd", d_scores, k_b.astype(jnp.float32))
    d_k = jnp.einsum("bgrqt,bqgrd->btgd", d_scores, q32)
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros_like(q32), jnp.arange(k.shape[1] // block))

  def unblock(x, like):  # [T / block, B, block, G, Dh] -> [B, T, G, Dh]
    x = jnp.moveaxis(x, 0, 1).reshape((x.shape[1], -1) + x.shape[3:])
    return x[:, :num_keys].astype(like.dtype)

  return (d_q, unblock(d_k, k), unblock(d_v, v), None, None, None, None)


blockwise_attention.defvjp(_forward_vjp, _backward)


def default_block(num_keys: int, block: int) -> int:
  """The key block actually used: `block`, or fewer when there are fewer keys (rounded up to 8)."""
  return max(8, min(block, int(math.ceil(num_keys / 8)) * 8))
