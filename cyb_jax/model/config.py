"""`ModelConfig`: the architecture and pause options of a cyb_jax model, validated on construction.

The defaults are cyb_jax's own block (pre-norm, SiLU-gated MLP, rotary positions, full attention). The
block options below them are what open-weight families need (PRETRAINED.md; each field names the Hugging
Face `config.json` key it comes from); every option is implemented once, in `transformer.py` and
`attention.py`, and so holds for step 0, pause steps, the stream option and generation alike.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

PAUSE_CONTEXTS = ("private", "stream")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MLP_ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_SCALINGS = ("none", "linear", "llama3")
# How the real-token part of every attention is computed (attention.py): "dense" materialises the
# [Q, T] scores (the test oracle); "blockwise" is an online softmax over key blocks in portable JAX,
# memory linear in T; "pallas" is the same in fused Pallas kernels (pallas_attention.py; interpreted on
# CPU, compiled through Mosaic for TPU but never yet run on one, so opt-in); "auto" is dense when the keys
# fit one block, else blockwise.
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "blockwise", "pallas")


class RopeSpec(NamedTuple):
  """The rotary embedding of one layer (hashable; see `layers.rope_inverse_frequencies`)."""

  base: float
  scaling: str = "none"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192


class AttentionSpec(NamedTuple):
  """The attention of one layer: sliding `window` (0 = full), logit `softcap` (0 = none), score `scale`,
  and how it is computed: `implementation` ("auto", "dense", "blockwise" or "pallas") with key blocks of
  `block`."""

  window: int
  softcap: float
  scale: float
  implementation: str = "dense"
  block: int = 256


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and pause options. Validated on construction (errors name the field).

  Sizes 0 mean "derived": `num_kv_heads` 0 = `num_heads`, `head_dim` 0 = width / num_heads; read the
  resolved values from `kv_heads` and `head_size`. Floats 0.0 mean "off" for the soft-caps, `query_scale`
  and `rope_local_base`.
  """

  vocab_size: int = 256          # V, real tokens; the head adds <dk> as index V
  width: int = 128               # D
  num_layers: int = 2            # L
  num_heads: int = 4             # H
  mlp_hidden: int = 512          # gated-MLP hidden width
  max_len: int = 512             # longest sequence (real tokens) the model is used with
  max_pauses: int = 3            # Kmax: rows of the step embedding; rollouts may use K <= Kmax
  dtype: str = "float32"         # compute dtype of matmuls: "float32" or "bfloat16"
  remat: bool = False            # rematerialise each layer in the backward pass (saves memory)
  scan_layers: bool = True       # the layer loop is a lax.scan over stacked layers (False: unrolled)
  dk_init_prob: float = 0.1      # initial probability of <dk>, roughly, at every step
  pause_context: str = "private"  # "private" chains (default) or "stream" (pauses are ordinary tokens)
  pause_feedback: bool = False   # pause j also reads a projection of step j-1's hidden state (below)
  # With feedback: the layer whose output residual pause j reads of step j-1, 0-based (as a Python index:
  # -1, the default, is the last layer, i.e. the final hidden state). An earlier layer gives the pause an
  # intermediate state while step 0's last layer stays an answer (DESIGN.md section 8).
  pause_feedback_layer: int = -1
  pause_reads_token: bool = True  # a pause input includes its real token's embedding
  rope_base: float = 10000.0     # rope_theta (of full-attention layers)

  # Block options of open-weight families (HF config key in brackets).
  num_kv_heads: int = 0          # grouped KV heads [num_key_value_heads]; 0 = num_heads
  head_dim: int = 0              # features per head [head_dim]; 0 = width // num_heads
  qkv_bias: bool = False         # biases on the q, k, v projections [attention_bias; Qwen2 always]
  out_bias: bool = False         # bias on the attention output projection [attention_bias, Llama]
  mlp_bias: bool = False         # biases on the MLP projections [mlp_bias]
  qk_norm: bool = False          # RMSNorm over head features on q and k, before RoPE [Qwen3, Gemma 3]
  norm_eps: float = 1e-6         # RMSNorm epsilon [rms_norm_eps]
  norm_offset: bool = False      # RMSNorm scale is 1 + w instead of w [Gemma]
  sandwich_norms: bool = False   # also normalise the attention and MLP outputs [Gemma 2/3]
  embed_scale: bool = False      # input embeddings times sqrt(width), in the compute dtype [Gemma]
  mlp_activation: str = "silu"   # gate activation: "silu" or "gelu_tanh" [hidden_act(ivation)]
  tie_embeddings: bool = False   # output head = input embedding table [tie_word_embeddings]
  query_scale: float = 0.0       # attention score scale; 0 = head_size ** -0.5 [query_pre_attn_scalar ** -0.5]
  attn_softcap: float = 0.0      # scores -> c tanh(scores / c) [attn_logit_softcapping]
  final_softcap: float = 0.0     # real-vocabulary logits -> c tanh(logits / c) [final_logit_softcapping]
  layer_windows: tuple = ()      # per-layer sliding window in positions (0 = full); () = all full
  rope_local_base: float = 0.0   # rope base of windowed layers, unscaled [rope_local_base_freq]; 0 = global rope
  rope_scaling: str = "none"     # "none", "linear" or "llama3" [rope_scaling.rope_type]
  rope_factor: float = 1.0       # linear and llama3 [factor]
  rope_low_freq_factor: float = 1.0   # llama3 [low_freq_factor]
  rope_high_freq_factor: float = 4.0  # llama3 [high_freq_factor]
  rope_original_max_len: int = 8192   # llama3 [original_max_position_embeddings]
  attention: str = "auto"        # "auto", "dense", "blockwise" or "pallas" (see ATTENTION_IMPLEMENTATIONS)
  attention_block: int = 256     # keys per block of the blockwise and pallas attention

  def __post_init__(self):
    # JSON (checkpoint metadata, config files) turns tuples into lists; the config must stay hashable.
    if isinstance(self.layer_windows, list):
      object.__setattr__(self, "layer_windows", tuple(self.layer_windows))
    for name in ("vocab_size", "width", "num_layers", "num_heads", "mlp_hidden", "max_len"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    for name in ("max_pauses", "num_kv_heads", "head_dim"):
      if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
        raise ValueError(f"model.{name} must be a non-negative integer, got {getattr(self, name)!r}")
    if not self.head_dim and self.width % self.num_heads:
      raise ValueError(f"model.width ({self.width}) must be divisible by model.num_heads "
                       f"({self.num_heads}), or set model.head_dim")
    if self.head_size % 2:
      raise ValueError(f"model.head_dim (or width / num_heads) = {self.head_size} must be even "
                       "(rotary embeddings rotate pairs of features)")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"model.num_kv_heads ({self.kv_heads}) must divide model.num_heads "
                       f"({self.num_heads})")
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
    if self.pause_feedback_layer != -1 and not self.pause_feedback:
      raise ValueError(f"model.pause_feedback_layer = {self.pause_feedback_layer!r} needs model.pause_feedback")
    if not _is_int(self.pause_feedback_layer) or not (
        -self.num_layers <= self.pause_feedback_layer < self.num_layers):
      raise ValueError(f"model.pause_feedback_layer must be an integer layer index in [-{self.num_layers}, "
                       f"{self.num_layers}) (model.num_layers = {self.num_layers}), got "
                       f"{self.pause_feedback_layer!r}")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"model.mlp_activation must be one of {MLP_ACTIVATIONS}, got "
                       f"{self.mlp_activation!r}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"model.attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
    if not _is_int(self.attention_block) or self.attention_block < 8 or self.attention_block % 8:
      raise ValueError(f"model.attention_block must be a positive multiple of 8, got {self.attention_block!r}")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"model.rope_scaling must be one of {ROPE_SCALINGS}, got {self.rope_scaling!r}")
    for name in ("norm_eps", "rope_base", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
      value = getattr(self, name)
      if not _is_finite(value) or value <= 0:
        raise ValueError(f"model.{name} must be a positive number, got {value!r}")
    for name in ("query_scale", "attn_softcap", "final_softcap", "rope_local_base"):
      value = getattr(self, name)
      if not _is_finite(value) or value < 0:
        raise ValueError(f"model.{name} must be >= 0 (0 = off), got {value!r}")
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ValueError(f"model.rope_high_freq_factor ({self.rope_high_freq_factor}) must exceed "
                       f"model.rope_low_freq_factor ({self.rope_low_freq_factor}) for llama3 scaling")
    if not _is_int(self.rope_original_max_len) or self.rope_original_max_len < 1:
      raise ValueError(f"model.rope_original_max_len must be a positive integer, got "
                       f"{self.rope_original_max_len!r}")
    if self.layer_windows:
      if len(self.layer_windows) != self.num_layers:
        raise ValueError(f"model.layer_windows has {len(self.layer_windows)} entries, model.num_layers "
                         f"is {self.num_layers} (one window per layer, 0 = full attention)")
      if any(not _is_int(w) or w < 0 for w in self.layer_windows):
        raise ValueError(f"model.layer_windows must hold non-negative integers, got {self.layer_windows!r}")

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def head_size(self) -> int:
    """Features per attention head: `head_dim`, or width / num_heads when it is 0."""
    return self.head_dim or self.width // self.num_heads

  @property
  def kv_heads(self) -> int:
    """Key/value heads: `num_kv_heads`, or num_heads when it is 0 (no grouping)."""
    return self.num_kv_heads or self.num_heads

  @property
  def grouped(self) -> bool:
    """True when several query heads share a KV head (separate q and kv projections)."""
    return self.kv_heads != self.num_heads

  def layer_window(self, layer: int) -> int:
    """Sliding window of `layer` in positions (0 = full attention)."""
    return int(self.layer_windows[layer]) if self.layer_windows else 0

  def layer_rope(self, layer: int) -> RopeSpec:
    """Rotary settings of `layer`: windowed layers use `rope_local_base` (unscaled) when it is set."""
    if self.rope_local_base and self.layer_window(layer):
      return RopeSpec(base=float(self.rope_local_base))
    return RopeSpec(base=float(self.rope_base), scaling=self.rope_scaling, factor=float(self.rope_factor),
                    low_freq_factor=float(self.rope_low_freq_factor),
                    high_freq_factor=float(self.rope_high_freq_factor),
                    original_max_len=int(self.rope_original_max_len))

  @property
  def attention_implementation(self) -> str:
    """`attention` as each layer's spec carries it; "auto" is resolved per call in `attention.attend`:
    dense when all keys fit one block (the same memory, less bookkeeping), else blockwise."""
    return self.attention

  def layer_attention(self, layer: int) -> AttentionSpec:
    return AttentionSpec(window=self.layer_window(layer), softcap=float(self.attn_softcap),
                         scale=float(self.query_scale or self.head_size ** -0.5),
                         implementation=self.attention_implementation, block=int(self.attention_block))


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value)


def parameter_shapes(config: ModelConfig) -> dict:
  """The fields that decide the parameter shapes and names (compared when resuming or fine-tuning)."""
  keys = ("vocab_size", "width", "num_layers", "num_heads", "mlp_hidden", "max_pauses", "pause_feedback",
          "qkv_bias", "out_bias", "mlp_bias", "qk_norm", "sandwich_norms", "tie_embeddings")
  shapes = {key: getattr(config, key) for key in keys}
  shapes.update(kv_heads=config.kv_heads, head_size=config.head_size)
  return shapes
