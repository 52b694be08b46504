"""Eval results a person can look at: `report.json`, `report.md` and PNG plots in one directory."""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from cyb_jax.evaluation import word_analysis  # noqa: E402
from cyb_jax.inference.rendering import PAUSE_MARK  # noqa: E402
from cyb_jax.storage import metrics_writer  # noqa: E402

PLOTS = {
    "halting": "halting_histogram.png",
    "difficulty": "pause_rate_by_difficulty.png",
    "tokens": "pause_rate_by_token.png",
    "compute": "quality_vs_compute.png",
    "steps": "nll_at_step.png",
    "groups": "pause_rate_by_class_and_entropy.png",
    "words": "pause_rate_by_part_of_speech.png",
}
# The group tables of `evaluate`: result key -> (report heading, first column's name).
GROUP_TABLES = {"by_token_class": ("Pauses by token class (text; classes in token_classes.py)", "class"),
                "by_step0_entropy": ("Pauses by the model's step-0 entropy (nats)", "entropy")}


def _fmt(value, digits: int = 4) -> str:
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"
  return str(value)


def token_extremes(result: dict, decode, count: int = 10, min_tokens: int = 20) -> tuple[list, list]:
  """(highest, lowest) mean-pause target tokens seen at least `min_tokens` times: (name, pauses, n)."""
  by_token = result.get("mean_pauses_by_token") or {}
  seen = result.get("tokens_by_token") or {}
  rows = [(decode(int(t)), float(p), int(seen[t])) for t, p in by_token.items() if seen[t] >= min_tokens]
  rows.sort(key=lambda row: row[1])
  if len(rows) <= 2 * count:  # few distinct tokens: one list, no overlap between the two ends
    return rows[::-1], []
  return rows[::-1][:count], rows[:count]


def _plot_halting(result: dict, path: str) -> None:
  steps = list(range(len(result["pause_histogram"])))
  total = max(sum(result["pause_histogram"]), 1)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.bar([s - 0.2 for s in steps], [c / total for c in result["pause_histogram"]], width=0.4,
         label=f"policy {result['policy']}: stops at j")
  ax.bar([s + 0.2 for s in steps], result["halt_distribution"], width=0.4,
         label="mean halting distribution h_j")
  ax.set_xlabel("step j (pauses taken)")
  ax.set_ylabel("fraction of tokens")
  ax.set_xticks(steps)
  ax.legend(fontsize=8)
  ax.set_title("Where tokens stop")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_difficulty(result: dict, path: str) -> None:
  names = list(result["difficulty_tokens"])
  xs = range(len(names))
  fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 3.8))
  left.bar(xs, [result["mean_pauses_by_difficulty"][n] for n in names], color="tab:orange")
  left.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
  left.set_ylabel("mean pauses per token")
  left.set_ylim(bottom=0)
  left.set_title("Pauses by difficulty")
  at_step = result["accuracy_at_step_by_difficulty"]
  width = 0.8 / (len(next(iter(at_step.values()))) + 1)
  for j in range(len(next(iter(at_step.values())))):
    right.bar([x + j * width for x in xs], [at_step[n][j] for n in names], width=width,
              label=f"forced at step {j}", alpha=0.7)
  right.bar([x + (len(at_step[names[0]])) * width for x in xs],
            [result["accuracy_by_difficulty"][n] for n in names], width=width, color="black",
            label=f"policy {result['policy']}")
  right.set_xticks([x + 0.4 for x in xs], names, rotation=30, ha="right", fontsize=8)
  right.set_ylabel("accuracy")
  right.set_ylim(0, 1.05)
  right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: bars reach 1.0
  right.set_title("Accuracy by difficulty")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_tokens(highest: list, lowest: list, path: str) -> None:
  rows = highest + lowest[::-1]
  if not rows:
    return
  fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2))
  labels = [repr(name) for name, _, _ in rows]
  ax.barh(range(len(rows)), [p for _, p, _ in rows],
          color=["tab:red"] * len(highest) + ["tab:blue"] * len(lowest))
  for i, (_, pauses, _) in enumerate(rows):  # the value beside each bar: a rate of 0 has no bar to see
    ax.text(pauses, i, f" {pauses:.2f}", va="center", fontsize=7)
  ax.set_xlim(0, 1.15 * max([p for _, p, _ in rows] + [0.01]))
  ax.set_yticks(range(len(rows)), labels, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel("mean pauses before predicting this token")
  ax.set_title("Target tokens that pause most (red) and least (blue)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_compute(result: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.8))
  sweep = result.get("tau_sweep") or []
  if sweep:
    ax.plot([r["mean_pauses"] for r in sweep], [r["nll_policy"] for r in sweep], "o-",
            label="threshold, tau sweep")
    for r in sweep[:: max(1, len(sweep) // 6)]:
      ax.annotate(f"{r['tau']:g}", (r["mean_pauses"], r["nll_policy"]), fontsize=7)
  for name, r in (result.get("policies") or {}).items():
    ax.plot([r["mean_pauses"]], [r["nll_policy"]], "s", label=name)
  ax.plot([result["mean_pauses"]], [result["nll_policy"]], "k*", markersize=12,
          label=f"{result['policy']} (reported)")
  ax.set_xlabel("mean pauses per token (compute)")
  ax.set_ylabel("nll_policy (nats/token)")
  ax.set_title("Quality versus compute")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_groups(result: dict, path: str) -> None:
  """Pause rate and accuracy of each token class and step-0 entropy bin, side by side."""
  keys = [key for key in GROUP_TABLES if result.get(key)]
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
  for ax, key in zip(axes[0], keys):
    table = result[key]
    names = list(table)
    xs = range(len(names))
    ax.bar(xs, [table[n]["pause_rate"] for n in names], color="tab:orange", label="paused (fraction)")
    for x, n in zip(xs, names):  # how many tokens each bar stands for (a bin of 1 token looks like any other)
      ax.text(x, 1.0, f"{table[n]['tokens']}", ha="center", va="bottom", fontsize=6)
    ax.plot(xs, [table[n]["accuracy"] for n in names], "ks", label="accuracy (policy)")
    ax.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(GROUP_TABLES[key][0].split(" (")[0] + " (tokens above the bars)", fontsize=9, pad=12)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_steps(result: dict, path: str) -> None:
  steps = list(range(len(result["nll_at_step"])))
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(steps, result["nll_at_step"], "o-", label="nll if forced at step j")
  ax.set_xlabel("step j")
  ax.set_ylabel("nll (nats/token)")
  ax.set_xticks(steps)
  twin = ax.twinx()
  twin.plot(steps, result["accuracy_at_step"], "s--", color="tab:green", label="accuracy")
  twin.set_ylabel("accuracy")
  ax.set_title("Quality at each step")
  lines = ax.get_lines() + twin.get_lines()
  ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(out_dir: str, result: dict, *, header: dict, samples: Sequence[str] = (),
                 decode=str) -> dict:
  """Writes report.json, report.md and the plots into `out_dir`; returns {name: path} of what it wrote."""
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  report = {**header, **result, "samples": list(samples)}
  json_path = os.path.join(out_dir, "report.json")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types(report), f, indent=1)
  written["report.json"] = json_path

  highest, lowest = token_extremes(result, decode)
  plots = {"halting": _plot_halting, "compute": _plot_compute, "steps": _plot_steps}
  if "difficulty_tokens" in result:
    plots["difficulty"] = _plot_difficulty
  if any(result.get(key) for key in GROUP_TABLES):
    plots["groups"] = _plot_groups
  for name, plot in plots.items():
    path = os.path.join(out_dir, PLOTS[name])
    plot(result, path)
    written[PLOTS[name]] = path
  if result.get("word_analysis"):
    path = os.path.join(out_dir, PLOTS["words"])
    if word_analysis.plot(result["word_analysis"], path):  # no plot without a part-of-speech tagger
      written[PLOTS["words"]] = path
  if highest:
    path = os.path.join(out_dir, PLOTS["tokens"])
    _plot_tokens(highest, lowest, path)
    written[PLOTS["tokens"]] = path

  md_path = os.path.join(out_dir, "report.md")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown(result, header=header, samples=samples, highest=highest, lowest=lowest,
                     plots=[p for p in written if p.endswith(".png")]))
  written["report.md"] = md_path
  return written


def markdown(result: dict, *, header: dict, samples: Sequence[str], highest: list, lowest: list,
             plots: Sequence[str]) -> str:
  """The report as Markdown tables."""
  lines = [f"# Eval report: {header.get('workdir', '')} step {header.get('checkpoint_step', '')}", ""]
  lines += [f"- {key}: `{value}`" for key, value in header.items() if key != "config"]
  lines += ["", "## Summary", "", "| metric | value |", "|---|---|"]
  for key in ("num_tokens", "policy", "tau", "q", "nll_policy", "accuracy", "mean_pauses", "nll_marginal",
              "dk_auroc"):
    if key == "dk_auroc" and result.get("dk_auroc_note"):
      lines.append(f"| dk_auroc | n/a ({result['dk_auroc_note']}) |")
    elif key in result:
      lines.append(f"| {key} | {_fmt(result[key])} |")
  training = result.get("training_context")
  if training:
    # DESIGN.md section 3: a stream model is reported as inference runs it; the rollout numbers beside.
    lines += ["", "nll_policy, accuracy, mean_pauses and the pause histogram above are measured in the "
              "inference context (teacher-forced text, pauses in the stream only where the policy paused). "
              "The same policy replayed on the training rollout (K pauses after every token):", "",
              "| metric (training context) | value |", "|---|---|"]
    for key in ("nll_policy", "accuracy", "mean_pauses", "pause_histogram"):
      lines.append(f"| {key} | {_fmt(training[key]) if key != 'pause_histogram' else training[key]} |")
    lines += ["", "Below, forced stops, the other policies and the threshold sweep are training-context "
              "numbers (the rollout)."]
  lines += ["", "## Forced to stop at step j", "", "| step | nll | accuracy | mean h_j | tokens stopping here |",
            "|---|---|---|---|---|"]
  for j, (nll, acc, h, count) in enumerate(zip(result["nll_at_step"], result["accuracy_at_step"],
                                                 result["halt_distribution"], result["pause_histogram"])):
    lines.append(f"| {j} | {_fmt(nll)} | {_fmt(acc)} | {_fmt(h)} | {count} |")
  if result.get("policies"):
    lines += ["", "## Policies", "", "| policy | nll_policy | accuracy | mean_pauses |", "|---|---|---|---|"]
    rows = {result["policy"]: result, **result["policies"]}
    for name, r in rows.items():
      lines.append(f"| {name} | {_fmt(r['nll_policy'])} | {_fmt(r['accuracy'])} | {_fmt(r['mean_pauses'], 3)} |")
  if result.get("tau_sweep"):
    lines += ["", "## Quality versus compute (threshold policy)", "",
              "| tau | nll_policy | accuracy | mean_pauses |", "|---|---|---|---|"]
    for r in result["tau_sweep"]:
      lines.append(f"| {r['tau']:g} | {_fmt(r['nll_policy'])} | {_fmt(r['accuracy'])} | {_fmt(r['mean_pauses'], 3)} |")
  if "difficulty_tokens" in result:
    num_steps = len(result["nll_at_step"])
    lines += ["", "## By difficulty", "",
              "| difficulty | tokens | paused | mean pauses | accuracy (policy) | "
              + " | ".join(f"acc@{j}" for j in range(num_steps)) + " |",
              "|---|---|---|---|---|" + "---|" * num_steps]
    for name, tokens in result["difficulty_tokens"].items():
      at_step = " | ".join(_fmt(a, 3) for a in result["accuracy_at_step_by_difficulty"][name])
      lines.append(f"| {name} | {tokens} | {_fmt(result['pause_rate_by_difficulty'][name], 3)} | "
                   f"{_fmt(result['mean_pauses_by_difficulty'][name], 3)} | "
                   f"{_fmt(result['accuracy_by_difficulty'][name], 3)} | {at_step} |")
  for key, (heading, column) in GROUP_TABLES.items():
    if result.get(key):
      lines += ["", f"## {heading}", "", f"| {column} | tokens | paused | mean pauses | accuracy (policy) |",
                "|---|---|---|---|---|"]
      for name, row in result[key].items():
        lines.append(f"| {name} | {row['tokens']} | {_fmt(row['pause_rate'], 3)} | "
                     f"{_fmt(row['mean_pauses'], 3)} | {_fmt(row['accuracy'], 3)} |")
  if highest:
    lines += ["", "## Target tokens that pause most and least", "", "| token | mean pauses | count |",
              "|---|---|---|"]
    for name, pauses, count in highest:
      lines.append(f"| {name!r} | {_fmt(pauses, 3)} | {count} |")
    if lowest:
      lines.append("| ... | | |")
    for name, pauses, count in lowest:
      lines.append(f"| {name!r} | {_fmt(pauses, 3)} | {count} |")
  if result.get("word_analysis"):
    lines += word_analysis.markdown_lines(result["word_analysis"])
  if samples:
    lines += ["", f"## Generated samples ({PAUSE_MARK} = one pause before the token that follows)", ""]
    for sample in samples:
      lines += ["```", sample, "```", ""]
  if plots:
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
  return "\n".join(lines) + "\n"
