"""The data-efficiency experiment (DESIGN.md section 7): does CYB reach a baseline's quality with less data?

  python experiments/data_efficiency.py --setting=synthetic        # from scratch on the synthetic task
  python experiments/data_efficiency.py --setting=shakespeare      # pretrain no-pause, then fine-tune
  python experiments/data_efficiency.py --setting=synthetic --quick  # smoke run, a few minutes

Trains ce, pause_ce, cyb_ap, cyb_va and cyb_dp with the same model, data order and number of steps,
evaluates each on the whole eval split at the same training-token checkpoints (nll_policy under the
objective's own policy: ce never pauses, pause_ce always takes K pauses, CYB uses the threshold policy),
and writes results/data_efficiency_<setting>.{json,png,md}: the curves, the final numbers, and for every
baseline and CYB objective the multiple (tokens the baseline needs to reach the CYB model's final
nll_policy) / (tokens the CYB model used).

Runs live in runs/data_efficiency/<setting>/<objective>; re-running resumes or reuses finished runs.
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

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import default as default_config  # noqa: E402
from cyb_jax import configuration  # noqa: E402
from cyb_jax import efficiency  # noqa: E402
from cyb_jax import metrics_writer  # noqa: E402
from cyb_jax import trainer  # noqa: E402

BASELINES = ("ce", "pause_ce")
CYB = ("cyb_ap", "cyb_va", "cyb_dp")
OBJECTIVES = BASELINES + CYB
POLICY = {"ce": "never", "pause_ce": "always", "cyb_ap": "threshold", "cyb_va": "threshold",
          "cyb_dp": "threshold"}


def _apply(config, overrides: dict) -> None:
  """Sets dotted keys, e.g. {"model.width": 64}."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value


# Each setting: shared overrides, steps, evaluation interval; quick variants shrink them.
SETTINGS = {
    # The default config's task (1-layer pointer chasing, K = 1), trained twice as long as the main job.
    "synthetic": {
        "overrides": {"train.batch_size": 32, "data.eval_examples": 512, "train.log_every": 200},
        "steps": 12000, "eval_every": 1500, "quick_steps": 60, "quick_eval_every": 20,
    },
    "shakespeare": {
        "overrides": {"data.name": "text_file",
                      "data.text_path": os.path.join(os.path.dirname(ROOT), "shared", "data",
                                                     "tinyshakespeare.txt"),
                      "data.seq_len": 128, "data.task": {}, "model.width": 128, "model.num_layers": 2,
                      "model.num_heads": 4, "model.mlp_hidden": 512, "train.batch_size": 16,
                      "train.log_every": 100, "train.eval_batches": 0},
        "pretrain_steps": 1500, "steps": 900, "eval_every": 150,
        "quick_pretrain_steps": 30, "quick_steps": 30, "quick_eval_every": 10,
    },
}
# Objective hyperparameters shared by both settings (DESIGN.md section 5 starting points).
OBJECTIVE_OVERRIDES = {
    "ce": {"num_pauses": 0},
    "pause_ce": {},
    "cyb_ap": {"objective.gamma": 0.9, "objective.omega": 0.1},
    "cyb_va": {"objective.prior_p": 0.7, "objective.beta": 0.1},
    # A quarter of the loss tokens are 2-hop answers: a budget of 0.25 pauses per token can cover them.
    "cyb_dp": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05},
}


def make_config(setting: dict, objective: str, steps: int, eval_every: int, quick: bool):
  config = default_config.get_config()
  _apply(config, setting["overrides"])
  _apply(config, {"train.num_steps": steps, "train.eval_every": eval_every,
                  "train.checkpoint_every": eval_every, "train.eval_batches": 0,
                  "objective.name": objective, "eval.policy": POLICY[objective]})
  if quick:
    _apply(config, {"data.eval_examples": 64, "train.log_every": 10})
  _apply(config, OBJECTIVE_OVERRIDES[objective])
  return config


def eval_curve(workdir: str, tokens_per_step: int) -> tuple[list, list, dict]:
  """(tokens, nll_policy, last eval record) from a run's metrics.jsonl, one point per eval step."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record["kind"] == "eval":
        by_step[record["step"]] = record
  steps = sorted(by_step)
  return ([s * tokens_per_step for s in steps], [by_step[s]["nll_policy"] for s in steps],
          by_step[steps[-1]])


def run_setting(name: str, quick: bool, out_dir: str) -> dict:
  setting = SETTINGS[name]
  steps = setting["quick_steps" if quick else "steps"]
  eval_every = setting["quick_eval_every" if quick else "eval_every"]
  run_root = os.path.join(ROOT, "runs", "data_efficiency", name + ("_quick" if quick else ""))
  timings = {}
  init_from = ""
  if "pretrain_steps" in setting:
    pretrain_steps = setting["quick_pretrain_steps" if quick else "pretrain_steps"]
    config = make_config(setting, "ce", pretrain_steps, pretrain_steps, quick)
    config.model.max_pauses = 0
    init_from = os.path.join(run_root, "pretrain")
    start = time.time()
    trainer.train(config, init_from)
    timings["pretrain"] = time.time() - start

  curves, finals = {}, {}
  for objective in OBJECTIVES:
    config = make_config(setting, objective, steps, eval_every, quick)
    if init_from:
      config.init_from = init_from
      if objective == "ce":
        config.model.max_pauses = 0  # the no-pause baseline keeps training the pretrained LM as it is
    workdir = os.path.join(run_root, objective)
    start = time.time()
    trainer.train(config, workdir)
    timings[objective] = time.time() - start
    seq_len = configuration.settings_from_config(config, device_count=1).data_info.seq_len
    tokens, nll, last = eval_curve(workdir, config.train.batch_size * seq_len)
    curves[objective] = {"tokens": tokens, "nll_policy": nll}
    finals[objective] = last

  return summarize(name, quick, curves, finals, timings, out_dir)


def summarize(name: str, quick: bool, curves: dict, finals: dict, timings: dict, out_dir: str) -> dict:
  """Multiples from the eval curves; writes the JSON, plot and table."""
  multiples, converse = {}, {}
  for baseline in BASELINES:
    base = curves[baseline]
    multiples[baseline] = {
        cyb: efficiency.data_efficiency_multiple(base["tokens"], base["nll_policy"], curves[cyb]["tokens"][-1],
                                                 curves[cyb]["nll_policy"][-1]) for cyb in CYB}
    converse[baseline] = {
        cyb: efficiency.baseline_final_multiple(base["tokens"], base["nll_policy"], curves[cyb]["tokens"],
                                                curves[cyb]["nll_policy"]) for cyb in CYB}
  result = {
      "setting": name, "quick": quick,
      "multiple": {b: {c: m.value for c, m in row.items()} for b, row in multiples.items()},
      "multiple_bound": {b: {c: m.bound for c, m in row.items()} for b, row in multiples.items()},
      "baseline_final_multiple": {b: {c: m.value for c, m in row.items()} for b, row in converse.items()},
      "baseline_final_multiple_bound": {b: {c: m.bound for c, m in row.items()} for b, row in converse.items()},
      "final_nll_policy": {o: finals[o]["nll_policy"] for o in OBJECTIVES},
      "final_accuracy": {o: finals[o]["accuracy"] for o in OBJECTIVES},
      "mean_pauses": {o: finals[o]["mean_pauses"] for o in OBJECTIVES},
      "tokens": curves["ce"]["tokens"],
      "curves": curves,
      "pause_rate_by_difficulty": {o: finals[o].get("mean_pauses_by_difficulty") for o in OBJECTIVES},
      "accuracy_by_difficulty": {o: finals[o].get("accuracy_by_difficulty") for o in OBJECTIVES},
      "seconds": timings,
  }
  write_outputs(result, multiples, converse, out_dir)
  return result


def resummarize(path: str, out_dir: str) -> dict:
  """Recomputes multiples and outputs from a results JSON (its curves and finals), without training."""
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  finals = {o: {"nll_policy": old["final_nll_policy"][o], "accuracy": old["final_accuracy"][o],
                "mean_pauses": old["mean_pauses"][o],
                "mean_pauses_by_difficulty": old["pause_rate_by_difficulty"][o],
                "accuracy_by_difficulty": old["accuracy_by_difficulty"][o]} for o in OBJECTIVES}
  return summarize(old["setting"], old["quick"], old["curves"], finals, old["seconds"], out_dir)


def write_outputs(result: dict, multiples: dict, converse: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f"data_efficiency_{result['setting']}" + ("_quick" if result["quick"] else ""))
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types(result), f, indent=1)

  fig, ax = plt.subplots(figsize=(6, 4))
  floor = 1e-4  # log axis: a perfect model's nll of 0 is drawn at the floor
  for objective, curve in result["curves"].items():
    ax.plot(curve["tokens"], [max(v, floor) for v in curve["nll_policy"]],
            "o-" if objective in CYB else "s--", label=objective)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training tokens")
  ax.set_ylabel(f"eval nll_policy (nats/token, floor {floor:g})")
  ax.set_title(f"Data efficiency: {result['setting']}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=100)
  plt.close(fig)

  lines = [f"# Data efficiency: {result['setting']}", "",
           "| objective | final nll_policy | accuracy | mean pauses | seconds |", "|---|---|---|---|---|"]
  for objective in OBJECTIVES:
    lines.append(f"| {objective} | {result['final_nll_policy'][objective]:.4f} | "
                 f"{result['final_accuracy'][objective]:.4f} | {result['mean_pauses'][objective]:.3f} | "
                 f"{result['seconds'].get(objective, 0):.0f} |")
  lines += ["", "Multiple = tokens the baseline needs to reach the CYB model's final nll_policy / tokens the "
            "CYB model used (>= : the baseline never got there; <= : it was already there at its first "
            "checkpoint).", "", "| baseline | " + " | ".join(CYB) + " |", "|---|" + "---|" * len(CYB)]
  for baseline, row in multiples.items():
    lines.append(f"| {baseline} | " + " | ".join(str(row[c]) for c in CYB) + " |")
  lines += ["", "Converse: tokens the baseline used / tokens the CYB model needed to reach the baseline's final "
            "nll_policy (<= : the CYB model never got there).", "",
            "| baseline | " + " | ".join(CYB) + " |", "|---|" + "---|" * len(CYB)]
  for baseline, row in converse.items():
    lines.append(f"| {baseline} | " + " | ".join(str(row[c]) for c in CYB) + " |")
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
  parser.add_argument("--resummarize", action="store_true",
                      help="recompute the tables from results/data_efficiency_<setting>.json, no training")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", default=os.path.join(ROOT, "results"))
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
  start = time.time()
  if args.resummarize:
    stem = f"data_efficiency_{args.setting}" + ("_quick" if args.quick else "")
    resummarize(os.path.join(args.out, stem + ".json"), args.out)
    return
  run_setting(args.setting, args.quick, args.out)
  print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
