"""Benchmark of the pause rollout and adaptive generation (a script, not a test).

  python benchmarks/rollout.py          # small (~1M) and medium (~10M) models, a few minutes on 2 CPU cores
  python benchmarks/rollout.py --quick  # small model only, under a minute

Measures in one run, interleaving the configurations in every repetition so machine noise hits them alike:
  * training-step time (forward + backward + AdamW update, CYB-AP loss) at N = 256 for K = 0..3, for
    private pause chains and for the stream option;
  * generation tokens per second with the `always` and `threshold` policies at batch 1 and 8, with the
    measured mean pauses per token.
The last printed line is one JSON object:
  step_time_ratio: {K: time(K) / time(0)} for private chains (medium model; small with --quick),
  stream_over_private_k3: stream step time / private step time at K = 3,
  adaptive_speedup_over_expected: (threshold tokens/s / always tokens/s at batch 1, K = 3) divided by the
    ideal (K+1) / (1 + mean pauses).
Goals: step_time_ratio[K] <= 1.1 (K+1); stream_over_private_k3 >= 1.3; adaptive_speedup_over_expected >= 0.9.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cyb_jax.inference import generate as generate_lib  # noqa: E402
from cyb_jax import losses  # noqa: E402
from cyb_jax import model as model_lib  # noqa: E402

SEQ_LEN = 256
BATCH = 8
MAX_PAUSES = 3
MODELS = {
    "small": dict(width=128, num_layers=4, num_heads=4, mlp_hidden=512),     # ~0.9M parameters
    "medium": dict(width=384, num_layers=6, num_heads=6, mlp_hidden=1024),   # ~9.8M parameters
}


def model_config(size: str, pause_context: str) -> model_lib.ModelConfig:
  return model_lib.ModelConfig(vocab_size=256, max_len=SEQ_LEN * (MAX_PAUSES + 1),
                               max_pauses=MAX_PAUSES, pause_context=pause_context, dk_init_prob=0.5,
                               **MODELS[size])


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def compiled_train_step(config: model_lib.ModelConfig, num_pauses: int, params, tokens):
  """An ahead-of-time compiled train step and its initial optimiser state."""
  optimizer = optax.adamw(1e-3)

  def loss_fn(params, tokens):
    stats = model_lib.rollout_stats(params, tokens[:, :-1], tokens[:, 1:], config, num_pauses)
    mask = jnp.ones(tokens[:, 1:].shape, bool)
    loss, _ = losses.objective_loss("cyb_ap", stats, mask, gamma=0.9, omega=0.1)
    return loss

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()
  return compiled, opt_state


def time_interleaved(runners: dict, repeats: int) -> dict:
  """Median seconds per call of each runner, calling them in turn in every repetition."""
  for run in runners.values():  # warm-up (first-call allocation)
    run()
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(ts) for name, ts in times.items()}


def benchmark_training(size: str, repeats: int, stream_pauses: tuple) -> dict:
  rng = jax.random.PRNGKey(0)
  tokens = jax.random.randint(rng, (BATCH, SEQ_LEN + 1), 0, 256)
  runners = {}
  for context in ("private", "stream"):
    config = model_config(size, context)
    for num_pauses in range(MAX_PAUSES + 1):
      if context == "stream" and num_pauses not in stream_pauses:
        continue  # K = 0 is identical to private; --quick times only K = 3
      params = model_lib.init(config, rng)
      compiled, opt_state = compiled_train_step(config, num_pauses, params, tokens)
      state = {"params": params, "opt": opt_state}

      def run(compiled=compiled, state=state):
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], tokens)
        loss.block_until_ready()

      runners[(context, num_pauses)] = run
  print(f"[{size}] {count_params(params) / 1e6:.2f}M parameters; timing {len(runners)} train steps "
        f"x {repeats} repeats", flush=True)
  return time_interleaved(runners, repeats)


def benchmark_generation(size: str, repeats: int, num_tokens: int) -> dict:
  """Tokens per second and mean pauses for always/threshold at batch 1 and 8."""
  config = model_config(size, "private")
  params = model_lib.init(config, jax.random.PRNGKey(0))
  # A fresh model's <dk> logit is input-independent; give it a random direction so that the threshold
  # policy pauses on some tokens and not others, as a trained model would.
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), (config.width,)) * 0.5
  results, runners = {}, {}
  for batch in (1, 8):
    prompt = jax.random.randint(jax.random.PRNGKey(2), (batch, 16), 0, 256)
    for policy in ("always", "threshold"):
      call = functools.partial(generate_lib.generate, params, prompt, config, num_tokens=num_tokens,
                               num_pauses=MAX_PAUSES, policy=policy, tau=0.5)
      out = call()  # compiles
      results[(policy, batch)] = {"mean_pauses": float(jnp.mean(out.pauses)),
                                  "queries": int(out.num_queries)}
      runners[(policy, batch)] = lambda call=call: call().tokens.block_until_ready()
  seconds = time_interleaved(runners, repeats)
  for key, secs in seconds.items():
    results[key]["tokens_per_s"] = key[1] * num_tokens / secs
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small model only, fewer repeats")
  args = parser.parse_args()
  sizes = ("small",) if args.quick else ("small", "medium")
  repeats = 3 if args.quick else 5
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}; N = {SEQ_LEN}, "
        f"batch {BATCH}", flush=True)

  train, gen = {}, {}
  for size in sizes:
    train[size] = benchmark_training(size, repeats, (3,) if args.quick else (1, 2, 3))
    gen[size] = benchmark_generation(size, repeats, num_tokens=32 if args.quick else 64)

  print("\nTraining step (forward + backward + AdamW), seconds, and ratio to K = 0 (private):")
  print(f"{'model':<8}{'K':>3}{'private s':>12}{'ratio':>8}{'stream s':>12}{'stream/private':>16}")
  for size in sizes:
    t = train[size]
    for k in range(MAX_PAUSES + 1):
      private = t[("private", k)]
      stream = t.get(("stream", k))
      stream_cells = (f"{stream:>12.4f}{stream / private:>16.2f}" if stream is not None and k > 0
                      else f"{'-':>12}{'-':>16}")
      print(f"{size:<8}{k:>3}{private:>12.4f}{private / t[('private', 0)]:>8.2f}{stream_cells}")

  print("\nGeneration (16-token prompt, K = 3):")
  print(f"{'model':<8}{'batch':>6}{'policy':>11}{'tokens/s':>11}{'mean pauses':>13}{'queries':>9}")
  for size in sizes:
    for (policy, batch), r in sorted(gen[size].items(), key=lambda kv: (kv[0][1], kv[0][0])):
      print(f"{size:<8}{batch:>6}{policy:>11}{r['tokens_per_s']:>11.1f}{r['mean_pauses']:>13.2f}"
            f"{r['queries']:>9}")

  headline = sizes[-1]
  t = train[headline]
  g = gen[headline]
  measured_speedup = g[("threshold", 1)]["tokens_per_s"] / g[("always", 1)]["tokens_per_s"]
  expected_speedup = (MAX_PAUSES + 1) / (1 + g[("threshold", 1)]["mean_pauses"])
  print(f"\nHeadline model: {headline}. Threshold over always at batch 1: measured {measured_speedup:.2f}x, "
        f"ideal {expected_speedup:.2f}x.")
  summary = {
      "model": headline,
      "step_time_ratio": {str(k): round(t[("private", k)] / t[("private", 0)], 3)
                          for k in range(1, MAX_PAUSES + 1)},
      "stream_over_private_k3": round(t[("stream", 3)] / t[("private", 3)], 3),
      "adaptive_speedup_over_expected": round(measured_speedup / expected_speedup, 3),
      "threshold_mean_pauses_batch1": round(g[("threshold", 1)]["mean_pauses"], 3),
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
