"""Does a forced pause pay on byte-level text? (the precondition of DESIGN.md section 8 for tinyshakespeare)

  python experiments/text_pause_search.py            # about 35 minutes on 2 CPU cores
  python experiments/text_pause_search.py --quick    # smoke run
  python experiments/text_pause_search.py --families="1 layer"   # one family; the others' rows are kept

For each model family (depth) it pretrains one no-pause LM, then fine-tunes it with plain ce and with
pause_ce (K = 1) under several pause options, all with the same data order, learning rate and steps.
The question is whether pause_ce's eval nll at step K beats ce's at equal fine-tuning tokens; if it never
does, a CYB objective's best answer on this text is never to pause.

Writes results/text_pause_search.{json,md,png}. Runs live in runs/text_pause_search/<family>/<variant> and
are reused when finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import data_efficiency  # noqa: E402  (the shakespeare setting's data and model overrides)
from cyb_jax.storage import metrics_writer  # noqa: E402
from cyb_jax.training import trainer  # noqa: E402

# Model families: overrides on top of data_efficiency's shakespeare setting (width 128, 4 heads).
FAMILIES = {
    "2 layers": {"model.num_layers": 2},
    # One layer cannot compose two attention lookups (e.g. an induction head) in one step; a pause step
    # that reads step 0's output through feedback can.
    "1 layer": {"model.num_layers": 1},
}
# Fine-tuning variants: objective and pause options.
VARIANTS = {
    "ce": {"objective.name": "ce", "num_pauses": 0, "model.max_pauses": 0, "eval.policy": "never"},
    "pause_ce feedback+token": {"objective.name": "pause_ce", "num_pauses": 1, "eval.policy": "always"},
    "pause_ce token only": {"objective.name": "pause_ce", "num_pauses": 1, "eval.policy": "always",
                            "model.pause_feedback": False},
    "pause_ce stream": {"objective.name": "pause_ce", "num_pauses": 1, "eval.policy": "always",
                        "model.pause_feedback": False, "model.pause_context": "stream"},
}
# Which variants each family runs. The stream option without feedback adds no depth, so with one layer it
# was expected to pay less than feedback; it is run there to check (DESIGN.md section 8's list of levers).
FAMILY_VARIANTS = {"2 layers": tuple(VARIANTS),
                   "1 layer": ("ce", "pause_ce feedback+token", "pause_ce stream")}
FINETUNE = {"optim.learning_rate": 1e-3, "optim.warmup_steps": 50}
STEPS = {"pretrain": 1500, "finetune": 1800, "eval_every": 300}
QUICK_STEPS = {"pretrain": 20, "finetune": 20, "eval_every": 10}


def _config(family: dict, overrides: dict, steps: int, eval_every: int, quick: bool):
  setting = data_efficiency.SETTINGS["shakespeare"]
  config = data_efficiency.make_config(setting, "ce", steps, eval_every, quick)
  # This search ran with the cosine schedule (data_efficiency now defaults to a constant one).
  data_efficiency.apply_overrides(config, {"optim.schedule": "cosine", **family})
  data_efficiency.apply_overrides(config, overrides)
  return config


def _eval_records(workdir: str, config) -> list:
  return data_efficiency.eval_records(workdir, config.train.batch_size * config.data.seq_len)


def _stem(out_dir: str, quick: bool) -> str:
  return os.path.join(out_dir, "text_pause_search" + ("_quick" if quick else ""))


def kept_results(path: str, families: tuple[str, ...], quick: bool) -> dict:
  """The other families' rows of an earlier results JSON at `path` ({} if there is none), to be written
  beside the families trained now. Raises SystemExit for an unknown or empty `families`, or for a JSON
  measured with other steps or fine-tuning settings (its rows would sit under this run's header)."""
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown or not families:
    raise SystemExit(f"--families: unknown {unknown or 'none given'}; known: {list(FAMILIES)}")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  measured = {"quick": quick, "steps": QUICK_STEPS if quick else STEPS, "finetune": FINETUNE}
  for key, value in measured.items():
    if old.get(key) != value:
      raise SystemExit(f"{path} was measured with {key} = {old.get(key)!r}, not {value!r}: train every "
                       "family (--families left out) into a new --out")
  return {name: rows for name, rows in old["results"].items() if name not in families}


def run(quick: bool, out_dir: str, families: tuple[str, ...] = tuple(FAMILIES)) -> dict:
  """Trains `families` (names in FAMILIES) and writes the results, keeping the rows of the other families
  from an earlier results JSON in `out_dir` (if any)."""
  steps = QUICK_STEPS if quick else STEPS
  root = os.path.join(ROOT, "runs", "text_pause_search" + ("_quick" if quick else ""))
  results = kept_results(_stem(out_dir, quick) + ".json", families, quick)
  for family_name in families:
    family = FAMILIES[family_name]
    family_dir = os.path.join(root, family_name.replace(" ", "_"))
    pretrain_dir = os.path.join(family_dir, "pretrain")
    config = _config(family, VARIANTS["ce"], steps["pretrain"], steps["pretrain"], quick)
    trainer.train(config, pretrain_dir)
    pretrain_nll = _eval_records(pretrain_dir, config)[-1]["nll_policy"]
    rows = {}
    for variant in FAMILY_VARIANTS[family_name]:
      config = _config(family, {**FINETUNE, **VARIANTS[variant]}, steps["finetune"], steps["eval_every"], quick)
      config.init_from = pretrain_dir
      workdir = os.path.join(family_dir, variant.replace(" ", "_").replace("+", "_"))
      trainer.train(config, workdir)
      records = _eval_records(workdir, config)
      rows[variant] = {
          "steps": [r["step"] for r in records],
          "nll_policy": [r["nll_policy"] for r in records],
          "final_nll_at_step": records[-1]["nll_at_step"],
          "final_accuracy": records[-1]["accuracy"],
          "seconds": data_efficiency.train_seconds(workdir),
      }
    results[family_name] = {"pretrain_nll": pretrain_nll, "variants": rows}
  write({name: results[name] for name in FAMILIES if name in results}, quick, out_dir)
  return results


def write(results: dict, quick: bool, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  stem = _stem(out_dir, quick)
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types({"quick": quick, "steps": QUICK_STEPS if quick else STEPS,
                                            "finetune": FINETUNE, "results": results}), f, indent=1)
  lines = ["# Does a forced pause pay on tinyshakespeare (bytes)?", "",
           f"Pretrain {(QUICK_STEPS if quick else STEPS)['pretrain']} steps no-pause, then fine-tune each "
           f"variant for {(QUICK_STEPS if quick else STEPS)['finetune']} steps at lr "
           f"{FINETUNE['optim.learning_rate']:g} (batch 16 x 128 bytes). nll in nats/byte on the eval split; "
           "pause_ce is read at step K = 1 (its policy), its step-0 value shows what the pause adds.", "",
           "| model | variant | nll (policy) | nll step 0 | gain over ce | accuracy | seconds |",
           "|---|---|---|---|---|---|---|"]
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
  for ax, (family_name, family) in zip(axes[0], results.items()):
    ce_final = family["variants"]["ce"]["nll_policy"][-1]
    for variant, row in family["variants"].items():
      lines.append(f"| {family_name} | {variant} | {row['nll_policy'][-1]:.4f} | "
                   f"{row['final_nll_at_step'][0]:.4f} | {ce_final - row['nll_policy'][-1]:+.4f} | "
                   f"{row['final_accuracy']:.4f} | {row['seconds']:.0f} |")
      ax.plot(row["steps"], row["nll_policy"], "o-", label=variant)
    ax.set_title(f"{family_name} (pretrained nll {family['pretrain_nll']:.3f})")
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel("eval nll_policy (nats/byte)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=100)
  plt.close(fig)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", default=os.path.join(ROOT, "results"))
  parser.add_argument("--families", default=",".join(FAMILIES),
                      help=f"comma-separated model families to train, of {list(FAMILIES)}")
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
  start = time.time()
  run(args.quick, args.out, tuple(name.strip() for name in args.families.split(",") if name.strip()))
  print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
