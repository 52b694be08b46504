"""Data-efficiency multiple (DESIGN.md section 7), against hand-computed values."""

import math

import pytest

from cyb_jax import efficiency


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
