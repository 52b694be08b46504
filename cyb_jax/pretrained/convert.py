"""`python -m cyb_jax.pretrained.convert FILE.gguf OUT_DIR`: a GGUF file written as a Hugging Face directory.

Writes `config.json` (transformers 4.x form, from the GGUF metadata), `model.safetensors` (float32, the
dequantized tensors in the Hugging Face names and layout: q/k rows back in rotate-half order, Gemma norms
as offsets; a tied head stored once, as `model.embed_tokens.weight`), `tokenizer.json`,
`tokenizer_config.json` and `generation_config.json`. The existing loader (`load_hf_checkpoint(OUT_DIR)`)
and `transformers` read the result; tensors are converted and written one at a time into the file, so the
peak memory is about one float32 copy of the model.

Exit status 1 with a one-line error (naming the file and the problem) for an unreadable or unsupported
file or an output directory that already holds a model.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

from cyb_jax.pretrained import gguf_file

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def convert(gguf_path: str, out_dir: str) -> list[str]:
  """Writes the Hugging Face directory; returns the files written. Raises ValueError/OSError (one line)."""
  checkpoint = gguf_file.open_gguf(gguf_path)
  existing = [f for f in FILES if os.path.exists(os.path.join(out_dir, f))]
  if existing:
    raise ValueError(f"{out_dir!r} already holds {', '.join(existing)}; choose an empty or new directory")
  config = checkpoint.hf_config()
  tokenizer_json = checkpoint.tokenizer_json()  # before writing anything: an unknown tokenizer stops here
  os.makedirs(out_dir, exist_ok=True)
  tensors = {}
  for name in checkpoint.tensor_names():
    if name == "rope_freqs.weight":  # read into config.json's rope_scaling
      continue
    tensors[name] = np.ascontiguousarray(checkpoint.tensor(name))
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  del tensors
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as handle:
    json.dump({**config, "architectures": [_architecture(config["model_type"])]}, handle, indent=2)
  with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as handle:
    handle.write(tokenizer_json)
  for name, value in (("tokenizer_config.json", checkpoint.tokenizer_config()),
                      ("generation_config.json", checkpoint.generation_config())):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as handle:
      json.dump(value, handle, indent=2, ensure_ascii=False)
  return list(FILES)


def _architecture(model_type: str) -> str:
  return {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
          "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}[model_type]


def main(argv: list[str]) -> int:
  if len(argv) != 3 or not gguf_file.is_gguf(argv[1]):
    print("usage: python -m cyb_jax.pretrained.convert FILE.gguf OUT_DIR", file=sys.stderr)
    return 2
  try:
    written = convert(argv[1], argv[2])
  except (OSError, ValueError, ImportError) as error:
    print(f"convert error: {error}", file=sys.stderr)
    return 1
  print(f"wrote {', '.join(written)} to {argv[2]}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
