"""The transformer itself: input embeddings, the block, the one layer loop, the output head.

Every block option of `ModelConfig` lives here (or in `attention.py`) and nowhere else: step 0, pause
steps, the stream option and generation all run their layers through `run_layers`, and differ only in
the keys each layer's attention sees, which the caller supplies as an `attend_layer` function.

Block parameters (`params["blocks"]`: one tree whose arrays carry a leading layer axis [L], stacked so the
layer loop can be a `lax.scan`; shapes below are per layer; the optional ones only when their option is on):
  attn_norm, mlp_norm: {scale [D]}; qkv_proj: {kernel [D, 3, H, Dh], bias [3, H, Dh]} without grouping,
  or q_proj {kernel [D, H, Dh], bias [H, Dh]} and kv_proj {kernel [D, 2, G, Dh], bias [2, G, Dh]} with
  grouped KV heads; q_norm, k_norm: {scale [Dh]}; out_proj: {kernel [H, Dh, D], bias [D]};
  post_attn_norm, post_mlp_norm: {scale [D]} (sandwich norms); mlp: gate_up {kernel [D, 2, F], bias [2, F]},
  down {kernel [F, D], bias [D]}.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyb_jax.model import attention
from cyb_jax.model.config import ModelConfig
from cyb_jax.model.layers import GatedMLP, RMSNorm, rope_inverse_frequencies, rotary, softcap
from cyb_jax.model.recompute import recompute_in_backward
from cyb_jax.parallel import sharding

Params = Any


class Block(nn.Module):
  """One pre-norm transformer layer, split at the attention so callers choose which keys a query sees.

  `qkv` projects a residual stream to rotated queries `[B, Q, H, Dh]` and rotated keys and values
  `[B, Q, G, Dh]`; `finish` adds the attention output projection and the MLP (each normalised again
  first with sandwich norms), in three parts the layer loop differentiates separately:
  `attention_residual`, `mlp_activations` (recomputed in the backward pass) and `mlp_residual`. The
  residual stream stays float32; matmuls run in the compute dtype.
  """

  config: ModelConfig
  layer: int = 0

  def setup(self):
    c = self.config
    dtype = c.compute_dtype
    norm = functools.partial(RMSNorm, epsilon=c.norm_eps, offset=c.norm_offset, dtype=dtype)
    self.attn_norm = norm()
    if c.grouped:
      self.q_proj = nn.DenseGeneral((c.num_heads, c.head_size), use_bias=c.qkv_bias, dtype=dtype)
      self.kv_proj = nn.DenseGeneral((2, c.kv_heads, c.head_size), use_bias=c.qkv_bias, dtype=dtype)
    else:
      self.qkv_proj = nn.DenseGeneral((3, c.num_heads, c.head_size), use_bias=c.qkv_bias, dtype=dtype)
    if c.qk_norm:
      self.q_norm = norm()
      self.k_norm = norm()
    self.out_proj = nn.DenseGeneral(c.width, axis=(-2, -1), use_bias=c.out_bias, dtype=dtype)
    if c.sandwich_norms:
      self.post_attn_norm = norm()
      self.post_mlp_norm = norm()
    self.mlp_norm = norm()
    self.mlp = GatedMLP(c.mlp_hidden, c.width, activation=c.mlp_activation, use_bias=c.mlp_bias, dtype=dtype)

  def qkv(self, x_BQD: jax.Array, positions_BQ: jax.Array):
    """Rotated queries `[B, Q, H, Dh]`, rotated keys and values `[B, Q, G, Dh]`."""
    c = self.config
    normed_BQD = self.attn_norm(x_BQD)
    if c.grouped:
      q_BQHd = self.q_proj(normed_BQD)
      kv = self.kv_proj(normed_BQD)
      k_BQGd, v_BQGd = kv[..., 0, :, :], kv[..., 1, :, :]
    else:
      q_k_v = self.qkv_proj(normed_BQD)
      q_BQHd, k_BQGd, v_BQGd = q_k_v[..., 0, :, :], q_k_v[..., 1, :, :], q_k_v[..., 2, :, :]
    if c.qk_norm:  # over each head's features, before the rotation (Qwen3, Gemma 3)
      q_BQHd, k_BQGd = self.q_norm(q_BQHd), self.k_norm(k_BQGd)
    inv_freq = rope_inverse_frequencies(c.head_size, c.layer_rope(self.layer))
    return rotary(q_BQHd, positions_BQ, inv_freq), rotary(k_BQGd, positions_BQ, inv_freq), v_BQGd

  def attention_residual(self, x_BQD: jax.Array, attended_BQHd: jax.Array) -> jax.Array:
    """Residual stream after the attention output projection, `[B, Q, D]` float32."""
    out_BQD = self.out_proj(attended_BQHd)
    if self.config.sandwich_norms:
      out_BQD = self.post_attn_norm(out_BQD)
    return x_BQD + out_BQD.astype(x_BQD.dtype)

  def mlp_activations(self, x_BQD: jax.Array) -> jax.Array:
    """The MLP's gated activations `[B, Q, F]` of the normalised residual stream."""
    return self.mlp.activations(self.mlp_norm(x_BQD))

  def mlp_residual(self, x_BQD: jax.Array, activations_BQF: jax.Array) -> jax.Array:
    """Residual stream after the MLP's down projection, `[B, Q, D]` float32."""
    hidden_BQD = self.mlp.project(activations_BQF)
    if self.config.sandwich_norms:
      hidden_BQD = self.post_mlp_norm(hidden_BQD)
    return x_BQD + hidden_BQD.astype(x_BQD.dtype)

  def finish(self, x_BQD: jax.Array, attended_BQHd: jax.Array) -> jax.Array:
    """Residual stream after the attention output projection and the MLP, `[B, Q, D]` float32."""
    x_BQD = self.attention_residual(x_BQD, attended_BQHd)
    return self.mlp_residual(x_BQD, self.mlp_activations(x_BQD))

  def __call__(self, x_BQD: jax.Array, positions_BQ: jax.Array):
    """Only used to create the parameters: a plain causal pass."""
    q, k, v = self.qkv(x_BQD, positions_BQ)
    attended = attention.attend(q, positions_BQ, attention.RealKeys(k, v, positions_BQ),
                                self.config.layer_attention(self.layer))
    return self.finish(x_BQD, attended)


# attend_layer(spec, q_BQHd, k_BQGd, v_BQGd, layer_input) -> (attended_BQHd, layer_output)
AttendLayer = Callable[[Any, jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def layer_period(config: ModelConfig) -> int:
  """The smallest p such that layer l attends and rotates exactly as layer l % p does (1 for a uniform
  model, 2 for Gemma 2's alternation, 6 for Gemma 3's five sliding layers and one global one).

  The layer scan runs over units of p layers; the settings that differ within a unit (the window, which
  the attention kernels take as a compile-time constant, and the RoPE base that goes with it) stay
  static, so every implementation (dense, blockwise, Pallas) compiles each of them once.
  """
  settings = [(config.layer_attention(l), config.layer_rope(l)) for l in range(config.num_layers)]
  for period in range(1, config.num_layers + 1):
    if all(settings[l] == settings[l % period] for l in range(config.num_layers)):
      return period
  return config.num_layers


def _layer_fn(config: ModelConfig, position: int, positions_BQ: jax.Array, attend_layer: AttendLayer):
  """layer(block_params, x_BQD, layer_input) -> (x_BQD, output) for a layer attending like `position`."""
  block = Block(config, position)
  spec = config.layer_attention(position)
  # The wide, cheap parts of the layer (norms, projections to q/k/v, rotary, the gated activation) are
  # recomputed in the backward pass from the layer's residual stream, which is kept anyway: keeping
  # their outputs instead was most of a layer's activation memory (DESIGN.md section 9).
  qkv = recompute_in_backward(
      lambda p, x, positions: block.apply({"params": p}, x, positions, method=Block.qkv))
  mlp_activations = recompute_in_backward(
      lambda p, x, _: block.apply({"params": p}, x, method=Block.mlp_activations))

  def layer(block_params, x_BQD, layer_input):
    x_BQD = sharding.constrain_batch(x_BQD)
    q, k, v = qkv(_subtree(block_params, QKV_PARAMS), x_BQD, positions_BQ)
    attended, output = attend_layer(spec, q, k, v, layer_input)
    x_BQD = block.apply({"params": block_params}, x_BQD, attended, method=Block.attention_residual)
    mlp_params = {"mlp_norm": block_params["mlp_norm"], "mlp": {"gate_up": block_params["mlp"]["gate_up"]}}
    activations = mlp_activations(mlp_params, x_BQD, None)
    x_BQD = block.apply({"params": block_params}, x_BQD, activations, method=Block.mlp_residual)
    return sharding.constrain_batch(x_BQD), output

  return layer


def _index(tree: Any, index) -> Any:
  return jax.tree.map(lambda a: a[index], tree)


def _stack(trees: Sequence[Any]) -> Any:
  """Per-layer trees (outputs, parameters) stacked into one tree of `[len(trees), ...]` arrays."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_layers(params: Params, x_BQD: jax.Array, positions_BQ: jax.Array, config: ModelConfig,
               attend_layer: AttendLayer, layer_inputs: Any = None):
  """The model's one layer loop: every layer projects, lets `attend_layer` attend, then finishes.

  `params["blocks"]` holds every layer's parameters stacked on a leading layer axis `[L, ...]`. For layer
  l, `attend_layer(config.layer_attention(l), q, k, v, input_l)` receives this layer's rotated queries and
  keys, its values, and layer l's slice of `layer_inputs` (a pytree whose arrays have a leading `[L]` axis:
  cached keys, a pause chain; or None); it returns the attention output `[B, Q, H, Dh]` and what the
  caller wants back for that layer (the keys to cache, an updated chain), returned stacked `[L, ...]`.
  With `config.scan_layers` (the default) the layers are a `jax.lax.scan` over units of `layer_period`
  layers, so the program holds one copy of a unit whatever the depth; otherwise a Python loop (every
  layer its own copy). Whatever the config, the norms, q/k/v projections, rotary and the MLP's gated
  activations are recomputed in the backward pass from the residual stream (recompute.py); with
  `config.remat` the whole layer is. Returns the final residual `[B, Q, D]`, the stacked per-layer
  outputs, and the residual a following pause step reads through feedback `[B, Q, D]`: the output of
  layer `config.pause_feedback_layer` (the final residual itself by default).
  """
  num_layers = config.num_layers
  feedback_layer = config.pause_feedback_layer % num_layers
  period = layer_period(config) if config.scan_layers else num_layers
  layers = [_layer_fn(config, position, positions_BQ, attend_layer) for position in range(period)]
  if config.remat:
    # In a scan the recomputation cannot be merged back into the forward pass, so CSE may stay on.
    layers = [jax.checkpoint(layer, prevent_cse=not config.scan_layers) for layer in layers]
  blocks = _projections_in_compute_dtype(params["blocks"], config)

  if not config.scan_layers:
    outputs = []
    feedback_BQD = None
    for index in range(num_layers):
      layer_input = None if layer_inputs is None else _index(layer_inputs, index)
      x_BQD, output = layers[index](_index(blocks, index), x_BQD, layer_input)
      outputs.append(output)
      if index == feedback_layer:
        feedback_BQD = x_BQD
    return x_BQD, _stack(outputs), feedback_BQD

  num_units, remainder = divmod(num_layers, period)
  keep_feedback = feedback_layer != num_layers - 1

  def run_unit(carry, unit_params, unit_inputs, first_layer, count):
    """`count` layers of a unit starting at layer `first_layer` (traced): unit_params and unit_inputs are
    sequences of one tree per position in the unit. Returns the carry and a tuple of outputs per position."""
    x_BQD, feedback_BQD = carry
    outputs = []
    for position in range(count):
      layer_input = None if unit_inputs is None else unit_inputs[position]
      x_BQD, output = layers[position](unit_params[position], x_BQD, layer_input)
      outputs.append(output)
      if keep_feedback:
        feedback_BQD = jnp.where(first_layer + position == feedback_layer, x_BQD, feedback_BQD)
    return (x_BQD, feedback_BQD), tuple(outputs)

  def units(tree, count):
    """The first `count` units of a `[L, ...]` tree, as one `[count, ...]` tree per position in a unit.

    Each layer's parameters are then a scanned input as they are, never a slice of one: the backward pass
    reads the parameters the forward pass used straight from these inputs (scan forwards them), where a
    slice taken inside the loop would be saved again, a second copy of every weight.
    """
    if period == 1:  # then count == num_layers
      return (tree,)
    return tuple(jax.tree.map(lambda a, p=p: a[p:count * period:period], tree) for p in range(period))

  def body(carry, xs):
    unit_params, unit_inputs, first_layer = xs
    return run_unit(carry, unit_params, unit_inputs, first_layer, period)

  def interleave(per_position):
    """Outputs `[count, ...]` per position in a unit, as `[count * p, ...]` in layer order."""
    if period == 1:
      return per_position[0]
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1).reshape((-1,) + xs[0].shape[1:]), *per_position)

  carry = (x_BQD, jnp.zeros_like(x_BQD) if keep_feedback else None)
  inputs = None if layer_inputs is None else units(layer_inputs, num_units)
  carry, outputs = jax.lax.scan(body, carry, (units(blocks, num_units), inputs,
                                              jnp.arange(num_units) * period))
  outputs = interleave(outputs)
  if remainder:
    # Layers past the last whole unit attend like the first layers of a unit: run once, unrolled.
    start = num_units * period
    tail_params = [_index(blocks, start + i) for i in range(remainder)]
    tail_inputs = None if layer_inputs is None else [_index(layer_inputs, start + i) for i in range(remainder)]
    carry, tail_outputs = run_unit(carry, tail_params, tail_inputs, start, remainder)
    outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outputs, _stack(tail_outputs))
  x_BQD, feedback_BQD = carry
  return x_BQD, outputs, (feedback_BQD if keep_feedback else x_BQD)


def _projections_in_compute_dtype(blocks: Params, config: ModelConfig) -> Params:
  """The stacked projection kernels and biases in the compute dtype (norm scales stay float32).

  The same values the layers' Dense modules would cast to (flax's promote_dtype), cast once before the
  scan: the backward pass's matmuls then read these scanned inputs directly. Cast inside the loop body, the
  cast copy is what the backward pass keeps, a stacked copy of every weight per pause step.
  """
  dtype = config.compute_dtype
  if dtype == jnp.float32:
    return blocks

  def cast(path, leaf):
    return leaf.astype(dtype) if getattr(path[-1], "key", None) in ("kernel", "bias") else leaf

  return jax.tree_util.tree_map_with_path(cast, blocks)


# The parameters `Block.qkv` reads (those of the layer's options that are on).
QKV_PARAMS = ("attn_norm", "qkv_proj", "q_proj", "kv_proj", "q_norm", "k_norm")


def _subtree(block_params: Params, names: Sequence[str]) -> Params:
  return {name: block_params[name] for name in names if name in block_params}


def init_block(config: ModelConfig, layer: int, rng: jax.Array) -> Params:
  """Fresh parameters of layer `layer`."""
  dummy_x = jnp.zeros((1, 1, config.width), jnp.float32)
  dummy_positions = jnp.zeros((1, 1), jnp.int32)
  return Block(config, layer).init(rng, dummy_x, dummy_positions)["params"]


def stack_blocks(blocks: Sequence[Params]) -> Params:
  """Per-layer parameter trees (the layout of checkpoints written before layers were scanned) stacked
  into one tree of `[L, ...]` arrays."""
  return _stack(blocks)


def unstack_blocks(blocks: Params) -> list:
  """The inverse of `stack_blocks`: a list of L per-layer trees."""
  num_layers = jax.tree.leaves(blocks)[0].shape[0]
  return [jax.tree.map(lambda a: a[l], blocks) for l in range(num_layers)]


def final_norm(config: ModelConfig) -> RMSNorm:
  """The norm before the output head (float32 output)."""
  return RMSNorm(epsilon=config.norm_eps, offset=config.norm_offset)


def init_final_norm(config: ModelConfig, rng: jax.Array) -> Params:
  return final_norm(config).init(rng, jnp.zeros((1, 1, config.width), jnp.float32))["params"]


def normalise_final(params: Params, hidden: jax.Array, config: ModelConfig) -> jax.Array:
  """The final norm of residual states `[..., D]`, float32."""
  return final_norm(config).apply({"params": params["final_norm"]}, hidden)


def embed_tokens(params: Params, tokens: jax.Array, config: ModelConfig) -> jax.Array:
  """Real-token input embeddings, float32 `[..., D]`.

  With `embed_scale` (Gemma) the rows are multiplied by sqrt(width) rounded to the compute dtype, as
  transformers does in the weight dtype (sqrt(640) is 25.25 in bfloat16); the output head, when tied,
  reads the unscaled table.
  """
  x = jnp.take(params["embed"], tokens, axis=0)
  if config.embed_scale:
    x = x * jnp.asarray(config.width ** 0.5, config.compute_dtype).astype(jnp.float32)
  return x


def output_logits(params: Params, hidden: jax.Array, config: ModelConfig) -> jax.Array:
  """Logits `[..., V+1]` (float32, `<dk>` last) from final residual states `[..., D]`.

  The real-vocabulary logits come from `head` `[D, V]`, or the embedding table when tied, and are
  soft-capped with `final_softcap`; the `<dk>` logit (ours, not the pretrained model's) is not.
  """
  real, dk = output_logit_parts(params, hidden, config)
  return jnp.concatenate([real, dk[..., None]], axis=-1)


def output_logit_parts(params: Params, hidden: jax.Array, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """`output_logits` as its two parts, never joined: the real-vocabulary logits `[..., V]` and the `<dk>`
  logit `[...]` (float32; -inf without pauses). For readouts that reduce them right away
  (`losses.step_stats_parts`), which then need no `[..., V+1]` copy of the logits either way."""
  normed = sharding.constrain_batch(normalise_final(params, hidden, config))
  dtype = config.compute_dtype
  if config.tie_embeddings:
    table = sharding.gather_weight(params["embed"].astype(dtype))
    real = jnp.einsum("...d,vd->...v", normed.astype(dtype), table)
  else:
    real = jnp.dot(normed.astype(dtype), sharding.gather_weight(params["head"].astype(dtype)))
  real = sharding.constrain_batch(real)
  real = softcap(real.astype(jnp.float32), config.final_softcap)
  if config.max_pauses > 0:
    dk = jnp.dot(normed, params["dk_head"]["kernel"]) + params["dk_head"]["bias"]  # bias is a scalar
  else:
    dk = jnp.full(real.shape[:-1], -jnp.inf, jnp.float32)
  return real, dk.astype(jnp.float32)
