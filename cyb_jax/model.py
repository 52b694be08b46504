"""The decoder-only transformer and its pause rollout (DESIGN.md section 3).

Flax Linen is used functionally: `init` returns a plain params pytree and every function here takes it
as its first argument; caches and pause states are passed explicitly. Shape letters (DESIGN.md section 2)
plus: P positions that get pause chains (all N by default), S = K+1 steps, Dh head width, T key length.

Parameters:
  embed [V, D]; blocks: one `layers.Block` params tree per layer; final_norm; head [D, V] (real tokens);
  and, when `max_pauses` > 0: dk_head (kernel [D], bias []), pause (embedding [D], step_embedding [Kmax, D]),
  and with `pause_feedback` a zero-initialised feedback projection [D, D].
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
from cyb_jax.layers import Block, RMSNorm, two_part_attention

Params = Any
PAUSE_CONTEXTS = ("private", "stream")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and pause options. Validated on construction (errors name the field)."""

  vocab_size: int = 256          # V, real tokens; the head adds <dk> as index V
  width: int = 128               # D
  num_layers: int = 2            # L
  num_heads: int = 4             # H
  mlp_hidden: int = 512          # gated-MLP hidden width
  max_len: int = 512             # longest sequence (real tokens) the model is used with
  max_pauses: int = 3            # Kmax: rows of the step embedding; rollouts may use K <= Kmax
  dtype: str = "float32"         # compute dtype of matmuls: "float32" or "bfloat16"
  remat: bool = False            # rematerialise each layer in the backward pass (saves memory)
  dk_init_prob: float = 0.1      # initial probability of <dk>, roughly, at every step
  pause_context: str = "private"  # "private" chains (default) or "stream" (pauses are ordinary tokens)
  pause_feedback: bool = False   # pause j also reads a projection of step j-1's final hidden state
  pause_reads_token: bool = True  # a pause input includes its real token's embedding
  rope_base: float = 10000.0

  def __post_init__(self):
    for name in ("vocab_size", "width", "num_layers", "num_heads", "mlp_hidden", "max_len"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if not isinstance(self.max_pauses, (int, np.integer)) or self.max_pauses < 0:
      raise ValueError(f"model.max_pauses must be a non-negative integer, got {self.max_pauses!r}")
    if self.width % self.num_heads:
      raise ValueError(f"model.width ({self.width}) must be divisible by model.num_heads "
                       f"({self.num_heads})")
    if (self.width // self.num_heads) % 2:
      raise ValueError(f"model.width / model.num_heads = {self.width // self.num_heads} must be even "
                       "(rotary embeddings rotate pairs of features)")
    if self.dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
    if not 0.0 < self.dk_init_prob < 1.0:
      raise ValueError(f"model.dk_init_prob must lie in (0, 1), got {self.dk_init_prob!r}")
    if self.pause_context not in PAUSE_CONTEXTS:
      raise ValueError(f"model.pause_context must be one of {PAUSE_CONTEXTS}, got "
                       f"{self.pause_context!r}")
    if self.pause_context == "stream" and self.pause_feedback:
      # Feedback makes pause j wait for step j-1's output, which a stream forward computes in parallel.
      raise ValueError("model.pause_feedback is only supported with model.pause_context='private'")

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


def _block(config: ModelConfig) -> Block:
  return Block(width=config.width, num_heads=config.num_heads, mlp_hidden=config.mlp_hidden,
               rope_base=config.rope_base, dtype=config.compute_dtype)


# The final norm has no options; one module serves init and every apply.
_FINAL_NORM = RMSNorm()


# ----------------------------------------------------------------------------------------------------------
# Parameters.


def init(config: ModelConfig, rng: jax.Array) -> Params:
  """Fresh parameters (float32) for `config`."""
  keys = jax.random.split(rng, config.num_layers + 6)
  width, vocab = config.width, config.vocab_size
  dummy_x = jnp.zeros((1, 1, width), jnp.float32)
  dummy_pos = jnp.zeros((1, 1), jnp.int32)
  params = {
      # Unit-variance embeddings: the pre-norm blocks see normalised inputs whatever the scale.
      "embed": jax.random.normal(keys[0], (vocab, width), jnp.float32),
      "blocks": [_block(config).init(keys[1 + l], dummy_x, dummy_pos)["params"]
                 for l in range(config.num_layers)],
      "final_norm": _FINAL_NORM.init(keys[0], dummy_x)["params"],
      "head": jax.random.normal(keys[-1], (width, vocab), jnp.float32) * width ** -0.5,
  }
  if config.max_pauses > 0:
    params.update(_pause_params(config, keys[-2]))
  return params


def _pause_params(config: ModelConfig, rng: jax.Array) -> Params:
  """The parameters a pause model adds to a plain LM."""
  width = config.width
  pause_key, step_key = jax.random.split(rng)
  # The <dk> logit starts input-independent, at the bias that gives probability dk_init_prob against the
  # real-vocabulary normaliser of a fresh head (real logits near 0, so u is about log V).
  p = config.dk_init_prob
  dk_bias = np.log(p / (1.0 - p)) + np.log(config.vocab_size)
  extra = {
      "dk_head": {"kernel": jnp.zeros((width,), jnp.float32),
                  "bias": jnp.asarray(dk_bias, jnp.float32)},
      "pause": {"embedding": jax.random.normal(pause_key, (width,), jnp.float32),
                "step_embedding": jax.random.normal(step_key, (config.max_pauses, width),
                                                    jnp.float32) * 0.1},
  }
  if config.pause_feedback:
    # Zero-initialised so an extended no-pause model starts exactly as without feedback.
    extra["feedback"] = {"kernel": jnp.zeros((width, width), jnp.float32)}
  return extra


def extend_params(no_pause_params: Params, config: ModelConfig, rng: jax.Array) -> Params:
  """Adds fresh `<dk>` and pause parameters to a plain-LM (`max_pauses` = 0) params pytree.

  The shared parameters are taken over unchanged, so step-0 real-token logits are unchanged. Raises
  ValueError naming the first parameter whose shape differs from what `config` expects.
  """
  if config.max_pauses < 1:
    raise ValueError("extend_params needs a config with model.max_pauses >= 1")
  plain_keys = {"embed", "blocks", "final_norm", "head"}
  missing = sorted(plain_keys - set(no_pause_params))
  if missing:
    raise ValueError(f"the no-pause params lack {missing}")
  already = sorted(set(no_pause_params) - plain_keys)
  if already:
    raise ValueError(f"the params already hold {already}: they are not a no-pause (max_pauses=0) model")
  fresh = init(config, rng)
  shared = {key: fresh[key] for key in plain_keys}
  expected = jax.tree_util.tree_flatten_with_path(shared)[0]
  given = jax.tree_util.tree_flatten_with_path({k: no_pause_params[k] for k in shared})[0]
  if len(expected) != len(given):
    raise ValueError(f"the no-pause params have {len(given)} shared arrays, config expects "
                     f"{len(expected)} (a different model.num_layers?)")
  for (path, want), (_, got) in zip(expected, given):
    if jnp.shape(want) != jnp.shape(got):
      raise ValueError(f"no-pause parameter {jax.tree_util.keystr(path)} has shape {jnp.shape(got)}, "
                       f"config expects {jnp.shape(want)} (vocab_size/width/heads mismatch?)")
  return {**fresh, **{k: no_pause_params[k] for k in shared}}


# ----------------------------------------------------------------------------------------------------------
# Pieces of the forward pass.


def embed_tokens(params: Params, tokens: jax.Array) -> jax.Array:
  """Real-token input embeddings, float32 `[..., D]`."""
  return jnp.take(params["embed"], tokens, axis=0)


def pause_inputs(params: Params, tokens: jax.Array, step: jax.Array, config: ModelConfig,
                 feedback_hidden: Optional[jax.Array] = None) -> jax.Array:
  """Input embedding of pause step `step` (1-based, scalar or `[...]`) for real tokens `[...]`, `[..., D]`.

  token_embedding[x] (if `pause_reads_token`) + pause_embedding + step_embedding[step], plus, with
  feedback, the projected normalised final hidden state `[..., D]` of the previous step.
  """
  step = jnp.broadcast_to(step, tokens.shape)
  pause_embedding = jnp.broadcast_to(params["pause"]["embedding"], tokens.shape + (config.width,))
  x = pause_embedding + jnp.take(params["pause"]["step_embedding"], step - 1, axis=0)
  if config.pause_reads_token:
    x = x + embed_tokens(params, tokens)
  if config.pause_feedback:
    normed = _FINAL_NORM.apply({"params": params["final_norm"]}, feedback_hidden)
    x = x + normed @ params["feedback"]["kernel"]
  return x


def output_logits(params: Params, hidden: jax.Array, config: ModelConfig) -> jax.Array:
  """Logits `[..., V+1]` (float32, `<dk>` last) from final residual states `[..., D]`."""
  normed = _FINAL_NORM.apply({"params": params["final_norm"]}, hidden)
  dtype = config.compute_dtype
  real = jnp.dot(normed.astype(dtype), params["head"].astype(dtype)).astype(jnp.float32)
  if config.max_pauses > 0:
    dk = jnp.dot(normed, params["dk_head"]["kernel"]) + params["dk_head"]["bias"]  # bias is a scalar
  else:
    dk = jnp.full(real.shape[:-1], -jnp.inf, jnp.float32)
  return jnp.concatenate([real, dk[..., None].astype(jnp.float32)], axis=-1)


def _maybe_remat(fn: Callable, config: ModelConfig) -> Callable:
  return jax.checkpoint(fn, prevent_cse=False) if config.remat else fn


def causal_forward(params: Params, x_BTD: jax.Array, positions_BT: jax.Array, config: ModelConfig):
  """A plain causal transformer over input embeddings, causal in sequence order.

  `positions_BT` only sets the rotary angles, so several inputs may share a position (as a pause chain
  shares its token's). Returns the final residual `[B, T, D]` and each layer's keys and values, a list of
  L pairs of `[B, T, H, Dh]`.
  """
  seq_len = x_BTD.shape[1]
  causal_BTT = jnp.broadcast_to(jnp.tril(jnp.ones((seq_len, seq_len), bool)),
                                (x_BTD.shape[0], seq_len, seq_len))
  block = _block(config)

  def layer(block_params, x_BTD):
    q, k, v = block.apply({"params": block_params}, x_BTD, positions_BT, method=Block.qkv)
    attended = two_part_attention(q, k, v, causal_BTT)
    return block.apply({"params": block_params}, x_BTD, attended, method=Block.finish), (k, v)

  layer = _maybe_remat(layer, config)
  kv_per_layer = []
  for block_params in params["blocks"]:
    x_BTD, kv = layer(block_params, x_BTD)
    kv_per_layer.append(kv)
  return x_BTD, kv_per_layer


def pause_step(params: Params, x_BPD: jax.Array, positions_BP: jax.Array, real_kv, real_mask_BPT,
               chain_kv, slot: jax.Array, config: ModelConfig):
  """One pause step for P queries: each attends to real keys and to its own chain's slots 0..slot.

  real_kv: per layer (k, v) `[B, T, H, Dh]`, the step-0 keys/values, reused as they are.
  real_mask_BPT: which real keys each query may see (its token and those before it).
  chain_kv: per layer (k, v) `[B, P, K, H, Dh]`; this step's keys/values are written at `slot`.
  Returns the final residual `[B, P, D]` and the updated chain_kv.
  """
  num_slots = chain_kv[0][0].shape[2]
  chain_mask_BPK = jnp.broadcast_to(jnp.arange(num_slots) <= slot, x_BPD.shape[:2] + (num_slots,))
  block = _block(config)

  def layer(block_params, x_BPD, real_k, real_v, chain_k, chain_v):
    q, k, v = block.apply({"params": block_params}, x_BPD, positions_BP, method=Block.qkv)
    chain_k = jax.lax.dynamic_update_slice_in_dim(chain_k, k[:, :, None].astype(chain_k.dtype), slot, 2)
    chain_v = jax.lax.dynamic_update_slice_in_dim(chain_v, v[:, :, None].astype(chain_v.dtype), slot, 2)
    attended = two_part_attention(q, real_k, real_v, real_mask_BPT, chain_k, chain_v, chain_mask_BPK)
    x_BPD = block.apply({"params": block_params}, x_BPD, attended, method=Block.finish)
    return x_BPD, (chain_k, chain_v)

  layer = _maybe_remat(layer, config)
  new_chain = []
  for block_params, (real_k, real_v), (chain_k, chain_v) in zip(params["blocks"], real_kv, chain_kv):
    x_BPD, kv = layer(block_params, x_BPD, real_k, real_v, chain_k, chain_v)
    new_chain.append(kv)
  return x_BPD, new_chain


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
             positions_BP: Optional[jax.Array], readout: Callable[[jax.Array, int], Any]):
  """Runs steps 0..K and applies `readout(hidden_BPD, step)` to each step's final residual `[B, P, D]`.

  The general form of `rollout` and `rollout_stats`: a readout can reduce each step's output to what the
  caller needs (logits, loss statistics, correctness) without keeping every step's logits.
  positions_BP: optional positions that get pause chains (None = all).
  Returns the readouts stacked on a new axis 2 (`[B, P, S, ...]` for array leaves).
  """
  _check_rollout_args(tokens_BN, config, num_pauses)
  batch, seq_len = tokens_BN.shape
  real_positions_BN = jnp.broadcast_to(jnp.arange(seq_len), (batch, seq_len))
  if positions_BP is None:
    positions_BP = real_positions_BN
  if config.pause_context == "stream":
    return _stream_rollout(params, tokens_BN, config, num_pauses, positions_BP, readout)

  hidden_BND, real_kv = causal_forward(params, embed_tokens(params, tokens_BN), real_positions_BN,
                                       config)
  hidden_BPD = jnp.take_along_axis(hidden_BND, positions_BP[..., None], axis=1)
  step0 = jax.tree.map(lambda x: x[:, :, None], readout(hidden_BPD, 0))
  if num_pauses == 0:
    return step0

  tokens_BP = jnp.take_along_axis(tokens_BN, positions_BP, axis=1)
  real_mask_BPN = real_positions_BN[:, None, :] <= positions_BP[:, :, None]
  chain_shape = tokens_BP.shape + (num_pauses, config.num_heads, config.head_dim)
  chain_dtype = config.compute_dtype
  chain_kv = [(jnp.zeros(chain_shape, chain_dtype), jnp.zeros(chain_shape, chain_dtype))
              for _ in range(config.num_layers)]

  def one_pause(carry, step):
    chain_kv, previous_hidden_BPD = carry
    x_BPD = pause_inputs(params, tokens_BP, step, config, feedback_hidden=previous_hidden_BPD)
    hidden_BPD, chain_kv = pause_step(params, x_BPD, positions_BP, real_kv, real_mask_BPN, chain_kv,
                                      step - 1, config)
    return (chain_kv, hidden_BPD), readout(hidden_BPD, step)

  steps = jnp.arange(1, num_pauses + 1)
  _, pauses = jax.lax.scan(one_pause, (chain_kv, hidden_BPD), steps)
  # The scan stacks steps first: [K, B, P, ...] -> [B, P, K, ...].
  pauses = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 2), pauses)
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=2), step0, pauses)


def _stream_rollout(params, tokens_BN, config, num_pauses, positions_BP, readout):
  """`pause_context="stream"`: K pause slots after every real token, in one causal pass of N(K+1)."""
  batch, seq_len = tokens_BN.shape
  num_steps = num_pauses + 1
  slots = [embed_tokens(params, tokens_BN)]
  for step in range(1, num_steps):
    slots.append(pause_inputs(params, tokens_BN, jnp.asarray(step), config))
  x_BNSD = jnp.stack(slots, axis=2)
  x_BTD = x_BNSD.reshape(batch, seq_len * num_steps, config.width)
  stream_positions_BT = jnp.broadcast_to(jnp.arange(seq_len * num_steps), (batch, seq_len * num_steps))
  hidden_BTD, _ = causal_forward(params, x_BTD, stream_positions_BT, config)
  hidden_BNSD = hidden_BTD.reshape(batch, seq_len, num_steps, config.width)
  hidden_BPSD = jnp.take_along_axis(hidden_BNSD, positions_BP[..., None, None], axis=1)
  per_step = [readout(hidden_BPSD[:, :, step], step) for step in range(num_steps)]
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=2), *per_step)


def rollout(params: Params, tokens: jax.Array, config: ModelConfig, num_pauses: int) -> jax.Array:
  """Logits `[B, N, num_pauses+1, V+1]` (float32, `<dk>` last) of every step at every position.

  Holds all steps' logits: meant for tests and small vocabularies; training uses `rollout_stats`.
  """
  return rollout_readout(params, tokens, config, num_pauses, None,
                         lambda hidden, step: output_logits(params, hidden, config))


def rollout_stats(params: Params, tokens: jax.Array, targets: jax.Array, config: ModelConfig,
                  num_pauses: int, mask: Optional[jax.Array] = None,
                  positions: Optional[jax.Array] = None) -> losses.StepStats:
  """`StepStats` `[B, P, num_pauses+1]` for the objectives, one step's logits at a time.

  tokens, targets: int `[B, N]`; mask: bool `[B, N]` (tokens whose target carries loss).
  positions: optional int `[B, P]` of the positions that get pause chains (chains are private, so this
  is exact); by default all N. targets and mask are read at those positions.
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

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def to_stats(hidden_BPD, step):
    del step
    logits_BP1V = output_logits(params, hidden_BPD, config)[:, :, None]
    stats = losses.step_stats(logits_BP1V, targets, mask)
    return jax.tree.map(lambda x: x[..., 0], stats)

  return rollout_readout(params, tokens, config, num_pauses, positions, to_stats)
