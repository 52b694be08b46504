"""Direct tests of eval's statistics on hand-made edge cases (ties, empty and single-valued inputs, the
`never` and `always` policies), each against an independent computation: an end-to-end eval on typical
data cannot tell e.g. a maximum-rank tie rule from the average-rank one."""

import itertools

import numpy as np
import pytest

from cyb_jax.evaluation import evaluate


def pair_count_auroc(scores, positives):
  """P(score of a positive > score of a negative) + 0.5 P(equal), by enumerating every pair."""
  pos = [s for s, p in zip(scores, positives) if p]
  neg = [s for s, p in zip(scores, positives) if not p]
  if not pos or not neg:
    return float("nan")
  return float(np.mean([(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]))


@pytest.mark.parametrize("scores, positives, expected", [
    ([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0], 0.5),          # all tied: no information
    ([0.7, 0.7, 0.7], [1, 0, 0], 0.5),
    ([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0], 1.0),          # perfectly separated
    ([0.0, 1.0, 2.0, 3.0], [1, 1, 0, 0], 0.0),          # perfectly reversed
    ([1.0, 1.0, 0.0], [1, 0, 0], 0.75),                 # one tie of two pairs: (0.5 + 1) / 2
    ([5.0, 4.0], [1, 0], 1.0),                          # one of each
])
def test_auroc_hand_cases(scores, positives, expected):
  assert evaluate.auroc(np.asarray(scores), np.asarray(positives, bool)) == pytest.approx(expected)


@pytest.mark.parametrize("positives", [[1, 1, 1], [0, 0, 0], []])
def test_auroc_is_nan_without_both_classes(positives):
  scores = np.arange(len(positives), dtype=float)
  assert np.isnan(evaluate.auroc(scores, np.asarray(positives, bool)))


def test_auroc_with_many_ties_equals_the_pair_count():
  rs = np.random.RandomState(0)
  for _ in range(20):
    n = rs.randint(2, 40)
    scores = rs.randint(0, 4, n).astype(float)         # heavy ties
    positives = rs.rand(n) < 0.4
    expected = pair_count_auroc(scores, positives)
    got = evaluate.auroc(scores, positives)
    if np.isnan(expected):
      assert np.isnan(got)
    else:
      assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("stops, num_steps, expected", [
    ([0, 0, 0, 0], 3, [4, 0, 0]),    # the `never` policy: every token at step 0, none at 1 or 2
    ([2, 2, 2], 3, [0, 0, 3]),       # `always` with K = 2: every token at step K
    ([1], 2, [0, 1]),
    ([1, 1, 2], 4, [0, 2, 1, 0]),    # steps that no token reached stay 0, at both ends
    ([], 3, [0, 0, 0]),
])
def test_pause_histogram_counts_tokens_per_step(stops, num_steps, expected):
  accumulator = evaluate.PolicyAccumulator(num_steps)
  stop = np.asarray(stops, np.int64)
  accumulator.add(stop, np.zeros(stop.size), np.zeros(stop.size, bool))
  result = accumulator.result()
  assert result["pause_histogram"] == expected
  assert result["mean_pauses"] == (pytest.approx(np.mean(stops)) if stops else 0.0)


def test_accumulator_by_difficulty_and_token_on_a_hand_case():
  accumulator = evaluate.PolicyAccumulator(3, vocab_size=4)
  stop = np.asarray([0, 2, 1, 0])
  nll = np.asarray([0.5, 1.0, 2.0, 0.25])
  correct = np.asarray([True, False, True, True])
  accumulator.add(stop, nll, correct, difficulty=np.asarray([0, 1, 1, 0]), targets=np.asarray([3, 3, 1, 0]))
  assert accumulator.result() == {"nll_policy": pytest.approx(3.75 / 4), "accuracy": 0.75,
                                  "mean_pauses": 0.75, "pause_histogram": [2, 1, 1]}
  # [tokens, tokens that paused, pauses, correct] per label.
  assert accumulator.by_difficulty[0].tolist() == [2, 0, 0, 2]
  assert accumulator.by_difficulty[1].tolist() == [2, 2, 3, 1]
  # [tokens, pauses] per target id.
  assert accumulator.by_token.tolist() == [[1, 0], [1, 1], [0, 0], [2, 2]]


def test_accumulator_by_token_class_and_entropy_bin_on_a_hand_case():
  accumulator = evaluate.PolicyAccumulator(3)
  stop = np.asarray([0, 2, 1, 0, 1])
  correct = np.asarray([True, False, True, True, False])
  classes = np.asarray([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], bool)  # overlapping, one token in none
  entropy_bin = np.asarray([0, 6, 6, 2, 0])
  accumulator.add(stop, np.zeros(5), correct, classes=classes, entropy_bin=entropy_bin)
  accumulator.add(stop[:1], np.zeros(1), correct[:1], classes=classes[:1], entropy_bin=entropy_bin[:1])
  # [tokens, tokens that paused, pauses, correct] per class: class 0 = tokens 0, 1, 4 (+ 0 again).
  assert accumulator.by_class.tolist() == [[4, 2, 3, 2], [2, 2, 3, 1]]
  assert accumulator.by_entropy.tolist() == [[3, 1, 1, 2], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0],
                                             [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 3, 1]]
  table = evaluate._group_table(evaluate.entropy_bin_names(), accumulator.by_entropy)  # pylint: disable=protected-access
  assert table == {"< 0.1": {"tokens": 3, "pause_rate": 1 / 3, "mean_pauses": 1 / 3, "accuracy": 2 / 3},
                   "0.5-1": {"tokens": 1, "pause_rate": 0.0, "mean_pauses": 0.0, "accuracy": 1.0},
                   ">= 4": {"tokens": 2, "pause_rate": 1.0, "mean_pauses": 1.5, "accuracy": 0.5}}


def _accumulate_step0(correct_step0):
  """An EvalAccumulator (K = 1) fed one row whose step-0 answers are right where `correct_step0` is."""
  n = len(correct_step0)
  correct = np.stack([np.asarray(correct_step0, bool), np.ones(n, bool)], -1)[None]  # [1, N, 2]
  log_d = np.stack([np.log(np.linspace(0.2, 0.8, n)), np.full(n, -np.inf)], -1)[None]  # step K: -inf
  metrics = {"nll_at_step": np.ones((1, n, 2)), "correct_at_step": correct, "log_d": log_d,
             "halt": np.full((1, n, 2), 0.5), "nll_marginal": np.ones((1, n))}
  accumulator = evaluate.EvalAccumulator(2)
  accumulator.add(metrics, np.ones((1, n), bool))
  return accumulator.result()


@pytest.mark.parametrize("correct_step0, why", [
    ([True, True, True], "every step-0 answer is right: no error for <dk> to flag"),
    ([False, False, False], "every step-0 answer is wrong: no right answer to rank below the errors"),
])
def test_an_undefined_dk_auroc_says_why_in_the_summary_and_report(correct_step0, why):
  import types  # pylint: disable=g-import-not-at-top
  from cyb_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  from cyb_jax.evaluation import summary  # pylint: disable=g-import-not-at-top
  result = _accumulate_step0(correct_step0)
  assert np.isnan(result["dk_auroc"]) and result["dk_auroc_note"] == why
  settings = types.SimpleNamespace(num_pauses=1, objective=types.SimpleNamespace(name="cyb_ap"),
                                   config=types.SimpleNamespace(eval=types.SimpleNamespace(policy="never")))
  text = summary.format_summary(result, settings)
  assert f"dk_auroc n/a ({why})" in text and "nan" not in text
  markdown = report.markdown(result, header={}, samples=[], highest=[], lowest=[], plots=[])
  assert f"| dk_auroc | n/a ({why}) |" in markdown.splitlines()


def test_a_defined_dk_auroc_has_no_note():
  # Step-0 scores rise 0.2, 0.5, 0.8; the wrong answer has the highest: AUROC 1 (every pair ordered).
  result = _accumulate_step0([True, True, False])
  assert result["dk_auroc"] == pytest.approx(1.0) and "dk_auroc_note" not in result
