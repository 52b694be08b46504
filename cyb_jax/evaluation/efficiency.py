"""The data-efficiency multiple of DESIGN.md section 7.

For a baseline with eval curve nll(tokens) and a CYB model whose final eval nll is x after T tokens:
  multiple = (tokens the baseline needs to reach x) / T,
with the baseline's curve interpolated linearly in log(tokens). A multiple of 3 means the CYB model reached
the baseline's quality with a third of the data.

The converse view, `baseline_final_multiple`, asks how soon the CYB model reached the *baseline's* final
nll: (tokens the baseline used) / (tokens the CYB model needed to get there). It is finite in the common
case where the baseline never reaches the CYB model's final quality.

The baseline may never reach x within its run (the CYB model is better than anything the baseline showed):
then only a lower bound is known, max(baseline tokens) / T, and `Multiple.bound` says ">=". If the baseline
is already better than x at its first checkpoint, only an upper bound is known (`bound` "<=").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Multiple:
  value: float
  bound: str  # "=" exact (interpolated), ">=" lower bound, "<=" upper bound

  def __str__(self) -> str:
    prefix = "" if self.bound == "=" else self.bound + " "
    return f"{prefix}{self.value:.2f}"

  def to_json(self) -> dict:
    return {"value": self.value, "bound": self.bound}


def tokens_to_reach(tokens: Sequence[float], nll: Sequence[float], target: float) -> tuple[float, str]:
  """Tokens at which the curve first reaches `target` (nll <= target), interpolating in log tokens.

  Returns (tokens, bound) with bound "=" for a crossing inside the curve, "<=" when the first point already
  reaches it, ">=" (and the last tokens) when it never does.
  """
  if len(tokens) != len(nll) or not tokens:
    raise ValueError("tokens and nll must be non-empty and of equal length")
  if not all(math.isfinite(t) and t > 0 for t in tokens) or any(b <= a for a, b in zip(tokens, tokens[1:])):
    raise ValueError("tokens must be finite, positive and increasing")
  # A NaN nll or target compares False everywhere and would read as "never reached".
  if not all(math.isfinite(y) for y in nll) or not math.isfinite(target):
    raise ValueError(f"nll values and the target must be finite, got nll {list(nll)} and target {target!r}")
  if nll[0] <= target:
    return float(tokens[0]), "<="
  for (t0, y0), (t1, y1) in zip(zip(tokens, nll), zip(tokens[1:], nll[1:])):
    if y1 <= target:
      # y0 > target >= y1: the crossing lies in (t0, t1]; interpolate log t linearly in y.
      fraction = (y0 - target) / (y0 - y1)
      log_t = math.log(t0) + fraction * (math.log(t1) - math.log(t0))
      return math.exp(log_t), "="
  return float(tokens[-1]), ">="


def data_efficiency_multiple(baseline_tokens: Sequence[float], baseline_nll: Sequence[float],
                             model_tokens: float, model_final_nll: float) -> Multiple:
  """How many times more training tokens the baseline needs to match the model's final nll."""
  if not (math.isfinite(model_tokens) and model_tokens > 0):
    raise ValueError(f"model_tokens must be a finite positive number, got {model_tokens!r}")
  needed, bound = tokens_to_reach(baseline_tokens, baseline_nll, model_final_nll)
  return Multiple(needed / model_tokens, bound)


_FLIP = {"=": "=", ">=": "<=", "<=": ">="}


def baseline_final_multiple(baseline_tokens: Sequence[float], baseline_nll: Sequence[float],
                            model_tokens: Sequence[float], model_nll: Sequence[float]) -> Multiple:
  """(tokens the baseline used) / (tokens the model needed to reach the baseline's final nll).

  Bounds flip relative to `tokens_to_reach`: a model that never got there gives an upper bound ("<="), one
  already there at its first checkpoint a lower bound (">=").
  """
  needed, bound = tokens_to_reach(model_tokens, model_nll, baseline_nll[-1])
  return Multiple(baseline_tokens[-1] / needed, _FLIP[bound])


def median_multiple(multiples: Sequence[Multiple]) -> Multiple:
  """The median of several runs' multiples (e.g. over seeds), with what their bounds allow.

  A ">=" multiple may be anything above its value and a "<=" one anything below, so the median of the
  true values lies between the median with every "<=" at 0 and the median with every ">=" at infinity.
  The result is exact ("=") when both equal the median of the values, ">=" or "<=" when only one side
  can move, and "~" when both can (lower and upper bounds among the middle values).

  Raises ValueError for no multiples.
  """
  if not multiples:
    raise ValueError("median_multiple needs at least one multiple")

  def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

  value = median([m.value for m in multiples])
  highest = median([math.inf if m.bound == ">=" else m.value for m in multiples])
  lowest = median([0.0 if m.bound == "<=" else m.value for m in multiples])
  if highest == value and lowest == value:
    return Multiple(value, "=")
  if lowest == value:
    return Multiple(value, ">=")
  if highest == value:
    return Multiple(value, "<=")
  return Multiple(value, "~")


def interpolate_pauses(pauses: Sequence[float], nll: Sequence[float], at: float) -> float:
  """nll at `at` mean pauses per token on the piecewise-linear curve through (pauses[i], nll[i]).

  For forced stops at j = 0..K pauses (a fixed-pause model's `nll_at_step`), a point between j and j + 1
  is the policy that stops a random fraction of tokens at j and the rest at j + 1, whose expected nll is
  this interpolation: the compute-matched baseline for a model averaging `at` pauses per token.
  Raises ValueError outside [pauses[0], pauses[-1]] or for pauses not increasing.
  """
  if len(pauses) != len(nll) or not pauses or any(b <= a for a, b in zip(pauses, pauses[1:])):
    raise ValueError(f"pauses must be increasing and match nll in length, got {list(pauses)}")
  if not pauses[0] <= at <= pauses[-1]:
    raise ValueError(f"{at} pauses is outside the curve's range [{pauses[0]}, {pauses[-1]}]")
  for (x0, y0), (x1, y1) in zip(zip(pauses, nll), zip(pauses[1:], nll[1:])):
    if at <= x1:
      return y0 + (at - x0) / (x1 - x0) * (y1 - y0)
  return float(nll[-1])  # a single point
