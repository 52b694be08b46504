"""A Hugging Face `config.json` (transformers 4.x or 5.x form) as a cyb_jax `ModelConfig`.

Supported families (PRETRAINED.md): Llama (`llama`), Qwen2 (`qwen2`), Qwen3 (`qwen3`), Gemma 2
(`gemma2`), Gemma 3 text (`gemma3_text`). Anything else, or a RoPE variant we do not implement, is refused
with a ValueError naming it: a model loaded with the wrong block would give plausible but wrong logits.

The two config forms: transformers 4.x writes `rope_theta`, `rope_scaling` (with `rope_type` or the older
`type`), Gemma 3's `rope_local_base_freq`, `torch_dtype`; 5.x writes `rope_parameters` (for Gemma 3 one
entry per layer type) and `dtype`. Real hub checkpoints come in both, so both are read. Defaults for
absent keys are the ones each family's transformers config class uses (e.g. `head_dim` 128 for Qwen3 and
256 for Gemma, not hidden / heads).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from cyb_jax.model.config import ModelConfig

CONFIG_FILE = "config.json"
FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
SLIDING, FULL = "sliding_attention", "full_attention"


def read_hf_config(directory: str) -> dict:
  """The parsed `config.json` of a checkpoint directory; errors name the file."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {directory!r}: not a Hugging Face checkpoint directory")
  with open(path, encoding="utf-8") as handle:
    try:
      hf = json.load(handle)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not valid JSON ({error})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return hf


def _family(hf: dict) -> str:
  model_type = hf.get("model_type")
  if model_type == "gemma3" and "text_config" in hf:
    raise ValueError("model_type 'gemma3' is the multimodal Gemma 3; load a text-only checkpoint "
                     "(model_type 'gemma3_text', e.g. gemma-3-270m or gemma-3-1b)")
  if model_type not in FAMILIES:
    raise ValueError(f"unsupported model_type {model_type!r}: cyb_jax loads {', '.join(FAMILIES)} "
                     "(other families have a different block: layer norms with biases, learned or partial "
                     "rotary positions, parallel residuals)")
  return model_type


def _get(hf: dict, key: str, default: Any) -> Any:
  """hf[key], or `default` when the key is absent or null."""
  value = hf.get(key)
  return default if value is None else value


def _cap(hf: dict, key: str, default: float) -> float:
  """A soft-cap: `default` when the key is absent, 0 (off) when it is null, as transformers reads it."""
  if key not in hf:
    return default
  return 0.0 if hf[key] is None else float(hf[key])


# max_position_embeddings of each family's transformers config class, for configs that omit it.
DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "qwen3": 32768, "gemma2": 8192,
                         "gemma3_text": 131072}


def _rope_entry(entry: Optional[dict], where: str) -> dict:
  """One RoPE parameter set, validated: {"rope_type", "rope_theta"?, "factor"?, ...}."""
  if entry is None:
    return {"rope_type": "default"}
  if not isinstance(entry, dict):
    raise ValueError(f"{where} must be an object, got {entry!r}")
  rope_type = entry.get("rope_type", entry.get("type", "default")) or "default"
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"unsupported RoPE type {rope_type!r} in {where}: cyb_jax implements "
                     f"{', '.join(ROPE_TYPES)} (not dynamic, yarn, longrope or other scalings)")
  return {**entry, "rope_type": rope_type}


def _rope_settings(hf: dict, family: str) -> tuple[dict, Optional[dict]]:
  """(global rope, local rope or None): each {"rope_type", "theta", scaling keys...}."""
  default_theta = 1_000_000.0 if family == "gemma3_text" else 10_000.0
  params = hf.get("rope_parameters")
  if params is not None and hf.get("rope_scaling") is None:  # transformers 5.x form
    if not isinstance(params, dict):
      raise ValueError(f"config.json rope_parameters must be an object, got {params!r}")
    if FULL in params or SLIDING in params:  # nested by layer type (Gemma 3)
      full = _rope_entry(params.get(FULL), "rope_parameters.full_attention")
      local = _rope_entry(params.get(SLIDING), "rope_parameters.sliding_attention")
      full["theta"] = float(full.get("rope_theta", _get(hf, "rope_theta", default_theta)))
      local["theta"] = float(local.get("rope_theta", _get(hf, "rope_local_base_freq", 10_000.0)))
    else:
      full = _rope_entry(params, "rope_parameters")
      full["theta"] = float(params.get("rope_theta", _get(hf, "rope_theta", default_theta)))
      local = None
  else:  # transformers 4.x form
    full = _rope_entry(hf.get("rope_scaling"), "rope_scaling")
    full["theta"] = float(_get(hf, "rope_theta", default_theta))
    local = None
    if family == "gemma3_text":
      local = {"rope_type": "default", "theta": float(_get(hf, "rope_local_base_freq", 10_000.0))}
  if family == "gemma3_text" and local is None:
    local = {"rope_type": "default", "theta": float(_get(hf, "rope_local_base_freq", 10_000.0))}
  if local is not None and local["rope_type"] != "default":
    raise ValueError(f"unsupported RoPE type {local['rope_type']!r} on sliding-window layers: cyb_jax "
                     "scales only the global layers' RoPE")
  partial = hf.get("partial_rotary_factor")
  if partial is not None and float(partial) != 1.0:
    raise ValueError(f"unsupported RoPE: partial_rotary_factor {partial} (cyb_jax rotates every feature)")
  return full, local


def _layer_types(hf: dict, family: str, num_layers: int) -> list[str]:
  """Which layers attend within a sliding window, as transformers decides for each family."""
  types = hf.get("layer_types")
  if family in ("qwen2", "qwen3"):
    # Qwen configs carry a `sliding_window` that is off unless use_sliding_window is set.
    if not hf.get("use_sliding_window", False):
      return [FULL] * num_layers
    if types is None:
      first_sliding = int(_get(hf, "max_window_layers", 28))  # the Qwen config classes' default
      types = [SLIDING if i >= first_sliding else FULL for i in range(num_layers)]
  elif family == "gemma2":
    if types is None:
      types = [SLIDING if (i + 1) % 2 else FULL for i in range(num_layers)]
  elif family == "gemma3_text":
    if hf.get("use_bidirectional_attention"):
      raise ValueError("unsupported Gemma 3 config: use_bidirectional_attention (an embedding model, "
                       "not a causal LM)")
    if types is None:
      pattern = int(_get(hf, "sliding_window_pattern", 6))
      types = [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
  else:
    return [FULL] * num_layers
  if len(types) != num_layers or any(t not in (SLIDING, FULL) for t in types):
    raise ValueError(f"config.json layer_types must list {num_layers} entries of {FULL!r} or {SLIDING!r}, "
                     f"got {types!r}")
  return list(types)


def model_config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """The cyb_jax `ModelConfig` of a plain LM (`max_pauses` = 0) equal to the HF model described by `hf`.

  `overrides` set other ModelConfig fields (pause options, compute dtype, remat). Raises ValueError
  naming an unsupported model_type, RoPE type or activation, or a missing key.
  """
  family = _family(hf)
  gemma = family.startswith("gemma")
  try:
    width = int(hf["hidden_size"])
    num_heads = int(hf["num_attention_heads"])
    num_layers = int(hf["num_hidden_layers"])
    mlp_hidden = int(hf["intermediate_size"])
    vocab_size = int(hf["vocab_size"])
  except KeyError as error:
    raise ValueError(f"config.json lacks {error.args[0]!r}") from None
  num_kv_heads = int(_get(hf, "num_key_value_heads", num_heads))
  default_head_dim = {"qwen3": 128, "gemma2": 256, "gemma3_text": 256}.get(family, width // num_heads)
  head_dim = int(_get(hf, "head_dim", default_head_dim))
  activation_name = _get(hf, "hidden_activation", _get(hf, "hidden_act", "gelu_pytorch_tanh" if gemma
                                                        else "silu"))
  if activation_name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {activation_name!r} in config.json: cyb_jax implements "
                     f"{', '.join(ACTIVATIONS)}")
  attention_bias = bool(_get(hf, "attention_bias", False))

  full, local = _rope_settings(hf, family)
  types = _layer_types(hf, family, num_layers)
  # transformers' Gemma and Qwen configs default to a 4096-position window.
  window = int(_get(hf, "sliding_window", 4096)) if SLIDING in types else 0
  if SLIDING in types and window < 1:
    raise ValueError("config.json marks sliding-window layers but gives no sliding_window")
  layer_windows = tuple(window if t == SLIDING else 0 for t in types) if window else ()

  rope = dict(rope_base=full["theta"], rope_scaling="none")
  if full["rope_type"] == "linear":
    rope.update(rope_scaling="linear", rope_factor=float(full["factor"]))
  elif full["rope_type"] == "llama3":
    try:
      rope.update(rope_scaling="llama3", rope_factor=float(full["factor"]),
                  rope_low_freq_factor=float(full["low_freq_factor"]),
                  rope_high_freq_factor=float(full["high_freq_factor"]),
                  rope_original_max_len=int(full.get(
                      "original_max_position_embeddings",
                      _get(hf, "original_max_position_embeddings", hf.get("max_position_embeddings")))))
    except (KeyError, TypeError) as error:
      raise ValueError(f"llama3 RoPE scaling lacks {error}") from None
  if local is not None and layer_windows:
    rope["rope_local_base"] = local["theta"]

  values = dict(
      vocab_size=vocab_size, width=width, num_layers=num_layers, num_heads=num_heads,
      mlp_hidden=mlp_hidden, max_pauses=0,
      max_len=int(_get(hf, "max_position_embeddings", DEFAULT_MAX_POSITIONS[family])),
      num_kv_heads=num_kv_heads if num_kv_heads != num_heads else 0,
      head_dim=head_dim if head_dim != width // num_heads or width % num_heads else 0,
      qkv_bias=True if family == "qwen2" else attention_bias,
      out_bias=attention_bias and family != "qwen2",
      mlp_bias=bool(_get(hf, "mlp_bias", False)) if family == "llama" else False,
      qk_norm=family in ("qwen3", "gemma3_text"),
      norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
      norm_offset=gemma, sandwich_norms=gemma, embed_scale=gemma,
      mlp_activation=ACTIVATIONS[activation_name],
      tie_embeddings=bool(_get(hf, "tie_word_embeddings", gemma)),
      query_scale=float(_get(hf, "query_pre_attn_scalar", 256)) ** -0.5 if gemma else 0.0,
      # Gemma 3's attention never applies attn_logit_softcapping, whatever its config says.
      attn_softcap=_cap(hf, "attn_logit_softcapping", 50.0) if family == "gemma2" else 0.0,
      final_softcap=_cap(hf, "final_logit_softcapping", 30.0 if family == "gemma2" else 0.0) if gemma else 0.0,
      layer_windows=layer_windows, **rope)
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
  if unknown:
    raise ValueError(f"unknown ModelConfig fields {unknown}")
  values.update(overrides)
  return ModelConfig(**values)

