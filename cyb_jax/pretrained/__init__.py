"""Open-weight models from local Hugging Face checkpoint directories (no torch, nothing downloaded).

  hf_config.py      config.json (transformers 4.x and 5.x forms) -> ModelConfig, per family
  hf_checkpoint.py  safetensors weights -> cyb_jax params, placed as they are converted

Tokenizers (`tokenizer.json`, `tokenizer.model`) load through `cyb_jax.data.tokenizer`.
"""

from cyb_jax.pretrained.hf_checkpoint import load_hf_checkpoint, sharded_place
from cyb_jax.pretrained.hf_config import FAMILIES, model_config_from_hf, read_hf_config
