"""The attention of every layer: shared real-token keys plus, for pause queries, a private chain.

DESIGN.md section 9: every attention in the model is one softmax over the union of two key sets,
  (a) real-token keys shared by the whole sequence, visible to a query at position p when their
      position k satisfies k <= p and, on a windowed layer, p - k < window (sliding windows count
      positions, so a pause, which has its token's position, sees the same real keys as its token);
  (b) optionally the query's own pause chain (at most K keys), visible as `chain.mask` says.
and, with packed documents, only keys of the query's own segment. Grouped KV heads (GQA) are native: keys
and values have G heads, query head h reads KV head h // (H/G) (contiguous groups), and nothing is
repeated. Scores, soft-capping and the softmax are float32.

Two implementations of the real-token part, chosen per layer by `AttentionSpec.implementation`
("auto": dense for a single query, i.e. decoding, else blockwise):
"dense" materialises the `[Q, T]` scores (the oracle; and decoding, where Q = 1); "blockwise"
(blockwise.py) is an online softmax over key blocks that returns the output and its log-sum-exp, merged
with the chain part exactly:
    m = max(lse_real, max_c s_c);  out = (e^(lse_real - m) out_real + sum_c e^(s_c - m) v_c)
                                        / (e^(lse_real - m) + sum_c e^(s_c - m)).

Shape letters: Q queries, T real keys, C chain slots, H query heads, G KV heads, R = H / G query heads
per KV head, Dh features per head.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from cyb_jax.model import blockwise
from cyb_jax.model.config import AttentionSpec
from cyb_jax.model import pallas_attention
from cyb_jax.model.layers import softcap as softcap_scores
from cyb_jax.parallel import sharding

# Finite stand-in for -inf in attention scores, so a fully masked part never yields NaN (the other part
# always holds at least the query's own key or its token's).
MASKED_SCORE = blockwise.NEG
# Key position of a cache entry not written yet: beyond every query, so the causal rule hides it.
UNWRITTEN_POSITION = blockwise.UNWRITTEN_POSITION


class RealKeys(NamedTuple):
  """Real-token keys and values `[B, T, G, Dh]`, the position of each key `[B, T]` (int), and optionally
  its document (segment) id `[B, T]` when rows pack several documents."""

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  segments: Optional[jax.Array] = None


class ChainKeys(NamedTuple):
  """Each query's private pause-chain keys and values `[B, Q, C, G, Dh]` (or sequences of C slots
  `[B, Q, G, Dh]`, which the backward pass then keeps once each) and which slots it sees `[B, Q, C]`."""

  k: Union[jax.Array, Sequence[jax.Array]]
  v: Union[jax.Array, Sequence[jax.Array]]
  mask: jax.Array


def real_key_mask(q_positions_BQ: jax.Array, k_positions_BT: jax.Array, window: int,
                  q_segments_BQ: Optional[jax.Array] = None,
                  k_segments_BT: Optional[jax.Array] = None) -> jax.Array:
  """bool `[B, Q, T]`: key position k is visible to query position p iff k <= p (and p - k < window, and
  both lie in the same segment when segments are given)."""
  return blockwise.visible_mask(q_positions_BQ, k_positions_BT, q_segments_BQ, k_segments_BT, window)


def attend(q_BQHd: jax.Array, q_positions_BQ: jax.Array, real: RealKeys, spec: AttentionSpec,
           chain: Optional[ChainKeys] = None, q_segments_BQ: Optional[jax.Array] = None) -> jax.Array:
  """Softmax attention of queries over `real` keys (and their `chain`), one normalisation for both.

  Args:
    q_BQHd: rotated queries. q_positions_BQ: their positions (int), for the causal and window rules.
    real: shared real-token keys. spec: the layer's window, soft-cap, score scale and implementation.
    chain: optional private chain keys of each query.
    q_segments_BQ: the queries' segment ids, required exactly when `real.segments` is given.
  Returns:
    `[B, Q, H, Dh]` in the dtype of the values.
  Raises:
    ValueError for an unknown implementation or segments given on one side only.
  """
  if (q_segments_BQ is None) != (real.segments is None):
    raise ValueError("segment ids must be given for both the queries and the real keys, or neither")
  batch, num_queries, num_heads, head_size = q_BQHd.shape
  if spec.implementation == "auto":
    # Blockwise even when the keys fit one block: its backward pass recomputes the probabilities from the
    # kept log-sum-exp, where dense keeps them, two [Q, T] float32 arrays per layer (SmolLM2-135M's train
    # step at batch 4 x 256 on a CPU: 1.55 GiB of temporaries against 2.03, and the gradient of 30 layers'
    # attention took 1.21-1.35 s against 1.35-1.76 s). A single query (decoding) has nothing to recompute.
    spec = spec._replace(implementation="dense" if num_queries == 1 else "blockwise")
  if spec.implementation == "dense":
    return _dense(q_BQHd, q_positions_BQ, real, spec, chain, q_segments_BQ)
  num_kv = real.k.shape[2]
  q32 = (q_BQHd.astype(jnp.float32) * spec.scale).reshape(batch, num_queries, num_kv,
                                                           num_heads // num_kv, head_size)
  keys = (q32, real.k, real.v, q_positions_BQ, real.positions, q_segments_BQ, real.segments, spec.window,
          spec.softcap)
  if spec.implementation == "blockwise":
    out_BQGRd, lse_BGRQ = blockwise.blockwise_attention(
        *keys, blockwise.default_block(real.k.shape[1], spec.block))
  elif spec.implementation == "pallas":
    # Fused kernels: Mosaic on TPU, Triton on GPU, interpreted on CPU (tests only, slow).
    # One kernel call per device on its own rows: XLA cannot partition a Mosaic call itself.
    flash = lambda *arrays: pallas_attention.flash_attention_for_platform(  # noqa: E731
        *arrays, spec.window, spec.softcap, spec.block)
    out_BQGRd, lse_BGRQ = sharding.map_over_batch(flash, *keys[:7])
  else:
    raise ValueError(f"unknown attention implementation {spec.implementation!r}")
  if chain is not None:
    out_BQGRd = _merge_chain(q32, out_BQGRd, lse_BGRQ, chain, spec.softcap)
  return out_BQGRd.reshape(batch, num_queries, num_heads, head_size).astype(real.v.dtype)


# The chain part, slot by slot when the chain is given as slots: stacking them would make (and the backward
# pass keep) a copy of every earlier slot per pause step, while these keep only the scores, C numbers per
# query and head. Laid out `[B, Q, G, R, C]`, like the queries, so nothing is transposed.
def _chain_scores(q32_BQGRd: jax.Array, chain: ChainKeys, softcap: float) -> jax.Array:
  """Masked, soft-capped chain scores `[B, Q, G, R, C]` (float32)."""
  if isinstance(chain.k, jax.Array):
    scores_BQGRC = jnp.einsum("bqgrd,bqcgd->bqgrc", q32_BQGRd, chain.k.astype(jnp.float32))
  else:
    scores_BQGRC = jnp.stack([jnp.sum(q32_BQGRd * slot.astype(jnp.float32)[:, :, :, None], axis=-1)
                              for slot in chain.k], axis=-1)
  scores_BQGRC = softcap_scores(scores_BQGRC, softcap)
  return jnp.where(chain.mask[:, :, None, None], scores_BQGRC, MASKED_SCORE)


def _chain_values(weights_BQGRC: jax.Array, chain: ChainKeys) -> jax.Array:
  """sum_c weights_c v_c, `[B, Q, G, R, Dh]` (float32)."""
  if isinstance(chain.v, jax.Array):
    return jnp.einsum("bqgrc,bqcgd->bqgrd", weights_BQGRC, chain.v.astype(jnp.float32))
  return sum(weights_BQGRC[..., c, None] * slot.astype(jnp.float32)[:, :, :, None]
             for c, slot in enumerate(chain.v))


def _merge_chain(q32, out_BQGRd, lse_BGRQ, chain: ChainKeys, softcap: float) -> jax.Array:
  """The real part's output `[B, Q, G, R, Dh]` and log-sum-exp merged with the chain keys into one softmax
  (module doc)."""
  lse_BQGR = jnp.moveaxis(lse_BGRQ, 3, 1)
  chain_BQGRC = _chain_scores(q32, chain, softcap)
  joint_max = jax.lax.stop_gradient(jnp.maximum(lse_BQGR, chain_BQGRC.max(-1)))  # [B, Q, G, R]
  real_weight_BQGR = jnp.exp(lse_BQGR - joint_max)
  chain_weights_BQGRC = jnp.exp(chain_BQGRC - joint_max[..., None])
  normaliser_BQGR = real_weight_BQGR + chain_weights_BQGRC.sum(-1)
  # Each part scaled by its share of the joint softmax (never a merged numerator divided afterwards, which
  # the backward pass would keep, one more `[B, Q, H, Dh]` per layer and step).
  return ((real_weight_BQGR / normaliser_BQGR)[..., None] * out_BQGRd +
          _chain_values(chain_weights_BQGRC / normaliser_BQGR[..., None], chain))


def _dense(q_BQHd, q_positions_BQ, real, spec, chain, q_segments_BQ):
  """The real-token scores held as one `[B, H, Q, T]` array: the oracle of every other implementation."""
  batch, num_queries, num_heads, head_size = q_BQHd.shape
  num_kv = real.k.shape[2]
  group = num_heads // num_kv
  q32 = (q_BQHd.astype(jnp.float32) * spec.scale).reshape(batch, num_queries, num_kv, group, head_size)
  scores_BGRQT = jnp.einsum("bqgrd,btgd->bgrqt", q32, real.k.astype(jnp.float32))
  scores_BGRQT = softcap_scores(scores_BGRQT, spec.softcap)
  mask_BQT = real_key_mask(q_positions_BQ, real.positions, spec.window, q_segments_BQ, real.segments)
  scores_BGRQT = jnp.where(mask_BQT[:, None, None], scores_BGRQT, MASKED_SCORE)
  values32 = real.v.astype(jnp.float32)
  if chain is None:
    probs_BGRQT = jax.nn.softmax(scores_BGRQT, axis=-1)
    out_BQGRd = jnp.einsum("bgrqt,btgd->bqgrd", probs_BGRQT, values32)
  else:
    chain_BGRQC = jnp.moveaxis(_chain_scores(q32, chain, spec.softcap), 1, 3)
    # Joint log-sum-exp: the real and chain parts are one softmax, never two renormalised halves.
    joint_max = jnp.maximum(scores_BGRQT.max(-1, keepdims=True), chain_BGRQC.max(-1, keepdims=True))
    joint_max = jax.lax.stop_gradient(joint_max)
    weights_BGRQT = jnp.exp(scores_BGRQT - joint_max)
    chain_weights_BGRQC = jnp.exp(chain_BGRQC - joint_max)
    normaliser_BGRQ1 = weights_BGRQT.sum(-1, keepdims=True) + chain_weights_BGRQC.sum(-1, keepdims=True)
    out_BQGRd = (jnp.einsum("bgrqt,btgd->bqgrd", weights_BGRQT, values32) +
                 _chain_values(jnp.moveaxis(chain_weights_BGRQC, 3, 1), chain))
    out_BQGRd = out_BQGRd / jnp.moveaxis(normaliser_BGRQ1, 3, 1)  # [B, Q, G, R, 1]
  return out_BQGRd.reshape(batch, num_queries, num_heads, head_size).astype(real.v.dtype)
