"""Tests for cyb_jax/model/attention.py and blockwise.py: every implementation equals the dense oracle.

The dense form holds the whole `[Q, T]` score matrix and is the plain definition of the attention (its
own agreement with the numpy transformer is checked in test_model.py); the blockwise form must give the
same outputs and the same gradients, through its log-sum-exp merge with the pause chain too, over every
mask (causal by position, windows, packed segments), soft-capping, grouped heads, queries at arbitrary
positions (pause queries) and key counts that do not fill the last block. Its memory is checked on the
compiled program (deterministic), never by timing.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import losses
from cyb_jax import model
from cyb_jax.model import attention
from cyb_jax.model.config import AttentionSpec

B, T, H, G, DH, C = 2, 37, 4, 2, 8, 3  # 37 keys: blocks of 8 leave a partial last block


def _inputs(seed, num_queries, dtype=jnp.float32, pause_queries=False):
  rs = np.random.RandomState(seed)
  q = jnp.asarray(rs.randn(B, num_queries, H, DH), dtype)
  k = jnp.asarray(rs.randn(B, T, G, DH), dtype)
  v = jnp.asarray(rs.randn(B, T, G, DH), dtype)
  k_positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  if pause_queries:  # queries at arbitrary (unsorted, repeated) positions, as pause chains are
    q_positions = jnp.asarray(rs.randint(0, T, (B, num_queries)), jnp.int32)
  else:
    q_positions = k_positions
  k_segments = jnp.asarray(np.minimum((rs.rand(B, T) < 0.12).cumsum(-1), 4), jnp.int32)
  q_segments = jnp.take_along_axis(k_segments, q_positions, axis=1)
  chain = attention.ChainKeys(jnp.asarray(rs.randn(B, num_queries, C, G, DH), dtype),
                              jnp.asarray(rs.randn(B, num_queries, C, G, DH), dtype),
                              jnp.asarray(rs.rand(B, num_queries, C) < 0.6))
  return q, k, v, q_positions, k_positions, q_segments, k_segments, chain


def _value_and_grads(implementation, block, window, softcap, segments, with_chain, pause_queries,
                     dtype=jnp.float32, seed=0):
  num_queries = 11 if pause_queries else T
  q, k, v, q_positions, k_positions, q_segments, k_segments, chain = _inputs(seed, num_queries, dtype,
                                                                              pause_queries)
  spec = AttentionSpec(window, softcap, 0.35, implementation, block)
  weights = jnp.asarray(np.random.RandomState(seed + 1).randn(B, num_queries, H, DH), jnp.float32)

  def loss(q, k, v, chain_k, chain_v):
    real = attention.RealKeys(k, v, k_positions, k_segments if segments else None)
    chain_keys = attention.ChainKeys(chain_k, chain_v, chain.mask) if with_chain else None
    out = attention.attend(q, q_positions, real, spec, chain_keys, q_segments if segments else None)
    return jnp.sum(out.astype(jnp.float32) * weights)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, chain.k, chain.v)


CASES = [  # window, softcap, segments, chain, pause queries
    (0, 0.0, False, False, False),      # plain causal self-attention (step 0)
    (5, 0.0, False, True, True),        # a windowed layer's pause step
    (0, 1.5, True, True, True),         # soft-capped pause step in packed rows
    (7, 2.0, True, False, False),       # windowed, capped, packed step 0
    (0, 0.0, True, True, False),        # stream-like: every query with a chain
]


@pytest.mark.parametrize("window,softcap,segments,with_chain,pause_queries", CASES)
@pytest.mark.parametrize("block", [8, 64])
def test_blockwise_equals_dense_in_values_and_gradients(window, softcap, segments, with_chain,
                                                         pause_queries, block):
  dense = _value_and_grads("dense", block, window, softcap, segments, with_chain, pause_queries)
  blocked = _value_and_grads("blockwise", block, window, softcap, segments, with_chain, pause_queries)
  np.testing.assert_allclose(blocked[0], dense[0], rtol=1e-5, atol=1e-4)
  for got, want in zip(blocked[1], dense[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert any(np.abs(np.asarray(g)).max() > 1e-3 for g in dense[1])  # the gradients are not all zero


def test_blockwise_equals_dense_in_bfloat16():
  dense = _value_and_grads("dense", 8, 5, 1.5, True, True, True, dtype=jnp.bfloat16)
  blocked = _value_and_grads("blockwise", 8, 5, 1.5, True, True, True, dtype=jnp.bfloat16)
  # Both compute in float32 from the same bfloat16 inputs; outputs and input gradients are bfloat16.
  np.testing.assert_allclose(np.float32(blocked[0]), np.float32(dense[0]), rtol=2e-2, atol=2e-1)
  for got, want in zip(blocked[1], dense[1]):
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=3e-2, atol=3e-2)


def test_a_query_that_sees_no_key_gets_zero_and_no_nan():
  # A query before every key of its segment (possible with left padding or a segment mismatch): the
  # blockwise form must neither divide by zero nor poison the chain merge.
  q, k, v, q_positions, k_positions, _, _, chain = _inputs(3, 5, pause_queries=True)
  q_segments = jnp.full((B, 5), 99, jnp.int32)  # a document no key belongs to
  k_segments = jnp.zeros((B, T), jnp.int32)
  for with_chain in (False, True):
    out = attention.attend(q, q_positions, attention.RealKeys(k, v, k_positions, k_segments),
                           AttentionSpec(0, 0.0, 0.35, "blockwise", 8), chain if with_chain else None,
                           q_segments)
    assert np.all(np.isfinite(np.asarray(out)))
    if not with_chain:
      np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_segments_must_be_given_on_both_sides():
  q, k, v, q_positions, k_positions, q_segments, k_segments, _ = _inputs(4, T)
  spec = AttentionSpec(0, 0.0, 0.35, "blockwise", 8)
  with pytest.raises(ValueError, match="segment ids"):
    attention.attend(q, q_positions, attention.RealKeys(k, v, k_positions, k_segments), spec)
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    attention.attend(q, q_positions, attention.RealKeys(k, v, k_positions),
                     spec._replace(implementation="flash"))


def test_auto_is_blockwise_except_for_a_single_query():
  # The default keeps no [Q, T] probabilities for the backward pass, even when the keys fit one block; a
  # single query (decoding) is computed densely.
  assert model.ModelConfig().attention == "auto"
  assert model.ModelConfig(attention="dense").layer_attention(0).implementation == "dense"
  q, k, v, q_positions, k_positions, _, _, _ = _inputs(5, T)
  real = attention.RealKeys(k, v, k_positions)

  def uses_blockwise(block, queries):
    spec = model.ModelConfig(attention_block=block).layer_attention(0)._replace(scale=0.35)
    jaxpr = jax.make_jaxpr(lambda q: attention.attend(q, q_positions[:, :queries], real, spec))(
        q[:, :queries])
    return "custom_vjp_call" in str(jaxpr)

  assert uses_blockwise(8, 5) and uses_blockwise(64, 5)  # 37 keys: several blocks, one block
  assert not uses_blockwise(8, 1) and not uses_blockwise(64, 1)
  with pytest.raises(ValueError, match="model.attention must be one of"):
    model.ModelConfig(attention="flash")
  with pytest.raises(ValueError, match="model.attention_block"):
    model.ModelConfig(attention_block=12)


# ----------------------------------------------------------------------------------------------------------
# The whole model: every pause option, dense against blockwise.

CONFIG = model.ModelConfig(vocab_size=13, width=24, num_layers=2, num_heads=4, mlp_hidden=20, max_len=64,
                           max_pauses=2, num_kv_heads=2, attention_block=8, attn_softcap=3.0,
                           layer_windows=(6, 0))
MODEL_VARIANTS = {
    "private": CONFIG,
    "feedback": dataclasses.replace(CONFIG, pause_feedback=True),
    "stream": dataclasses.replace(CONFIG, pause_context="stream"),
}


@functools.lru_cache(maxsize=None)
def _model_params(name):
  config = MODEL_VARIANTS[name]
  params = model.init(config, jax.random.key(0))
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.key(1), (config.width,))
  if "feedback" in params:
    params["feedback"]["kernel"] = 0.3 * jax.random.normal(jax.random.key(2), (config.width,) * 2)
  return params


def _stats_loss(config, params, tokens, targets, mask, positions, segment_ids):
  stats = model.rollout_stats(params, tokens, targets, config, 2, mask, positions=positions,
                              segment_ids=segment_ids)
  mask_at = mask if positions is None else jnp.take_along_axis(mask, positions, axis=1)
  return losses.objective_loss("cyb_ap", stats, mask_at, gamma=0.9, omega=0.1, anytime_weight=1.0)[0]


# Private chains with feedback (which goes through every private-chain path) and the stream context; the
# Pallas kernels (interpreted here, slowly) on the private chains.
@pytest.mark.parametrize("name,implementation", [("feedback", "blockwise"), ("stream", "blockwise"),
                                                 ("feedback", "pallas")])
def test_model_equals_dense(name, implementation):
  rs = np.random.RandomState(5)
  n = 21
  tokens = jnp.asarray(rs.randint(0, 13, (2, n)), jnp.int32)
  targets = jnp.asarray(rs.randint(0, 13, (2, n)), jnp.int32)
  mask = jnp.asarray(rs.rand(2, n) < 0.8)
  segment_ids = jnp.asarray(np.minimum((rs.rand(2, n) < 0.15).cumsum(-1), 3), jnp.int32)
  positions = None if name == "stream" else jnp.asarray(np.stack([rs.permutation(n)[:7] for _ in range(2)]),
                                                        jnp.int32)
  params = _model_params(name)
  results = {}
  for implementation in ("dense", implementation):
    # The loss reads every step's statistics at P positions, so equal losses and gradients pin the
    # forward values as well (the logits themselves are compared op by op above, without the compile).
    config = dataclasses.replace(MODEL_VARIANTS[name], attention=implementation)
    results[implementation] = jax.jit(jax.value_and_grad(functools.partial(_stats_loss, config)))(
        params, tokens, targets, mask, positions, segment_ids)
  (loss_b, grads_b), (loss_d, grads_d) = results[implementation], results["dense"]
  np.testing.assert_allclose(loss_b, loss_d, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_d)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["feedback", "stream"])
def test_packed_documents_do_not_see_each_other(name):
  # A row packing two documents: each token's outputs, at every step, equal those of its document run
  # alone (RoPE is relative, so where the document starts in the row does not matter), and changing the
  # other document changes nothing.
  config = MODEL_VARIANTS[name]
  params = _model_params(name)
  rs = np.random.RandomState(7)
  first, second = rs.randint(0, 13, 9), rs.randint(0, 13, 12)
  other_first = rs.randint(0, 13, 9)
  segments = jnp.asarray([[1] * 9 + [2] * 12], jnp.int32)
  rollout = jax.jit(lambda tokens, segment_ids: model.rollout(params, tokens, config, 2, segment_ids))
  packed = rollout(jnp.asarray([np.concatenate([first, second])], jnp.int32), segments)
  changed = rollout(jnp.asarray([np.concatenate([other_first, second])], jnp.int32), segments)
  alone = jax.jit(lambda tokens: model.rollout(params, tokens, config, 2))(jnp.asarray([second], jnp.int32))
  np.testing.assert_allclose(packed[:, 9:], alone, rtol=1e-5, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(packed[:, 9:]), np.asarray(changed[:, 9:]))
  assert np.abs(np.asarray(packed[:, :9]) - np.asarray(changed[:, :9])).max() > 1e-3
  # Without segment ids the second document does see the first: the ids are what keeps them apart.
  unsegmented = jax.jit(lambda tokens: model.rollout(params, tokens, config, 2))(
      jnp.asarray([np.concatenate([first, second])], jnp.int32))
  assert np.abs(np.asarray(unsegmented[:, 9:]) - np.asarray(alone)).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Memory, on the compiled program (deterministic; speed is measured by benchmarks/attention.py).


def _temp_bytes(implementation, seq_len):
  config = model.ModelConfig(vocab_size=64, width=64, num_layers=1, num_heads=4, mlp_hidden=128,
                             max_len=seq_len, max_pauses=1, pause_feedback=True, attention=implementation,
                             attention_block=128)
  params = jax.eval_shape(functools.partial(model.init, config), jax.random.key(0))
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, seq_len), jnp.bool_)

  def loss(params, tokens, mask):
    stats = model.rollout_stats(params, tokens, tokens, config, 1, mask)
    return losses.objective_loss("cyb_ap", stats, mask, gamma=0.9, omega=0.1)[0]

  compiled = jax.jit(jax.grad(loss)).lower(params, tokens, mask).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_gradient_memory_grows_linearly_with_length():
  blockwise = {n: _temp_bytes("blockwise", n) for n in (512, 2048)}
  dense = {n: _temp_bytes("dense", n) for n in (512, 2048)}
  assert blockwise[2048] / blockwise[512] <= 4.5, blockwise
  assert dense[2048] / dense[512] > 8.0, dense  # the control: quadratic scores
  assert blockwise[2048] < dense[2048] / 4, (blockwise, dense)


# ----------------------------------------------------------------------------------------------------------
# The mask where it is defined (blockwise.visible, shared by the dense, blockwise and Pallas paths), by
# hand: a window of w lets position p see keys p - w + 1 .. p (DESIGN.md section 9; Gemma/Qwen windows).


def test_sliding_window_mask_written_out_by_hand():
  from cyb_jax.model import blockwise  # pylint: disable=import-outside-toplevel
  positions = jnp.arange(7)[None]
  window_3 = np.array([[1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0],
                       [0, 1, 1, 1, 0, 0, 0],
                       [0, 0, 1, 1, 1, 0, 0],
                       [0, 0, 0, 1, 1, 1, 0],
                       [0, 0, 0, 0, 1, 1, 1]], bool)
  causal = np.tril(np.ones((7, 7), bool))  # window 0: no window
  np.testing.assert_array_equal(attention.real_key_mask(positions, positions, 3)[0], window_3)
  np.testing.assert_array_equal(blockwise.visible_mask(positions, positions, None, None, 3)[0], window_3)
  np.testing.assert_array_equal(attention.real_key_mask(positions, positions, 0)[0], causal)
  np.testing.assert_array_equal(attention.real_key_mask(positions, positions, 1)[0], np.eye(7, dtype=bool))
  # Queries at arbitrary positions (a pause step's, or decoding's single query) against keys 0..6.
  queries = jnp.array([[6, 2, 0]])
  np.testing.assert_array_equal(attention.real_key_mask(queries, positions, 3)[0],
                                np.array([[0, 0, 0, 0, 1, 1, 1],
                                          [1, 1, 1, 0, 0, 0, 0],
                                          [1, 0, 0, 0, 0, 0, 0]], bool))
  # Packed rows: documents [0, 0, 0, 1, 1, 1, 1]; the window does not reach across the boundary.
  segments = jnp.array([[0, 0, 0, 1, 1, 1, 1]])
  np.testing.assert_array_equal(attention.real_key_mask(positions, positions, 3, segments, segments)[0],
                                np.array([[1, 0, 0, 0, 0, 0, 0],
                                          [1, 1, 0, 0, 0, 0, 0],
                                          [1, 1, 1, 0, 0, 0, 0],
                                          [0, 0, 0, 1, 0, 0, 0],
                                          [0, 0, 0, 1, 1, 0, 0],
                                          [0, 0, 0, 1, 1, 1, 0],
                                          [0, 0, 0, 0, 1, 1, 1]], bool))
