"""Multi-digit addition, least-significant digit first. Difficulty = carry-chain length.

Layout of one sequence (T = seq_len + 1 tokens):

    BOS  [a_0 .. a_{D-1} + b_0 .. b_{D-1} = s_0 .. s_D ;] * num_problems  PAD*

Digits are tokens 0..9 and every number is written least-significant digit first, fixed
width (leading zeros of the usual notation become trailing zeros here); the sum has D+1
digits so that its top digit, the final carry, is always written. Written this way each
output digit s_i depends only on a_i, b_i and the carry into position i, so it can be
computed left to right.

Loss and labels (a label belongs to the target token):
- sum digit s_i: loss, difficulty = length of the carry chain feeding position i: 0 if no
  carry comes in; otherwise i - g, where g < i is the position that generated the carry
  (a_g + b_g >= 10) and every position strictly between g and i propagated it
  (a_j + b_j == 9). Longer chains mean more positions must be combined to know the digit.
- '+', '=' and ';': loss, label ``format_label`` = D + 1 (their positions are fixed).
- operand digits (random) and padding: no loss, label -1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyb_jax.data import synthetic

_NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class AdditionConfig:
  num_digits: int = 5           # D, digits of each operand
  num_problems: int = 6         # problems per sequence
  seq_len: int | None = None    # N; None = exactly num_problems * (3D + 4) (no padding)


def add_lsb_first(a_PD: np.ndarray, b_PD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Digit-wise sum and carry-chain lengths of P additions of D-digit numbers.

  Args:
    a_PD, b_PD: int [P, D], digits least-significant first.

  Returns:
    sum_PS: int [P, D+1] digits of a + b, least-significant first.
    chain_PS: int [P, D+1] carry-chain length feeding each sum digit (see module docstring).
  """
  a_PD, b_PD = np.asarray(a_PD), np.asarray(b_PD)
  num_problems, num_digits = a_PD.shape
  pair_sum_PD = a_PD + b_PD
  sum_PS = np.zeros((num_problems, num_digits + 1), dtype=np.int32)
  chain_PS = np.zeros((num_problems, num_digits + 1), dtype=np.int32)
  carry_P = np.zeros(num_problems, dtype=np.int64)
  for i in range(num_digits):
    total_P = pair_sum_PD[:, i] + carry_P
    sum_PS[:, i] = total_P % 10
    carry_P = total_P // 10
    # A generating position starts a new chain of length 1; a 9 passes an incoming chain on.
    generates_P = pair_sum_PD[:, i] >= 10
    propagates_P = (pair_sum_PD[:, i] == 9) & (chain_PS[:, i] > 0)
    chain_PS[:, i + 1] = np.where(generates_P, 1, np.where(propagates_P, chain_PS[:, i] + 1, 0))
  sum_PS[:, num_digits] = carry_P
  return sum_PS, chain_PS


class AdditionTask(synthetic.SyntheticTask):
  name = "addition"

  def __init__(self, config: AdditionConfig = AdditionConfig()):
    if config.num_digits < 1 or config.num_problems < 1:
      raise ValueError(f"addition needs num_digits >= 1 and num_problems >= 1; got {config}")
    super().__init__(config)

  # Vocabulary: digits 0..9, '+', '=', then specials (';', BOS, PAD).
  plus_id = _NUM_DIGITS
  equals_id = _NUM_DIGITS + 1

  @property
  def num_plain_tokens(self) -> int:
    return _NUM_DIGITS + 2

  @property
  def max_difficulty(self) -> int:
    return self.config.num_digits

  @property
  def difficulty_names(self) -> dict[int, str]:
    names = {c: f"carry chain {c}" for c in range(self.config.num_digits + 1)}
    names[0] = "no carry in"
    names[self.format_label] = "format"
    return names

  @property
  def content_len(self) -> int:
    return 1 + self.config.num_problems * (3 * self.config.num_digits + 4)

  @property
  def max_loss_targets(self) -> int:
    return self.config.num_problems * (self.config.num_digits + 4)  # '+', '=', D + 1 sum digits, ';'

  def _build(self, rng, stream):
    p, d = self.config.num_problems, self.config.num_digits
    a_PD = rng.integers(0, _NUM_DIGITS, size=(p, d))
    b_PD = rng.integers(0, _NUM_DIGITS, size=(p, d))
    sum_PS, chain_PS = add_lsb_first(a_PD, b_PD)
    # One row per problem, "a + b = s ;" (3D + 4 tokens), built for all problems at once.
    def column_P1(value):
      return np.full((p, 1), value, dtype=np.int64)

    fmt = self.format_label
    tokens_PL = np.concatenate([a_PD, column_P1(self.plus_id), b_PD, column_P1(self.equals_id),
                                sum_PS, column_P1(self.end_id)], axis=1)
    # Operand digits are random (no loss); '+', '=', the sum digits and ';' carry loss.
    is_target_L = np.array([False] * d + [True] + [False] * d + [True] + [True] * (d + 1) +
                           [True])
    operand_PD = np.full((p, d), -1)
    difficulty_PL = np.concatenate([operand_PD, column_P1(fmt), operand_PD, column_P1(fmt),
                                    chain_PS, column_P1(fmt)], axis=1)
    stream.add(tokens_PL.reshape(-1), np.tile(is_target_L, p), difficulty_PL.reshape(-1))
