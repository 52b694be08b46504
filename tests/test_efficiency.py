"""Data-efficiency multiple (DESIGN.md section 7), against hand-computed values."""

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
