"""A llama.cpp GGUF file read as a Hugging Face checkpoint: config.json, tensors and tokenizer.json.

`GGUFCheckpoint(path)` answers in the Hugging Face vocabulary, so that everything downstream
(`hf_config.model_config_from_hf`, the tensor layout code of `hf_checkpoint.py`, `HFTokenizer`) is the
one the safetensors path uses:

- `hf_config()`: the metadata (`{arch}.block_count`, `.embedding_length`, `.feed_forward_length`,
  `.attention.head_count(_kv)`, `.attention.key_length`, `.attention.layer_norm_rms_epsilon`,
  `.rope.freq_base`, `.rope.scaling.*`, `.context_length`, `.attention.sliding_window`, soft-caps) as a
  transformers 4.x-form `config.json` dict. No `output.weight` tensor means a tied head.
- `tensor(hf_name)`: one tensor as float32 numpy in the HF `[out, in]` layout, dequantized with the
  `gguf` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K and whatever else
  `gguf.quants.dequantize` knows), GGUF's `[ne0, ne1]` order reversed, llama.cpp's interleaved-rotary
  row permutation of Llama's q/k weights undone, and Gemma's norms (stored as 1 + w) shifted back.
  Each call converts one tensor: the file stays memory-mapped and nothing else is kept.
- `tokenizer_json()`, `tokenizer_config()`, `generation_config()`: a `tokenizers` pipeline rebuilt from
  `tokenizer.ggml.*` (byte-level BPE: tokens, merges, token types, the pre-tokenizer named by
  `tokenizer.ggml.pre`), and the BOS/EOS facts for `tokenizer.special_token_rule`.

Facts and their sources: PRETRAINED.md "GGUF files"; llama.cpp's `convert_hf_to_gguf.py` (which permutes
Llama q/k and adds 1 to Gemma norm weights) and `llama-vocab.cpp` (the pre-tokenizer regexes by name);
transformers' GGUF loader (`integrations/gguf`), the reference the tests compare with.

Errors (ValueError, one line, naming the file): an architecture, tokenizer model, pre-tokenizer or
quantization type this reader does not know, a missing metadata key, per-layer head counts.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import numpy as np

GGUF_SUFFIX = ".gguf"
# general.architecture -> the transformers model_type we load it as (hf_config.FAMILIES).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                 "gemma3": "gemma3_text"}

# Pre-tokenizer regexes by `tokenizer.ggml.pre` name (llama.cpp llama-vocab.cpp). Each entry is a list of
# splits applied in order, then byte-level encoding without a further regex.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": [_GPT2_REGEX], "gpt2": [_GPT2_REGEX],
    # SmolLM and friends: every digit on its own, then GPT-2's split.
    "smollm": [r"\p{N}", _GPT2_REGEX], "starcoder": [r"\p{N}", _GPT2_REGEX],
    "refact": [r"\p{N}", _GPT2_REGEX],
    "llama-bpe": [_LLAMA3_REGEX], "llama3": [_LLAMA3_REGEX], "llama-v3": [_LLAMA3_REGEX],
    "qwen2": [_QWEN2_REGEX], "deepseek-r1-qwen": [_QWEN2_REGEX],
}
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


def is_gguf(path: str) -> bool:
  """Whether `path` names a GGUF file (by its suffix; the file need not exist yet)."""
  return str(path).lower().endswith(GGUF_SUFFIX)


def _import_gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("reading GGUF files needs the package 'gguf' (pip install gguf)") from error
  return gguf


def _decimal(value) -> float:
  """A float32 metadata value as the shortest decimal that rounds to it (1e-06, not 9.99999997e-07),
  which is what the model's config.json said before llama.cpp stored it as float32."""
  return float(str(np.float32(value)))


def _unpermute_rotary(weight_OI: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's interleaving of the rotary pairs in Llama q/k rows ([heads * Dh, in])."""
  rows = weight_OI.shape[0]
  return (weight_OI.reshape(heads, rows // heads // 2, 2, *weight_OI.shape[1:])
          .swapaxes(1, 2).reshape(weight_OI.shape))


def _gemma_norm_offset(stored: np.ndarray) -> np.ndarray:
  """A Gemma norm weight as Hugging Face keeps it (the offset w of the scale 1 + w); llama.cpp stores 1 + w."""
  return stored - np.float32(1.0)


class GGUFCheckpoint:
  """One GGUF file, memory-mapped, read in Hugging Face terms (see the module docstring).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a GGUF file, or an architecture this loader does not support.
  """

  def __init__(self, path: str):
    gguf = _import_gguf()
    self.path = str(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"no GGUF file at {self.path!r}")
    try:
      self._reader = gguf.GGUFReader(self.path, "r")
    except (ValueError, OSError) as error:
      raise ValueError(f"{self.path}: not a readable GGUF file ({error})") from None
    self._gguf = gguf
    self.architecture = self._get("general.architecture")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"{self.path}: unsupported GGUF architecture {self.architecture!r}: cyb_jax "
                       f"loads {', '.join(ARCHITECTURES)}")
    self.family = ARCHITECTURES[self.architecture]
    self._tensors = {t.name: t for t in self._reader.tensors}
    self._names = self._hf_names()

  # ---------------------------------------------------------------------------------------------
  # metadata

  def _get(self, key: str, default: Any = KeyError) -> Any:
    field = self._reader.fields.get(key)
    if field is None:
      if default is KeyError:
        raise ValueError(f"{self.path}: GGUF metadata lacks {key!r}")
      return default
    return field.contents()

  def _arch(self, key: str, default: Any = KeyError) -> Any:
    return self._get(f"{self.architecture}.{key}", default)

  def hf_config(self) -> dict:
    """The model's transformers `config.json` (4.x form) as a dict. ValueError names a missing key."""
    arch, family = self.architecture, self.family
    heads = self._arch("attention.head_count")
    kv_heads = self._arch("attention.head_count_kv", heads)
    if isinstance(heads, list) or isinstance(kv_heads, list):
      raise ValueError(f"{self.path}: per-layer head counts ({arch}.attention.head_count) are not "
                       "supported")
    width = int(self._arch("embedding_length"))
    embed = self._tensors.get("token_embd.weight")
    if embed is None:
      raise ValueError(f"{self.path}: GGUF tensor 'token_embd.weight' is missing")
    layers = int(self._arch("block_count"))
    head_dim = int(self._arch("attention.key_length", width // int(heads)))
    config: dict[str, Any] = {
        "model_type": family,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "intermediate_size": int(self._arch("feed_forward_length")),
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
        # The vocabulary is the embedding's row count (ne1), as with Qwen's padded tables.
        "vocab_size": int(embed.shape[1]),
        "rms_norm_eps": _decimal(self._arch("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(self._arch("context_length")),
        "tie_word_embeddings": "output.weight" not in self._tensors,
        "torch_dtype": "float32",
    }
    base = self._arch("rope.freq_base", None)
    if base is not None:
      config["rope_theta"] = _decimal(base)
    bos, eos = self._get("tokenizer.ggml.bos_token_id", None), self._get("tokenizer.ggml.eos_token_id", None)
    if bos is not None:
      config["bos_token_id"] = int(bos)
    if eos is not None:
      config["eos_token_id"] = int(eos)
    if family == "llama":
      config["attention_bias"] = "blk.0.attn_q.bias" in self._tensors
      config["mlp_bias"] = "blk.0.ffn_gate.bias" in self._tensors
    config.update(self._rope_scaling())
    if family in ("gemma2", "gemma3_text"):
      config["hidden_activation"] = "gelu_pytorch_tanh"
      # llama.cpp scales queries by 1/sqrt(head_dim), except in the 27B models (1/sqrt(width/heads)),
      # which is what query_pre_attn_scalar says in their HF configs.
      big = (family == "gemma2" and layers == 46) or (family == "gemma3_text" and layers == 62)
      config["query_pre_attn_scalar"] = width // int(heads) if big else head_dim
      window = self._arch("attention.sliding_window", None)
      if window is not None:
        config["sliding_window"] = int(window)
    if family == "gemma2":
      for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = self._arch(key, None)
        config[key] = None if value is None else _decimal(value)
    if family == "gemma3_text":
      # llama.cpp: every 6th layer global, the sliding ones with RoPE base 10000 (both fixed there).
      config["sliding_window_pattern"] = 6
      config["rope_local_base_freq"] = 10_000.0
      config.setdefault("rope_theta", 1_000_000.0)
    return config

  def _rope_scaling(self) -> dict:
    """{"rope_scaling": {...}} for linear or Llama 3 scaling, or {} when unscaled."""
    kind = self._arch("rope.scaling.type", None)
    freqs = self._tensors.get("rope_freqs.weight")
    if freqs is not None:
      return {"rope_scaling": self._llama3_from_freqs(self.dequantized("rope_freqs.weight"))}
    if kind in (None, "none"):
      return {}
    if kind == "linear":
      return {"rope_scaling": {"rope_type": "linear", "factor": _decimal(self._arch("rope.scaling.factor"))}}
    raise ValueError(f"{self.path}: unsupported RoPE scaling {kind!r} ({self.architecture}.rope.scaling.type): "
                     "cyb_jax implements linear and llama3")

  def _llama3_from_freqs(self, freqs: np.ndarray) -> dict:
    """The Llama 3 RoPE scaling whose per-frequency divisors are `rope_freqs` (llama.cpp stores the
    divisors, not the parameters). Tries the published parameter sets; ValueError if none matches."""
    config = self.hf_config_base()
    head_dim = config["head_dim"]
    theta = config["rope_theta"]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = _decimal(freqs.max())
    for low, high, original in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 2048), (1.0, 2.0, 8192)):
      wavelen = 2 * np.pi / inv_freq
      low_wavelen, high_wavelen = original / low, original / high
      smooth = (original / wavelen - low) / (high - low)
      divisor = np.where(wavelen < high_wavelen, 1.0,
                         np.where(wavelen > low_wavelen, factor, 1.0 / ((1 - smooth) / factor + smooth)))
      if np.allclose(divisor, freqs, rtol=1e-4, atol=1e-6):
        return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": original}
    raise ValueError(f"{self.path}: tensor rope_freqs.weight matches no Llama 3 RoPE scaling cyb_jax knows")

  def hf_config_base(self) -> dict:
    """The few keys `_llama3_from_freqs` needs, without recursing into the scaling."""
    width = int(self._arch("embedding_length"))
    heads = int(self._arch("attention.head_count"))
    return {"head_dim": int(self._arch("attention.key_length", width // heads)),
            "rope_theta": float(self._arch("rope.freq_base", 10_000.0))}

  # ---------------------------------------------------------------------------------------------
  # tensors

  def _hf_names(self) -> dict[str, str]:
    """{HF tensor name: GGUF tensor name} for every tensor of the file."""
    gemma = self.family.startswith("gemma")
    per_layer = {
        "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        # Llama/Qwen: ffn_norm is the pre-MLP norm; Gemma has four norms per layer.
        "ffn_norm": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
           "rope_freqs": "rope_freqs"}
    names = {}
    for name in self._tensors:
      stem, _, suffix = name.rpartition(".")
      parts = stem.split(".")
      if len(parts) == 3 and parts[0] == "blk" and parts[2] in per_layer:
        hf = f"model.layers.{parts[1]}.{per_layer[parts[2]]}.{suffix}"
      elif stem in top:
        hf = f"{top[stem]}.{suffix}"
      else:
        hf = name  # unmapped: the loader's unmapped-tensor check names it
      names[hf] = name
    return names

  def tensor_names(self) -> list[str]:
    """Every tensor of the file under its Hugging Face name (unknown ones under their GGUF name)."""
    return list(self._names)

  def tensor_shape(self, hf_name: str) -> tuple[int, ...]:
    """The HF-layout shape of a tensor, from the header (nothing dequantized)."""
    return tuple(int(n) for n in reversed(self._tensors[self._names[hf_name]].shape))

  def dequantized(self, gguf_name: str) -> np.ndarray:
    """A GGUF tensor as float32 in `[ne_last, ..., ne0]` order, as stored (no HF conventions)."""
    tensor = self._tensors[gguf_name]
    qtype = tensor.tensor_type
    shape = tuple(int(n) for n in reversed(tensor.shape))
    try:
      values = self._gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
      raise ValueError(f"{self.path}: tensor {gguf_name!r} has quantization type {qtype.name}, which the "
                       "gguf package cannot dequantize") from None
    return np.asarray(values, np.float32).reshape(shape)

  def tensor(self, hf_name: str) -> np.ndarray:
    """One tensor, float32, in the Hugging Face layout and convention (see the module docstring)."""
    gguf_name = self._names[hf_name]
    array = self.dequantized(gguf_name)
    if self.family == "llama" and gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
      array = _unpermute_rotary(array, int(self._arch("attention.head_count")))
    elif self.family == "llama" and gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
      heads = self._arch("attention.head_count")
      array = _unpermute_rotary(array, int(self._arch("attention.head_count_kv", heads)))
    elif self.family.startswith("gemma") and gguf_name.endswith("norm.weight"):
      array = _gemma_norm_offset(array)
    return array

  def quantization_types(self) -> dict[str, int]:
    """{quantization type name: number of tensors}, for logs."""
    counts: dict[str, int] = {}
    for tensor in self._tensors.values():
      counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts

  # ---------------------------------------------------------------------------------------------
  # tokenizer

  def _special_ids(self) -> tuple[Optional[int], Optional[int]]:
    bos = self._get("tokenizer.ggml.bos_token_id", None)
    eos = self._get("tokenizer.ggml.eos_token_id", None)
    return (None if bos is None else int(bos)), (None if eos is None else int(eos))

  def add_bos(self) -> bool:
    """`tokenizer.ggml.add_bos_token`; absent: True for SentencePiece vocabularies, else False (as
    transformers' GGUF tokenizer reads it)."""
    value = self._get("tokenizer.ggml.add_bos_token", None)
    if value is None:
      return self._get("tokenizer.ggml.model") == "llama"
    return bool(value)

  def tokenizer_json(self) -> str:
    """A `tokenizers` tokenizer.json (as a string) equal to the tokenizer the metadata describes.

    Raises ValueError naming an unknown `tokenizer.ggml.model` or `tokenizer.ggml.pre`.
    """
    model = self._get("tokenizer.ggml.model")
    if model != "gpt2":
      raise ValueError(f"{self.path}: tokenizer.ggml.model {model!r} is not supported (cyb_jax rebuilds "
                       "byte-level BPE ('gpt2') vocabularies; convert the model's own tokenizer.json instead)")
    pre = self._get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
      raise ValueError(f"{self.path}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; cyb_jax knows "
                       f"{', '.join(sorted(PRE_TOKENIZERS))}")
    tokens = self._get("tokenizer.ggml.tokens")
    merges = self._get("tokenizer.ggml.merges", [])
    types = self._get("tokenizer.ggml.token_type", [1] * len(tokens))
    splits = [{"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
              for regex in PRE_TOKENIZERS[pre]]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": kind == TOKEN_CONTROL}
             for i, (token, kind) in enumerate(zip(tokens, types))
             if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    bos, _ = self._special_ids()
    if self.add_bos() and bos is not None:
      post = {"type": "TemplateProcessing",
              "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}}],
              "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                       {"Sequence": {"id": "B", "type_id": 1}}],
              "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}}
    else:
      post = None
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*splits, byte_level]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {token: i for i, token in enumerate(tokens)},
                  "merges": [merge.split(" ", 1) for merge in merges]},
    }
    return json.dumps(document, ensure_ascii=False)

  def tokenizer_config(self) -> dict:
    """A tokenizer_config.json naming BOS/EOS by content, with `add_bos_token`."""
    tokens = self._get("tokenizer.ggml.tokens")
    bos, eos = self._special_ids()
    config: dict[str, Any] = {"add_bos_token": self.add_bos(), "tokenizer_class": "PreTrainedTokenizerFast"}
    if bos is not None:
      config["bos_token"] = tokens[bos]
    if eos is not None:
      config["eos_token"] = tokens[eos]
    return config

  def generation_config(self) -> dict:
    _, eos = self._special_ids()
    bos, _ = self._special_ids()
    config: dict[str, Any] = {}
    if bos is not None:
      config["bos_token_id"] = bos
    if eos is not None:
      config["eos_token_id"] = eos
    return config


@functools.lru_cache(maxsize=1)
def _open(path: str, mtime_ns: int, size: int) -> GGUFCheckpoint:
  del mtime_ns, size  # cache keys only: a rewritten file is parsed again
  return GGUFCheckpoint(path)


def open_gguf(path: str) -> GGUFCheckpoint:
  """`GGUFCheckpoint(path)`, parsed once per file version (a real vocabulary takes seconds to parse)."""
  path = os.path.abspath(str(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no GGUF file at {path!r}")
  stat = os.stat(path)
  return _open(path, stat.st_mtime_ns, stat.st_size)
