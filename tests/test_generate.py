"""Tests for cyb_jax/generate.py: jitted, batched generation with adaptive pauses (DESIGN.md section 6).

The oracle for private pause chains is `model.rollout` on the prompt plus the generated tokens: chains are
private, so the logits of token t at step j cannot depend on how many pauses other tokens took, and must
equal the rollout's (DESIGN.md section 3). The policies' decisions are replayed here in float64 numpy from
the rollout's logits, and greedy tokens are the argmax of the rollout's real-vocabulary logits, so nothing
is checked against generation's own bookkeeping. For `pause_context="stream"`, whose inference context
differs from training, the oracle is a plain causal pass over the explicit stream of tokens and pauses.
"""

import dataclasses
import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from cyb_jax.inference import generate
from cyb_jax import model

CONFIG = model.ModelConfig(vocab_size=11, width=12, num_layers=2, num_heads=2, mlp_hidden=14, max_len=64,
                           max_pauses=3, dk_init_prob=0.5, attention="dense")
FEEDBACK_CONFIG = dataclasses.replace(CONFIG, pause_feedback=True)
STREAM_CONFIG = dataclasses.replace(CONFIG, pause_context="stream")
# Block options of open-weight families (see test_model.py), so the KV cache, grouped heads and sliding
# windows are covered by generation too: the window of 3 positions on layer 0 is far shorter than the
# 5-token prompt plus 6 generated tokens.
LLAMA_LIKE = dataclasses.replace(
    CONFIG, num_heads=4, num_kv_heads=2, head_dim=4, qkv_bias=True, out_bias=True, mlp_bias=True,
    qk_norm=True, rope_scaling="llama3", rope_factor=4.0, rope_original_max_len=8)
GEMMA_LIKE = dataclasses.replace(
    CONFIG, num_kv_heads=1, qk_norm=True, norm_offset=True, sandwich_norms=True, embed_scale=True,
    mlp_activation="gelu_tanh", tie_embeddings=True, query_scale=0.4, attn_softcap=2.0,
    final_softcap=4.0, layer_windows=(3, 0), rope_local_base=30.0)
CONFIGS = {"plain": CONFIG, "feedback": FEEDBACK_CONFIG, "stream": STREAM_CONFIG,
           # Feedback from the first layer's output: the decoding state carries that residual, not the final.
           "feedback_layer0": dataclasses.replace(FEEDBACK_CONFIG, pause_feedback_layer=0),
           "llama_like": LLAMA_LIKE, "gemma_like": GEMMA_LIKE,
           "gemma_like_feedback": dataclasses.replace(GEMMA_LIKE, pause_feedback=True),
           "gemma_like_stream": dataclasses.replace(GEMMA_LIKE, pause_context="stream")}
# The memory-linear attention implementations in generation: they compute the prefill (decoding is one
# query per step, always dense), here over a prompt of three blocks of 8 keys (`prompts_for`). Their
# oracles run the dense attention (`oracle_config`), so each is checked against dense end to end.
CONFIGS.update({f"{name}_{implementation}": dataclasses.replace(CONFIGS[name], attention=implementation,
                                                                 attention_block=8)
                for name in ("gemma_like_feedback", "gemma_like_stream") for implementation in ("blockwise", "pallas")})
V = CONFIG.vocab_size


def oracle_config(variant):
  """The variant's configuration with the dense attention, the oracle of every other implementation."""
  return dataclasses.replace(CONFIGS[variant], attention="dense", attention_block=CONFIG.attention_block)

K = CONFIG.max_pauses
NUM_TOKENS = 6
PROMPT_LEN = 5
BATCH = 4
TAU = 0.5
Q = 0.6
ATOL = 2e-5  # generation and rollout reduce in different orders; logits here reach about |30|

# Decisions closer than this to their threshold could flip between two correct float32 computations.
DECISION_MARGIN = 1e-3


@functools.lru_cache(maxsize=None)
def params_for(variant):
  """Fresh parameters with a random `<dk>` head, so d varies strongly across tokens and steps.

  A fresh `<dk>` head is input-independent (kernel 0): every token would pause alike. Seed 2 gives every
  pause count 0..K under the threshold policy (checked in `test_pause_counts_are_mixed`).
  """
  config = CONFIGS[variant]
  params = model.init(config, jax.random.PRNGKey(2))
  rs = np.random.RandomState(402)
  # Block-option variants: norm scales and biases away from their neutral initial values, so every
  # option's path is live. (The original variants keep the parameters their pause-count checks rely on.)
  if variant.startswith(("llama_like", "gemma_like")):
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * rs.randn(*x.shape).astype(np.float32)
        if any("norm" in str(p) for p in path) or (str(path[-1]) == "['bias']" and str(path[0]) == "['blocks']")
        else x, params)
  params["dk_head"]["kernel"] = 2.0 * jax.random.normal(jax.random.PRNGKey(102), (config.width,))
  if variant.startswith("gemma_like"):
    # Soft-capped real logits keep u = logsumexp small, and greedy text here repeats itself: a weaker <dk>
    # direction and a higher bias give every pause count 0..K a chance (checked as for the others).
    params["dk_head"] = {"kernel": 0.3 * params["dk_head"]["kernel"], "bias": params["dk_head"]["bias"] + 2.5}
  if config.pause_feedback:
    # Zero-initialised feedback would make this variant identical to the plain one.
    params["feedback"]["kernel"] = 0.3 * jax.random.normal(jax.random.PRNGKey(302),
                                                           (config.width, config.width))
  return params


PROMPTS = jax.random.randint(jax.random.PRNGKey(202), (BATCH, PROMPT_LEN), 0, V)
# 19 tokens: a prefill over two full blocks of 8 keys and a partial one. Seed 218 gives mixed pause counts
# with both block-option variants that use them (the stream test checks it; most seeds leave the stream
# variant at 0 or 1 pause everywhere).
LONG_PROMPTS = jax.random.randint(jax.random.PRNGKey(218), (BATCH, 19), 0, V)


def prompts_for(variant):
  """The prompts of a variant: long ones where the attention implementation works in blocks."""
  return LONG_PROMPTS if CONFIGS[variant].attention in ("blockwise", "pallas") else PROMPTS


@functools.partial(jax.jit, static_argnums=(2, 3))
def rollout(params, tokens, config, num_pauses):
  return model.rollout(params, tokens, config, num_pauses)


@functools.lru_cache(maxsize=None)
def generated(variant, policy, temperature=0.0, prompt_len=None, num_pauses=K):
  """One generation per setting, shared by the tests (each compile costs seconds)."""
  return generate.generate(params_for(variant), prompts_for(variant)[:, :prompt_len], CONFIGS[variant],
                           num_tokens=NUM_TOKENS, num_pauses=num_pauses, policy=policy, tau=TAU, q=Q,
                           temperature=temperature, rng=jax.random.PRNGKey(5), return_logits=True)


def rollout_of_generation(variant, prompts, tokens, num_pauses=K):
  """Rollout logits `[B, M, S, V+1]` (float64) for the generated tokens' predictions.

  Token t is predicted at position T-1+t of prompt + generated[:-1].
  """
  sequence = jnp.concatenate([prompts, tokens[:, :-1]], axis=1)
  logits = rollout(params_for(variant), sequence, oracle_config(variant), num_pauses)
  return np.asarray(logits, np.float64)[:, prompts.shape[1] - 1:]


def log_dk64(logits):
  """log d in float64: `<dk>` logit minus the log-sum-exp of all V+1 logits."""
  top = logits.max(-1, keepdims=True)
  return logits[..., -1] - (top[..., 0] + np.log(np.exp(logits - top).sum(-1)))


def replay_policy(policy, logits_S):
  """Stopping step of a deterministic policy from one token's step logits `[S, V+1]` (float64).

  threshold: first j < K with d_j <= tau. cumulative: first j < K where sum_{k<=j} h_k >= q, with
  h_j = prod_{k<j} d_k (1 - d_j). Otherwise K = S-1. Also asserts no decision sits on its threshold.
  """
  num_pauses = logits_S.shape[0] - 1
  if policy == "never":
    return 0
  if policy == "always":
    return num_pauses
  d = np.exp(log_dk64(logits_S))
  halted, survival = 0.0, 1.0
  for j in range(num_pauses):
    if policy == "threshold":
      value, bound = d[j], TAU
      stop = d[j] <= TAU
    else:
      halted += survival * (1.0 - d[j])
      survival *= d[j]
      value, bound = halted, Q
      stop = halted >= Q
    assert abs(value - bound) > DECISION_MARGIN, f"decision at step {j} is a near tie: {value} vs {bound}"
    if stop:
      return j
  return num_pauses


def assert_greedy(tokens, logits_at_stop):
  """tokens `[...]` are the argmax of the real-vocabulary logits `[..., V+1]`, with a clear winner."""
  real = logits_at_stop[..., :V]
  top2 = np.sort(real, axis=-1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0] > DECISION_MARGIN).all(), "near tie in the greedy argmax"
  np.testing.assert_array_equal(tokens, real.argmax(-1))


def check_against_rollout(variant, policy, gen, prompts, *, greedy, num_pauses=K):
  """The checks shared by all private-chain policies; returns the rollout logits."""
  tokens, pauses = np.asarray(gen.tokens), np.asarray(gen.pauses)
  got = np.asarray(gen.step_logits, np.float64)
  assert tokens.shape == pauses.shape == (prompts.shape[0], NUM_TOKENS)
  assert got.shape == (prompts.shape[0], NUM_TOKENS, num_pauses + 1, V + 1)
  assert ((tokens >= 0) & (tokens < V)).all() and ((pauses >= 0) & (pauses <= num_pauses)).all()
  expected = rollout_of_generation(variant, prompts, gen.tokens, num_pauses)

  # A token with p pauses realises steps 0..p; the later steps were never run and must hold NaN.
  realised = np.arange(num_pauses + 1)[None, None, :] <= pauses[..., None]
  np.testing.assert_array_equal(np.isfinite(got).all(-1), realised)
  np.testing.assert_array_equal(np.isnan(got).all(-1), ~realised)
  np.testing.assert_allclose(got[realised], expected[realised], rtol=1e-5, atol=ATOL)

  if policy in ("threshold", "cumulative", "never", "always"):
    replayed = np.array([[replay_policy(policy, expected[b, t]) for t in range(NUM_TOKENS)]
                         for b in range(prompts.shape[0])])
    np.testing.assert_array_equal(pauses, replayed)
  if greedy:
    at_stop = np.take_along_axis(expected, pauses[..., None, None], axis=2)[:, :, 0]
    assert_greedy(tokens, at_stop)

  # One query per loop iteration, and each iteration consumes one realised (token, step) output: the
  # prefill produces the first token's step 0 (not a query), and the query run after the last answer
  # (step 0 of a token never emitted) replaces it in the count. A batch runs until its slowest
  # sequence is done.
  assert int(gen.num_queries) == (pauses + 1).sum(-1).max()
  return expected


# ----------------------------------------------------------------------------------------------------------
# Private chains: generation against the rollout.


@pytest.mark.parametrize("variant,policy", [
    # "never" is the plain LM's generation, compared with transformers in test_pretrained.py.
    # "cumulative" runs on the Gemma-like variant below.
    ("plain", "threshold"), ("plain", "always"), ("plain", "sample"),
    # Feedback changes what a pause step computes, not the policies: one policy suffices.
    ("feedback", "threshold"), ("feedback_layer0", "threshold"),
    # Block options: the KV cache, grouped heads, windows and soft-caps under adaptive pausing.
    ("llama_like", "threshold"), ("gemma_like", "threshold"), ("gemma_like_feedback", "cumulative"),
    # The KV cache read block by block, by the portable form and by the (interpreted) Pallas kernels.
    ("gemma_like_feedback_blockwise", "cumulative"), ("gemma_like_feedback_pallas", "cumulative"),
])
def test_generation_matches_rollout(variant, policy):
  check_against_rollout(variant, policy, generated(variant, policy), prompts_for(variant), greedy=True)


def test_fewer_pauses_than_max_pauses():
  # K = 2 < max_pauses = 3: the last step is step 2, which must answer however large its d.
  gen = generated("plain", "threshold", num_pauses=2)
  check_against_rollout("plain", "threshold", gen, PROMPTS, greedy=True, num_pauses=2)
  pauses = np.asarray(gen.pauses)
  assert 2 in pauses and 0 in pauses, pauses


def test_sampled_tokens_and_pauses_match_rollout():
  # temperature > 0: the tokens are random, but each step's logits must still be the rollout's given them.
  gen = generated("plain", "sample", temperature=1.0)
  expected = check_against_rollout("plain", "sample", gen, PROMPTS, greedy=False)
  at_stop = np.take_along_axis(expected, np.asarray(gen.pauses)[..., None, None], axis=2)[:, :, 0]
  # 24 draws from softmaxes of O(1) logits over 11 tokens: all equal to the argmax would mean no sampling.
  assert (np.asarray(gen.tokens) != at_stop[..., :V].argmax(-1)).any()


@pytest.mark.parametrize("variant,policy", [("plain", "threshold"), ("plain", "cumulative"),
                                            ("plain", "sample"), ("feedback", "threshold"),
                                            ("feedback_layer0", "threshold"),
                                            ("llama_like", "threshold"), ("gemma_like", "threshold"),
                                            ("gemma_like_feedback", "cumulative"),
                                            ("gemma_like_stream", "threshold")])
def test_pause_counts_are_mixed(variant, policy):
  # Without a spread of pause counts the agreement tests above would not exercise per-token pausing.
  pauses = np.asarray(generated(variant, policy).pauses)
  assert 0 in pauses and len(np.unique(pauses)) >= 3, pauses
  # Sequences of the batch differ in total pauses, so they finish at different iterations.
  assert len(np.unique(pauses.sum(-1))) >= 2, pauses


def greedy_by_rollouts(variant, prompts, num_pauses, step):
  """Greedy decoding by repeated rollouts: append argmax of the last real position's logits at `step`.

  The growing sequence sits at the front of a fixed-length buffer (filler 0 after it) so the rollout
  compiles once; the model is causal (DESIGN.md section 3), so the filler cannot change the logits
  read at the last real position. (The comparison with generation already relies on this.)
  """
  batch, prompt_len = prompts.shape
  buffer = np.zeros((batch, prompt_len + NUM_TOKENS - 1), np.int32)
  buffer[:, :prompt_len] = prompts
  for t in range(NUM_TOKENS):
    last = prompt_len - 1 + t
    logits = np.asarray(rollout(params_for(variant), jnp.asarray(buffer), CONFIGS[variant], num_pauses))
    real = logits[:, last, step, :V]
    top2 = np.sort(real, axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > DECISION_MARGIN).all(), "near tie in the greedy argmax"
    if t + 1 < NUM_TOKENS:
      buffer[:, last + 1] = real.argmax(-1)
  return np.concatenate([buffer[:, prompt_len:], real.argmax(-1)[:, None]], axis=1)


@pytest.mark.parametrize("variant", ["plain", "feedback"])
def test_always_equals_greedy_decoding_at_the_last_step(variant):
  gen = generated(variant, "always")
  np.testing.assert_array_equal(gen.pauses, K)
  np.testing.assert_array_equal(gen.tokens, greedy_by_rollouts(variant, PROMPTS, K, K))


def test_never_equals_plain_greedy_decoding():
  gen = generated("plain", "never")
  np.testing.assert_array_equal(gen.pauses, 0)
  np.testing.assert_array_equal(gen.tokens, greedy_by_rollouts("plain", PROMPTS, 0, 0))


def test_each_sequence_pauses_on_its_own():
  # A batch must give each prompt what it gets alone; with mixed pause counts this means sequences that
  # finish early wait without disturbing the others.
  batched = generated("plain", "threshold")
  for b in range(BATCH):
    alone = generate.generate(params_for("plain"), PROMPTS[b:b + 1], CONFIG, num_tokens=NUM_TOKENS,
                              policy="threshold", tau=TAU, rng=jax.random.PRNGKey(5),
                              return_logits=True)
    np.testing.assert_array_equal(alone.tokens[0], batched.tokens[b])
    np.testing.assert_array_equal(alone.pauses[0], batched.pauses[b])
    np.testing.assert_allclose(alone.step_logits[0], batched.step_logits[b], rtol=1e-5, atol=ATOL)
    # Alone, the loop runs one query per realised step of its own tokens (see check_against_rollout).
    assert int(alone.num_queries) == int((np.asarray(alone.pauses) + 1).sum())
  # The batch needs as many iterations as its slowest member, not the sum and not (K+1) per token.
  per_sequence = (np.asarray(batched.pauses) + 1).sum(-1)
  assert int(batched.num_queries) == per_sequence.max() < NUM_TOKENS * (K + 1)


# ----------------------------------------------------------------------------------------------------------
# Stream mode: pauses are stream tokens, inserted only after a pause decision.


@functools.partial(jax.jit, static_argnums=2)
def stream_causal_logits(params, x_BTD, config):
  """A plain causal pass over explicit stream inputs at positions 0..T-1, logits `[B, T, V+1]`."""
  positions_BT = jnp.broadcast_to(jnp.arange(x_BTD.shape[1]), x_BTD.shape[:2])
  hidden, _, _ = model.causal_forward(params, x_BTD, positions_BT, config)
  return model.output_logits(params, hidden, config)


def stream_oracle_logits(variant, params, prompt, tokens, pauses):
  """Logits `[M, S, V+1]` (NaN where not realised) from one causal pass over the explicit stream.

  The stream is the prompt, then for each generated token t: the pauses it took (inputs built from the
  real token it follows, the last real token in the stream) at their own successive positions, then the
  token itself. Token t's step j is the output at the stream index of its real input, plus j. The stream
  is padded to the longest possible length so the pass compiles once; causality makes the padding inert.
  """
  config = oracle_config(variant)
  embed = np.asarray(model.embed_tokens(params, jnp.arange(V), config))  # the model's real-token inputs
  # Pause inputs for every (token, step), from the model's own definition of a pause input.
  all_tokens, all_steps = np.meshgrid(np.arange(V), np.arange(1, K + 1), indexing="ij")
  pause_table = np.asarray(model.pause_inputs(params, jnp.asarray(all_tokens), jnp.asarray(all_steps),
                                              config))  # [V, K, D]
  inputs = [embed[token] for token in prompt]
  step0_index = []
  for t in range(NUM_TOKENS):
    current = prompt[-1] if t == 0 else tokens[t - 1]
    if t > 0:
      inputs.append(embed[current])
    step0_index.append(len(inputs) - 1)
    for j in range(1, pauses[t] + 1):
      inputs.append(pause_table[current, j - 1])
  max_length = len(prompt) + NUM_TOKENS * (K + 1)
  x_TD = np.zeros((max_length, config.width), np.float32)
  x_TD[:len(inputs)] = np.stack(inputs)
  logits = np.asarray(stream_causal_logits(params, jnp.asarray(x_TD)[None], config)[0], np.float64)
  out = np.full((NUM_TOKENS, K + 1, V + 1), np.nan)
  for t in range(NUM_TOKENS):
    out[t, :pauses[t] + 1] = logits[step0_index[t]:step0_index[t] + pauses[t] + 1]
  return out


@pytest.mark.parametrize("variant", ["stream", "gemma_like_stream", "gemma_like_stream_blockwise",
                                     "gemma_like_stream_pallas"])
def test_stream_generation_matches_explicit_stream(variant):
  params = params_for(variant)
  gen = generated(variant, "threshold")
  tokens, pauses = np.asarray(gen.tokens), np.asarray(gen.pauses)
  assert 0 in pauses and len(np.unique(pauses)) >= 3, pauses  # else the stream would be trivial
  for b in range(BATCH):
    expected = stream_oracle_logits(variant, params, np.asarray(prompts_for(variant)[b]), tokens[b],
                                    pauses[b])
    np.testing.assert_allclose(np.asarray(gen.step_logits[b], np.float64), expected, rtol=1e-5,
                               atol=ATOL)
    for t in range(NUM_TOKENS):
      # The oracle only has realised steps: each must have paused (d > tau) and the last must not,
      # unless it is step K.
      d = np.exp(log_dk64(expected[t, :pauses[b, t] + 1]))
      assert (d[:-1] > TAU + DECISION_MARGIN).all(), (b, t, d)
      assert pauses[b, t] == K or d[-1] < TAU - DECISION_MARGIN, (b, t, d)
      assert_greedy(tokens[b, t], expected[t, pauses[b, t]])
  assert int(gen.num_queries) == (pauses + 1).sum(-1).max()


def test_stream_always_with_one_token_prompt_equals_stream_rollout():
  # Training interleaves K pauses after every real token. With `always` and a one-token prompt the
  # inference stream is exactly that, so the stream rollout is an oracle for every step.
  gen = generated("stream", "always", prompt_len=1)
  np.testing.assert_array_equal(gen.pauses, K)
  expected = rollout_of_generation("stream", PROMPTS[:, :1], gen.tokens)
  np.testing.assert_allclose(np.asarray(gen.step_logits, np.float64), expected, rtol=1e-5, atol=ATOL)
  assert_greedy(np.asarray(gen.tokens), expected[:, :, K])


def test_stream_and_private_chains_differ_after_a_pause():
  # Guards against stream mode silently running private chains: once a token has paused, later tokens
  # see its pauses in the stream, so their step-0 logits differ from the private rollout's.
  gen = generated("stream", "threshold")
  pauses = np.asarray(gen.pauses)
  private = rollout_of_generation("plain", PROMPTS, gen.tokens)  # same params, private chains
  stream_step0 = np.asarray(gen.step_logits[:, :, 0], np.float64)
  paused_before = np.cumsum(pauses, axis=1) - pauses > 0  # some earlier generated token paused
  assert paused_before.any()
  differs = np.abs(stream_step0 - private[:, :, 0]).max(-1) > 1e-3
  np.testing.assert_array_equal(differs, paused_before)


# ----------------------------------------------------------------------------------------------------------
# Arguments and compilation.


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_pauses=K + 1), "max_pauses"),
    (dict(policy="bogus"), "policy.*'bogus'"),
    (dict(policy="threshold", tau=1.5), "tau.*1.5"),
    (dict(policy="cumulative", q=0.0), "q .*0.0"),
    # NaN passes every `<` and `>` test: each numeric argument must reject it explicitly.
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0, got nan"),
    (dict(temperature=float("inf")), "temperature.*inf"),
    (dict(temperature=-0.5), "temperature.*-0.5"),
    (dict(policy="threshold", tau=float("nan")), "tau must lie in \\[0, 1\\], got nan"),
    (dict(policy="cumulative", q=float("nan")), "q must lie in \\(0, 1\\], got nan"),
    (dict(num_tokens=2.5), "num_tokens must be a positive integer, got 2.5"),
    (dict(num_tokens=0), "num_tokens must be a positive integer, got 0"),
    (dict(num_pauses=1.0), "num_pauses must be an integer, got 1.0"),
])
def test_bad_arguments_raise(kwargs, match):
  kwargs = {"num_tokens": NUM_TOKENS, **kwargs}
  with pytest.raises(ValueError, match=match):
    generate.generate(params_for("plain"), PROMPTS, CONFIG, **kwargs)


def test_prompt_too_long_raises():
  # Private chains take one cache entry per generated token: 58 + 6 = 64 fits, 59 + 6 does not.
  too_long = jnp.zeros((1, CONFIG.max_len - NUM_TOKENS + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_len"):
    generate.generate(params_for("plain"), too_long, CONFIG, num_tokens=NUM_TOKENS)
  # A stream takes up to K+1 entries per token: 40 + 6 * 4 = 64 fits, 41 does not.
  stream_prompt = jnp.zeros((1, CONFIG.max_len - NUM_TOKENS * (K + 1) + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_len"):
    generate.generate(params_for("stream"), stream_prompt, STREAM_CONFIG, num_tokens=NUM_TOKENS)


def test_tau_sweep_does_not_recompile():
  generated("plain", "threshold")  # compiled for these shapes and settings
  size = generate._generate._cache_size()
  low = generate.generate(params_for("plain"), PROMPTS, CONFIG, num_tokens=NUM_TOKENS, policy="threshold",
                          tau=0.05, rng=jax.random.PRNGKey(5), return_logits=True)
  assert generate._generate._cache_size() == size
  # The traced tau must actually be used: replay the rule with tau = 0.05 on the rollout of these tokens.
  expected = rollout_of_generation("plain", PROMPTS, low.tokens)
  d = np.exp(log_dk64(expected))
  assert (np.abs(d[..., :K] - 0.05) > DECISION_MARGIN).all()
  replayed = np.where((d[..., :K] <= 0.05).any(-1), (d[..., :K] <= 0.05).argmax(-1), K)
  np.testing.assert_array_equal(low.pauses, replayed)
  assert np.asarray(low.pauses).sum() > np.asarray(generated("plain", "threshold").pauses).sum()
  # Control: a new static setting (return_logits) does compile, so the probe above can see one.
  plain = generate.generate(params_for("plain"), PROMPTS, CONFIG, num_tokens=NUM_TOKENS,
                            policy="threshold", tau=0.05, rng=jax.random.PRNGKey(5))
  assert generate._generate._cache_size() == size + 1
  # Without return_logits the same tokens and pauses come out, and no logits.
  assert plain.step_logits is None
  np.testing.assert_array_equal(plain.tokens, low.tokens)
  np.testing.assert_array_equal(plain.pauses, low.pauses)


# ----------------------------------------------------------------------------------------------------------
# Teacher forcing: inference's context on given text (eval's inference-context numbers).


def _nll_and_correct(logits_SV1, target):
  real = np.asarray(logits_SV1, np.float64)[..., :V]
  top = real.max(-1, keepdims=True)
  lse = np.log(np.exp(real - top).sum(-1)) + top[..., 0]
  return lse - real[..., target], np.argmax(real, -1) == target


@pytest.mark.parametrize("variant", ["gemma_like_stream"])
def test_teacher_forced_on_generations_own_tokens_repeats_it(variant):
  """Forcing the tokens greedy generation chose must reproduce its pauses and, at every realised
  (token, step), the NLL and correctness read from its logits (generation is checked against explicit
  oracles above, including the stream one)."""
  gen = generated(variant, "threshold", prompt_len=1)
  tokens = np.concatenate([np.asarray(PROMPTS[:, :1]), np.asarray(gen.tokens)], axis=1)
  forced = generate.teacher_forced(params_for(variant), tokens, CONFIGS[variant], num_pauses=K,
                                   policy="threshold", tau=TAU)
  np.testing.assert_array_equal(forced.pauses, gen.pauses)
  logits = np.asarray(gen.step_logits)
  for b in range(BATCH):
    for i in range(NUM_TOKENS):
      reached = int(gen.pauses[b, i]) + 1
      nll, correct = _nll_and_correct(logits[b, i, :reached], tokens[b, i + 1])
      np.testing.assert_allclose(np.asarray(forced.target_nll)[b, i, :reached], nll, atol=1e-4, rtol=1e-5)
      np.testing.assert_array_equal(np.asarray(forced.target_correct)[b, i, :reached], correct)
      assert np.isnan(np.asarray(forced.target_nll)[b, i, reached:]).all()


def test_teacher_forced_private_chains_equal_the_rollout_on_any_text():
  """Private chains: inference and training contexts agree, so forcing arbitrary text gives the
  rollout's per-step NLL and the threshold policy's stops replayed on the rollout's <dk> probabilities."""
  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(9), (BATCH, 8), 0, V))
  params = params_for("plain")
  forced = generate.teacher_forced(params, tokens, CONFIG, num_pauses=K, policy="threshold", tau=TAU)
  logits = np.asarray(rollout(params, jnp.asarray(tokens), CONFIG, K), np.float64)  # [B, N, S, V+1]
  for b in range(BATCH):
    for i in range(tokens.shape[1] - 1):
      z = logits[b, i]
      d = np.exp(z[:, V] - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) - z.max(-1))
      if np.min(np.abs(d[:K] - TAU)) < DECISION_MARGIN:
        continue
      stop = next(j for j in range(K + 1) if j == K or d[j] <= TAU)
      assert int(forced.pauses[b, i]) == stop
      nll, _ = _nll_and_correct(z[:stop + 1], tokens[b, i + 1])
      np.testing.assert_allclose(np.asarray(forced.target_nll)[b, i, :stop + 1], nll, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Ragged prompts, stop tokens, top-k / top-p (the sampling CLI's library features).


# gemma_like_stream: windows, GQA and stream positions at once; feedback_layer0: the feedback state of a
# left-padded prefill (the first layer's output at each row's last prompt token).
@pytest.mark.parametrize("variant", ["gemma_like_stream", "feedback_layer0"])
def test_a_ragged_batch_generates_what_each_prompt_generates_alone(variant):
  # Two distinct lengths keep the solo runs to two compiled shapes; rows 0/2 and 1/3 differ in content.
  lengths = [5, 1, 5, 1]
  alone = [generate.generate(params_for(variant), PROMPTS[b:b + 1, :n], CONFIGS[variant],
                             num_tokens=NUM_TOKENS, num_pauses=K, policy="threshold", tau=TAU)
           for b, n in enumerate(lengths)]
  # Left-padded with a token that is not pad-aware anywhere (7), so leaking padding would show.
  padded = np.full((BATCH, PROMPT_LEN), 7, np.int32)
  for b, n in enumerate(lengths):
    padded[b, PROMPT_LEN - n:] = np.asarray(PROMPTS[b, :n])
  together = generate.generate(params_for(variant), padded, CONFIGS[variant], num_tokens=NUM_TOKENS,
                               num_pauses=K, policy="threshold", tau=TAU, prompt_lengths=lengths)
  for b in range(BATCH):
    np.testing.assert_array_equal(together.tokens[b], alone[b].tokens[0])
    np.testing.assert_array_equal(together.pauses[b], alone[b].pauses[0])
    np.testing.assert_allclose(np.exp(together.dk_log_probs[b]), np.exp(alone[b].dk_log_probs[0]),
                               atol=1e-5)


def test_stop_tokens_end_each_sequence_where_it_emits_one():
  free = generated("plain", "threshold")
  stop = int(free.tokens[0, 2])
  stopped = generate.generate(params_for("plain"), PROMPTS, CONFIG, num_tokens=NUM_TOKENS, num_pauses=K,
                              policy="threshold", tau=TAU, stop_tokens=[stop])
  for b in range(BATCH):
    row = np.asarray(free.tokens[b])
    hits = np.nonzero(row == stop)[0]
    length = int(hits[0]) + 1 if hits.size else NUM_TOKENS
    assert int(stopped.lengths[b]) == length
    np.testing.assert_array_equal(stopped.tokens[b, :length], row[:length])
    np.testing.assert_array_equal(stopped.pauses[b, :length], free.pauses[b, :length])
  assert int(stopped.lengths[0]) == 3 and np.asarray(free.lengths).tolist() == [NUM_TOKENS] * BATCH


def test_dk_probs_are_those_of_the_steps_taken():
  gen = generated("plain", "threshold")
  logits = np.asarray(gen.step_logits, np.float64)
  top = logits.max(-1, keepdims=True)
  log_d = logits[..., V] - (np.log(np.exp(logits - top).sum(-1)) + top[..., 0])
  taken = np.arange(K + 1)[None, None, :] <= np.asarray(gen.pauses)[..., None]
  np.testing.assert_allclose(np.asarray(gen.dk_log_probs)[taken], log_d[taken], atol=1e-5)
  assert np.isnan(np.asarray(gen.dk_log_probs)[~taken]).all()


@pytest.mark.parametrize("kwargs", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=3, top_p=1e-6)])
def test_top_k_one_and_a_vanishing_nucleus_are_greedy(kwargs):
  greedy = generated("plain", "threshold")
  sampled = generate.generate(params_for("plain"), PROMPTS, CONFIG, num_tokens=NUM_TOKENS, num_pauses=K,
                              policy="threshold", tau=TAU, temperature=1.5, rng=jax.random.PRNGKey(11),
                              **kwargs)
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  np.testing.assert_array_equal(sampled.pauses, greedy.pauses)


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda k, p: np.isfinite(np.asarray(generate.filter_logits(logits, jnp.asarray(k), jnp.asarray(p))))[0]
  assert kept(2, 1.0).tolist() == [True, False, True, False]
  assert kept(0, 0.5).tolist() == [True, False, False, False]     # 0.5 alone reaches 0.5
  assert kept(0, 0.6).tolist() == [True, False, True, False]      # 0.5 + 0.3 reaches 0.6
  assert kept(0, 0.9).tolist() == [True, False, True, True]       # 0.95 with 0.15
  assert kept(0, 1.0).tolist() == [True, True, True, True]


def test_seeded_sampling_is_reproducible_and_follows_the_models_distribution():
  """Chi-square goodness of fit of 4000 first tokens (policy never, temperature 0.8) against the
  rollout's softmax(a_0 / 0.8), restricted to the top 5 tokens (top_k=5)."""
  params, temperature, rows = params_for("plain"), 0.8, 4000
  prompt = jnp.tile(PROMPTS[:1], (rows, 1))
  run = lambda seed: generate.generate(params, prompt, CONFIG, num_tokens=1, num_pauses=0, policy="never",
                                       temperature=temperature, top_k=5, rng=jax.random.PRNGKey(seed))
  first, again = run(3), run(3)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  assert not np.array_equal(first.tokens, run(4).tokens)
  logits = np.asarray(rollout(params, PROMPTS[:1], CONFIG, 0), np.float64)[0, -1, 0, :V] / temperature
  top5 = np.argsort(-logits)[:5]
  probs = np.zeros(V)
  probs[top5] = np.exp(logits[top5] - logits[top5].max())
  probs /= probs.sum()
  counts = np.bincount(np.asarray(first.tokens[:, 0]), minlength=V)
  assert counts[probs == 0].sum() == 0                       # nothing outside the top 5
  expected = rows * probs[top5]
  chi2 = float(((counts[top5] - expected) ** 2 / expected).sum())
  assert chi2 < 18.5  # chi-square, 4 degrees of freedom: P(chi2 > 18.5) = 0.001
