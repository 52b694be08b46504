"""Data-efficiency multiple (DESIGN.md section 7), against hand-computed values."""

import json
import math
import os
import sys

import pytest

from cyb_jax.evaluation import efficiency


def test_crossing_interpolates_in_log_tokens():
  # Baseline nll 3.0 at 100 tokens, 1.0 at 10000 tokens; target 2.0 is halfway in nll, so halfway in
  # log tokens: sqrt(100 * 10000) = 1000.
  tokens, bound = efficiency.tokens_to_reach([100, 10000], [3.0, 1.0], 2.0)
  assert bound == "="
  assert tokens == pytest.approx(1000.0)


def test_first_crossing_is_used_on_a_non_monotone_curve():
  # 1.75 lies a quarter of the way from 2.0 (10 tokens) to 1.0 (20 tokens); the later dip to 0.5 is not
  # the first crossing.
  tokens, bound = efficiency.tokens_to_reach([10, 20, 40, 80], [2.0, 1.0, 1.8, 0.5], 1.75)
  assert bound == "="
  assert tokens == pytest.approx(math.exp(math.log(10) + 0.25 * (math.log(20) - math.log(10))))


def test_multiple_against_hand_computation():
  # CYB reaches nll 2.0 after 250 tokens; the baseline needs 1000 (see above): multiple 4.
  multiple = efficiency.data_efficiency_multiple([100, 10000], [3.0, 1.0], 250, 2.0)
  assert multiple.bound == "="
  assert multiple.value == pytest.approx(4.0)
  assert str(multiple) == "4.00"


def test_never_reached_gives_a_lower_bound():
  multiple = efficiency.data_efficiency_multiple([100, 200, 400], [3.0, 2.5, 2.2], 400, 2.0)
  assert (multiple.bound, multiple.value) == (">=", 1.0)
  assert str(multiple) == ">= 1.00"


def test_already_reached_gives_an_upper_bound():
  multiple = efficiency.data_efficiency_multiple([100, 200], [1.0, 0.9], 400, 2.0)
  assert (multiple.bound, multiple.value) == ("<=", 0.25)


@pytest.mark.parametrize("tokens,nll", [([], []), ([1, 2], [1.0]), ([2, 1], [1.0, 0.5]),
                                        ([0, 1], [1.0, 0.5])])
def test_bad_curves_raise(tokens, nll):
  with pytest.raises(ValueError, match="tokens"):
    efficiency.tokens_to_reach(tokens, nll, 1.0)


def test_baseline_final_multiple_by_hand():
  # The model goes 3.0 -> 1.0 over 100..10000 tokens and reaches the baseline's final 2.0 at 1000 tokens
  # (halfway in log tokens); the baseline used 4000: it needed 4 times the data.
  multiple = efficiency.baseline_final_multiple([1000, 4000], [2.5, 2.0], [100, 10000], [3.0, 1.0])
  assert (multiple.bound, multiple.value) == ("=", pytest.approx(4.0))


def test_baseline_final_multiple_bounds_flip():
  # Never reached by the model: it would need more than its 400 tokens, so the multiple is at most 1.
  never = efficiency.baseline_final_multiple([100, 400], [2.0, 1.0], [100, 400], [3.0, 2.0])
  assert (never.bound, never.value) == ("<=", 1.0)
  # Reached already at the model's first checkpoint (100 tokens): at least 400 / 100.
  early = efficiency.baseline_final_multiple([100, 400], [2.0, 1.0], [100, 400], [0.5, 0.4])
  assert (early.bound, early.value) == (">=", 4.0)


def _records(steps, nll, tokens_per_step=10):
  return [{"step": s, "tokens": s * tokens_per_step, "nll_policy": y, "accuracy": 0.5, "mean_pauses": 0.0}
          for s, y in zip(steps, nll)]


def test_experiment_summary_reads_baselines_beyond_the_budget_and_picks_the_best_setting(tmp_path):
  """experiments/data_efficiency.py's summary: CYB runs end at step 2 (20 tokens); ce runs to step 6."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
  import data_efficiency  # pylint: disable=g-import-not-at-top  (a script, not part of the package)

  ce = _records([1, 2, 4, 6], [3.0, 2.5, 2.0, 1.5])
  runs = {
      "ce": {"objective": "ce", "hparams": {}, "records": ce},
      "pause_ce": {"objective": "pause_ce", "hparams": {}, "records": _records([1, 2, 4], [2.8, 2.0, 1.0])},
      # Two settings of cyb_ap: the second ends better (1.75) and is the one reported.
      "cyb_ap": {"objective": "cyb_ap", "hparams": {}, "records": _records([1, 2], [2.9, 2.2])},
      "cyb_ap@x": {"objective": "cyb_ap", "hparams": {"objective.gamma": 0.5},
                   "records": _records([1, 2], [2.6, 1.75])},
      "cyb_va": {"objective": "cyb_va", "hparams": {}, "records": _records([1, 2], [2.9, 2.5])},
      "cyb_dp": {"objective": "cyb_dp", "hparams": {}, "records": _records([1, 2], [2.9, 1.0])},
  }
  result = data_efficiency.summarize("toy", False, runs, {}, 2, str(tmp_path))

  assert result["best_run"]["cyb_ap"] == "cyb_ap@x"
  assert result["budget_tokens"] == 20
  assert result["final_nll_policy"]["ce"] == 2.5  # ce read at the CYB budget, not at its end
  assert result["baseline_end_nll_policy"]["ce"] == 1.5
  # ce reaches 1.75 halfway (in nll) from 2.0 at 40 tokens to 1.5 at 60: exp(mean(log 40, log 60)).
  assert result["multiple"]["ce"]["cyb_ap"] == pytest.approx(math.sqrt(40 * 60) / 20)
  assert result["multiple"]["ce"]["cyb_va"] == pytest.approx(1.0)  # ce is at 2.5 at 20 tokens too
  # cyb_dp's 1.0 is beyond ce's whole run (60 tokens): a lower bound of 3.
  assert (result["multiple"]["ce"]["cyb_dp"], result["multiple_bound"]["ce"]["cyb_dp"]) == (3.0, ">=")
  # pause_ce reaches 1.0 at 40 tokens: multiple 2, exactly at a checkpoint.
  assert result["multiple"]["pause_ce"]["cyb_dp"] == pytest.approx(2.0)
  # Converse against ce's value at the budget (2.5): cyb_ap@x passes it between 10 tokens (2.6) and 20
  # (1.75), at fraction 0.1 / 0.85 of the way in log tokens.
  needed = math.exp(math.log(10) + (0.1 / 0.85) * (math.log(20) - math.log(10)))
  assert result["baseline_final_multiple"]["ce"]["cyb_ap"] == pytest.approx(20 / needed)
  for suffix in (".json", ".md", ".png"):
    assert os.path.getsize(tmp_path / f"data_efficiency_toy{suffix}") > 0


def test_experiment_summary_of_a_subset_of_objectives(tmp_path):
  """`--runs=cyb_va@beta.03,cyb_dp` (no cyb_ap) summarises the objectives it has."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
  import data_efficiency  # pylint: disable=g-import-not-at-top

  runs = {
      "ce": {"objective": "ce", "hparams": {}, "records": _records([1, 2, 4], [3.0, 2.0, 1.0])},
      "pause_ce": {"objective": "pause_ce", "hparams": {}, "records": _records([1, 2, 4], [3.0, 2.5, 2.0])},
      "cyb_va@beta.03": {"objective": "cyb_va", "hparams": {"objective.beta": 0.03},
                         "records": _records([1, 2], [2.9, 2.0])},
      "cyb_dp": {"objective": "cyb_dp", "hparams": {}, "records": _records([1, 2], [2.9, 1.0])},
  }
  result = data_efficiency.summarize("toy", False, runs, {}, 2, str(tmp_path))
  assert result["best_run"] == {"cyb_va": "cyb_va@beta.03", "cyb_dp": "cyb_dp"}
  # ce is at 2.0 at 20 tokens, as cyb_va: multiple 1; it reaches cyb_dp's 1.0 at 40 tokens: multiple 2.
  assert result["multiple"]["ce"] == pytest.approx({"cyb_va": 1.0, "cyb_dp": 2.0})
  table = (tmp_path / "data_efficiency_toy.md").read_text(encoding="utf-8")
  assert "| baseline | cyb_va | cyb_dp |" in table and "cyb_ap" not in table
  with pytest.raises(ValueError, match="no CYB run"):
    data_efficiency.summarize("toy", False, {k: runs[k] for k in ("ce", "pause_ce")}, {}, 2, str(tmp_path))


@pytest.mark.parametrize("tokens, nll, target, match", [
    ([1.0, 2.0], [3.0, 2.0], float("nan"), "must be finite"),
    ([1.0, 2.0], [3.0, float("nan")], 2.5, "must be finite"),
    ([1.0, float("inf")], [3.0, 2.0], 2.5, "tokens must be finite"),
])
def test_nan_arguments_are_rejected_not_read_as_never_reached(tokens, nll, target, match):
  with pytest.raises(ValueError, match=match):
    efficiency.tokens_to_reach(tokens, nll, target)
  with pytest.raises(ValueError, match="model_tokens"):
    efficiency.data_efficiency_multiple([1.0, 2.0], [3.0, 2.0], float("nan"), 2.5)


M = efficiency.Multiple


@pytest.mark.parametrize("multiples, expected", [
    ([M(1.0, "="), M(3.0, "="), M(2.0, "=")], M(2.0, "=")),
    ([M(1.2, "="), M(1.5, "="), M(3.0, ">=")], M(1.5, "=")),      # the bound above the middle: exact
    ([M(1.2, "="), M(3.0, ">="), M(3.0, ">=")], M(3.0, ">=")),    # the middle itself a lower bound
    ([M(1.0, "<="), M(2.0, "="), M(3.0, ">=")], M(2.0, "=")),
    ([M(1.0, "<="), M(1.0, "<="), M(2.0, "=")], M(1.0, "<=")),
    ([M(1.0, "="), M(3.0, ">=")], M(2.0, ">=")),                  # even count: the mean of the middle two
    ([M(1.0, "<="), M(3.0, ">=")], M(2.0, "~")),                  # can move either way
    ([M(4.0, ">=")], M(4.0, ">=")),
])
def test_median_multiple_by_hand(multiples, expected):
  assert efficiency.median_multiple(multiples) == expected


def test_interpolate_pauses_between_forced_stops():
  # Forced stops at 0, 1, 2 pauses with nll 0.9, 0.5, 0.4: 0.25 pauses is a quarter of the way to 0.5.
  assert efficiency.interpolate_pauses([0, 1, 2], [0.9, 0.5, 0.4], 0.25) == pytest.approx(0.8)
  assert efficiency.interpolate_pauses([0, 1, 2], [0.9, 0.5, 0.4], 1.5) == pytest.approx(0.45)
  assert efficiency.interpolate_pauses([0, 1, 2], [0.9, 0.5, 0.4], 2.0) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="outside"):
    efficiency.interpolate_pauses([0, 1], [0.9, 0.5], 1.5)


def _experiment():
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
  import data_efficiency  # pylint: disable=g-import-not-at-top  (a script, not part of the package)
  return data_efficiency


def _toy_runs(cyb_end_nll, sweep=None, forced=None):
  """ce and pause_ce to step 4 (nll 3, 2, 1 at steps 1, 2, 4) and one CYB run per objective to step 2."""
  runs = {"ce": {"objective": "ce", "hparams": {}, "records": _records([1, 2, 4], [3.0, 2.0, 1.0])},
          "pause_ce": {"objective": "pause_ce", "hparams": {}, "records": _records([1, 2, 4], [3.0, 2.5, 2.0])}}
  if forced:
    runs["pause_ce"]["records"][1]["nll_at_step"] = forced
  for objective, end in cyb_end_nll.items():
    records = _records([1, 2], [2.9, end])
    if sweep:
      records[1]["tau_sweep"] = sweep
    runs[objective] = {"objective": objective, "hparams": {}, "records": records}
  return runs


def test_experiment_summary_compares_at_equal_pauses(tmp_path):
  """The compute-matched table: each threshold of the sweep beside pause_ce at the same mean pauses."""
  sweep = [{"tau": 0.1, "mean_pauses": 0.8, "nll_policy": 0.3, "accuracy": 0.9},
           {"tau": 0.5, "mean_pauses": 0.25, "nll_policy": 0.35, "accuracy": 0.9},
           {"tau": 0.9, "mean_pauses": 0.0, "nll_policy": 0.6, "accuracy": 0.8}]
  result = _experiment().summarize("toy", False, _toy_runs({"cyb_dp": 1.0}, sweep, forced=[0.9, 0.5]), {}, 2,
                                   str(tmp_path))
  matched = result["compute_matched"]
  assert matched["pause_ce_forced_nll"] == [0.9, 0.5] and matched["ce_nll"] == 2.0
  # pause_ce at 0.8 pauses: 0.9 + 0.8 (0.5 - 0.9) = 0.58; at 0.25: 0.8; at 0: its step-0 nll 0.9.
  assert [p["pause_ce_nll"] for p in matched["sweeps"]["cyb_dp"]] == pytest.approx([0.58, 0.8, 0.9])
  table = (tmp_path / "data_efficiency_toy.md").read_text(encoding="utf-8")
  assert "| cyb_dp | 0.5 | 0.250 | 0.3500 | 0.8000 |" in table
  assert os.path.getsize(tmp_path / "data_efficiency_toy_compute.png") > 0
  # Without a sweep (ce and pause_ce runs only have their own policies) there is no such table.
  plain = _experiment().summarize("toy", False, _toy_runs({"cyb_dp": 1.0}), {}, 2, str(tmp_path))
  assert "compute_matched" not in plain


def test_experiment_summary_across_seeds(tmp_path):
  """Three seeds' summaries, then each seed's multiple and the median for the same runs."""
  experiment = _experiment()
  # ce reaches 2.0 at 20 tokens and 1.0 at 40 (log-linear between); pause_ce 2.5 at 20 and 2.0 at 40.
  ends = {0: {"cyb_va": 2.0, "cyb_dp": 1.0}, 1: {"cyb_va": 1.5, "cyb_dp": 0.5}, 2: {"cyb_va": 2.5, "cyb_dp": 2.0}}
  for seed, end in ends.items():
    experiment.summarize("toy", False, _toy_runs(end), {}, 2, str(tmp_path), seed)
  summary = experiment.summarize_seeds("toy", [0, 1, 2], str(tmp_path))
  va = summary["runs"]["cyb_va"]
  # cyb_va against ce: 1 (seed 0), sqrt(20 * 40) / 20 (seed 1: 1.5 is halfway from 2 to 1), and
  # sqrt(10 * 20) / 20 (seed 2: 2.5 is halfway from ce's 3 at 10 tokens to 2 at 20).
  assert [m["value"] for m in va["ce"]["per_seed"]] == pytest.approx([1.0, math.sqrt(800) / 20,
                                                                      math.sqrt(200) / 20])
  assert [m["bound"] for m in va["ce"]["per_seed"]] == ["=", "=", "="]
  assert va["ce"]["median"] == {"value": pytest.approx(1.0), "bound": "="}
  # cyb_dp against pause_ce: 1.0 and 0.5 are beyond pause_ce's whole run (>= 2), 2.0 at 40 tokens (2).
  dp = summary["runs"]["cyb_dp"]
  assert [(m["value"], m["bound"]) for m in dp["pause_ce"]["per_seed"]] == [(2.0, ">="), (2.0, ">="),
                                                                            (pytest.approx(2.0), "=")]
  assert dp["pause_ce"]["median"] == {"value": 2.0, "bound": ">="}
  assert dp["nll_policy"] == [1.0, 0.5, 2.0]
  table = (tmp_path / "data_efficiency_toy_seeds.md").read_text(encoding="utf-8")
  assert "| cyb_dp | pause_ce | >= 2.00 | >= 2.00 | 2.00 | **>= 2.00** |" in table
  with pytest.raises(ValueError, match="seed 3"):
    experiment.summarize_seeds("toy", [0, 3], str(tmp_path))
  with pytest.raises(ValueError, match="'cyb_ap' has no results for seed 0"):
    experiment.summarize_seeds("toy", [0, 1], str(tmp_path), ("cyb_ap",))


def test_eval_records_of_a_warm_started_run_count_the_steps_before_it(tmp_path):
  """A warm start's CYB part logs steps from 1; its records count the pause_ce steps before it."""
  lines = [{"kind": "train", "step": 10, "steps_per_s": 5.0},
           {"kind": "eval", "step": 10, "nll_policy": 0.5, "accuracy": 0.8, "mean_pauses": 0.2, "other": 1},
           {"kind": "eval", "step": 20, "nll_policy": 0.4, "accuracy": 0.9, "mean_pauses": 0.1}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
  records = _experiment().eval_records(str(tmp_path), tokens_per_step=7, step_offset=30)
  assert records == [{"step": 40, "tokens": 280, "nll_policy": 0.5, "accuracy": 0.8, "mean_pauses": 0.2},
                     {"step": 50, "tokens": 350, "nll_policy": 0.4, "accuracy": 0.9, "mean_pauses": 0.1}]


def test_runs_argument_keeps_commas_inside_a_tag():
  parse = _experiment().parse_runs
  assert parse("cyb_dp@warm.5,cyb_va@beta.03,warm.5") == ("cyb_dp@warm.5", "cyb_va@beta.03,warm.5")
  assert parse("cyb_ap,cyb_va@beta.03,any.3,cyb_dp,") == ("cyb_ap", "cyb_va@beta.03,any.3", "cyb_dp")


def test_runs_on_request_are_left_out_of_the_default_grid():
  experiment = _experiment()
  default = {run for run, _, _ in experiment.all_runs()}
  every = {run for run, _, _ in experiment.all_runs(on_request=True)}
  assert experiment.ON_REQUEST <= every and not experiment.ON_REQUEST & default
  assert default | experiment.ON_REQUEST == every
  # The first entry of each objective is its one run when a setting has no grid.
  assert [run for run, _, _ in experiment.all_runs(grid=False)] == ["ce", "pause_ce", "cyb_ap", "cyb_va", "cyb_dp"]


def test_a_warm_start_goes_on_from_a_pause_ce_run_with_the_same_pause_rollout():
  """Entries that differ only in objective settings share one pause_ce run; a model option that changes
  what the pause steps compute (stream, feedback layer) gets its own, trained with that option."""
  warm = _experiment().warm_start_run
  assert warm({"objective.beta": 0.03, "model.dk_init_prob": 0.9, "warm_start": 0.5}, 900) == (
      "pause_ce_first900", {})
  assert warm({"objective.gamma": 0.99, "model.dk_init_prob": 0.9}, 900) == ("pause_ce_first900", {})
  name, overrides = warm({"objective.beta": 0.03, "model.pause_feedback": False,
                          "model.pause_context": "stream", "model.dk_init_prob": 0.9}, 450)
  assert name == "pause_ce_first450,pause_context=stream,pause_feedback=False"
  assert overrides == {"model.pause_context": "stream", "model.pause_feedback": False}
  with pytest.raises(ValueError, match=r"not \['model.num_layers'\]"):
    warm({"model.num_layers": 2, "model.dk_init_prob": 0.9}, 900)


def test_every_warm_started_grid_entry_has_a_pause_ce_run_to_go_on_from():
  experiment = _experiment()
  warm = [(run, overrides) for run, _, overrides in experiment.all_runs(on_request=True)
          if experiment.WARM_START in overrides]
  assert len(warm) >= 3
  for run, overrides in warm:
    name, _ = experiment.warm_start_run(overrides, 100)  # raises for an option it cannot carry over
    assert name.startswith("pause_ce_first100"), run


def _text_pause_search():
  _experiment()  # puts experiments/ on the path
  import text_pause_search  # pylint: disable=g-import-not-at-top
  return text_pause_search


def test_text_pause_search_keeps_the_families_it_does_not_train(tmp_path):
  search = _text_pause_search()
  path = str(tmp_path / "search.json")
  assert search.kept_results(path, ("1 layer",), quick=True) == {}  # no earlier JSON
  earlier = {"quick": True, "steps": search.QUICK_STEPS, "finetune": search.FINETUNE,
             "results": {"2 layers": {"pretrain_nll": 2.0}, "1 layer": {"pretrain_nll": 3.0}}}
  (tmp_path / "search.json").write_text(json.dumps(earlier), encoding="utf-8")
  assert search.kept_results(path, ("1 layer",), quick=True) == {"2 layers": {"pretrain_nll": 2.0}}
  with pytest.raises(SystemExit, match="measured with quick = True, not False"):
    search.kept_results(path, ("1 layer",), quick=False)
  with pytest.raises(SystemExit, match=r"unknown \['3 layers'\]"):
    search.kept_results(path, ("3 layers",), quick=True)
  with pytest.raises(SystemExit, match="none given"):
    search.kept_results(path, (), quick=True)


def _fake_trainer(calls):
  """A stand-in for trainer.train that writes the metrics log a run of the config would: eval records every
  eval_every steps whose nll falls 0.01 per step from 3.0, less 0.05 with pauses and 0.02 more without
  feedback (so the precondition's choice is known), one train record per step at 1 step/s."""
  def train(config, workdir):
    calls.append((os.path.basename(workdir), int(config.train.num_steps), config.objective.name,
                  bool(config.model.pause_feedback)))
    os.makedirs(workdir, exist_ok=True)
    bonus = 0.0 if config.num_pauses == 0 else 0.05 + (0.02 if not config.model.pause_feedback else 0.0)
    lines = []
    for step in range(1, config.train.num_steps + 1):
      lines.append({"kind": "train", "step": step, "steps_per_s": 1.0})
      if step % config.train.eval_every == 0 or step == config.train.num_steps:
        nll = 3.0 - 0.01 * step - bonus
        lines.append({"kind": "eval", "step": step, "nll_policy": nll, "accuracy": 0.5,
                      "mean_pauses": float(config.num_pauses), "nll_at_step": [nll + 0.1] * config.num_pauses + [nll]})
    with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(line) + "\n" for line in lines)
  return train


def test_a_grid_trains_only_the_runs_its_records_lack_and_takes_the_preconditions_pause_option(
    tmp_path, monkeypatch):
  """Records per run under results/ (a session without runs/ resumes the grid from them); the precondition
  table picks the pause_ce variant the grid's pause_ce and CYB runs use."""
  experiment = _experiment()
  calls = []
  monkeypatch.setattr(experiment.trainer, "train", _fake_trainer(calls))
  monkeypatch.setattr(experiment, "ROOT", str(tmp_path))  # runs/ under tmp_path
  monkeypatch.setitem(experiment.SETTINGS, "toy", {
      "overrides": {"train.batch_size": 2, "model.pause_feedback": True}, "steps": 4, "eval_every": 2,
      "quick_steps": 2, "quick_eval_every": 1, "runs": ("cyb_va@beta.03",),
      "precondition": {"pause_ce": {}, "pause_ce@nofeedback": {"model.pause_feedback": False}}})
  out = str(tmp_path / "results")
  with pytest.raises(SystemExit, match="--precondition first"):
    experiment.run_setting("toy", False, out)
  assert not calls

  table = experiment.run_precondition("toy", False, out)
  assert [c[:2] for c in calls] == [("ce", 4), ("pause_ce", 4), ("pause_ce@nofeedback", 4)]
  assert table["chosen"] == "pause_ce@nofeedback" and table["pause_pays"]
  # ce at step 4: 2.96; the variant without feedback 0.07 lower.
  assert table["rows"]["pause_ce@nofeedback"]["gain_over_ce"] == pytest.approx(0.07)
  assert os.path.exists(os.path.join(out, "data_efficiency_toy_precondition.md"))

  calls.clear()
  result = experiment.run_setting("toy", False, out)
  # ce's record covers 4 of its 12 steps and the chosen variant's 4 of 8: both train on; the CYB run takes
  # the chosen variant's options (no feedback) with its own.
  assert calls == [("ce", 12, "ce", True), ("pause_ce@nofeedback", 8, "pause_ce", False),
                   ("cyb_va@beta.03", 4, "cyb_va", False)]
  assert result["runs"]["cyb_va@beta.03"]["hparams"]["model.pause_feedback"] is False
  record = json.load(open(os.path.join(out, "data_efficiency_toy", "ce.json"), encoding="utf-8"))
  assert record["steps"] == 12 and record["records"][-1]["step"] == 12 and record["seconds"] == 12.0

  # A later session without runs/: everything is read from the records, nothing trains, same summary.
  calls.clear()
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "runs")
  again = experiment.run_setting("toy", False, out)
  assert not calls
  assert again["multiple"] == result["multiple"] and again["final_nll_policy"] == result["final_nll_policy"]
