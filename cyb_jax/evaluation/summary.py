"""The end-of-run summary a person reads: overall quality and pausing, then a table by difficulty."""

from __future__ import annotations


def _fmt(value, digits=3) -> str:
  try:
    return f"{float(value):.{digits}f}"
  except (TypeError, ValueError):
    return str(value)


def dk_auroc_text(results: dict) -> str:
  """"0.922", or "n/a (every step-0 answer is right: ...)" when it is undefined (evaluate.auroc_note)."""
  note = results.get("dk_auroc_note")
  return f"n/a ({note})" if note else _fmt(results["dk_auroc"])


def format_summary(results: dict, settings) -> str:
  """Text table of eval `results` (EvalAccumulator.result()) for a run with `settings`."""
  num_pauses = settings.num_pauses
  policy = settings.config.eval.policy
  lines = [
      "",
      f"== eval summary: {settings.objective.name}, K = {num_pauses}, policy {policy}"
      + (f" (tau {settings.config.eval.tau})" if policy == "threshold" else "")
      + f", {results['num_tokens']} tokens ==",
      f"nll_policy {_fmt(results['nll_policy'])}   accuracy {_fmt(results['accuracy'])}   "
      f"mean pauses {_fmt(results['mean_pauses'], 2)}   nll_marginal {_fmt(results['nll_marginal'])}   "
      f"dk_auroc {dk_auroc_text(results)}",
      "forced to stop at step j:   nll " + " ".join(_fmt(v) for v in results["nll_at_step"])
      + "   accuracy " + " ".join(_fmt(v) for v in results["accuracy_at_step"]),
      "pause histogram (tokens stopping at step 0..K): "
      + " ".join(str(v) for v in results["pause_histogram"]),
  ]
  training = results.get("training_context")
  if training:
    # nll_marginal and dk_auroc come from the rollout: they go on the training-context line.
    lines[2] = (f"inference context: nll_policy {_fmt(results['nll_policy'])}   accuracy "
                f"{_fmt(results['accuracy'])}   mean pauses {_fmt(results['mean_pauses'], 2)}")
    lines.insert(3, f"training context (rollout, K pauses after every token): nll_policy "
                 f"{_fmt(training['nll_policy'])}   accuracy {_fmt(training['accuracy'])}   mean pauses "
                 f"{_fmt(training['mean_pauses'], 2)}   nll_marginal {_fmt(results['nll_marginal'])}   "
                 f"dk_auroc {dk_auroc_text(results)}")
  if "pause_rate_by_difficulty" in results:
    header = (f"{'difficulty':<12}{'tokens':>8}{'paused':>8}{'pauses':>8}{'acc':>8}"
              f"{'acc@0':>8}{'acc@K':>8}")
    lines += ["", "by difficulty: paused = fraction of tokens that paused; pauses = mean pauses;",
              "acc = accuracy under the policy; acc@0 / acc@K = forced to answer at step 0 / K", header]
    for name, tokens in results["difficulty_tokens"].items():
      at_step = results["accuracy_at_step_by_difficulty"][name]
      lines.append(f"{name:<12}{tokens:>8}{_fmt(results['pause_rate_by_difficulty'][name], 2):>8}"
                   f"{_fmt(results['mean_pauses_by_difficulty'][name], 2):>8}"
                   f"{_fmt(results['accuracy_by_difficulty'][name]):>8}{_fmt(at_step[0]):>8}"
                   f"{_fmt(at_step[-1]):>8}")
  return "\n".join(lines)
