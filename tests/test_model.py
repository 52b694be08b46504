"""Tests for cyb_jax/model.py against the float64 numpy oracle in tests/reference_transformer.py.

The oracle builds every pause output the slow way DESIGN.md section 3 defines it (a fresh causal run per
(position, step), or one long stream), so agreement with the fused scan is evidence, not a tautology.
Dimensions are prime or odd-halved (D=20, H=2, Dh=10, rotary half 5) so that a transposed axis or a
wrong rotary pairing cannot hide behind a square or power-of-two shape. Zero-initialised parameters
(dk kernel, feedback) and unit norm scales are randomised first, or their code paths would be untested.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import reference_transformer as ref
from cyb_jax import model
from cyb_jax.model import transformer

V, D, H, F, L = 11, 20, 2, 14, 2
B, N, K = 3, 7, 3
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 against float64 on O(1) logits

BASE = model.ModelConfig(vocab_size=V, width=D, num_layers=L, num_heads=H, mlp_hidden=F, max_len=16,
                         max_pauses=K, rope_base=100.0)  # a non-default base: the field must be used
# Block options of open-weight families, two bundles (dimensions still prime or odd-halved).
# Llama/Qwen-like: 4 query heads on 2 KV heads of 6 features (not D / H = 5), every bias, q/k norm, an
# epsilon that matters, and llama3 RoPE scaling whose bands all occur (wavelengths 2 pi .. ~200 against
# an original length of 12: high band below 3, low band above 12).
LLAMA_LIKE = dataclasses.replace(
    BASE, num_heads=4, num_kv_heads=2, head_dim=6, qkv_bias=True, out_bias=True, mlp_bias=True,
    qk_norm=True, norm_eps=0.05, rope_scaling="llama3", rope_factor=4.0, rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0, rope_original_max_len=12)
# Gemma-like: (1 + w) norms, sandwich norms, embedding scale, tanh-GELU, tied head, a query scale,
# soft-caps that bite at these logit sizes, a sliding window of 3 positions on layer 0 (N = 7, so it
# cuts) with its own RoPE base, linear scaling on the full layer, and one KV head for two query heads.
GEMMA_LIKE = dataclasses.replace(
    BASE, num_kv_heads=1, qk_norm=True, norm_offset=True, sandwich_norms=True, embed_scale=True,
    mlp_activation="gelu_tanh", tie_embeddings=True, query_scale=0.45, attn_softcap=1.5,
    final_softcap=2.5, layer_windows=(3, 0), rope_local_base=30.0, rope_scaling="linear",
    rope_factor=2.0)
VARIANTS = {
    "private": BASE,
    "feedback": dataclasses.replace(BASE, pause_feedback=True),
    # Feedback from the first layer's output (of two) instead of the final hidden state.
    "feedback_layer0": dataclasses.replace(BASE, pause_feedback=True, pause_feedback_layer=0),
    "no_token": dataclasses.replace(BASE, pause_reads_token=False),
    "no_token_feedback": dataclasses.replace(BASE, pause_reads_token=False, pause_feedback=True),
    "stream": dataclasses.replace(BASE, pause_context="stream"),
    "stream_no_token": dataclasses.replace(BASE, pause_context="stream", pause_reads_token=False),
    "llama_like": LLAMA_LIKE,
    "llama_like_feedback": dataclasses.replace(LLAMA_LIKE, pause_feedback=True),
    "llama_like_stream": dataclasses.replace(LLAMA_LIKE, pause_context="stream"),
    "gemma_like": GEMMA_LIKE,
    "gemma_like_feedback": dataclasses.replace(GEMMA_LIKE, pause_feedback=True),
    "gemma_like_stream": dataclasses.replace(GEMMA_LIKE, pause_context="stream"),
    # The blockwise attention with blocks of 8 keys (the default "auto" computes these short sequences
    # densely): a stream of N (K + 1) = 28 keys spans 4 blocks, the last one partial.
    "feedback_blockwise": dataclasses.replace(BASE, pause_feedback=True, attention="blockwise",
                                              attention_block=8),
    "gemma_like_stream_blockwise": dataclasses.replace(GEMMA_LIKE, pause_context="stream",
                                                       attention="blockwise", attention_block=8),
    # The Pallas kernels, interpreted (blocks of 16, the smallest they take: one partial block here).
    "gemma_like_feedback_pallas": dataclasses.replace(GEMMA_LIKE, pause_feedback=True, attention="pallas",
                                                      attention_block=16),
}


def _perturb(params, seed):
  """Randomises what init sets to zeros or ones (norm scales and offsets, biases, <dk>, feedback).

  Otherwise their code paths would be untested: a norm left at the identity or a zero bias cannot tell a
  right implementation from one that ignores it.
  """
  rs = np.random.RandomState(seed)

  def visit(path, leaf):
    names = [getattr(entry, "key", getattr(entry, "name", "")) for entry in path]
    shape = np.shape(leaf)
    if any("norm" in str(name) for name in names):
      base = 0.0 if np.all(np.asarray(leaf) == 0) else 1.0  # (1 + w) norms are initialised at w = 0
      return jnp.asarray(base + 0.3 * rs.randn(*shape), jnp.float32)
    if names[-1] == "bias" and names[0] == "blocks":
      return jnp.asarray(0.3 * rs.randn(*shape), jnp.float32)
    return leaf

  out = jax.tree_util.tree_map_with_path(visit, params)
  if "dk_head" in params:
    width = params["dk_head"]["kernel"].shape[0]
    out["dk_head"] = {"kernel": jnp.asarray(0.5 * rs.randn(width), jnp.float32),
                      "bias": jnp.asarray(rs.randn(), jnp.float32)}
  if "feedback" in params:
    width = params["feedback"]["kernel"].shape[0]
    out["feedback"] = {"kernel": jnp.asarray(rs.randn(width, width) / np.sqrt(width), jnp.float32)}
  return out


@functools.lru_cache(maxsize=None)
def _params(config, seed=0):
  # The shared weights come from the same key for every variant, so variants differ only by their option.
  return _perturb(model.init(config, jax.random.key(seed)), seed + 100)


@functools.lru_cache(maxsize=None)
def _jit_rollout(config, num_pauses):
  return jax.jit(functools.partial(model.rollout, config=config, num_pauses=num_pauses))


@functools.lru_cache(maxsize=None)
def _jit_stats(config, num_pauses):
  return jax.jit(functools.partial(model.rollout_stats, config=config, num_pauses=num_pauses))


def _tokens(batch=B, length=N, seed=1):
  return np.random.RandomState(seed).randint(0, V, (batch, length)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _reference(name, num_pauses=K, batch=B, seed=1):
  config = VARIANTS[name]
  return ref.batched_rollout(_params(config), config, _tokens(batch, seed=seed), num_pauses)


def _with_embed(params, embed):
  return {**params, "embed": embed}


# ----------------------------------------------------------------------------------------------------------
# 1. The rollout equals the oracle.


@pytest.mark.parametrize("name", list(VARIANTS))
def test_rollout_matches_reference(name):
  config = VARIANTS[name]
  logits = _jit_rollout(config, K)(_params(config), jnp.asarray(_tokens()))
  assert logits.shape == (B, N, K + 1, V + 1) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), _reference(name), **TOL)


# Each block option switched off (or its parameters set to their neutral value) over the same weights. If
# the model ignored an option, its output would equal one of these; they all differ from the oracle of the
# full option set by far more than TOL, so test_rollout_matches_reference would catch it.
OPTION_CONTROLS = {
    "llama_like": {
        "rope_scaling": dict(rope_scaling="none"),
        "rope_band_edges": dict(rope_high_freq_factor=2.0),
        "norm_eps": dict(norm_eps=1e-6),
        "kv_grouping": "swap_kv_heads",
        "biases": "zero_biases",
        "qk_norm": "unit_qk_norm",
    },
    "gemma_like": {
        "norm_offset": dict(norm_offset=False),
        "embed_scale": dict(embed_scale=False),
        "gelu_tanh": dict(mlp_activation="silu"),
        "query_scale": dict(query_scale=0.0),
        "attn_softcap": dict(attn_softcap=0.0),
        "final_softcap": dict(final_softcap=0.0),
        "window": dict(layer_windows=(0, 0)),
        "window_off_by_one": dict(layer_windows=(4, 0)),
        "rope_local_base": dict(rope_local_base=0.0),
        "rope_linear": dict(rope_scaling="none"),
        "sandwich_norms": "unit_sandwich",
    },
}


def _neutralise(params, what):
  """Params with one option's effect removed while the config stays the same."""
  def blocks(fn):
    return {**params, "blocks": transformer.stack_blocks([fn(dict(b)) for b in
                                                          transformer.unstack_blocks(params["blocks"])])}
  if what == "swap_kv_heads":  # KV head g serves query heads g*R.., a wrong grouping reads the other
    return blocks(lambda b: {**b, "kv_proj": {k: (jnp.flip(v, axis=-2) if v.ndim >= 2 else v)
                                              for k, v in b["kv_proj"].items()}})
  if what == "zero_biases":
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if str(path[-1]) == "['bias']" and str(path[0]) == "['blocks']"
        else x, params)
  if what == "unit_qk_norm":
    return blocks(lambda b: {**b, "q_norm": {"scale": jnp.ones_like(b["q_norm"]["scale"])},
                             "k_norm": {"scale": jnp.ones_like(b["k_norm"]["scale"])}})
  if what == "unit_sandwich":  # offset norms: w = 0 is the identity scale
    return blocks(lambda b: {**b, "post_attn_norm": {"scale": jnp.zeros_like(b["post_attn_norm"]["scale"])},
                             "post_mlp_norm": {"scale": jnp.zeros_like(b["post_mlp_norm"]["scale"])}})
  raise ValueError(what)


@pytest.mark.parametrize("name,option", [(n, o) for n, opts in OPTION_CONTROLS.items() for o in opts])
def test_each_block_option_matters(name, option):
  config, change = VARIANTS[name], OPTION_CONTROLS[name][option]
  params = _params(config)
  if isinstance(change, dict):
    config = dataclasses.replace(config, **change)
  else:
    params = _neutralise(params, change)
  # Step 0 suffices (the pause steps run the same layers) and compiles much faster than the pause scan.
  logits = np.asarray(_jit_rollout(config, 0)(params, jnp.asarray(_tokens())))
  difference = np.abs(logits[:, :, 0] - _reference(name)[:, :, 0])
  assert difference.max() > 1e-2, difference.max()


def test_options_change_pause_steps_in_the_reference():
  # Guards against vacuous agreement: each option must actually change what the oracle computes.
  private, feedback, no_token = _reference("private"), _reference("feedback"), _reference("no_token")
  stream, feedback_layer0 = _reference("stream"), _reference("feedback_layer0")
  for other in (feedback, no_token, feedback_layer0):
    np.testing.assert_array_equal(other[:, :, 0], private[:, :, 0])  # step 0 is a plain LM
    assert np.abs(other[:, :, 1:] - private[:, :, 1:]).max(axis=-1).min() > 1e-3
  # Which layer feedback reads changes every pause step.
  assert np.abs(feedback_layer0[:, :, 1:] - feedback[:, :, 1:]).max(axis=-1).min() > 1e-3
  # Stream: the first token's step 0 sees nothing else; later tokens see earlier pauses.
  np.testing.assert_allclose(stream[:, 0, 0], private[:, 0, 0], rtol=1e-12, atol=1e-12)
  assert np.abs(stream[:, 1:, 0] - private[:, 1:, 0]).max() > 1e-2


# ----------------------------------------------------------------------------------------------------------
# 2. rollout_stats equals the three numbers per step read off the oracle's logits.


def _reference_stats(logits_BNSV, targets_BN):
  target = np.take_along_axis(logits_BNSV, targets_BN[:, :, None, None], axis=-1)[..., 0]
  real = logits_BNSV[..., :V]
  top = real.max(-1, keepdims=True)
  lse = np.log(np.exp(real - top).sum(-1)) + top[..., 0]
  return target, lse, logits_BNSV[..., V]


@pytest.mark.parametrize("name", ["feedback", "feedback_layer0", "stream", "llama_like_feedback",
                                  "gemma_like_stream"])
def test_rollout_stats_match_reference(name):
  config = VARIANTS[name]
  rs = np.random.RandomState(2)
  targets = rs.randint(0, V, (B, N)).astype(np.int32)
  mask = rs.rand(B, N) < 0.7
  mask[0, 0] = mask[0, -1] = True
  stats_fn = _jit_stats(config, K)
  params, tokens = _params(config), jnp.asarray(_tokens())

  full = stats_fn(params, tokens, jnp.asarray(targets), mask=jnp.asarray(mask))
  expected = _reference_stats(_reference(name), targets)
  for got, want in zip((full.target_logit, full.vocab_lse, full.dk_logit), expected):
    assert got.shape == (B, N, K + 1)
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], **TOL)
    assert np.all(np.isfinite(np.asarray(got)))

  # Chains only at a subset of positions (unsorted, different per row) must be exact, not approximate.
  positions = np.stack([rs.permutation(N)[:4] for _ in range(B)]).astype(np.int32)
  subset = stats_fn(params, tokens, jnp.asarray(targets), mask=jnp.asarray(mask),
                    positions=jnp.asarray(positions))
  sub_mask = np.take_along_axis(mask, positions, axis=1)
  for got_sub, got_full, want in zip((subset.target_logit, subset.vocab_lse, subset.dk_logit),
                                     (full.target_logit, full.vocab_lse, full.dk_logit), expected):
    assert got_sub.shape == (B, 4, K + 1)
    gathered = np.take_along_axis(np.asarray(got_full), positions[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(got_sub), gathered, rtol=1e-6, atol=1e-6)
    want_sub = np.take_along_axis(want, positions[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(got_sub)[sub_mask], want_sub[sub_mask], **TOL)


# ----------------------------------------------------------------------------------------------------------
# 3. Causality through gradients.


# The block-option variants carry feedback (private chains) and the stream context with everything else.
@pytest.mark.parametrize("name", ["gemma_like_feedback", "llama_like_stream"])
def test_causality_through_gradients(name):
  # Every position holds its own token id, so embedding row r is the input of position r alone (and of
  # r's own pauses); a gradient reaching a row r > i is a leak from the future.
  config = VARIANTS[name]
  params = _params(config)
  if config.tie_embeddings:
    # A tied head reads every embedding row by design; untie it (same values) so the embedding's gradient
    # measures only what flows through the inputs.
    config = dataclasses.replace(config, tie_embeddings=False)
    params = {**params, "head": jnp.array(params["embed"].T)}
  tokens = jnp.arange(N, dtype=jnp.int32)[None]
  # A random readout, so no symmetry of the logits can cancel a leaking gradient.
  weights = jnp.asarray(np.random.RandomState(3).randn(K + 1, V + 1), jnp.float32)

  def readout(embed, i):
    logits = model.rollout(_with_embed(params, embed), tokens, config, K)
    return jnp.sum(jnp.take(logits[0], i, axis=0) * weights)

  grads = jax.jit(jax.vmap(jax.grad(readout), in_axes=(None, 0)))(params["embed"], jnp.arange(N))
  row_norms = np.abs(np.asarray(grads)).sum(-1)  # [i, row]
  for i in range(N):
    assert np.all(row_norms[i, i + 1:] == 0.0), (i, row_norms[i])
    assert np.all(row_norms[i, :i + 1] > 0.0), (i, row_norms[i])


# ----------------------------------------------------------------------------------------------------------
# 4. Step 0 is a plain LM, and pause steps do not depend on how many come after them.


@pytest.mark.parametrize("name", ["gemma_like_feedback"])
def test_private_steps_independent_of_num_pauses(name):
  # With feedback, so the carried hidden state is covered too; without it the property is a special case.
  config = VARIANTS[name]
  params, tokens = _params(config), jnp.asarray(_tokens())
  by_k = {k: np.asarray(_jit_rollout(config, k)(params, tokens)) for k in range(K + 1)}
  for k in range(K):
    np.testing.assert_allclose(by_k[k], by_k[K][:, :, :k + 1], rtol=1e-6, atol=1e-6)


def test_stream_without_pauses_is_the_plain_lm():
  stream = np.asarray(_jit_rollout(VARIANTS["stream"], 0)(_params(VARIANTS["stream"]),
                                                          jnp.asarray(_tokens())))
  np.testing.assert_allclose(stream, _reference("private", num_pauses=0), **TOL)


# ----------------------------------------------------------------------------------------------------------
# 5. Extending a no-pause model.


@pytest.fixture(scope="module", params=["private", "gemma_like"])
def no_pause(request):
  # gemma_like: a tied head (no `head` parameter) and an embedding scale, which the pause inputs use.
  config = dataclasses.replace(VARIANTS[request.param], max_pauses=0)
  params = _perturb(model.init(config, jax.random.key(5)), 6)
  return config, params, ref.batched_rollout(params, config, _tokens(), 0)


def test_no_pause_model_is_a_plain_lm(no_pause):
  config, params, expected = no_pause
  assert set(params) == {"embed", "blocks", "final_norm"} | ({"head"} if not config.tie_embeddings else set())
  logits = np.asarray(_jit_rollout(config, 0)(params, jnp.asarray(_tokens())))
  assert np.all(logits[..., V] == -np.inf)
  np.testing.assert_allclose(logits[..., :V], expected[..., :V], **TOL)
  with pytest.raises(ValueError, match="max_pauses"):
    model.rollout(params, jnp.asarray(_tokens()), config, 1)


@pytest.mark.parametrize("feedback", [False, True])
def test_extend_params_keeps_step0(no_pause, feedback):
  config0, params0, expected0 = no_pause
  config = dataclasses.replace(config0, max_pauses=K, pause_feedback=feedback)
  extended = model.extend_params(params0, config, jax.random.key(7))
  # The fresh feedback kernel is zero; make it matter so the extended pause path is fully checked.
  extended = {**extended, **{k: v for k, v in _perturb(extended, 8).items()
                             if k in ("dk_head", "feedback")}}
  logits = np.asarray(_jit_rollout(config, K)(extended, jnp.asarray(_tokens())))
  np.testing.assert_allclose(logits[:, :, 0, :V], expected0[:, :, 0, :V], **TOL)
  # The extended model is a working pause model, with its new parameters used as the oracle reads them.
  np.testing.assert_allclose(logits, ref.batched_rollout(extended, config, _tokens(), K), **TOL)


def test_extend_params_rejects_a_non_finite_dk_bias(no_pause):
  config0, params0, _ = no_pause
  config = dataclasses.replace(config0, max_pauses=K)
  for bad in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="dk_bias must be finite"):
      model.extend_params(params0, config, jax.random.key(7), dk_bias=bad)


def test_extend_params_sets_the_initial_dk_probability_of_a_trained_model(no_pause):
  # A trained head's real-vocabulary log-normaliser u is far from the log V a fresh head has; the <dk> bias
  # must be set against the model's own u (measured on data), or the initial <dk> probability is wrong.
  config0, params0, _ = no_pause
  sharp = dict(params0)
  if config0.tie_embeddings:
    sharp["embed"] = params0["embed"] * 4.0
  else:
    sharp["head"] = params0["head"] * 12.0
  config = dataclasses.replace(config0, max_pauses=K, dk_init_prob=0.2)
  tokens = jnp.asarray(_tokens(batch=8, seed=21))
  dk_bias = model.calibrate_dk_bias(sharp, tokens, config)

  def mean_dk_at_step0(extended, tokens):
    logits = np.asarray(_jit_rollout(config, K)(extended, tokens), np.float64)[:, :, 0]
    top = logits.max(-1, keepdims=True)
    return float(np.mean(np.exp(logits[..., V] - top[..., 0]) / np.exp(logits - top).sum(-1)))

  calibrated = model.extend_params(sharp, config, jax.random.key(7), dk_bias=dk_bias)
  np.testing.assert_allclose(mean_dk_at_step0(calibrated, tokens), 0.2, atol=1e-3)  # the tokens it saw
  held_out = jnp.asarray(_tokens(batch=8, seed=22))
  assert 0.1 < mean_dk_at_step0(calibrated, held_out) < 0.4
  # What the fresh-head rule (bias against log V) gives such a model: nowhere near 0.2.
  fresh_head_rule = mean_dk_at_step0(model.extend_params(sharp, config, jax.random.key(7)), tokens)
  assert fresh_head_rule < 0.1, fresh_head_rule


def test_extend_params_scales_pause_embeddings_to_the_inputs(no_pause):
  # A pretrained model's input embeddings are small (std ~0.02); unit-variance pause embeddings would drown
  # the token term and the residual stream, so they start at the inputs' root mean square.
  config0, params0, _ = no_pause
  config = dataclasses.replace(config0, max_pauses=K)
  small = {**params0, "embed": params0["embed"] * 0.02}
  extended = model.extend_params(small, config, jax.random.key(7))
  table = np.asarray(small["embed"], np.float64) * (np.sqrt(np.float32(D)) if config.embed_scale else 1.0)
  input_rms = np.sqrt(np.mean(table ** 2))
  pause_rms = np.sqrt(np.mean(np.asarray(extended["pause"]["embedding"], np.float64) ** 2))
  assert 0.5 * input_rms < pause_rms < 2.0 * input_rms, (pause_rms, input_rms)


def test_extend_params_errors(no_pause):
  config0, params0, _ = no_pause
  config = dataclasses.replace(config0, max_pauses=K)
  key = jax.random.key(9)

  def zeros_like_init(**changes):
    # Only shapes matter here; abstract evaluation avoids running init for three more configs.
    shapes = jax.eval_shape(functools.partial(model.init, dataclasses.replace(config0, **changes)), key)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

  wider = zeros_like_init(width=24)
  with pytest.raises(ValueError, match=r"blocks.*attn_norm.*shape"):
    model.extend_params(wider, config, key)
  bigger_vocab = zeros_like_init(vocab_size=13)
  with pytest.raises(ValueError, match=r"embed.*shape"):
    model.extend_params(bigger_vocab, config, key)
  deeper = zeros_like_init(num_layers=3, layer_windows=config0.layer_windows + (0,) if config0.layer_windows
                           else ())
  with pytest.raises(ValueError, match="num_layers"):
    model.extend_params(deeper, config, key)
  with pytest.raises(ValueError, match="dk_head"):
    model.extend_params(_params(BASE), config, key)
  with pytest.raises(ValueError, match="max_pauses"):
    model.extend_params(params0, config0, key)


# ----------------------------------------------------------------------------------------------------------
# 6. bfloat16 and rematerialisation.


@pytest.mark.parametrize("name", ["gemma_like_feedback"])
def test_bfloat16_close_to_reference(name):
  config = dataclasses.replace(VARIANTS[name], dtype="bfloat16")
  params = _params(VARIANTS[name])
  logits = np.asarray(_jit_rollout(config, K)(params, jnp.asarray(_tokens())))
  assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
  # The oracle in bfloat16 mode rounds only the embedding scale (sqrt(20) = 4.47 -> 4.46875), as
  # transformers does in a bfloat16 model; everything else it computes in float64.
  expected = ref.batched_rollout(params, config, _tokens(), K)
  # bfloat16 keeps ~3 significant digits; two layers and three pause steps of it stay well inside this.
  np.testing.assert_allclose(logits, expected, rtol=0.05, atol=0.1)
  assert np.abs(logits - expected).max() > 1e-5  # bfloat16 really was used


def _stats_loss(config, params, tokens, targets, mask):
  stats = model.rollout_stats(params, tokens, targets, config, K, mask)
  w = jnp.asarray([1.0, 0.7, -0.4, 0.3], jnp.float32)[None, None]
  per_token = jnp.sum(w * (stats.target_logit - stats.vocab_lse + 0.5 * stats.dk_logit), axis=-1)
  return jnp.sum(jnp.where(mask, per_token, 0.0))


@pytest.mark.parametrize("name", ["gemma_like_feedback"])
def test_remat_same_values_and_gradients(name):
  # The private rollout goes through both rematerialised layer functions (step 0's causal pass and the
  # pause steps), so one variant covers them; the Gemma-like one with feedback has every per-layer option.
  plain_config = VARIANTS[name]
  remat_config = dataclasses.replace(plain_config, remat=True)
  params, tokens = _params(plain_config), jnp.asarray(_tokens())
  rs = np.random.RandomState(4)
  targets = jnp.asarray(rs.randint(0, V, (B, N)).astype(np.int32))
  mask = jnp.asarray(rs.rand(B, N) < 0.8)

  # The loss reads every step's statistics, so equal losses pin the forward values too.
  def value_and_grad(config):
    return jax.jit(jax.value_and_grad(functools.partial(_stats_loss, config)))(params, tokens, targets,
                                                                                mask)

  (loss_plain, grads_plain), (loss_remat, grads_remat) = value_and_grad(plain_config), value_and_grad(
      remat_config)
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
  for g_plain, g_remat in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat)):
    np.testing.assert_allclose(g_remat, g_plain, rtol=1e-5, atol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads_plain))


# The layer scan: units of `layer_period` layers, a remainder past the last whole unit, feedback from a
# layer inside the scan; against the unrolled loop (values and gradients), with and without remat.
DEEP_GEMMA = dataclasses.replace(GEMMA_LIKE, num_layers=5, layer_windows=(3, 0, 3, 0, 3), pause_feedback=True,
                                 pause_feedback_layer=2)
DEEP_LLAMA = dataclasses.replace(LLAMA_LIKE, num_layers=3, pause_feedback=True, pause_feedback_layer=1)


def test_layer_period():
  assert model.layer_period(BASE) == 1
  assert model.layer_period(DEEP_GEMMA) == 2
  sliding_5_1 = dataclasses.replace(GEMMA_LIKE, num_layers=8, layer_windows=(3,) * 5 + (0,) + (3,) * 2)
  assert model.layer_period(sliding_5_1) == 6
  # The window alone differs (no local RoPE base): still a period of the windows.
  assert model.layer_period(dataclasses.replace(DEEP_GEMMA, rope_local_base=0.0)) == 2


@pytest.mark.parametrize("config,remat,context", [
    (DEEP_GEMMA, False, "private"), (DEEP_GEMMA, True, "private"), (DEEP_LLAMA, True, "private"),
    (dataclasses.replace(DEEP_GEMMA, pause_feedback=False, pause_feedback_layer=-1), False, "stream")])
def test_scanned_layers_equal_the_unrolled_loop(config, remat, context):
  scanned = dataclasses.replace(config, remat=remat, pause_context=context)
  unrolled = dataclasses.replace(scanned, scan_layers=False)
  params, tokens = _params(scanned), jnp.asarray(_tokens())
  assert params["blocks"]["attn_norm"]["scale"].shape == (config.num_layers, config.width)
  rs = np.random.RandomState(5)
  targets = jnp.asarray(rs.randint(0, V, (B, N)).astype(np.int32))
  mask = jnp.asarray(rs.rand(B, N) < 0.8)

  def value_and_grad(config):
    return jax.jit(jax.value_and_grad(functools.partial(_stats_loss, config)))(params, tokens, targets, mask)

  (loss_scan, grads_scan), (loss_unrolled, grads_unrolled) = value_and_grad(scanned), value_and_grad(unrolled)
  # Not bitwise: XLA fuses and orders float32 sums differently inside a loop body.
  np.testing.assert_allclose(loss_scan, loss_unrolled, rtol=1e-5)
  for g_scan, g_unrolled in zip(jax.tree.leaves(grads_scan), jax.tree.leaves(grads_unrolled)):
    np.testing.assert_allclose(g_scan, g_unrolled, **TOL)
  # Every step's logits too (the loss above reads statistics of them).
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda p: model.rollout(p, tokens, scanned, K))(params)),
      np.asarray(jax.jit(lambda p: model.rollout(p, tokens, unrolled, K))(params)), **TOL)


def _forward_scan_outputs(jaxpr) -> list:
  """Shapes and dtypes of the outputs of every forward (reverse=False) scan in a jaxpr, nested ones too."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan" and not eqn.params["reverse"]:
      found += [(v.aval.shape, v.aval.dtype) for v in eqn.outvars]
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _forward_scan_outputs(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _forward_scan_outputs(sub)
  return found


@pytest.mark.parametrize("config", [BASE, DEEP_LLAMA, dataclasses.replace(DEEP_LLAMA, dtype="bfloat16")])
def test_the_backward_pass_reads_the_layer_weights_without_saving_a_copy(config):
  # In the gradient of K pause steps, the forward layer scans return no stacked weights: a scan saves what
  # its body computes from its inputs (a slice of a unit, a cast to bfloat16) as new stacked outputs, one
  # more copy of every weight per pause step, where the scanned inputs themselves are read back directly.
  params, tokens = _params(config), jnp.asarray(_tokens())
  rs = np.random.RandomState(5)
  targets = jnp.asarray(rs.randint(0, V, (B, N)).astype(np.int32))
  mask = jnp.asarray(rs.rand(B, N) < 0.8)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: _stats_loss(config, p, tokens, targets, mask)))(params)
  outputs = _forward_scan_outputs(jaxpr.jaxpr)
  assert outputs  # the layer scans were found
  weight_shapes = {w.shape for w in jax.tree.leaves(params["blocks"]) if w.ndim >= 3}
  assert not [output for output in outputs if output[0] in weight_shapes]


# ----------------------------------------------------------------------------------------------------------
# 7. Validation.


@pytest.mark.parametrize("changes, field", [
    (dict(width=21), "width"),                        # not divisible by 2 heads
    (dict(width=18), "even"),                         # head dim 9 is odd
    (dict(pause_context="interleaved"), "pause_context"),
    (dict(pause_context="stream", pause_feedback=True), "pause_feedback"),
    (dict(pause_feedback_layer=2), "pause_feedback_layer"),   # two layers: 0, 1 or -1, -2
    (dict(pause_feedback_layer=-3), "pause_feedback_layer"),
    (dict(pause_feedback_layer=True), "pause_feedback_layer"),
    (dict(pause_feedback_layer=0), "pause_feedback_layer"),   # without pause_feedback
    (dict(max_pauses=-1), "max_pauses"),
    (dict(dk_init_prob=0.0), "dk_init_prob"),
    (dict(dk_init_prob=1.0), "dk_init_prob"),
    (dict(dk_init_prob=1.5), "dk_init_prob"),
    (dict(dtype="float16"), "dtype"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_heads=0), "num_heads"),
    (dict(num_kv_heads=3), "num_kv_heads"),           # does not divide 2 heads
    (dict(head_dim=7), "head_dim"),                   # odd
    (dict(head_dim=-2), "head_dim"),
    (dict(mlp_activation="relu"), "mlp_activation"),
    (dict(rope_scaling="yarn"), "rope_scaling"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0), "high_freq"),
    (dict(rope_factor=0.0), "rope_factor"),
    (dict(norm_eps=float("nan")), "norm_eps"),
    (dict(attn_softcap=-1.0), "attn_softcap"),
    (dict(final_softcap=float("inf")), "final_softcap"),
    (dict(query_scale=-0.1), "query_scale"),
    (dict(layer_windows=(3,)), "layer_windows"),      # one window for two layers
    (dict(layer_windows=(3, -1)), "layer_windows"),
])
def test_config_validation(changes, field):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(BASE, **changes)


def test_rollout_argument_errors():
  params, tokens = _params(BASE), jnp.asarray(_tokens())
  targets = jnp.zeros_like(tokens)
  with pytest.raises(ValueError, match="max_pauses"):
    model.rollout(params, tokens, BASE, K + 1)
  with pytest.raises(ValueError, match="max_pauses"):
    model.rollout_stats(params, tokens, targets, BASE, K + 1)
  with pytest.raises(ValueError, match="num_pauses"):
    model.rollout(params, tokens, BASE, -1)
  too_long = jnp.zeros((1, BASE.max_len + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_len"):
    model.rollout(params, too_long, BASE, 1)
  with pytest.raises(ValueError, match="max_len"):
    model.rollout_stats(params, too_long, jnp.zeros_like(too_long), BASE, 1)


# ----------------------------------------------------------------------------------------------------------
# 8. The initial <dk> probability.


@pytest.mark.parametrize("prob", [0.1, 0.5])
def test_initial_dk_probability(prob):
  # Unperturbed params: this is about init. dk_init_prob only enters init, so the forward pass compiled
  # for BASE is reused, over a few batches of random tokens.
  params = model.init(dataclasses.replace(BASE, dk_init_prob=prob), jax.random.key(11))
  logits = np.concatenate([np.asarray(_jit_rollout(BASE, K)(params, jnp.asarray(_tokens(seed=seed))))
                           for seed in (12, 13, 14)]).astype(np.float64)
  top = logits.max(-1, keepdims=True)
  probs = np.exp(logits - top) / np.exp(logits - top).sum(-1, keepdims=True)
  dk_per_step = probs[..., V].mean(axis=(0, 1))
  assert np.all(dk_per_step > prob / 2) and np.all(dk_per_step < prob * 2), dk_per_step


# ----------------------------------------------------------------------------------------------------------
# 9. jit and a batch sharded over 8 devices.


def test_sharded_batch_matches_unsharded():
  assert jax.device_count() == 8
  config = VARIANTS["feedback"]
  params = _params(config)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  rs = np.random.RandomState(13)
  tokens = rs.randint(0, V, (8, N)).astype(np.int32)
  targets = rs.randint(0, V, (8, N)).astype(np.int32)
  positions = np.stack([rs.permutation(N)[:3] for _ in range(8)]).astype(np.int32)
  host = [jnp.asarray(a) for a in (tokens, targets, positions)]
  sharded = [jax.device_put(a, batch_sharding) for a in (tokens, targets, positions)]

  rollout_fn = _jit_rollout(config, K)
  logits_sharded = rollout_fn(params, sharded[0])
  assert len(logits_sharded.sharding.device_set) == 8
  np.testing.assert_allclose(logits_sharded, rollout_fn(params, host[0]), rtol=1e-5, atol=1e-5)
  reference = ref.batched_rollout(params, config, tokens, K)
  np.testing.assert_allclose(logits_sharded, reference, **TOL)

  # The training path (stats at a subset of positions), sharded, against the oracle directly.
  stats = _jit_stats(config, K)(params, sharded[0], sharded[1], positions=sharded[2])
  expected = _reference_stats(reference, targets)
  for got, want in zip((stats.target_logit, stats.vocab_lse, stats.dk_logit), expected):
    np.testing.assert_allclose(got, np.take_along_axis(want, positions[:, :, None], axis=1), **TOL)


def test_fsdp_sharded_parameters_give_the_same_rollout():
  # The trainer's fsdp rule shards every large parameter (grouped q/kv kernels, the tied table, the MLP)
  # over 8 devices; the model must not care how its parameters are laid out.
  from cyb_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(VARIANTS["gemma_like_feedback"], width=24, mlp_hidden=32, vocab_size=16)
  params = _perturb(model.init(config, jax.random.key(31)), 32)
  num_pauses = 1
  mesh = sharding.make_mesh(data=1, fsdp=8)
  shardings = sharding.state_shardings(jax.eval_shape(lambda: params), mesh)
  sharded = jax.device_put(params, shardings)
  assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
             for leaf in jax.tree.leaves(sharded))
  # Stacked layers are sharded as one layer would be, never on the layer axis (a scan step reads a layer).
  for path, leaf in jax.tree_util.tree_flatten_with_path(sharded["blocks"])[0]:
    spec = leaf.sharding.spec
    assert (len(spec) == 0 or spec[0] is None), jax.tree_util.keystr(path)
    assert tuple(spec[1:]) == tuple(sharding.fsdp_spec(leaf.shape[1:], 8)), jax.tree_util.keystr(path)
  assert any(len(leaf.sharding.spec) for leaf in jax.tree.leaves(sharded["blocks"]))
  tokens = jnp.asarray(np.random.RandomState(33).randint(0, 16, (8, N)).astype(np.int32))
  rollout_fn = jax.jit(functools.partial(model.rollout, config=config, num_pauses=num_pauses))
  np.testing.assert_allclose(rollout_fn(sharded, tokens), rollout_fn(params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama_like", "gemma_like_feedback"])
def test_config_survives_the_checkpoint_json(name):
  # Checkpoints keep the ModelConfig as JSON, where tuples come back as lists; the config must come back
  # equal and hashable (it is a static argument of every jitted function).
  import json  # pylint: disable=import-outside-toplevel
  config = VARIANTS[name]
  restored = model.ModelConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
  assert restored == config and hash(restored) == hash(config)
  assert model.parameter_shapes(restored) == model.parameter_shapes(config)
