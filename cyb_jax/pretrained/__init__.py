"""Open-weight models from local Hugging Face checkpoint directories or GGUF files (no torch, nothing
downloaded).

  hf_config.py      config.json (transformers 4.x and 5.x forms) -> ModelConfig, per family
  hf_checkpoint.py  safetensors or GGUF weights -> cyb_jax params, placed as they are converted
  gguf_file.py      a llama.cpp GGUF file read as a Hugging Face checkpoint (config, tensors, tokenizer)
  convert.py        `python -m cyb_jax.pretrained.convert FILE.gguf OUT_DIR`: a GGUF file written as a
                    Hugging Face directory

Tokenizers (`tokenizer.json`, `tokenizer.model`, a GGUF file's vocabulary) load through
`cyb_jax.data.tokenizer`.
"""

from cyb_jax.pretrained.gguf_file import GGUFCheckpoint, is_gguf, open_gguf
from cyb_jax.pretrained.hf_checkpoint import load_hf_checkpoint, read_pretrained_config, sharded_place
from cyb_jax.pretrained.hf_config import FAMILIES, model_config_from_hf, read_hf_config
