"""The pause rollout (DESIGN.md section 3): parameters, step 0, pause steps, and their readouts.

Flax Linen is used functionally: `init` returns a plain params pytree and every function here takes it
as its first argument; caches and pause states are passed explicitly. Shape letters (DESIGN.md section 2)
plus: P positions that get pause chains (all N by default), S = K+1 steps, Dh features per head,
G KV heads, T key length.

Parameters:
  embed [V, D]; blocks: the `transformer.Block` params of every layer stacked on a leading [L] axis; final_norm; head [D, V] (real
  tokens; absent with `tie_embeddings`, where the head is the embedding table); and, when `max_pauses`
  > 0: dk_head (kernel [D], bias []), pause (embedding [D], step_embedding [Kmax, D]), and with
  `pause_feedback` a zero-initialised feedback projection [D, D].
A model with `max_pauses` = 0 is a plain LM: it has no `<dk>` parameters and its `<dk>` logit is -inf.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import losses
from cyb_jax.model import attention
from cyb_jax.model import transformer
from cyb_jax.model.config import ModelConfig
from cyb_jax.model.recompute import recompute_in_backward
from cyb_jax.model.transformer import embed_tokens, output_logit_parts, output_logits, run_layers

# The parameters the output head and the `<dk>` logit read (output_logit_parts), by the model's options.
HEAD_PARAMS = ("embed", "head", "final_norm", "dk_head")

Params = Any


# ----------------------------------------------------------------------------------------------------------
# Parameters.


def plain_keys(config: ModelConfig) -> tuple[str, ...]:
  """Top-level parameter names of the plain LM (what a no-pause checkpoint holds)."""
  return ("embed", "blocks", "final_norm") + (() if config.tie_embeddings else ("head",))


def init(config: ModelConfig, rng: jax.Array) -> Params:
  """Fresh parameters (float32) for `config`."""
  keys = jax.random.split(rng, config.num_layers + 6)
  width, vocab = config.width, config.vocab_size
  params = {
      # Unit-variance embeddings: the pre-norm blocks see normalised inputs whatever the scale.
      "embed": jax.random.normal(keys[0], (vocab, width), jnp.float32),
      "blocks": transformer.stack_blocks([transformer.init_block(config, layer, keys[1 + layer])
                                          for layer in range(config.num_layers)]),
      "final_norm": transformer.init_final_norm(config, keys[0]),
  }
  if not config.tie_embeddings:
    params["head"] = jax.random.normal(keys[-1], (width, vocab), jnp.float32) * width ** -0.5
  if config.max_pauses > 0:
    params.update(_pause_params(config, keys[-2]))
  return params


def _pause_params(config: ModelConfig, rng: jax.Array, input_rms: float = 1.0,
                  dk_bias: Optional[float] = None) -> Params:
  """The parameters a pause model adds to a plain LM.

  input_rms: typical size (root mean square) of a token's input embedding, so the pause embeddings start
  at the scale of the inputs they are added to (1 for a fresh model; a pretrained one's is measured).
  dk_bias: the `<dk>` logit starts input-independent, at this bias. Default: the bias that gives probability
  dk_init_prob against the real-vocabulary log-normaliser of a fresh head (real logits near 0, so u is
  about log V); `calibrate_dk_bias` measures it for a trained model.
  """
  width = config.width
  pause_key, step_key = jax.random.split(rng)
  if dk_bias is None:
    p = config.dk_init_prob
    dk_bias = np.log(p / (1.0 - p)) + np.log(config.vocab_size)
  extra = {
      "dk_head": {"kernel": jnp.zeros((width,), jnp.float32),
                  "bias": jnp.asarray(dk_bias, jnp.float32).reshape(())},
      "pause": {"embedding": jax.random.normal(pause_key, (width,), jnp.float32) * input_rms,
                "step_embedding": jax.random.normal(step_key, (config.max_pauses, width),
                                                    jnp.float32) * (0.1 * input_rms)},
  }
  if config.pause_feedback:
    # Zero-initialised so an extended no-pause model starts exactly as without feedback.
    extra["feedback"] = {"kernel": jnp.zeros((width, width), jnp.float32)}
  return extra


def input_embedding_rms(params: Params, config: ModelConfig) -> float:
  """Root mean square of the model's input embeddings (its embedding scale included), over the table."""
  inputs = embed_tokens(params, jnp.arange(config.vocab_size), config)
  return float(jnp.sqrt(jnp.mean(inputs * inputs)))


def extend_params(no_pause_params: Params, config: ModelConfig, rng: jax.Array, *,
                  dk_bias: Optional[float] = None) -> Params:
  """Adds fresh `<dk>` and pause parameters to a plain-LM (`max_pauses` = 0) params pytree.

  The shared parameters are taken over unchanged, so step-0 real-token logits are unchanged. The pause
  embeddings start at the measured scale of the model's input embeddings. `dk_bias` (from
  `calibrate_dk_bias` on the model and its data) makes the initial `<dk>` probability
  `config.dk_init_prob` for a trained model too; the default is right for a fresh head only. Raises
  ValueError naming the first parameter whose shape differs from what `config` expects.
  """
  if config.max_pauses < 1:
    raise ValueError("extend_params needs a config with model.max_pauses >= 1")
  if dk_bias is not None and not np.isfinite(np.asarray(dk_bias, np.float64)).all():
    raise ValueError(f"dk_bias must be finite, got {dk_bias!r}")
  shared_keys = set(plain_keys(config))
  missing = sorted(shared_keys - set(no_pause_params))
  if missing:
    raise ValueError(f"the no-pause params lack {missing}")
  already = sorted(set(no_pause_params) - shared_keys)
  if already:
    raise ValueError(f"the params already hold {already}: they are not a no-pause (max_pauses=0) model "
                     "of this config")
  expected_shapes = jax.eval_shape(functools.partial(init, config), rng)
  expected = jax.tree_util.tree_flatten_with_path({k: expected_shapes[k] for k in shared_keys})[0]
  given = jax.tree_util.tree_flatten_with_path({k: no_pause_params[k] for k in shared_keys})[0]
  given_layers = jax.tree.leaves(no_pause_params["blocks"])[0].shape[0]
  if given_layers != config.num_layers:
    raise ValueError(f"the no-pause params have {given_layers} layers, config expects model.num_layers = "
                     f"{config.num_layers}")
  if len(expected) != len(given):
    raise ValueError(f"the no-pause params have {len(given)} shared arrays, config expects "
                     f"{len(expected)} (a different model.num_layers or block option?)")
  for (path, want), (got_path, got) in zip(expected, given):
    if jax.tree_util.keystr(path) != jax.tree_util.keystr(got_path):
      raise ValueError(f"no-pause parameter {jax.tree_util.keystr(got_path)} found where config expects "
                       f"{jax.tree_util.keystr(path)} (a different block option?)")
    if jnp.shape(want) != jnp.shape(got):
      raise ValueError(f"no-pause parameter {jax.tree_util.keystr(path)} has shape {jnp.shape(got)}, "
                       f"config expects {jnp.shape(want)} (vocab_size/width/heads mismatch?)")
  extra = _pause_params(config, jax.random.split(rng, config.num_layers + 6)[-2],
                        input_rms=input_embedding_rms(no_pause_params, config), dk_bias=dk_bias)
  return {**{k: no_pause_params[k] for k in shared_keys}, **extra}


def calibrate_dk_bias(params: Params, tokens_BN: jax.Array, config: ModelConfig,
                      mask_BN: Optional[jax.Array] = None) -> jax.Array:
  """The `<dk>` bias at which the mean step-0 `<dk>` probability over a batch is `config.dk_init_prob`.

  For `extend_params(dk_bias=...)`. With a fresh (zero) `<dk>` kernel, d = sigmoid(b - u) where u is the
  real-vocabulary log-normaliser logsumexp(z[0..V-1]) of the plain LM `params`; a trained model's u is far
  from the log V of a fresh head and varies by token, so b is solved for (bisection, 60 halvings) such
  that the mean of sigmoid(b - u) over the batch's tokens (those in `mask_BN`, default all) is
  dk_init_prob. Runs jitted on (possibly sharded, multi-host) arrays; returns a float32 scalar.
  """
  plain = {k: params[k] for k in plain_keys(config)}
  if mask_BN is None:
    mask_BN = jnp.ones(tokens_BN.shape, bool)
  return _calibrate_dk_bias(plain, tokens_BN, jnp.asarray(mask_BN, bool),
                            config=dataclasses.replace(config, max_pauses=0),
                            target=float(config.dk_init_prob))


@functools.partial(jax.jit, static_argnames=("config", "target"))
def _calibrate_dk_bias(plain, tokens_BN, mask_BN, *, config, target):
  # Each position's log-normaliser only, never the [B, N, V] logits (large vocabularies).
  lse_BN = rollout_readout(
      plain, tokens_BN, config, 0, None,
      lambda hidden, step: jax.nn.logsumexp(output_logits(plain, hidden, config)[..., :config.vocab_size],
                                            axis=-1))[:, :, 0]
  mask_BN = jnp.where(jnp.any(mask_BN), mask_BN, True)  # no loss token at all: use every token
  weights_BN = mask_BN.astype(jnp.float32)
  count = jnp.maximum(weights_BN.sum(), 1.0)
  offset = np.log(target / (1.0 - target))
  low = jnp.min(jnp.where(mask_BN, lse_BN, jnp.inf)) + offset
  high = jnp.max(jnp.where(mask_BN, lse_BN, -jnp.inf)) + offset

  def halve(_, bounds):  # the mean of sigmoid(b - u) rises monotonically with b
    low, high = bounds
    middle = 0.5 * (low + high)
    mean = jnp.sum(weights_BN * jax.nn.sigmoid(middle - lse_BN)) / count
    return jnp.where(mean < target, middle, low), jnp.where(mean < target, high, middle)

  low, high = jax.lax.fori_loop(0, 60, halve, (low, high))
  return 0.5 * (low + high)


# ----------------------------------------------------------------------------------------------------------
# Pieces of the forward pass.


def pause_inputs(params: Params, tokens: jax.Array, step: jax.Array, config: ModelConfig,
                 feedback_hidden: Optional[jax.Array] = None) -> jax.Array:
  """Input embedding of pause step `step` (1-based, scalar or `[...]`) for real tokens `[...]`, `[..., D]`.

  token_embedding[x] (if `pause_reads_token`; as the model's input embedding, scale included)
  + pause_embedding + step_embedding[step], plus, with feedback, the projected normalised hidden state
  `[..., D]` of the previous step: its output of layer `pause_feedback_layer` (by default the last, the
  final hidden state), normalised by the final norm.
  """
  step = jnp.asarray(step)
  if step.ndim == 0:
    # One row for every token: a slice, whose gradient is one row too (not a scatter over all tokens).
    step_embedding = jax.lax.dynamic_index_in_dim(params["pause"]["step_embedding"], step - 1, keepdims=False)
  else:
    step_embedding = jnp.take(params["pause"]["step_embedding"], jnp.broadcast_to(step, tokens.shape) - 1,
                              axis=0)
  x = (jnp.broadcast_to(params["pause"]["embedding"], tokens.shape + (config.width,)) +
       jnp.broadcast_to(step_embedding, tokens.shape + (config.width,)))
  if config.pause_reads_token:
    x = x + embed_tokens(params, tokens, config)
  if config.pause_feedback:
    normed = transformer.normalise_final(params, feedback_hidden, config)
    x = x + normed @ params["feedback"]["kernel"]
  return x


def causal_forward(params: Params, x_BTD: jax.Array, positions_BT: jax.Array, config: ModelConfig,
                   segments_BT: Optional[jax.Array] = None):
  """A plain causal transformer over input embeddings at `positions_BT`, causal by position.

  Input t sees inputs whose position is <= its own (and within the layer's window, and of its own
  segment when `segments_BT` says which document each input belongs to), so positions must increase
  along the sequence. Returns the final residual `[B, T, D]`, every layer's keys and values (a pair of
  `[L, B, T, G, Dh]`), and the residual pause feedback reads `[B, T, D]` (`run_layers`).
  """
  def attend_layer(spec, q, k, v, _):
    real = attention.RealKeys(k, v, positions_BT, segments_BT)
    return attention.attend(q, positions_BT, real, spec, q_segments_BQ=segments_BT), (k, v)

  return run_layers(params, x_BTD, positions_BT, config, attend_layer)


def pause_step(params: Params, x_BPD: jax.Array, positions_BP: jax.Array, real_kv, real_positions_BT,
               chain_kv, config: ModelConfig,
               segments: Optional[tuple[jax.Array, jax.Array]] = None):
  """One pause step for P queries: each attends to real keys, its chain's earlier slots and itself.

  real_kv: (k, v) `[L, B, T, G, Dh]`, the step-0 keys/values, reused as they are, at positions
  real_positions_BT (a query sees those at or before its own position, within the layer's window).
  chain_kv: a list of the earlier pause steps' (k, v) `[L, B, P, G, Dh]` (empty at step 1); the
  chain is kept as separate slots, never as one buffer rewritten each step, so the backward pass keeps
  each slot once rather than a copy of the whole chain per step.
  segments: optional (query segments `[B, P]`, real-key segments `[B, T]`) of packed documents.
  Returns the final residual `[B, P, D]`, chain_kv with this step's keys/values appended, and the
  residual the next pause step reads through feedback `[B, P, D]` (`run_layers`).
  """
  q_segments_BP, real_segments_BT = segments if segments is not None else (None, None)
  num_slots = len(chain_kv) + 1
  chain_mask_BPC = jnp.ones(x_BPD.shape[:2] + (num_slots,), bool)

  def attend_layer(spec, q, k, v, layer_input):
    (real_k, real_v), slots = layer_input
    slots = list(slots) + [(k.astype(config.compute_dtype), v.astype(config.compute_dtype))]
    chain = attention.ChainKeys([slot_k for slot_k, _ in slots], [slot_v for _, slot_v in slots],
                                chain_mask_BPC)
    real = attention.RealKeys(real_k, real_v, real_positions_BT, real_segments_BT)
    return attention.attend(q, positions_BP, real, spec, chain, q_segments_BP), slots

  return run_layers(params, x_BPD, positions_BP, config, attend_layer, (tuple(real_kv), list(chain_kv)))


# ----------------------------------------------------------------------------------------------------------
# The rollout.


def _check_rollout_args(tokens: jax.Array, config: ModelConfig, num_pauses: int) -> None:
  if not isinstance(num_pauses, (int, np.integer)) or num_pauses < 0:
    raise ValueError(f"num_pauses must be a non-negative integer, got {num_pauses!r}")
  if num_pauses > config.max_pauses:
    raise ValueError(f"num_pauses = {num_pauses} exceeds model.max_pauses = {config.max_pauses}")
  if tokens.ndim != 2:
    raise ValueError(f"tokens must have shape [B, N], got {tokens.shape}")
  if tokens.shape[1] > config.max_len:
    raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.max_len = {config.max_len}")


def rollout_readout(params: Params, tokens_BN: jax.Array, config: ModelConfig, num_pauses: int,
                    positions_BP: Optional[jax.Array], readout: Callable[[jax.Array, int], Any],
                    segment_ids: Optional[jax.Array] = None):
  """Runs steps 0..K and applies `readout(hidden_BPD, step)` to each step's final residual `[B, P, D]`.

  The general form of `rollout` and `rollout_stats`: a readout can reduce each step's output to what the
  caller needs (logits, loss statistics, correctness) without keeping every step's logits.
  positions_BP: optional positions that get pause chains (None = all).
  segment_ids: optional int `[B, N]`, the document of each token in rows that pack several (attention
  never crosses documents; a pause sees its own token's document).
  Returns the readouts stacked on a new axis 2 (`[B, P, S, ...]` for array leaves).
  """
  _check_rollout_args(tokens_BN, config, num_pauses)
  if segment_ids is not None and segment_ids.shape != tokens_BN.shape:
    raise ValueError(f"segment_ids shape {segment_ids.shape} differs from tokens shape {tokens_BN.shape}")
  batch, seq_len = tokens_BN.shape
  real_positions_BN = jnp.broadcast_to(jnp.arange(seq_len), (batch, seq_len))
  if positions_BP is None:
    positions_BP = real_positions_BN
  if config.pause_context == "stream":
    return _stream_rollout(params, tokens_BN, config, num_pauses, positions_BP, readout, segment_ids)

  hidden_BND, real_kv, feedback_BND = causal_forward(params, embed_tokens(params, tokens_BN, config),
                                                     real_positions_BN, config, segment_ids)
  # mode="clip": positions are in range by construction (the data pipeline's loss positions), and the
  # gradient of the default fill mode is a much slower scatter on CPU (benchmarks/attention.py, sparse loss).
  hidden_BPD = jnp.take_along_axis(hidden_BND, positions_BP[..., None], axis=1, mode="clip")
  step0 = jax.tree.map(lambda x: x[:, :, None], readout(hidden_BPD, 0))
  if num_pauses == 0:
    return step0

  tokens_BP = jnp.take_along_axis(tokens_BN, positions_BP, axis=1)
  segments = None
  if segment_ids is not None:
    segments = (jnp.take_along_axis(segment_ids, positions_BP, axis=1), segment_ids)
  chain_kv = []
  # A Python loop, not a scan: a scan would keep its whole carry (every layer's chain) for each step in
  # the backward pass; K is small, and each step adds one copy of the layer scan's body (one unit of
  # layers, not L) to the program.
  steps_out = [step0]
  feedback_BPD = None
  if config.pause_feedback:
    feedback_BPD = (hidden_BPD if feedback_BND is hidden_BND else
                    jnp.take_along_axis(feedback_BND, positions_BP[..., None], axis=1, mode="clip"))
  for step in range(1, num_pauses + 1):
    x_BPD = pause_inputs(params, tokens_BP, jnp.asarray(step), config, feedback_hidden=feedback_BPD)
    hidden_BPD, chain_kv, feedback_BPD = pause_step(params, x_BPD, positions_BP, real_kv, real_positions_BN,
                                                    chain_kv, config, segments)
    steps_out.append(jax.tree.map(lambda x: x[:, :, None], readout(hidden_BPD, step)))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=2), *steps_out)


def _stream_rollout(params, tokens_BN, config, num_pauses, positions_BP, readout, segment_ids=None):
  """`pause_context="stream"`: K pause slots after every real token, in one causal pass of N(K+1)."""
  batch, seq_len = tokens_BN.shape
  num_steps = num_pauses + 1
  slots = [embed_tokens(params, tokens_BN, config)]
  for step in range(1, num_steps):
    slots.append(pause_inputs(params, tokens_BN, jnp.asarray(step), config))
  x_BNSD = jnp.stack(slots, axis=2)
  x_BTD = x_BNSD.reshape(batch, seq_len * num_steps, config.width)
  stream_positions_BT = jnp.broadcast_to(jnp.arange(seq_len * num_steps), (batch, seq_len * num_steps))
  stream_segments_BT = None if segment_ids is None else jnp.repeat(segment_ids, num_steps, axis=1)
  hidden_BTD, _, _ = causal_forward(params, x_BTD, stream_positions_BT, config, stream_segments_BT)
  hidden_BNSD = hidden_BTD.reshape(batch, seq_len, num_steps, config.width)
  hidden_BPSD = jnp.take_along_axis(hidden_BNSD, positions_BP[..., None, None], axis=1)
  per_step = [readout(hidden_BPSD[:, :, step], step) for step in range(num_steps)]
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=2), *per_step)


def rollout(params: Params, tokens: jax.Array, config: ModelConfig, num_pauses: int,
            segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Logits `[B, N, num_pauses+1, V+1]` (float32, `<dk>` last) of every step at every position.

  Holds all steps' logits: meant for tests and small vocabularies; training uses `rollout_stats`.
  segment_ids: optional `[B, N]` documents of packed rows (see `rollout_readout`).
  """
  return rollout_readout(params, tokens, config, num_pauses, None,
                         lambda hidden, step: output_logits(params, hidden, config), segment_ids)


def rollout_stats(params: Params, tokens: jax.Array, targets: jax.Array, config: ModelConfig,
                  num_pauses: int, mask: Optional[jax.Array] = None,
                  positions: Optional[jax.Array] = None,
                  segment_ids: Optional[jax.Array] = None) -> losses.StepStats:
  """`StepStats` `[B, P, num_pauses+1]` for the objectives, one step's logits at a time.

  tokens, targets: int `[B, N]`; mask: bool `[B, N]` (tokens whose target carries loss).
  positions: optional int `[B, P]` of the positions that get pause chains (chains are private, so this
  is exact); by default all N. targets and mask are read at those positions.
  segment_ids: optional `[B, N]` documents of packed rows (attention never crosses them).
  Each step's logits are reduced to three numbers right away and recomputed in the backward pass, so no
  more than one step's `[B, P, V+1]` logits exist at a time.
  """
  _check_rollout_args(tokens, config, num_pauses)
  if targets.shape != tokens.shape:
    raise ValueError(f"targets shape {targets.shape} differs from tokens shape {tokens.shape}")
  if mask is not None and mask.shape != tokens.shape:
    raise ValueError(f"mask shape {mask.shape} differs from tokens shape {tokens.shape}")
  if positions is not None:
    targets = jnp.take_along_axis(targets, positions, axis=1)
    mask = None if mask is None else jnp.take_along_axis(mask, positions, axis=1)

  def stats_of(head_params, hidden_BPD, constants):
    targets_BP, mask_BP = constants
    real_BPV, dk_BP = output_logit_parts(head_params, hidden_BPD, config)
    stats = losses.step_stats_parts(real_BPV[:, :, None], dk_BP[:, :, None], targets_BP, mask_BP)
    return jax.tree.map(lambda x: x[..., 0], stats)

  # An earlier step's logits are recomputed in the backward pass when it reaches that step's readout,
  # never before (recompute.py): under `jax.checkpoint` the recomputation depends on forward values only,
  # and XLA's scheduler may run every step's at once. The last step's logits are kept: the backward pass
  # needs them first, right after the forward pass made them, so keeping them adds nothing to the peak,
  # and recomputing them would cost the output head's matmul again.
  recomputed_stats_of = recompute_in_backward(stats_of)

  def to_stats(hidden_BPD, step):
    head_params = {name: params[name] for name in HEAD_PARAMS if name in params}
    readout = stats_of if step == num_pauses else recomputed_stats_of
    return readout(head_params, hidden_BPD, (targets, mask))

  return rollout_readout(params, tokens, config, num_pauses, positions, to_stats, segment_ids)
