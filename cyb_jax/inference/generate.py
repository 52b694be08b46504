"""Jitted, batched generation with adaptive pauses (DESIGN.md section 6).

Every loop iteration runs exactly one model query per sequence: either a pause step for the sequence's
current token or step 0 of its next token. So each sequence pauses on its own, and a batch costs as many
iterations as its slowest sequence needs, not (K+1) per token.

Caches (per layer, keys and values; G KV heads):
  real cache `[B, C, G, Dh]`: the real tokens (C = prompt length + generated tokens); with
    `pause_context="stream"` pauses are written here too, as ordinary tokens. The position of every
    entry is kept beside it (`[B, C]`; unwritten entries sit beyond every query), so the causal and
    sliding-window rules of `model.attention` apply to the cache exactly as to a training sequence.
  chain cache `[B, K, G, Dh]`: the current token's pause steps (private chains only); it is simply
    ignored (masked) once the token is emitted, since no later query may see it.
The layers run through `model.run_layers`, the loop every caller of the model shares.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np

from cyb_jax import model as model_lib
from cyb_jax.inference import policies
from cyb_jax.model import attention


@flax.struct.dataclass
class Generation:
  """tokens: int32 `[B, M]` generated tokens; pauses: int32 `[B, M]` pauses taken before each.

  step_logits: float32 `[B, M, S, V+1]` (only with `return_logits`): the logits the model produced at
    each realised (token, step); steps never reached hold NaN.
  num_queries: int32 scalar, model queries (loop iterations) the batch took.
  target_nll, target_correct: float32 / bool `[B, M, S]` (only from `teacher_forced`): -log P(target |
    answer at step j) over the real vocabulary and whether its argmax is the target, at each realised
    (token, step); steps never reached hold NaN / False.
  lengths: int32 `[B]`, tokens each sequence emitted (a stop token included); `tokens[b, lengths[b]:]`
    are not part of its output.
  dk_log_probs: float32 `[B, M, S]`, log of the `<dk>` probability at each step taken for each token
    (NaN for steps not taken).
  """

  tokens: jax.Array
  pauses: jax.Array
  step_logits: Optional[jax.Array]
  num_queries: jax.Array
  target_nll: Optional[jax.Array] = None
  target_correct: Optional[jax.Array] = None
  lengths: Optional[jax.Array] = None
  dk_log_probs: Optional[jax.Array] = None


@flax.struct.dataclass
class _State:
  iteration: jax.Array      # scalar
  emitted: jax.Array        # [B] tokens emitted so far
  step: jax.Array           # [B] current step j of the current token
  query_position: jax.Array  # [B] rotary position of the query just run
  cache_length: jax.Array   # [B] entries written in the real cache
  cache_positions: jax.Array  # [B, C] position of each real-cache entry (UNWRITTEN_POSITION if none)
  current_token: jax.Array  # [B] the real token whose target is being predicted
  logits: jax.Array         # [B, V+1] output of the query just run
  feedback: jax.Array       # [B, D] residual of the query just run that pause feedback reads
  log_survival: jax.Array   # [B] log R_j for the current token
  real_cache: tuple         # (k, v) [L, B, C, G, Dh], stacked on the layer axis
  chain_cache: tuple        # (k, v) [L, B, K, G, Dh], or () with the stream option
  tokens: jax.Array         # [B, M]
  pauses: jax.Array         # [B, M]
  step_logits: jax.Array    # [B, M, S, V+1] or a dummy [B, 1, 1, 1]
  target_nll: jax.Array     # [B, M, S] when teacher-forced, else a dummy [B, 1, 1]
  target_correct: jax.Array  # [B, M, S] when teacher-forced, else a dummy [B, 1, 1]
  stopped: jax.Array        # [B] emitted a stop token
  dk_log_probs: jax.Array   # [B, M, S]


def _write_rows(cache_BCHd: jax.Array, rows_BHd: jax.Array, index_B: jax.Array,
                enabled_B: jax.Array) -> jax.Array:
  """cache[b, index[b]] = rows[b] where enabled[b]; other rows unchanged.

  A one-row scatter per sequence, so a step costs O(row), not O(cache), inside the while loop.
  """
  batch_index = jnp.arange(cache_BCHd.shape[0])
  current_BHd = cache_BCHd[batch_index, index_B]
  new_BHd = jnp.where(enabled_B[:, None, None], rows_BHd.astype(cache_BCHd.dtype), current_BHd)
  return cache_BCHd.at[batch_index, index_B].set(new_BHd)


def _query(params, config: model_lib.ModelConfig, x_BD, position_B, real_cache, cache_positions_BC,
           real_write_index_B, real_write_B, chain_cache, chain_slot_B, chain_write_B, chain_visible_B):
  """Runs one query per sequence through all layers, writing its keys/values where asked.

  cache_positions_BC: positions of the real-cache entries, the query's own entry included when it writes
  one (at real_write_index_B, where real_write_B). chain_visible_B: the query sees chain slots
  [0, chain_visible). Returns the final residual `[B, D]`, the updated caches, and the residual pause
  feedback reads `[B, D]` (`run_layers`).
  """
  positions_B1 = position_B[:, None]
  chain_mask_B1K = None
  if chain_cache:
    num_slots = chain_cache[0].shape[2]
    chain_mask_B1K = (jnp.arange(num_slots)[None, :] < chain_visible_B[:, None])[:, None]

  def attend_layer(spec, q, k, v, layer_input):
    spec = spec._replace(implementation="dense")  # one query per sequence: nothing to block
    (real_k, real_v), chain = layer_input
    real_k = _write_rows(real_k, k[:, 0], real_write_index_B, real_write_B)
    real_v = _write_rows(real_v, v[:, 0], real_write_index_B, real_write_B)
    real = attention.RealKeys(real_k, real_v, cache_positions_BC)
    if not chain:
      return attention.attend(q, positions_B1, real, spec), ((real_k, real_v), ())
    chain_k = _write_rows(chain[0], k[:, 0], chain_slot_B, chain_write_B)
    chain_v = _write_rows(chain[1], v[:, 0], chain_slot_B, chain_write_B)
    chain_keys = attention.ChainKeys(chain_k[:, None], chain_v[:, None], chain_mask_B1K)
    return attention.attend(q, positions_B1, real, spec, chain_keys), ((real_k, real_v), (chain_k, chain_v))

  layer_inputs = (tuple(real_cache), tuple(chain_cache))
  x_B1D, (new_real, new_chain), feedback_B1D = model_lib.run_layers(params, x_BD[:, None], positions_B1,
                                                                     config, attend_layer, layer_inputs)
  return x_B1D[:, 0], new_real, new_chain, feedback_B1D[:, 0]


def filter_logits(logits_BV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Logits `[B, V]` with tokens outside the top-k and the top-p nucleus set to -inf.

  top_k: keep the k largest (0 = all). top_p: keep the smallest set of most likely tokens whose
  probability reaches top_p (Holtzman et al. 2020; the most likely token always stays; 1 = all). Both are
  traced scalars, so changing them does not recompile. Ties at the cut-off are kept together.
  """
  vocab = logits_BV.shape[-1]
  descending_BV = -jnp.sort(-logits_BV, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth_B1 = jnp.take_along_axis(descending_BV, jnp.broadcast_to(k - 1, (logits_BV.shape[0], 1)), axis=-1)
  descending_BV = jnp.where(descending_BV >= kth_B1, descending_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(descending_BV, axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # probability of the more likely tokens
  keep_BV = (before_BV < top_p) & jnp.isfinite(descending_BV)
  keep_BV = keep_BV.at[:, 0].set(True)
  cutoff_B1 = jnp.min(jnp.where(keep_BV, descending_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("config", "num_tokens", "policy", "num_pauses",
                                             "return_logits", "teacher_forced", "on_token"))
def _generate(params, prompt_BT, rng, tau, q, temperature, forced_BM, prompt_lengths_B, stop_ids, top_k,
              top_p, *, config, num_tokens, policy, num_pauses, return_logits, teacher_forced=False,
              on_token=None):
  batch, prompt_len = prompt_BT.shape
  stream = config.pause_context == "stream"
  vocab = config.vocab_size
  per_token_entries = num_pauses + 1 if stream else 1
  cache_len = prompt_len + num_tokens * per_token_entries
  max_iterations = num_tokens * (num_pauses + 1) + 1

  # Prefill: a plain causal pass over the prompt gives the real cache and the first step-0 output.
  # Ragged prompts are left-padded: each sequence's tokens take positions 0..length-1 at the right end,
  # and padding sits at a position beyond every query, so no real query (now or later) ever sees it.
  positions_BT = jnp.arange(prompt_len)[None, :] - (prompt_len - prompt_lengths_B)[:, None]
  positions_BT = jnp.where(positions_BT >= 0, positions_BT, attention.UNWRITTEN_POSITION)
  hidden_BTD, prompt_kv, feedback_BTD = model_lib.causal_forward(
      params, model_lib.embed_tokens(params, prompt_BT, config), positions_BT, config)
  pad = [(0, 0), (0, cache_len - prompt_len), (0, 0), (0, 0)]
  real_cache = tuple(jnp.pad(kv, [(0, 0)] + pad) for kv in prompt_kv)
  cache_positions_BC = jnp.pad(positions_BT.astype(jnp.int32), [(0, 0), (0, cache_len - prompt_len)],
                               constant_values=attention.UNWRITTEN_POSITION)
  chain_shape = (batch, max(num_pauses, 1), config.kv_heads, config.head_size)
  chain_shape = (config.num_layers,) + chain_shape
  chain_cache = () if stream else (jnp.zeros(chain_shape, prompt_kv[0].dtype),
                                   jnp.zeros(chain_shape, prompt_kv[0].dtype))
  last_hidden_BD = hidden_BTD[:, -1]
  logits_shape = (batch, num_tokens, num_pauses + 1, vocab + 1) if return_logits else (batch, 1, 1, 1)
  forced_shape = (batch, num_tokens, num_pauses + 1) if teacher_forced else (batch, 1, 1)
  zeros_B = jnp.zeros((batch,), jnp.int32)
  state = _State(
      iteration=jnp.zeros((), jnp.int32), emitted=zeros_B, step=zeros_B,
      query_position=(prompt_lengths_B - 1).astype(jnp.int32),
      cache_length=jnp.full((batch,), prompt_len, jnp.int32), cache_positions=cache_positions_BC,
      current_token=prompt_BT[:, -1],
      logits=model_lib.output_logits(params, last_hidden_BD, config), feedback=feedback_BTD[:, -1],
      log_survival=jnp.zeros((batch,), jnp.float32), real_cache=real_cache, chain_cache=chain_cache,
      tokens=jnp.zeros((batch, num_tokens), jnp.int32), pauses=jnp.zeros((batch, num_tokens), jnp.int32),
      step_logits=jnp.full(logits_shape, jnp.nan, jnp.float32),
      target_nll=jnp.full(forced_shape, jnp.nan, jnp.float32),
      target_correct=jnp.zeros(forced_shape, bool),
      stopped=jnp.zeros((batch,), bool),
      dk_log_probs=jnp.full((batch, num_tokens, num_pauses + 1), jnp.nan, jnp.float32))

  def not_finished(state: _State):
    return jnp.any((state.emitted < num_tokens) & ~state.stopped) & (state.iteration < max_iterations)

  def iterate(state: _State) -> _State:
    active_B = (state.emitted < num_tokens) & ~state.stopped
    key = jax.random.fold_in(rng, state.iteration)
    pause_key, token_key = jax.random.split(key)
    log_d_B = policies.log_dk(state.logits)
    pause_B = policies.pause_decision(policy, log_d_B, state.step, num_pauses, tau=tau, q=q,
                                      log_survival=state.log_survival, rng=pause_key) & active_B
    answer_B = active_B & ~pause_B
    slot_B = jnp.minimum(state.emitted, num_tokens - 1)
    batch_index = jnp.arange(batch)

    where_taken = (batch_index, slot_B, state.step)
    dk_log_probs = state.dk_log_probs.at[where_taken].set(
        jnp.where(active_B, log_d_B, state.dk_log_probs[where_taken]))
    step_logits = state.step_logits
    if return_logits:
      recorded = step_logits[batch_index, slot_B, state.step]
      step_logits = step_logits.at[batch_index, slot_B, state.step].set(
          jnp.where(active_B[:, None], state.logits, recorded))

    # The emitted token is drawn from a_j: the real-vocabulary part of the current step's output.
    real_logits = state.logits[:, :vocab]
    greedy = jnp.argmax(real_logits, axis=-1)
    target_nll, target_correct = state.target_nll, state.target_correct
    if teacher_forced:
      # The token is the target whatever the model says; record how well step j predicted it.
      new_token_B = forced_BM[batch_index, slot_B].astype(jnp.int32)
      nll_B = (jax.nn.logsumexp(real_logits.astype(jnp.float32), axis=-1)
               - jnp.take_along_axis(real_logits, new_token_B[:, None], axis=-1)[:, 0])
      where = (batch_index, slot_B, state.step)
      target_nll = target_nll.at[where].set(jnp.where(active_B, nll_B, target_nll[where]))
      target_correct = target_correct.at[where].set(
          jnp.where(active_B, greedy == new_token_B, target_correct[where]))
    else:
      filtered = filter_logits(real_logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6), top_k, top_p)
      sampled = jax.random.categorical(token_key, filtered)
      new_token_B = jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)
    stopped_B = state.stopped | (answer_B & jnp.any(new_token_B[:, None] == stop_ids[None, :], axis=-1))
    if on_token is not None:
      jax.experimental.io_callback(on_token, None, new_token_B[0], state.step[0], answer_B[0], ordered=True)
    tokens = state.tokens.at[batch_index, slot_B].set(
        jnp.where(answer_B, new_token_B, state.tokens[batch_index, slot_B]))
    pauses = state.pauses.at[batch_index, slot_B].set(
        jnp.where(answer_B, state.step, state.pauses[batch_index, slot_B]))
    emitted = state.emitted + answer_B

    # Next query: a pause step for pausing sequences, step 0 of the new token for answering ones.
    next_step_B = jnp.where(pause_B, state.step + 1, 0)
    current_token_B = jnp.where(answer_B, new_token_B, state.current_token)
    x_BD = model_lib.embed_tokens(params, current_token_B, config)
    if num_pauses > 0:  # a plain LM (max_pauses = 0) has no pause parameters at all
      pause_x_BD = model_lib.pause_inputs(params, current_token_B, jnp.maximum(next_step_B, 1), config,
                                          feedback_hidden=state.feedback)
      x_BD = jnp.where(pause_B[:, None], pause_x_BD, x_BD)
    writes_real_B = answer_B | (pause_B if stream else jnp.zeros_like(pause_B))
    if stream:
      # Pauses are tokens of the stream: every query takes the next position and a cache entry.
      position_B = state.query_position + 1
    else:
      # A pause shares its token's position; a new token takes the next one.
      position_B = state.query_position + answer_B
    # The query's own real-cache entry (a new token, or a stream pause) is visible to itself.
    cache_positions_BC = state.cache_positions.at[batch_index, state.cache_length].set(
        jnp.where(writes_real_B, position_B, state.cache_positions[batch_index, state.cache_length]))
    hidden_BD, real_cache, chain_cache, feedback_BD = _query(
        params, config, x_BD, position_B, state.real_cache, cache_positions_BC,
        real_write_index_B=state.cache_length, real_write_B=writes_real_B,
        chain_cache=state.chain_cache, chain_slot_B=state.step, chain_write_B=pause_B,
        chain_visible_B=jnp.where(pause_B, next_step_B, 0))

    return _State(
        iteration=state.iteration + 1, emitted=emitted,
        step=jnp.where(active_B, next_step_B, state.step),
        query_position=jnp.where(active_B, position_B, state.query_position),
        cache_length=state.cache_length + writes_real_B, cache_positions=cache_positions_BC,
        current_token=current_token_B,
        logits=jnp.where(active_B[:, None], model_lib.output_logits(params, hidden_BD, config),
                         state.logits),
        feedback=jnp.where(active_B[:, None], feedback_BD, state.feedback),
        log_survival=jnp.where(pause_B, state.log_survival + log_d_B, 0.0),
        real_cache=real_cache, chain_cache=chain_cache, tokens=tokens, pauses=pauses,
        step_logits=step_logits, target_nll=target_nll, target_correct=target_correct, stopped=stopped_B,
        dk_log_probs=dk_log_probs)

  final = jax.lax.while_loop(not_finished, iterate, state)
  return Generation(tokens=final.tokens, pauses=final.pauses,
                    step_logits=final.step_logits if return_logits else None,
                    num_queries=final.iteration,
                    target_nll=final.target_nll if teacher_forced else None,
                    target_correct=final.target_correct if teacher_forced else None,
                    lengths=final.emitted, dk_log_probs=final.dk_log_probs)


def _check_pause_arguments(num_pauses, config: model_lib.ModelConfig, policy: str, tau, q) -> None:
  """ValueError for a K that is not an integer in [0, max_pauses], or a bad policy or parameter."""
  if not isinstance(num_pauses, (int, np.integer)) or isinstance(num_pauses, bool):
    raise ValueError(f"num_pauses must be an integer, got {num_pauses!r}")
  policies.check_policy(policy, tau=tau, q=q)
  if not 0 <= num_pauses <= config.max_pauses:
    raise ValueError(f"num_pauses must lie in [0, model.max_pauses = {config.max_pauses}], "
                     f"got {num_pauses}")


def left_pad(prompts: Sequence[Sequence[int]]) -> np.ndarray:
  """Ragged prompts (token ids) as the int32 `[B, T]` array `generate` takes with `prompt_lengths`: each
  right-aligned, T the longest length, zeros before the shorter ones."""
  width = max(len(ids) for ids in prompts)
  padded = np.zeros((len(prompts), width), np.int32)
  for row, ids in enumerate(prompts):
    padded[row, width - len(ids):] = ids
  return padded


def check_sampling_arguments(temperature, top_k, top_p) -> None:
  """ValueError (one line) for a temperature, top-k or top-p out of range (NaN included)."""
  if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
  if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
    raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
  if not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must lie in (0, 1] (1 = off), got {top_p!r}")


def generate(params, prompt: jax.Array, config: model_lib.ModelConfig, *, num_tokens: int,
             num_pauses: Optional[int] = None, policy: str = "threshold", tau: float = 0.5,
             q: float = 0.5, temperature: float = 0.0, rng: Optional[jax.Array] = None,
             return_logits: bool = False, prompt_lengths: Optional[Sequence[int]] = None,
             stop_tokens: Sequence[int] = (), top_k: int = 0, top_p: float = 1.0,
             on_token: Optional[Callable[[Any, Any, Any], None]] = None) -> Generation:
  """Generates up to `num_tokens` tokens after each prompt, pausing as `policy` decides.

  prompt: int `[B, T]`, T >= 1. prompt_lengths: optional `[B]` lengths of ragged prompts, each
  left-padded to T (its tokens are prompt[b, T - length:]); the tokens are then those of generating each
  prompt alone. num_pauses: K, at most `config.max_pauses` (default: `config.max_pauses`).
  temperature 0 emits the argmax of a_j; otherwise samples from a_j / temperature restricted to the
  `top_k` most likely tokens (0 = all) and the `top_p` nucleus (1 = all). stop_tokens: ids that end a
  sequence once emitted (the stop token is kept; see `Generation.lengths`). on_token: optional
  `f(token, pauses, emitted)` called on the host as sequence 0 advances (streaming at batch 1).
  The compiled function is cached per (config, shapes, policy, K); tau, q, temperature, top-k, top-p,
  stop tokens and prompt lengths are traced, so changing them does not recompile.
  Raises ValueError for an argument out of range (NaN included) or a prompt too long for `max_len`.
  """
  num_pauses = config.max_pauses if num_pauses is None else num_pauses
  _check_pause_arguments(num_pauses, config, policy, tau, q)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must have shape [B, T] with T >= 1, got {prompt.shape}")
  if not isinstance(num_tokens, (int, np.integer)) or isinstance(num_tokens, bool) or num_tokens < 1:
    raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}")
  if prompt_lengths is None:
    prompt_lengths = np.full((prompt.shape[0],), prompt.shape[1], np.int32)
  prompt_lengths = np.asarray(prompt_lengths)
  if (prompt_lengths.shape != (prompt.shape[0],) or not np.issubdtype(prompt_lengths.dtype, np.integer)
      or prompt_lengths.min() < 1 or prompt_lengths.max() > prompt.shape[1]):
    raise ValueError(f"prompt_lengths must be [B] integers in [1, T = {prompt.shape[1]}], got "
                     f"{prompt_lengths.tolist()}")
  per_token = num_pauses + 1 if config.pause_context == "stream" else 1
  if int(prompt_lengths.max()) + num_tokens * per_token > config.max_len:
    raise ValueError(f"prompt length {int(prompt_lengths.max())} + {num_tokens} generated tokens "
                     f"(x{per_token} cache entries each) exceeds model.max_len = {config.max_len}")
  check_sampling_arguments(temperature, top_k, top_p)
  stop_ids = np.asarray(list(stop_tokens) or [-1], np.int64)
  if stop_ids.ndim != 1 or (stop_ids.size and stop_tokens and
                            (stop_ids.min() < 0 or stop_ids.max() >= config.vocab_size)):
    raise ValueError(f"stop_tokens must be token ids in [0, {config.vocab_size}), got {list(stop_tokens)}")
  if rng is None:
    rng = jax.random.PRNGKey(0)
  return _generate(params, jnp.asarray(prompt, jnp.int32), rng, jnp.asarray(tau, jnp.float32),
                   jnp.asarray(q, jnp.float32), jnp.asarray(temperature, jnp.float32),
                   jnp.zeros((prompt.shape[0], 1), jnp.int32), jnp.asarray(prompt_lengths, jnp.int32),
                   jnp.asarray(stop_ids, jnp.int32), jnp.asarray(top_k, jnp.int32),
                   jnp.asarray(top_p, jnp.float32), config=config, num_tokens=num_tokens, policy=policy,
                   num_pauses=num_pauses, return_logits=return_logits, on_token=on_token)


def teacher_forced(params, tokens_BN: jax.Array, config: model_lib.ModelConfig, *, num_pauses: int,
                   policy: str = "threshold", tau: float = 0.5, q: float = 0.5,
                   rng: Optional[jax.Array] = None) -> Generation:
  """Inference on given text: pauses where `policy` decides, but every emitted token is the text's own.

  tokens_BN: int `[B, N]`, N >= 2; the first token is the prompt, and slot i of the result (i < N - 1)
  is the prediction of tokens_BN[:, i + 1] in the context inference builds: with
  `pause_context="stream"` the pauses enter the stream only after `<dk>` (DESIGN.md section 3), unlike
  the training rollout, which puts K after every token. Returns a `Generation` whose `pauses`,
  `target_nll` and `target_correct` (`[B, N-1, ...]`) are what eval reports in the inference context.
  Raises ValueError for a bad policy or argument, as `generate`.
  """
  if tokens_BN.ndim != 2 or tokens_BN.shape[1] < 2:
    raise ValueError(f"tokens must have shape [B, N] with N >= 2, got {tokens_BN.shape}")
  _check_pause_arguments(num_pauses, config, policy, tau, q)
  num_tokens = tokens_BN.shape[1] - 1
  per_token = num_pauses + 1 if config.pause_context == "stream" else 1
  # The cache holds up to 1 + (N-1)(K+1) entries of a stream; max_len bounds nothing else at inference.
  config = dataclasses.replace(config, max_len=max(config.max_len, 1 + num_tokens * per_token))
  tokens_BN = jnp.asarray(tokens_BN, jnp.int32)
  batch = tokens_BN.shape[0]
  return _generate(params, tokens_BN[:, :1], jax.random.PRNGKey(0) if rng is None else rng,
                   jnp.asarray(tau, jnp.float32), jnp.asarray(q, jnp.float32), jnp.zeros((), jnp.float32),
                   tokens_BN[:, 1:], jnp.ones((batch,), jnp.int32), jnp.full((1,), -1, jnp.int32),
                   jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32), config=config, num_tokens=num_tokens, policy=policy,
                   num_pauses=num_pauses, return_logits=False, teacher_forced=True)
