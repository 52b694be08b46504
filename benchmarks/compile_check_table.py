"""The README's compile-check table: real model shapes compiled for TPU chips (a script, not a test).

  /work/venv-tpu/bin/python benchmarks/compile_check_table.py                 # the whole table
  ... --models=smollm2 --chips=v5e:2x2 --pauses=0,1 --attention=pallas --seq_len=4096

For every model, chip and K it runs `cyb_jax.compile_check.check` (the trainer's own train and eval steps,
configs/finetune_hf.py with bfloat16 matmuls, AdamW, fsdp over every chip, one 2048-token sequence per
chip) and prints one markdown row per step: compile seconds, per-chip arguments, temporaries and total
memory from the TPU compiler, whether it fits the chip's HBM, and matmul GFLOP per chip. Needs libtpu
(`pip install -e '.[tpu]'`) and ../shared (the SmolLM2-135M GGUF: its shape, and the tokenizer every row
reads for the data settings). Qwen3-0.6B and Gemma-3-270M are shape-only: `configs/shapes/*/config.json`,
their Hugging Face config.json files (architecture facts, no weights); their tokenizer here is SmolLM2's,
which only sets the data's vocabulary (the model keeps its own, 151936 and 262144 tokens).

Each finished row is recorded in --record (JSON, one entry per model, chip, K, attention and sequence
length) and read back instead of compiled again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from cyb_jax import cli  # noqa: E402
from cyb_jax import compile_check  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
GGUF = os.path.join(SHARED, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODELS = {
    "smollm2": ("SmolLM2-135M", GGUF),
    "qwen3": ("Qwen3-0.6B", os.path.join(CONFIGS, "shapes", "qwen3-0.6b")),
    "gemma3": ("Gemma-3-270M", os.path.join(CONFIGS, "shapes", "gemma-3-270m")),
}
GIB = 1024 ** 3


def row_key(model: str, chip: str, pauses: int, attention: str, seq_len: int) -> str:
  return f"{model}|{chip}|K={pauses}|{attention}|N={seq_len}"


def measure(model: str, chip: str, pauses: int, attention: str, seq_len: int) -> list[dict]:
  """The compile check of one configuration: a dict per step (train, eval)."""
  from configs import finetune_hf  # pylint: disable=g-import-not-at-top
  config = finetune_hf.get_config()
  config.init_from_hf = MODELS[model][1]
  config.data.tokenizer_path = GGUF
  config.data.seq_len = seq_len
  config.num_pauses = pauses
  config.model.max_pauses = max(1, pauses)
  config.model.attention = attention
  topology = compile_check.parse_topology(chip)
  config.train.batch_size = len(compile_check.topology_devices(topology))  # one sequence per chip
  report = compile_check.check(config, topology)
  rows = []
  for result in report.results:
    row = {"step": result.step, "compile_s": round(result.compile_s, 1),
           "gflop_per_chip": None if result.flops is None else round(result.flops / 1e9, 1),
           "hbm_gib": report.hbm_gib, "error": result.error}
    if result.memory is not None:
      m = result.memory
      row.update(arguments_gib=round(m.arguments / GIB, 2), temporaries_gib=round(m.temporaries / GIB, 2),
                 total_gib=round(m.total / GIB, 2), fits=compile_check.fits_text(m.total, report.hbm_gib))
    rows.append(row)
  return rows


def markdown(record: dict) -> str:
  lines = ["| model | chip | K | step | compile (s) | arguments | temporaries | total (GiB per chip) | fits | "
           "GFLOP per chip |", "|---|---|---|---|---:|---:|---:|---:|---|---:|"]
  for key, rows in record.items():
    model, chip, pauses, attention, seq_len = key.split("|")
    name = MODELS[model][0] + ("" if attention == "auto" else f", {attention}") + (
        "" if seq_len == "N=2048" else f", {seq_len}")
    for row in rows:
      if row["error"]:
        lines.append(f"| {name} | {chip} | {pauses[2:]} | {row['step']} | {row['compile_s']} | | | | NO: "
                     f"{row['error'][:90]} | {row['gflop_per_chip']:,} |")
        continue
      lines.append(f"| {name} | {chip} | {pauses[2:]} | {row['step']} | {row['compile_s']} | "
                   f"{row['arguments_gib']:.2f} | {row['temporaries_gib']:.2f} | {row['total_gib']:.2f} | "
                   f"{row['fits']} | {row['gflop_per_chip']:,} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--chips", default="v5e:2x2,v6e:2x2")
  parser.add_argument("--pauses", default="0,1,2,3")
  parser.add_argument("--attention", default="auto")
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--record", default="results/compile_check_table.json")
  args = parser.parse_args()
  if not compile_check.libtpu_available():
    raise SystemExit(f"needs libtpu: {compile_check.LIBTPU_HINT}")
  if not os.path.isfile(GGUF):
    raise SystemExit(f"needs {GGUF} (../shared beside the checkout)")
  cli.quiet_libraries()
  record = {}
  if os.path.isfile(args.record):
    with open(args.record, encoding="utf-8") as f:
      record = json.load(f)
  for chip in args.chips.split(","):
    for model in args.models.split(","):
      for pauses in (int(k) for k in args.pauses.split(",")):
        key = row_key(model, chip, pauses, args.attention, args.seq_len)
        if key in record:
          continue
        start = time.perf_counter()
        record[key] = measure(model, chip, pauses, args.attention, args.seq_len)
        print(f"{key}: {time.perf_counter() - start:.0f} s", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
        with open(args.record + ".tmp", "w", encoding="utf-8") as f:
          json.dump(record, f, indent=1)
        os.replace(args.record + ".tmp", args.record)
        import jax  # pylint: disable=g-import-not-at-top
        jax.clear_caches()
  print(markdown(record))


if __name__ == "__main__":
  main()
