"""Fused flash attention over real-token keys in Pallas: the kernel form of `blockwise.blockwise_attention`.

`flash_attention` computes exactly what `blockwise.blockwise_attention` computes (DESIGN.md section 9):
for every query, the softmax attention over the real-token keys it may see (a key at position k is
visible to a query at position p iff k <= p, p - k < window on a windowed layer, and both lie in the same
segment when segments are given; scores soft-capped as softcap * tanh(s / softcap)), returned with the
per-query log-sum-exp of the scores so a caller can merge a pause chain into the same softmax. A query
that sees no key gets output 0 and log-sum-exp `blockwise.NEG`, never NaN.

The recipe is FlashAttention-2 (Dao, 2023, "FlashAttention-2: Faster Attention with Better Parallelism
and Work Partitioning"): the forward kernel walks one block of queries over the key blocks keeping a
running maximum, normaliser and weighted sum (online softmax) and writes the output and log-sum-exp; the
backward pass recomputes each block's probabilities from the saved log-sum-exp, in one kernel that walks
a query block over the key blocks for d_q and one that walks a key block over all query blocks (and all
R query heads of its KV head) for d_k and d_v, so no `[Q, T]` array exists in either pass. Gradients flow
in through the log-sum-exp too: d score = p (dO . v - (dO . out - d_lse)). The mask is built inside the
kernels from int32 positions and segments, so it holds any positions (pause queries at repeated,
unsorted positions; a ring of cache keys).

Shapes (as in blockwise.py): B batch, Q queries, T keys, G KV heads, R query heads per KV head (query head
(g, r) reads KV head g; K and V are never repeated: the block index maps point every r at head g), Dh
features per head. Inside the wrappers the arrays are laid out head-major, `[B, G, R, Qp, Dp]` and
`[B, G, Tp, Dp]`, so every kernel block is a `[rows, Dp]` tile: queries are padded to a multiple of the
query block (padding rows sit at position -1, see no key and are sliced off), keys to a multiple of the
key block (padding keys sit at `blockwise.UNWRITTEN_POSITION`, invisible to every query) and features
with zeros to Dp, the next power of two of at least 16 (which changes no score and no output). Scores,
soft-capping, the softmax and every accumulator are float32 whatever the dtype of k and v.

Values and gradients are verified in interpret mode (on CPU: they equal `blockwise_attention` and a dense
softmax, tests/test_pallas_attention.py). For TPU the kernels compile through Mosaic with the real TPU
compiler (libtpu, run on a CPU host for a v5e topology; tests/test_pallas_tpu.py: every mask, pause
chains, a whole train step, N up to 8192), but have never run on a TPU. `flash_attention_for_platform`
picks the lowering from the platform a program is compiled for (`jax.lax.platform_dependent`), and in a
multi-device program attention.py runs one kernel call per device on its own rows (`jax.shard_map`):
XLA cannot partition a Mosaic call. Triton (GPU) is selected the same way; that lowering was traced to
kernel IR on CPU but never compiled or run.
What real hardware requires of the sizes: the block on each axis is `block`, or one power-of-two block
(at least 16) holding all the padded queries or keys when there are fewer. On TPU, `block` must be a
multiple of 128 (key positions are a `[1, block]` lane row in the forward and d_q kernels; the d_k/d_v
kernel works keys-major on `[bk, bq]` tiles so its per-query statistics are lane rows), and K, V of one
KV head, `[Tp, Dp]`, and the d_k/d_v kernel's Q and dO of its R heads, `[R, Qp, Dp]`, are held whole in
VMEM, which bounds T and Q: the scoped-VMEM limit is raised from the blocks' sizes (`_vmem_bytes`) up to
100 MiB, enough for N = 8192 at SmolLM2's heads (R = 3, Dh = 64); beyond that the query and key loops
would have to move onto the grid. On GPU, `block` must be a power of two of at least 16 (64 or 128 are
the usual choices) and the same whole-row operands are read from global memory slice by slice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from cyb_jax.model import blockwise
from cyb_jax.model.layers import softcap as softcap_scores
from cyb_jax.model.layers import softcap_slope

NEG = blockwise.NEG
UNWRITTEN_POSITION = blockwise.UNWRITTEN_POSITION
# Position of padding queries: before every real key, so they see nothing (output 0, lse NEG).
_PAD_QUERY_POSITION = -1
# Dimension numbers of a @ b.T (contract the last axes of both), which every backend's dot lowers.
_NT = (((1,), (1,)), ((), ()))
# The smallest tile side: Triton's dot needs 16 or more.
_MIN_TILE = 16


def _block_size(length: int, block: int) -> int:
  """The block used on an axis of `length`: `block`, or one power-of-two block (at least 16) when fewer."""
  return block if length >= block else min(block, max(_MIN_TILE, pl.next_power_of_2(length)))


def _pad_axis(x, axis: int, size: int, fill):
  pad = size - x.shape[axis]
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=fill)


def _any(mask):
  """Whether a bool tile holds any True, as a scalar (an int max: every backend reduces those)."""
  return jnp.max(jnp.where(mask, 1, 0)) > 0


def _scores(q_bd, k_kd, softcap: float):
  """(raw, capped) float32 scores `[bq, bk]` of a query tile against a key tile."""
  raw = jax.lax.dot_general(q_bd, k_kd.astype(jnp.float32), _NT, preferred_element_type=jnp.float32)
  return raw, softcap_scores(raw, softcap)


# How the kernels are compiled: Pallas's interpreter (plain XLA ops, any backend: CPU tests), Mosaic (TPU) or
# Triton (GPU; the kernels are written in its style, whole K/V tiles and loops, not for Mosaic GPU).
LOWERINGS = ("interpret", "mosaic", "triton")
# The lowering each platform gets from `flash_attention_for_platform`.
PLATFORM_LOWERINGS = {"cpu": "interpret", "tpu": "mosaic", "cuda": "triton", "rocm": "triton"}


# Mosaic's default scoped-VMEM limit (16 MiB on v5e) and the most this module asks for: v5e, v5p and v6e
# chips have 128 MiB of VMEM per core (Google Cloud TPU system architecture pages); v4 has 16 MiB per core.
_MOSAIC_DEFAULT_VMEM = 16 * 2 ** 20
_MOSAIC_MAX_VMEM = 100 * 2 ** 20


def _vmem_bytes(blocks) -> int:
  """What Mosaic holds in VMEM for a kernel's blocks `[(shape, dtype), ...]`: each block laid out in
  (8 x 128)-element tiles (16 rows for 2-byte types), twice (the pipeline's double buffer), plus 4 MiB
  for the kernel's own `[bq, bk]` score tiles and accumulators."""
  total = 0
  for shape, dtype in blocks:
    shape = (1, 1) + tuple(d for d in shape if d is not None)
    itemsize = jnp.dtype(dtype).itemsize
    rows = -(-shape[-2] // (32 // itemsize)) * (32 // itemsize)
    lanes = -(-shape[-1] // 128) * 128
    total += 2 * int(np.prod(shape[:-2])) * rows * lanes * itemsize
  return total + 4 * 2 ** 20


def _compiler_params(lowering: str, grid_rank: int, blocks=()):
  """Per-lowering options of a kernel call: on TPU every grid axis parallel (each cell writes its own
  output block), which lets a chip with two cores split the grid, and a scoped-VMEM limit raised above
  Mosaic's default when the whole-row blocks (`blocks`, see `_vmem_bytes`) need it (long sequences);
  Triton's defaults on GPU."""
  if lowering == "mosaic":
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
    need = _vmem_bytes(blocks)
    limit = min(_MOSAIC_MAX_VMEM, need + need // 4) if need > _MOSAIC_DEFAULT_VMEM * 3 // 4 else None
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank, vmem_limit_bytes=limit)
  if lowering == "triton":
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
    return pltriton.CompilerParams()
  if lowering != "interpret":
    raise ValueError(f"unknown Pallas lowering {lowering!r}; expected one of {LOWERINGS}")
  return None


def _kernel_call(kernel, *, grid, in_specs, out_specs, out_shape, operands, lowering: str, name: str):
  """`pl.pallas_call` of `kernel` on `operands`, interpreted or compiled as `lowering` says (with the
  compiler params `_compiler_params` derives from the blocks' sizes)."""
  out_list = list(out_shape) if isinstance(out_shape, tuple) else [out_shape]
  spec_list = list(out_specs) if isinstance(out_specs, tuple) else [out_specs]
  blocks = [(spec.block_shape, x.dtype) for spec, x in zip(list(in_specs) + spec_list,
                                                          list(operands) + out_list)]
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        interpret=lowering == "interpret",
                        compiler_params=_compiler_params(lowering, len(grid), blocks), name=name)(*operands)


def _split(refs, segmented: bool, num_inputs: int):
  """(inputs, segment refs, outputs) of a kernel's refs: the two segment refs follow the positions."""
  if segmented:
    inputs, segments, outputs = refs[:num_inputs], refs[num_inputs:num_inputs + 2], refs[num_inputs + 2:]
  else:
    inputs, segments, outputs = refs[:num_inputs], None, refs[num_inputs:]
  return inputs, segments, outputs


# Forward: grid (B, G, R, Q / bq); one query tile walks over every key block.


def _forward_kernel(*refs, window, softcap, block_k, num_key_blocks, segmented):
  (q_ref, k_ref, v_ref, qpos_ref, kpos_ref), seg_refs, (out_ref, lse_ref) = _split(refs, segmented, 5)
  q_bd = q_ref[...]
  qpos_b1 = qpos_ref[...]
  qseg_b1 = seg_refs[0][...] if segmented else None
  rows, head_size = q_bd.shape

  def step(j, carry):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    kseg_1k = seg_refs[1][:, keys] if segmented else None
    mask = blockwise.visible(qpos_b1, kpos_ref[:, keys], qseg_b1, kseg_1k, window)

    def update(carry):
      running_max, normaliser, weighted = carry
      _, scores = _scores(q_bd, k_ref[keys, :], softcap)
      scores = jnp.where(mask, scores, NEG)
      new_max = jnp.maximum(running_max, scores.max(axis=1, keepdims=True))
      probs = jnp.where(mask, jnp.exp(scores - new_max), 0.0)
      rescale = jnp.exp(running_max - new_max)
      normaliser = rescale * normaliser + probs.sum(axis=1, keepdims=True)
      weighted = rescale * weighted + jnp.dot(probs, v_ref[keys, :].astype(jnp.float32),
                                              preferred_element_type=jnp.float32)
      return new_max, normaliser, weighted

    return jax.lax.cond(_any(mask), update, lambda carry: carry, carry)  # skip blocks it cannot see

  init = (jnp.full((rows, 1), NEG, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, head_size), jnp.float32))
  running_max, normaliser, weighted = jax.lax.fori_loop(0, num_key_blocks, step, init)
  seen = normaliser > 0
  safe = jnp.where(seen, normaliser, 1.0)
  out_ref[...] = (weighted / safe).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(seen, running_max + jnp.log(safe), NEG)


# Backward d_q: grid (B, G, R, Q / bq); one query tile walks over every key block.


def _dq_kernel(*refs, window, softcap, block_k, num_key_blocks, segmented):
  inputs, seg_refs, (dq_ref,) = _split(refs, segmented, 8)
  q_ref, k_ref, v_ref, dout_ref, lse_ref, delta_ref, qpos_ref, kpos_ref = inputs
  q_bd, dout_bd, lse_b1, delta_b1 = q_ref[...], dout_ref[...], lse_ref[...], delta_ref[...]
  qpos_b1 = qpos_ref[...]
  qseg_b1 = seg_refs[0][...] if segmented else None

  def step(j, d_q):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    kseg_1k = seg_refs[1][:, keys] if segmented else None
    mask = blockwise.visible(qpos_b1, kpos_ref[:, keys], qseg_b1, kseg_1k, window)

    def update(d_q):
      k_kd = k_ref[keys, :].astype(jnp.float32)
      raw, scores = _scores(q_bd, k_kd, softcap)
      probs = jnp.where(mask, jnp.exp(scores - lse_b1), 0.0)
      d_probs = jax.lax.dot_general(dout_bd, v_ref[keys, :].astype(jnp.float32), _NT,
                                    preferred_element_type=jnp.float32)
      d_scores = probs * (d_probs - delta_b1)
      if softcap:
        d_scores = d_scores * softcap_slope(raw, softcap)
      return d_q + jnp.dot(d_scores, k_kd, preferred_element_type=jnp.float32)

    return jax.lax.cond(_any(mask), update, lambda d_q: d_q, d_q)

  dq_ref[...] = jax.lax.fori_loop(0, num_key_blocks, step, jnp.zeros(q_bd.shape, jnp.float32))


# Backward d_k, d_v: grid (B, G, T / bk); one key tile walks over every query block of all R heads. Computed
# keys-major, on transposed `[bk, bq]` score tiles, so the per-query statistics (lse, delta, positions,
# segments) are lane rows `[1, Q]` and no `[Q, 1]` column is held whole: a column takes a 128-lane tile row
# per query in VMEM (measured: 116 MiB of blocks at Q = T = 8192 with segments, over a v5e core's limit).


def _dkv_kernel(*refs, window, softcap, block_q, num_query_blocks, group, segmented):
  inputs, seg_refs, (dk_ref, dv_ref) = _split(refs, segmented, 8)
  q_ref, k_ref, v_ref, dout_ref, lse_ref, delta_ref, qpos_ref, kpos_ref = inputs
  k_kd = k_ref[...].astype(jnp.float32)
  v_kd = v_ref[...].astype(jnp.float32)
  kpos_k1 = kpos_ref[...]
  kseg_k1 = seg_refs[1][...] if segmented else None

  def step(i, carry):
    queries = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    qseg_1b = seg_refs[0][:, queries] if segmented else None
    mask_kb = blockwise.visible(qpos_ref[:, queries], kpos_k1, qseg_1b, kseg_k1, window)

    def head(r, carry):  # the mask is the same for the R query heads that read this KV head
      d_k, d_v = carry
      q_bd = q_ref[r, queries, :]
      dout_bd = dout_ref[r, queries, :]
      raw_kb, scores_kb = _scores(k_kd, q_bd, softcap)  # scores are symmetric in q and k
      probs_kb = jnp.where(mask_kb, jnp.exp(scores_kb - lse_ref[r, :, queries]), 0.0)
      d_v = d_v + jnp.dot(probs_kb, dout_bd, preferred_element_type=jnp.float32)
      d_probs_kb = jax.lax.dot_general(v_kd, dout_bd, _NT, preferred_element_type=jnp.float32)
      d_scores_kb = probs_kb * (d_probs_kb - delta_ref[r, :, queries])
      if softcap:
        d_scores_kb = d_scores_kb * softcap_slope(raw_kb, softcap)
      d_k = d_k + jnp.dot(d_scores_kb, q_bd, preferred_element_type=jnp.float32)
      return d_k, d_v

    return jax.lax.cond(_any(mask_kb), lambda carry: jax.lax.fori_loop(0, group, head, carry),
                        lambda carry: carry, carry)

  zeros = jnp.zeros(k_kd.shape, jnp.float32)
  d_k, d_v = jax.lax.fori_loop(0, num_query_blocks, step, (zeros, zeros))
  dk_ref[...] = d_k.astype(dk_ref.dtype)
  dv_ref[...] = d_v.astype(dv_ref.dtype)


# Layout and the custom VJP.


class _Layout:
  """Sizes of one call and its head-major, padded operands."""

  def __init__(self, q32, k, block: int):
    self.batch, self.num_queries, self.num_kv, self.group, self.head_size = q32.shape
    self.num_keys = k.shape[1]
    # Zero features change no score or output; Triton needs power-of-two tiles of 16 or more for its dots.
    self.padded_d = max(_MIN_TILE, pl.next_power_of_2(self.head_size))
    self.block_q = _block_size(self.num_queries, block)
    self.block_k = _block_size(self.num_keys, block)
    self.padded_q = pl.cdiv(self.num_queries, self.block_q) * self.block_q
    self.padded_k = pl.cdiv(self.num_keys, self.block_k) * self.block_k

  def queries(self, x_BQGRd):
    """[B, Q, G, R, Dh] -> [B, G, R, Qp, Dp], zero-padded."""
    x = _pad_axis(jnp.transpose(x_BQGRd, (0, 2, 3, 1, 4)), 3, self.padded_q, 0)
    return _pad_axis(x, 4, self.padded_d, 0)

  def keys(self, x_BTGd):
    """[B, T, G, Dh] -> [B, G, Tp, Dp], zero-padded."""
    return _pad_axis(_pad_axis(jnp.transpose(x_BTGd, (0, 2, 1, 3)), 2, self.padded_k, 0), 3, self.padded_d, 0)

  def unqueries(self, x_BGRQD):
    """[B, G, R, Qp, Dp] -> [B, Q, G, R, Dh]."""
    return jnp.transpose(x_BGRQD[:, :, :, :self.num_queries, :self.head_size], (0, 3, 1, 2, 4))

  def unkeys(self, x_BGTD):
    """[B, G, Tp, Dp] -> [B, T, G, Dh]."""
    return jnp.transpose(x_BGTD[:, :, :self.num_keys, :self.head_size], (0, 2, 1, 3))

  def query_column(self, x_BQ, fill):
    """int [B, Q] -> int32 [B, Qp, 1] (a column per query tile)."""
    return _pad_axis(x_BQ.astype(jnp.int32), 1, self.padded_q, fill)[:, :, None]

  def key_row(self, x_BT, fill):
    """int [B, T] -> int32 [B, 1, Tp] (a row per key tile)."""
    return _pad_axis(x_BT.astype(jnp.int32), 1, self.padded_k, fill)[:, None, :]


def _transposed_mask_operands(layout, q_positions, k_positions, q_segments, k_segments):
  """The d_k/d_v kernel's mask operands: queries as rows `[B, 1, Qp]`, keys as columns `[B, Tp, 1]`."""
  qpos = layout.query_column(q_positions, _PAD_QUERY_POSITION).swapaxes(1, 2)
  kpos = layout.key_row(k_positions, UNWRITTEN_POSITION).swapaxes(1, 2)
  if q_segments is None:
    return (qpos, kpos), ()
  return (qpos, kpos), (layout.query_column(q_segments, -2).swapaxes(1, 2),
                        layout.key_row(k_segments, -1).swapaxes(1, 2))


def _mask_operands(layout, q_positions, k_positions, q_segments, k_segments):
  qpos = layout.query_column(q_positions, _PAD_QUERY_POSITION)
  kpos = layout.key_row(k_positions, UNWRITTEN_POSITION)
  if q_segments is None:
    return (qpos, kpos), ()
  return (qpos, kpos), (layout.query_column(q_segments, -2), layout.key_row(k_segments, -1))


def _forward(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap, block,
             lowering):
  if (q_segments is None) != (k_segments is None):
    raise ValueError("segment ids must be given for both the queries and the keys, or neither")
  lay = _Layout(q32, k, block)
  grid = (lay.batch, lay.num_kv, lay.group, lay.padded_q // lay.block_q)
  q_tile = pl.BlockSpec((None, None, None, lay.block_q, lay.padded_d), lambda b, g, r, i: (b, g, r, i, 0))
  kv_whole = pl.BlockSpec((None, None, lay.padded_k, lay.padded_d), lambda b, g, r, i: (b, g, 0, 0))
  q_column = pl.BlockSpec((None, lay.block_q, 1), lambda b, g, r, i: (b, i, 0))
  k_row = pl.BlockSpec((None, 1, lay.padded_k), lambda b, g, r, i: (b, 0, 0))
  row_stat = pl.BlockSpec((None, None, None, lay.block_q, 1), lambda b, g, r, i: (b, g, r, i, 0))
  positions, segments = _mask_operands(lay, q_positions, k_positions, q_segments, k_segments)
  qt, kt, vt = lay.queries(q32.astype(jnp.float32)), lay.keys(k), lay.keys(v)
  kernel = functools.partial(_forward_kernel, window=window, softcap=softcap, block_k=lay.block_k,
                             num_key_blocks=lay.padded_k // lay.block_k, segmented=bool(segments))
  out_t, lse_t = _kernel_call(
      kernel, grid=grid,
      in_specs=[q_tile, kv_whole, kv_whole, q_column, k_row] + [q_column, k_row] * bool(segments),
      out_specs=(q_tile, row_stat),
      out_shape=(jax.ShapeDtypeStruct(qt.shape, jnp.float32),
                 jax.ShapeDtypeStruct(qt.shape[:-1] + (1,), jnp.float32)),
      operands=(qt, kt, vt, *positions, *segments), lowering=lowering, name="flash_attention_forward")
  out = lay.unqueries(out_t)
  lse = lse_t[:, :, :, :lay.num_queries, 0]
  return (out, lse), (q32, k, v, q_positions, k_positions, q_segments, k_segments, out, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def flash_attention(q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ,
                    k_segments_BT, window: int, softcap: float, block: int, lowering: str):
  """(out `[B, Q, G, R, Dh]` float32, log-sum-exp `[B, G, R, Q]` float32) of attention over real keys.

  The same contract as `blockwise.blockwise_attention`, computed by fused Pallas kernels.
  q32_BQGRd: queries already multiplied by the score scale, float32. k, v: `[B, T, G, Dh]` (any float
  dtype). Positions int `[B, Q]`, `[B, T]`; segments int of the same shapes, or None on both sides for one
  document. window: 0 for none; softcap: 0.0 for none. block: the query and key block (see the module
  docstring for what hardware requires of it). lowering: one of LOWERINGS, "interpret" (Pallas's
  interpreter: any backend, CPU included), "mosaic" (TPU) or "triton" (GPU); `flash_attention_for_platform`
  picks it from the platform compiled for. A query that sees no key gets output 0 and log-sum-exp NEG.
  Raises ValueError when segments are given on one side only or for an unknown lowering.
  """
  return _forward(q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ, k_segments_BT,
                  window, softcap, block, lowering)[0]


def _forward_vjp(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap, block,
                 lowering):
  return _forward(q32, k, v, q_positions, k_positions, q_segments, k_segments, window, softcap, block,
                  lowering)


def _backward(window, softcap, block, lowering, residuals, cotangents):
  q32, k, v, q_positions, k_positions, q_segments, k_segments, out, lse = residuals
  d_out, d_lse = cotangents
  lay = _Layout(q32, k, block)
  positions, segments = _mask_operands(lay, q_positions, k_positions, q_segments, k_segments)
  qt, kt, vt = lay.queries(q32.astype(jnp.float32)), lay.keys(k), lay.keys(v)
  # Padding queries get lse NEG (they see nothing, so their probabilities are 0 whatever it is).
  lse_t = _pad_axis(lse, 3, lay.padded_q, NEG)[..., None]
  out_t, dout_t = lay.queries(out), lay.queries(d_out.astype(jnp.float32))
  # d score_t = p_t (dO . v_t - delta), delta = dO . out - d_lse: the same for every key of a query.
  delta_t = jnp.sum(dout_t * out_t, axis=-1, keepdims=True) - _pad_axis(
      d_lse.astype(jnp.float32), 3, lay.padded_q, 0)[..., None]
  segmented = bool(segments)
  operands = (qt, kt, vt, dout_t, lse_t, delta_t, *positions, *segments)

  # d_q: grid over query tiles, each walking the key blocks.
  q_tile = pl.BlockSpec((None, None, None, lay.block_q, lay.padded_d), lambda b, g, r, i: (b, g, r, i, 0))
  kv_whole = pl.BlockSpec((None, None, lay.padded_k, lay.padded_d), lambda b, g, r, i: (b, g, 0, 0))
  row_stat = pl.BlockSpec((None, None, None, lay.block_q, 1), lambda b, g, r, i: (b, g, r, i, 0))
  q_column = pl.BlockSpec((None, lay.block_q, 1), lambda b, g, r, i: (b, i, 0))
  k_row = pl.BlockSpec((None, 1, lay.padded_k), lambda b, g, r, i: (b, 0, 0))
  dq_kernel = functools.partial(_dq_kernel, window=window, softcap=softcap, block_k=lay.block_k,
                                num_key_blocks=lay.padded_k // lay.block_k, segmented=segmented)
  d_qt = _kernel_call(
      dq_kernel, grid=(lay.batch, lay.num_kv, lay.group, lay.padded_q // lay.block_q),
      in_specs=[q_tile, kv_whole, kv_whole, q_tile, row_stat, row_stat, q_column, k_row] +
               [q_column, k_row] * segmented,
      out_specs=q_tile, out_shape=jax.ShapeDtypeStruct(qt.shape, jnp.float32),
      operands=operands, lowering=lowering, name="flash_attention_dq")

  # d_k, d_v: grid over key tiles, each walking the query blocks of all R heads of its KV head.
  q_whole = pl.BlockSpec((None, None, lay.group, lay.padded_q, lay.padded_d),
                         lambda b, g, j: (b, g, 0, 0, 0))
  kv_tile = pl.BlockSpec((None, None, lay.block_k, lay.padded_d), lambda b, g, j: (b, g, j, 0))
  stat_rows = pl.BlockSpec((None, None, lay.group, 1, lay.padded_q), lambda b, g, j: (b, g, 0, 0, 0))
  q_row_whole = pl.BlockSpec((None, 1, lay.padded_q), lambda b, g, j: (b, 0, 0))
  k_column_tile = pl.BlockSpec((None, lay.block_k, 1), lambda b, g, j: (b, j, 0))
  positions_t, segments_t = _transposed_mask_operands(lay, q_positions, k_positions, q_segments, k_segments)
  dkv_kernel = functools.partial(_dkv_kernel, window=window, softcap=softcap, block_q=lay.block_q,
                                 num_query_blocks=lay.padded_q // lay.block_q, group=lay.group,
                                 segmented=segmented)
  d_kt, d_vt = _kernel_call(
      dkv_kernel, grid=(lay.batch, lay.num_kv, lay.padded_k // lay.block_k),
      in_specs=[q_whole, kv_tile, kv_tile, q_whole, stat_rows, stat_rows, q_row_whole, k_column_tile] +
               [q_row_whole, k_column_tile] * segmented,
      out_specs=(kv_tile, kv_tile),
      out_shape=(jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)),
      operands=(qt, kt, vt, dout_t, jnp.swapaxes(lse_t, 3, 4), jnp.swapaxes(delta_t, 3, 4), *positions_t,
                *segments_t),
      lowering=lowering, name="flash_attention_dkv")

  return lay.unqueries(d_qt), lay.unkeys(d_kt), lay.unkeys(d_vt), None, None, None, None


flash_attention.defvjp(_forward_vjp, _backward)


def flash_attention_for_platform(q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ,
                                 k_segments_BT, window: int, softcap: float, block: int):
  """`flash_attention` with the lowering of the platform the program is compiled for (PLATFORM_LOWERINGS:
  interpreted on CPU, Mosaic on TPU, Triton on GPU), chosen when the program is lowered
  (`jax.lax.platform_dependent`), not from the host's default backend: a TPU program compiled on a CPU
  host (compile_check) gets the Mosaic kernels. Same arguments and results as `flash_attention`.
  """
  args = (q32_BQGRd, k_BTGd, v_BTGd, q_positions_BQ, k_positions_BT, q_segments_BQ, k_segments_BT)
  by_lowering = {lowering: functools.partial(_with_lowering, window=window, softcap=softcap, block=block,
                                             lowering=lowering)
                 for lowering in set(PLATFORM_LOWERINGS.values())}
  return jax.lax.platform_dependent(*args, **{platform: by_lowering[lowering]
                                              for platform, lowering in PLATFORM_LOWERINGS.items()})


def _with_lowering(*args, window, softcap, block, lowering):
  return flash_attention(*args, window, softcap, block, lowering)
