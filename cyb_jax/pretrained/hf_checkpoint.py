"""Loading a local Hugging Face checkpoint directory, or a GGUF file, as cyb_jax parameters.

`load_hf_checkpoint(directory)` reads `config.json` (`hf_config.py`) and the safetensors weights (one
`model.safetensors`, or the shards a `model.safetensors.index.json` names, bfloat16 included) without
torch; `load_hf_checkpoint(FILE.gguf)` reads the same from a llama.cpp file (`gguf_file.py`: the config
from its metadata, tensors dequantized and put into the Hugging Face layout). Both return a plain LM (`max_pauses` = 0) whose step-0 logits are the original model's:
`model.rollout(params, tokens, config, 0)[..., 0, :V]`.

Layouts (PRETRAINED.md): HF linear weights are `[out, in]`; ours are `[in, out]` split into heads:
q `[D, H, Dh]`, k and v `[D, G, Dh]` (fused as `qkv_proj` `[D, 3, H, Dh]` when G = H, else `q_proj` and
`kv_proj` `[D, 2, G, Dh]`), o `[H, Dh, D]`, gate and up fused as `gate_up` `[D, 2, F]` (gate first),
down `[F, D]`, lm_head `[V, D] -> head [D, V]`. HF checkpoints are already in the rotate-half RoPE layout
we use, so no q/k permutation is applied. Every tensor's shape is checked against the config before it
is reshaped, every tensor in the files must be mapped, and every expected tensor must be present.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy before safetensors reads such tensors)
import numpy as np
from safetensors import safe_open

from cyb_jax.model.config import ModelConfig
from cyb_jax.pretrained import gguf_file
from cyb_jax.pretrained.hf_config import model_config_from_hf, read_hf_config

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tensors some checkpoints carry that are not parameters (recomputed from the config).
# (rope_freqs.weight: a GGUF file's Llama 3 RoPE divisors, read into the config by gguf_file.py.)
BUFFER_SUFFIXES = (".rotary_emb.inv_freq", "rope_freqs.weight")

# place(path, array) -> the array where it belongs (e.g. on its sharding); path is like "blocks/q_proj/kernel"
# (block parameters come stacked on a leading layer axis [L]).
Place = Callable[[str, np.ndarray], Any]


def _weight_files(directory: str) -> dict[str, str]:
  """{tensor name: file path} of the checkpoint's safetensors, exactly as its index names them."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path, encoding="utf-8") as handle:
      weight_map = json.load(handle).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path}: no weight_map")
    files = {}
    for name, file_name in weight_map.items():
      path = os.path.join(directory, file_name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{index_path} names {file_name!r} for {name!r}, which is not in {directory!r}")
      files[name] = path
    return files
  single = os.path.join(directory, SINGLE_FILE)
  if os.path.isfile(single):
    with safe_open(single, framework="np") as handle:
      return {name: single for name in handle.keys()}
  others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".safetensors")))
  raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory!r}"
                          + (f" (found {others}; only safetensors are read)" if others else ""))


class _SafetensorsSource:
  """The tensors of a checkpoint directory's safetensors files, each file opened once."""

  def __init__(self, directory: str, stack: contextlib.ExitStack):
    self.files = _weight_files(directory)
    self._stack = stack
    self._handles: dict[str, Any] = {}

  def _handle(self, name: str):
    path = self.files[name]
    if path not in self._handles:
      # pread, not the default mmap: the mapped file's pages would count in the process's RSS as long as
      # the file is open, doubling the peak of loading a float32 checkpoint.
      self._handles[path] = self._stack.enter_context(safe_open(path, framework="np", backend="pread"))
    return self._handles[path]

  def tensor_names(self) -> list[str]:
    return list(self.files)

  def tensor_shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())

  def tensor(self, name: str) -> np.ndarray:
    return np.asarray(self._handle(name).get_tensor(name), np.float32)


class _Reader:
  """Reads tensors by Hugging Face name from a source (safetensors or GGUF), checking each shape before
  converting it, and records what it read.

  Names resolve as written, or without their `model.` prefix (a base-model export such as `LlamaModel`'s
  `layers.0...`): both are valid exports of the same weights.
  """

  def __init__(self, source, where: str):
    self.source = source
    self.where = where
    self.names = set(source.tensor_names())
    self.used: set[str] = set()

  def _resolve(self, name: str) -> Optional[str]:
    if name in self.names:
      return name
    if name.startswith("model.") and name[len("model."):] in self.names:
      return name[len("model."):]
    return None

  def has(self, name: str) -> bool:
    return self._resolve(name) is not None

  def read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor `name` as float32 numpy; ValueError if it is missing or not of `shape`."""
    stored = self._resolve(name)
    if stored is None:
      raise ValueError(f"checkpoint tensor {name!r} is missing from {self.where} (expected shape {shape})")
    found = tuple(self.source.tensor_shape(stored))
    if found != tuple(shape):
      raise ValueError(f"checkpoint tensor {stored!r} in {self.where} has shape {found}, the config implies "
                       f"{tuple(shape)}")
    self.used.add(stored)
    return self.source.tensor(stored)


def _linear(reader: _Reader, name: str, out_features: int, in_features: int) -> np.ndarray:
  """An HF linear weight `[out, in]` as our kernel `[in, out]`."""
  return reader.read(name, (out_features, in_features)).T


def _block_tensors(reader: _Reader, config: ModelConfig, family: str, layer: int):
  """(path suffix, array) pairs of one layer's parameters, converted one at a time."""
  prefix = f"model.layers.{layer}."
  width, heads, kv, head_dim = config.width, config.num_heads, config.kv_heads, config.head_size
  gemma = family.startswith("gemma")

  def norm(name):
    return reader.read(prefix + name + ".weight", (width,))

  yield "attn_norm/scale", norm("input_layernorm")
  attn = prefix + "self_attn."
  q = _linear(reader, attn + "q_proj.weight", heads * head_dim, width).reshape(width, heads, head_dim)
  k = _linear(reader, attn + "k_proj.weight", kv * head_dim, width).reshape(width, kv, head_dim)
  v = _linear(reader, attn + "v_proj.weight", kv * head_dim, width).reshape(width, kv, head_dim)
  if config.qkv_bias:
    q_bias = reader.read(attn + "q_proj.bias", (heads * head_dim,)).reshape(heads, head_dim)
    k_bias = reader.read(attn + "k_proj.bias", (kv * head_dim,)).reshape(kv, head_dim)
    v_bias = reader.read(attn + "v_proj.bias", (kv * head_dim,)).reshape(kv, head_dim)
  if config.grouped:
    yield "q_proj/kernel", q
    yield "kv_proj/kernel", np.stack([k, v], axis=1)
    if config.qkv_bias:
      yield "q_proj/bias", q_bias
      yield "kv_proj/bias", np.stack([k_bias, v_bias], axis=0)
  else:
    yield "qkv_proj/kernel", np.stack([q, k, v], axis=1)
    if config.qkv_bias:
      yield "qkv_proj/bias", np.stack([q_bias, k_bias, v_bias], axis=0)
  if config.qk_norm:
    yield "q_norm/scale", reader.read(attn + "q_norm.weight", (head_dim,))
    yield "k_norm/scale", reader.read(attn + "k_norm.weight", (head_dim,))
  yield "out_proj/kernel", _linear(reader, attn + "o_proj.weight", width, heads * head_dim).reshape(
      heads, head_dim, width)
  if config.out_bias:
    yield "out_proj/bias", reader.read(attn + "o_proj.bias", (width,))
  if gemma:
    # Gemma's post_attention_layernorm normalises the attention output; its pre-MLP norm is separate.
    yield "post_attn_norm/scale", norm("post_attention_layernorm")
    yield "mlp_norm/scale", norm("pre_feedforward_layernorm")
    yield "post_mlp_norm/scale", norm("post_feedforward_layernorm")
  else:
    yield "mlp_norm/scale", norm("post_attention_layernorm")
  mlp = prefix + "mlp."
  hidden = config.mlp_hidden
  gate = _linear(reader, mlp + "gate_proj.weight", hidden, width)  # the activated projection
  up = _linear(reader, mlp + "up_proj.weight", hidden, width)
  yield "mlp/gate_up/kernel", np.stack([gate, up], axis=1)
  yield "mlp/down/kernel", _linear(reader, mlp + "down_proj.weight", width, hidden)
  if config.mlp_bias:
    yield "mlp/gate_up/bias", np.stack([reader.read(mlp + "gate_proj.bias", (hidden,)),
                                        reader.read(mlp + "up_proj.bias", (hidden,))], axis=0)
    yield "mlp/down/bias", reader.read(mlp + "down_proj.bias", (width,))


@functools.partial(jax.jit, donate_argnums=0)
def _write_layer(stacked: jax.Array, layer_array: jax.Array, layer: jax.Array) -> jax.Array:
  """`stacked` `[L, ...]` with row `layer` replaced by `layer_array`, in place (the buffer is donated)."""
  return jax.lax.dynamic_update_index_in_dim(stacked, layer_array.astype(stacked.dtype), layer, 0)


def _get(tree: dict, path: str) -> Any:
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _set(tree: dict, path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def read_pretrained_config(path: str) -> dict:
  """The transformers `config.json` of a pretrained source: a Hugging Face directory's own file, or the
  one a GGUF file's metadata describes (`gguf_file.GGUFCheckpoint.hf_config`)."""
  if gguf_file.is_gguf(path):
    return gguf_file.open_gguf(path).hf_config()
  return read_hf_config(path)


def load_hf_checkpoint(path: str, *, place: Optional[Place] = None,
                       **overrides) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of a pretrained checkpoint, as a plain LM.

  Args:
    path: a Hugging Face directory (config.json and model.safetensors or model.safetensors.index.json +
      its shards) or a llama.cpp GGUF file (`*.gguf`, dequantized tensor by tensor; `gguf_file.py`).
    place: called as `place(path, array)` on each parameter as soon as it is converted (float32 numpy),
      returning the array to keep, e.g. put on its sharding, so the whole model never exists twice on
      the host. Block parameters are placed once, as zeros of their stacked shape `[L, ...]` (path
      "blocks/<name>"), and each layer is written into the placed array as it is converted. Default:
      `jnp.asarray` (the default device).
    overrides: other ModelConfig fields (pause options, compute dtype, remat); `max_pauses` must stay 0
      here (add pause parameters with `model.extend_params`).
  Returns:
    The config and a params pytree as `model.init` lays it out, float32.
  Raises:
    ValueError naming an unsupported model_type, architecture, RoPE type or quantization type, a
    missing, unmapped or misshapen tensor; FileNotFoundError for a path without config.json or weights.
  """
  path = str(path)
  if overrides.get("max_pauses", 0):
    raise ValueError("load_hf_checkpoint returns a plain LM (max_pauses = 0); add pause parameters with "
                     "model.extend_params")
  gguf = gguf_file.open_gguf(path) if gguf_file.is_gguf(path) else None
  hf = gguf.hf_config() if gguf is not None else read_hf_config(path)
  config = model_config_from_hf(hf, **overrides)
  family = hf["model_type"]
  place = place or (lambda name, array: jnp.asarray(array))
  width, vocab = config.width, config.vocab_size
  params: dict = {"blocks": {}}
  with contextlib.ExitStack() as stack:
    source = gguf if gguf is not None else _SafetensorsSource(path, stack)
    reader = _Reader(source, repr(path))
    if config.tie_embeddings and not reader.has("model.embed_tokens.weight") and reader.has("lm_head.weight"):
      # A de-duplicated tied export keeps the shared table under the head's name only.
      embed_name = "lm_head.weight"
    else:
      embed_name = "model.embed_tokens.weight"
    embed = reader.read(embed_name, (vocab, width))
    if config.tie_embeddings and embed_name != "lm_head.weight" and reader.has("lm_head.weight"):
      # Some exports write the tied table twice; accept the copy only if it is one.
      if not np.array_equal(reader.read("lm_head.weight", (vocab, width)), embed):
        raise ValueError("tie_word_embeddings is true but lm_head.weight differs from "
                         "model.embed_tokens.weight")
    params["embed"] = place("embed", embed)
    del embed
    # Layers are stacked on a leading axis: each parameter's [L, ...] array is allocated where it belongs
    # (placed as zeros) when its layer 0 is converted, and every layer's tensor is written into it in place
    # (a donated update) as soon as it is converted, so the model never exists twice on the host.
    for layer in range(config.num_layers):
      for name, array in _block_tensors(reader, config, family, layer):
        if layer == 0:
          zeros = np.broadcast_to(np.zeros((), array.dtype), (config.num_layers,) + array.shape)
          _set(params["blocks"], name, place(f"blocks/{name}", zeros))
        _set(params["blocks"], name, _write_layer(_get(params["blocks"], name), array, np.int32(layer)))
        del array
    params["final_norm"] = {"scale": place("final_norm/scale", reader.read("model.norm.weight", (width,)))}
    if not config.tie_embeddings:
      params["head"] = place("head", _linear(reader, "lm_head.weight", vocab, width))
  unmapped = sorted(name for name in reader.names
                    if name not in reader.used and not name.endswith(BUFFER_SUFFIXES))
  if unmapped:
    shown = ", ".join(repr(n) for n in unmapped[:5]) + (f" and {len(unmapped) - 5} more" if len(unmapped) > 5
                                                        else "")
    raise ValueError(f"unmapped checkpoint tensor(s) {shown} in {path!r}: not part of a "
                     f"{family} model as its config describes it")
  return config, params


def sharded_place(shardings_by_path: Callable[[str, tuple], jax.sharding.Sharding]) -> Place:
  """A `place` that puts each parameter on `shardings_by_path(path, shape)`, building every process's
  shards from the host array (so it also works with several processes)."""
  def place(path: str, array: np.ndarray):
    sharding = shardings_by_path(path, array.shape)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
  return place
