"""Benchmark of attention at scale: memory and speed of each implementation, and sparse-loss pause chains.

  python benchmarks/attention.py           # about 12 minutes on 2 CPU cores
  python benchmarks/attention.py --quick   # smaller lengths, a few minutes

Measures, in one run (a script, not a test):
  1. memory: XLA's temp-buffer size of the compiled gradient of the CYB-AP loss through `rollout_stats`
     (width 384, 6 layers, batch 1, K = 3, remat off), for N = 512..4096, dense and blockwise attention
     (compiling only; nothing runs, so the dense N = 4096 program need not fit in memory);
  2. speed: train-step time (forward + backward + AdamW) of a small model (width 128, 4 layers, K = 1,
     batch 1) at N = 256..4096 for each implementation, interleaved in every repetition so machine noise
     hits them alike; dense is skipped where its step would need more than --max_dense_gib;
  3. sparse loss: on the default task (configs/default.py: 1 layer, K = 1, batch 32), step time with
     pause chains at every position and at the loss positions only, over K = 0.
The last printed line is one JSON object with the ratios.
Goals (issue "attention at scale"): memory(4096) / memory(1024) <= 4.5 and memory(4096) <= 3 GiB for the
blockwise default; blockwise step time at N = 256 within 1.15x of dense, faster from N = 1024; default
task with chains at loss positions only: time(K=1) / time(K=0) <= 1 + 1.1 P / N.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import default as default_config  # noqa: E402
from cyb_jax import configuration  # noqa: E402
from cyb_jax import losses  # noqa: E402
from cyb_jax import model as model_lib  # noqa: E402
from cyb_jax.data import example as example_lib  # noqa: E402
from cyb_jax.data import pipeline as data_pipeline  # noqa: E402
from rollout import time_interleaved  # noqa: E402  (benchmarks/rollout.py: warm-up, then interleaved medians)

GIB = 2 ** 30
MEMORY_MODEL = dict(vocab_size=256, width=384, num_layers=6, num_heads=6, mlp_hidden=1536, max_pauses=3,
                    pause_feedback=True)
SPEED_MODEL = dict(vocab_size=256, width=128, num_layers=4, num_heads=4, mlp_hidden=512, max_pauses=1,
                   pause_feedback=True)


def cyb_ap_loss(config, num_pauses, params, tokens_BN, mask_BN, positions_BP=None):
  stats = model_lib.rollout_stats(params, tokens_BN, tokens_BN, config, num_pauses, mask_BN,
                                  positions=positions_BP)
  mask = mask_BN if positions_BP is None else jnp.take_along_axis(mask_BN, positions_BP, axis=1)
  name = "cyb_ap" if num_pauses else "ce"
  kwargs = dict(gamma=0.9, omega=0.1) if num_pauses else {}
  return losses.objective_loss(name, stats, mask, **kwargs)[0]


def temp_gib(config: model_lib.ModelConfig, seq_len: int, num_pauses: int) -> float:
  """Temp-buffer GiB of the compiled gradient, from abstract shapes only."""
  params = jax.eval_shape(functools.partial(model_lib.init, config), jax.random.key(0))
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, seq_len), jnp.bool_)
  grad = jax.grad(functools.partial(cyb_ap_loss, config, num_pauses))
  compiled = jax.jit(grad).lower(params, tokens, mask).compile()
  return compiled.memory_analysis().temp_size_in_bytes / GIB


def train_step_runner(config, num_pauses, batch: dict, with_positions: bool):
  """A compiled train step (AdamW) and a callable running it once to completion."""
  optimizer = optax.adamw(1e-3)
  params = model_lib.init(config, jax.random.key(0))
  opt_state = optimizer.init(params)
  inputs = {"tokens": jnp.asarray(batch[example_lib.INPUTS]),
            "mask": jnp.asarray(batch[example_lib.LOSS_MASK])}
  if with_positions:
    inputs["positions"] = jnp.asarray(batch[example_lib.LOSS_POSITIONS])

  def step(params, opt_state, inputs):
    loss, grads = jax.value_and_grad(functools.partial(cyb_ap_loss, config, num_pauses))(
        params, inputs["tokens"], inputs["mask"], inputs.get("positions"))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  compiled = jax.jit(step).lower(params, opt_state, inputs).compile()
  state = {"params": params, "opt": opt_state}

  def run():
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], inputs)
    jax.block_until_ready(loss)
  return run


def memory_table(lengths) -> dict:
  print("\n== 1. Temp memory of the compiled CYB-AP gradient (width 384, 6 layers, batch 1, K = 3) ==")
  print(f"{'N':>6} {'dense GiB':>10} {'blockwise GiB':>14} {'dense / blockwise':>18}")
  table = {}
  for n in lengths:
    row = {}
    for implementation in ("dense", "blockwise"):
      config = model_lib.ModelConfig(max_len=n, attention=implementation, **MEMORY_MODEL)
      row[implementation] = temp_gib(config, n, 3)
    table[n] = row
    print(f"{n:>6} {row['dense']:>10.2f} {row['blockwise']:>14.2f} {row['dense'] / row['blockwise']:>18.2f}",
          flush=True)
  return table


def speed_table(lengths, repeats: int, max_dense_gib: float) -> dict:
  print("\n== 2. Train-step time (width 128, 4 layers, batch 1, K = 1) ==")
  print(f"{'N':>6} {'dense s':>9} {'blockwise s':>12} {'blockwise / dense':>18}")
  table = {}
  for n in lengths:
    rs = np.random.RandomState(n)
    batch = {example_lib.INPUTS: rs.randint(0, 256, (1, n)).astype(np.int32),
             example_lib.LOSS_MASK: np.ones((1, n), bool)}
    runners = {}
    for implementation in ("dense", "blockwise"):
      config = model_lib.ModelConfig(max_len=n, attention=implementation, **SPEED_MODEL)
      if implementation == "dense" and temp_gib(config, n, 1) > max_dense_gib:
        continue
      runners[implementation] = train_step_runner(config, 1, batch, with_positions=False)
    times = time_interleaved(runners, repeats)
    table[n] = times
    dense = times.get("dense")
    print(f"{n:>6} {dense if dense else float('nan'):>9.3f} {times['blockwise']:>12.3f} "
          f"{times['blockwise'] / dense if dense else float('nan'):>18.3f}", flush=True)
  return table


def sparse_loss_line(repeats: int) -> dict:
  print("\n== 3. Default task (1 layer, width 64, K = 1, batch 32): pause chains at loss positions only ==")
  config = default_config.get_config()
  settings = configuration.settings_from_config(config, device_count=jax.device_count())
  batch = next(iter(data_pipeline.make_dataset(settings.data, "train", 32, seed=0)))
  model_config = settings.model
  plain = dataclasses.replace(model_config, max_pauses=0, pause_feedback=False)
  runners = {
      "K=0": train_step_runner(plain, 0, batch, with_positions=False),
      "K=1 all positions": train_step_runner(model_config, 1, batch, with_positions=False),
      "K=1 loss positions": train_step_runner(model_config, 1, batch, with_positions=True),
  }
  # Steps of 15 to 25 ms: many more calls than the long-sequence timings, for a stable median.
  times = time_interleaved(runners, max(10 * repeats, 30))
  num_positions, seq_len = settings.data_info.loss_positions, settings.data_info.seq_len
  result = {"P": num_positions, "N": seq_len,
            "all_positions_over_k0": times["K=1 all positions"] / times["K=0"],
            "loss_positions_over_k0": times["K=1 loss positions"] / times["K=0"],
            "goal": 1 + 1.1 * num_positions / seq_len}
  for name, seconds in times.items():
    print(f"{name:>20}: {seconds * 1e3:8.2f} ms")
  print(f"P / N = {num_positions} / {seq_len}; loss positions over K = 0: {result['loss_positions_over_k0']:.3f} "
        f"(goal <= {result['goal']:.3f}); all positions over K = 0: {result['all_positions_over_k0']:.3f}")
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="shorter lengths and fewer repetitions")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_dense_gib", type=float, default=6.0,
                      help="skip dense speed runs whose temp memory exceeds this")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s)")
  memory_lengths = (512, 1024, 2048) if args.quick else (512, 1024, 2048, 4096)
  speed_lengths = (256, 1024) if args.quick else (256, 512, 1024, 2048, 4096)
  repeats = 3 if args.quick else args.repeats
  memory = memory_table(memory_lengths)
  speed = speed_table(speed_lengths, repeats, args.max_dense_gib)
  sparse = sparse_loss_line(repeats)
  longest = max(memory_lengths)
  summary = {
      "memory_gib": {n: {k: round(v, 3) for k, v in row.items()} for n, row in memory.items()},
      f"blockwise_memory_{longest}_over_1024": round(memory[longest]["blockwise"] / memory[1024]["blockwise"], 3),
      f"dense_memory_{longest}_over_1024": round(memory[longest]["dense"] / memory[1024]["dense"], 3),
      "blockwise_over_dense_time": {n: round(t["blockwise"] / t["dense"], 3) for n, t in speed.items()
                                    if "dense" in t},
      "sparse_loss": {k: round(v, 3) if isinstance(v, float) else v for k, v in sparse.items()},
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
