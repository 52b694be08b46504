"""The plain train step (K = 0) of cyb_jax against PyTorch's at SmolLM2-135M's shape (a script, not a test).

  python benchmarks/torch_side_by_side.py                                  # torch in this Python
  python benchmarks/torch_side_by_side.py --torch_python=/path/venv/bin/python  # torch in another one
  python benchmarks/torch_side_by_side.py --quick                          # a narrow model, a minute
  python benchmarks/torch_side_by_side.py --parts    # where the time goes: forward, backward, AdamW

torch is never a requirement of cyb_jax; for this benchmark install a CPU build beside it, e.g.
`pip install torch==2.13.0 transformers` (or in a separate virtual environment named by --torch_python).

Both sides train the same shape from random weights: 30 Llama layers, width 576, 9 query heads on 3 KV
heads, MLP 1536, vocabulary 49152 with a tied output head, batch 4 x 256 random tokens, float32, one
AdamW step per call, all CPU cores. cyb_jax: `trainer.train_step` (K = 0, where every objective is the
cross-entropy) compiled once, scanned layers (`model.scan_layers`, the default) and unrolled. PyTorch:
`transformers.LlamaForCausalLM` in training mode (its default attention, SDPA), cross-entropy, backward,
`torch.optim.AdamW`. Each side's step time is the median of --steps steps after two warm-up steps;
cyb_jax is measured before and after PyTorch and the two medians pooled, so machine noise hits both.
The last printed line is one JSON object: seconds per step and jax_over_torch for each layout
(below 1: cyb_jax is faster). Issue 26's goal: parity or better at K = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_time  # noqa: E402  (the SmolLM2-135M shape and the step's set-up)

import jax  # noqa: E402

from cyb_jax import model as model_lib  # noqa: E402
from cyb_jax.training import train_state as train_state_lib  # noqa: E402

# The PyTorch side, run in its own process (possibly another Python with torch installed): the model, the
# loss, one AdamW step, and a timing loop, shared by the two programs below.
TORCH_SETUP = r"""
import json, statistics, sys, time
import torch
import transformers
shape, batch, seq_len, steps, lr = json.loads(sys.argv[1])
torch.manual_seed(0)
config = transformers.LlamaConfig(
    vocab_size=shape["vocab_size"], hidden_size=shape["width"], intermediate_size=shape["mlp_hidden"],
    num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
    num_key_value_heads=shape["num_kv_heads"], tie_word_embeddings=True, max_position_embeddings=seq_len,
    rms_norm_eps=1e-5, rope_theta=100000.0)
model = transformers.LlamaForCausalLM(config).float().train()
optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
generator = torch.Generator().manual_seed(0)
inputs = torch.randint(0, shape["vocab_size"], (batch, seq_len), generator=generator)
targets = torch.randint(0, shape["vocab_size"], (batch, seq_len), generator=generator)
def loss():
  logits = model(input_ids=inputs).logits
  return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
def step():
  value = loss()
  value.backward()
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)
  return float(value)
def timed_seconds(fn, warmups):
  for _ in range(warmups):
    fn()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return seconds
"""

# The whole step: prints one JSON line {"seconds": [...]} for `steps` timed steps after two warm-up steps.
TORCH_STEP = TORCH_SETUP + r"""
print(json.dumps({"seconds": timed_seconds(step, 2), "torch": torch.__version__,
                  "transformers": transformers.__version__, "threads": torch.get_num_threads()}))
"""

# The step split into parts (--parts): forward with the loss, forward and backward, the AdamW update alone,
# and the whole step; prints one JSON line of median seconds (one warm-up call each).
TORCH_PARTS = TORCH_SETUP + r"""
def forward():
  return float(loss())
def forward_backward():
  loss().backward()
  model.zero_grad(set_to_none=False)
def median_seconds(fn):
  return statistics.median(timed_seconds(fn, 1))
parts = {"forward": median_seconds(forward), "forward_backward": median_seconds(forward_backward)}
forward_backward()
loss().backward()
parts["adamw"] = median_seconds(optimizer.step)
optimizer.zero_grad(set_to_none=True)
parts["step"] = median_seconds(step)
print(json.dumps(parts))
"""


def timed_seconds(run, steps: int, warmups: int) -> list[float]:
  """Seconds of `steps` calls of `run` (which waits for its results), after `warmups` untimed calls."""
  for _ in range(warmups):
    run()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return seconds


def jax_part_times(shape: dict, steps: int) -> dict:
  """Median seconds of cyb_jax's parts (scanned layers, K = 0): the loss forward, forward and backward
  (`jax.grad` of the train step's loss), the optimiser update alone, and the whole train step."""
  import functools  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cyb_jax import losses  # pylint: disable=g-import-not-at-top
  from cyb_jax.data import example as example_lib  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import trainer  # pylint: disable=g-import-not-at-top
  model_config, objective, optimizer = compile_time.setup(shape)
  model_config = dataclasses.replace(model_config, tie_embeddings=True)
  batch = compile_time.batch_of(shape["vocab_size"])
  state = train_state_lib.create(model_lib.init(model_config, jax.random.key(0)), optimizer,
                                 objective.initial_cost)
  mask = batch[example_lib.LOSS_MASK]

  def loss(params):
    stats = model_lib.rollout_stats(params, batch[example_lib.INPUTS], batch[example_lib.TARGETS],
                                    model_config, 0, mask)
    return losses.objective_loss(objective.name, stats, mask, **objective.loss_kwargs())[0]

  forward, gradient = jax.jit(loss), jax.jit(jax.grad(loss))
  grads = gradient(state.params)
  update = jax.jit(lambda g, o, p: optax.apply_updates(p, optimizer.update(g, o, p)[0]))
  step = jax.jit(functools.partial(trainer.train_step, model_config=model_config, num_pauses=0,
                                   objective=objective, optimizer=optimizer))
  calls = {"forward": lambda: forward(state.params), "forward_backward": lambda: gradient(state.params),
           "adamw": lambda: update(grads, state.opt_state, state.params), "step": lambda: step(state, batch)}
  return {name: statistics.median(timed_seconds(lambda call=call: jax.block_until_ready(call()), steps,
                                               warmups=1))
          for name, call in calls.items()}


def jax_step_times(shape: dict, scan: bool, steps: int) -> list[float]:
  """Seconds of `steps` calls of cyb_jax's compiled K = 0 train step, after two warm-up calls."""
  model_config, objective, optimizer = compile_time.setup(shape)
  model_config = dataclasses.replace(model_config, scan_layers=scan, tie_embeddings=True)
  batch = compile_time.batch_of(shape["vocab_size"])
  compiled, _, _ = compile_time.compile_step(model_config, objective, optimizer, 0, batch)
  holder = {"state": train_state_lib.create(model_lib.init(model_config, jax.random.key(0)), optimizer,
                                            objective.initial_cost)}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)

  return timed_seconds(run, steps, warmups=2)


def torch_step_times(python: str, shape: dict, steps: int, program: str = TORCH_STEP) -> dict:
  """The PyTorch side's JSON (see TORCH_STEP, TORCH_PARTS); SystemExit in one line when torch cannot be
  imported."""
  argument = json.dumps([shape, compile_time.BATCH, compile_time.SEQ_LEN, steps, 1e-4])
  done = subprocess.run([python, "-c", program, argument], capture_output=True, text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise SystemExit(f"the PyTorch side failed in {python}: {last} (install a CPU torch and transformers there, "
                     "or name another Python with --torch_python)")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a narrow 30-layer model (vocabulary 4096)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
  parser.add_argument("--torch_python", default=sys.executable, help="a Python with torch and transformers")
  parser.add_argument("--parts", action="store_true",
                      help="time the parts instead (forward, forward + backward, AdamW, step; scanned, K = 0)")
  args = parser.parse_args()
  shape = compile_time.QUICK if args.quick else compile_time.SMOLLM2
  print(f"shape {shape}, batch {compile_time.BATCH} x {compile_time.SEQ_LEN}, float32, "
        f"{os.cpu_count()} CPU cores", flush=True)
  if args.parts:
    first = jax_part_times(shape, args.steps)
    torch_parts = torch_step_times(args.torch_python, shape, args.steps, TORCH_PARTS)
    second = jax_part_times(shape, args.steps)  # cyb_jax before and after PyTorch, the two medians averaged
    result = {}
    for name, torch_seconds in torch_parts.items():
      jax_seconds = (first[name] + second[name]) / 2
      result[name] = {"jax_s": round(jax_seconds, 3), "torch_s": round(torch_seconds, 3),
                      "jax_over_torch": round(jax_seconds / torch_seconds, 3)}
      print(f"{name:>16}: cyb_jax {jax_seconds:.3f} s, PyTorch {torch_seconds:.3f} s, "
            f"{jax_seconds / torch_seconds:.2f}x", flush=True)
    print(json.dumps(result))
    return
  layouts = {"scanned": True, "unrolled": False}
  jax_seconds = {name: [] for name in layouts}
  for name, scan in layouts.items():  # before PyTorch
    jax_seconds[name] += jax_step_times(shape, scan, args.steps)
    print(f"cyb_jax {name}: {statistics.median(jax_seconds[name]):.3f} s/step", flush=True)
  torch_result = torch_step_times(args.torch_python, shape, args.steps)
  torch_median = statistics.median(torch_result["seconds"])
  print(f"PyTorch {torch_result['torch']} (transformers {torch_result['transformers']}, "
        f"{torch_result['threads']} threads): {torch_median:.3f} s/step", flush=True)
  for name, scan in layouts.items():  # after PyTorch
    jax_seconds[name] += jax_step_times(shape, scan, args.steps)
  result = {"shape": "quick" if args.quick else "smollm2_135m", "torch_s_per_step": round(torch_median, 4)}
  for name in layouts:
    median = statistics.median(jax_seconds[name])
    result[f"jax_{name}_s_per_step"] = round(median, 4)
    result[f"jax_{name}_over_torch"] = round(median / torch_median, 3)
    print(f"cyb_jax {name}: {median:.3f} s/step (median of both rounds) = {median / torch_median:.2f}x PyTorch")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
