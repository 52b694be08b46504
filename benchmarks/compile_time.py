"""Compile time and step time of the trainer's own train step, scanned vs unrolled layers (a script, not a test).

  python benchmarks/compile_time.py            # SmolLM2-135M's shape; about 10 minutes on 2 CPU cores
  python benchmarks/compile_time.py --quick    # a narrow 30-layer model, a minute or two
  /work/venv-tpu/bin/python benchmarks/compile_time.py --topology=v5e:2x2 --layouts=scanned
                                               # the same, compiled for one v5e chip (libtpu; bfloat16)

The step is `trainer.train_step` (CYB-AP loss of configs/default.py, AdamW of its optimiser settings) at
SmolLM2-135M's shape: 30 layers, width 576, 9 query heads on 3 KV heads, MLP 1536, vocabulary 49152, batch
4 x 256, random weights, float32 on XLA CPU (one device). It is lowered and compiled ahead of time for
15 and 30 layers at K = 0 and K = 3, with `model.scan_layers` True and False; compile time is the
process's CPU seconds (and wall seconds) of `.lower(...).compile()`, with no compilation cache, next to
the compiled step's temporary memory (XLA's memory analysis). Step time
is the median of a few steps at K = 0 and K = 1 (30 layers), the two layouts interleaved so machine noise
hits both alike. The last printed line is one JSON object with the ratios:
  layers_30_over_15[layout][K], k3_over_k0[layout][layers], scanned_over_unrolled_compile[layers][K],
  scanned_over_unrolled_temp_memory[layers][K], scanned_over_unrolled_step[K].
Goals (issue 26): layers_30_over_15.scanned <= 1.2; k3_over_k0.scanned <= 2; scanned_over_unrolled_step
<= 1.05.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cyb_jax import configuration  # noqa: E402
from cyb_jax import model as model_lib  # noqa: E402
from cyb_jax.data import example as example_lib  # noqa: E402
from cyb_jax.training import train_state as train_state_lib  # noqa: E402
from cyb_jax.training import trainer  # noqa: E402
from configs import default as default_config  # noqa: E402

BATCH, SEQ_LEN = 4, 256
SMOLLM2 = dict(vocab_size=49152, width=576, num_layers=30, num_heads=9, num_kv_heads=3, mlp_hidden=1536)
QUICK = dict(vocab_size=4096, width=128, num_layers=30, num_heads=4, num_kv_heads=2, mlp_hidden=256)


def setup(shape: dict):
  config = default_config.get_config()
  settings = configuration.settings_from_config(config, device_count=1, write_files=False)
  model_config = dataclasses.replace(settings.model, max_len=SEQ_LEN, max_pauses=3, pause_feedback=False,
                                     **shape)
  optimizer = train_state_lib.make_optimizer(config.optim, 1000)
  return model_config, settings.objective, optimizer


def batch_of(vocab: int) -> dict:
  rng = np.random.RandomState(0)
  return {example_lib.INPUTS: jnp.asarray(rng.randint(0, vocab, (BATCH, SEQ_LEN)), jnp.int32),
          example_lib.TARGETS: jnp.asarray(rng.randint(0, vocab, (BATCH, SEQ_LEN)), jnp.int32),
          example_lib.LOSS_MASK: jnp.ones((BATCH, SEQ_LEN), bool)}


def compile_step(model_config, objective, optimizer, num_pauses: int, batch: dict, device=None):
  """(compiled step, CPU seconds, wall seconds) of the train step, lowered from shapes only (for `device`,
  e.g. a TPU topology's chip, when given; else the default device)."""
  step_fn = functools.partial(trainer.train_step, model_config=model_config, num_pauses=num_pauses,
                              objective=objective, optimizer=optimizer)
  state_spec = jax.eval_shape(lambda rng: train_state_lib.create(
      model_lib.init(model_config, rng), optimizer, objective.initial_cost), jax.random.key(0))
  placed = {} if device is None else {"sharding": jax.sharding.SingleDeviceSharding(device)}
  state_spec, batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, **placed),
                                        (state_spec, batch))
  cpu, wall = time.process_time(), time.perf_counter()
  compiled = jax.jit(step_fn, donate_argnums=0).lower(state_spec, batch_spec).compile()
  return compiled, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--topology", default="",
                      help="compile for one chip of a TPU topology instead (e.g. v5e:2x2; needs libtpu): "
                           "compile time and memory only, no step time")
  parser.add_argument("--layouts", default="scanned,unrolled", help="which of scanned,unrolled to compile")
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  shape = QUICK if args.quick else SMOLLM2
  base, objective, optimizer = setup(shape)
  batch = batch_of(base.vocab_size)
  device = None
  if args.topology:
    from cyb_jax import compile_check  # pylint: disable=g-import-not-at-top
    device = compile_check.topology_devices(compile_check.parse_topology(args.topology))[0]
    base = dataclasses.replace(base, dtype="bfloat16")  # what a TPU run computes in (configs/finetune_hf.py)
  print(f"jax {jax.__version__} on {device or jax.devices()}; model {shape}, batch {BATCH} x {SEQ_LEN}",
        flush=True)

  layouts = {name: scan for name, scan in {"scanned": True, "unrolled": False}.items()
             if name in args.layouts.split(",")}
  compile_cpu = {name: {} for name in layouts}
  temp_mib = {name: {} for name in layouts}
  print(f"{'layout':>9} {'layers':>6} {'K':>2} {'compile CPU s':>13} {'wall s':>7} {'temp MiB':>9}", flush=True)
  for layers in (15, 30):
    for num_pauses in (0, 3):
      for name, scan in layouts.items():
        config = dataclasses.replace(base, num_layers=layers, scan_layers=scan)
        compiled, cpu, wall = compile_step(config, objective, optimizer, num_pauses, batch, device)
        compile_cpu[name][(layers, num_pauses)] = cpu
        temp_mib[name][(layers, num_pauses)] = compiled.memory_analysis().temp_size_in_bytes / 2**20
        print(f"{name:>9} {layers:>6} {num_pauses:>2} {cpu:>13.1f} {wall:>7.1f} "
              f"{temp_mib[name][(layers, num_pauses)]:>9.0f}", flush=True)
        del compiled

  step_times = {}
  for num_pauses in (() if device is not None or len(layouts) < 2 else (0, 1)):
    runners = {}
    for name, scan in layouts.items():
      config = dataclasses.replace(base, scan_layers=scan)
      compiled, cpu, _ = compile_step(config, objective, optimizer, num_pauses, batch)
      state = train_state_lib.create(model_lib.init(config, jax.random.key(0)), optimizer,
                                     objective.initial_cost)
      holder = {"state": state}

      def run(compiled=compiled, holder=holder):
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

      run()  # the first call allocates
      runners[name] = run
    times = {name: [] for name in runners}
    for _ in range(args.steps):
      for name, run in runners.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
    for name in runners:
      step_times[(name, num_pauses)] = statistics.median(times[name])
      print(f"step time {name:>9} K={num_pauses}: {step_times[(name, num_pauses)]:.3f} s "
            f"(median of {args.steps})", flush=True)
    del runners

  result = {
      "layers_30_over_15": {name: {k: round(compile_cpu[name][(30, k)] / compile_cpu[name][(15, k)], 3)
                                   for k in (0, 3)} for name in layouts},
      "k3_over_k0": {name: {layers: round(compile_cpu[name][(layers, 3)] / compile_cpu[name][(layers, 0)], 3)
                            for layers in (15, 30)} for name in layouts},
  }
  if len(layouts) < 2:
    result = {"k3_over_k0": result["k3_over_k0"], "layers_30_over_15": result["layers_30_over_15"]}
    print(json.dumps(result))
    return
  result = {
      **result,
      "scanned_over_unrolled_compile": {
          layers: {k: round(compile_cpu["scanned"][(layers, k)] / compile_cpu["unrolled"][(layers, k)], 3)
                   for k in (0, 3)} for layers in (15, 30)},
      "scanned_over_unrolled_temp_memory": {
          layers: {k: round(temp_mib["scanned"][(layers, k)] / temp_mib["unrolled"][(layers, k)], 3)
                   for k in (0, 3)} for layers in (15, 30)},
  }
  if step_times:
    result["scanned_over_unrolled_step"] = {
        k: round(step_times[("scanned", k)] / step_times[("unrolled", k)], 3) for k in (0, 1)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
