"""Pointer chasing: follow a random permutation h times. Depth-bound difficulty.

Layout of one sequence (T = seq_len + 1 tokens):

    BOS  P_1 .. P_M  [h x y ;] * Q  PAD*

- P_i, a *pair token*, states f(a) = b for one symbol a; it is a single token
  (id ``pair_base + a*M + b``) so reading one pair is one attention lookup. The M pairs list a
  random permutation f of the M symbols, in random order.
- Each query is four tokens: the hop-count token h (id ``hop_base + h``, h in 0..H), a start
  symbol x (id x), the answer y = f^h(x) (id y), and ';' (``end_id``).

Loss and labels (a label belongs to the target token):
- answer y: loss, difficulty h. h = 0 is copying x; each extra hop is one more dependent
  lookup, so a model of fixed depth runs out of layers at some h.
- ';' after the answer: loss, label ``format_label`` = H + 1. Always predictable: the easy
  tokens that should never need a pause.
- everything else (pairs, h, x: random by construction; padding): no loss, label -1.

With ``single_cycle`` f is one M-cycle, so f^h(x) != x for 0 < h < M and copying x is never a
lucky guess for a hard query (a random permutation has fixed points and short cycles).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyb_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class PointerChasingConfig:
  num_symbols: int = 8          # M, size of the permuted alphabet
  num_queries: int = 20         # Q, queries per sequence
  max_hops: int = 4             # H, hop counts are 0..H
  hop_weights: tuple[float, ...] | None = None  # P(h) for h = 0..H (unnormalised); None = uniform
  single_cycle: bool = False    # f is one M-cycle instead of any permutation
  seq_len: int | None = None    # N; None = exactly 1 + M + 4Q - 1 (no padding)


class PointerChasingTask(synthetic.SyntheticTask):
  name = "pointer_chasing"

  def __init__(self, config: PointerChasingConfig = PointerChasingConfig()):
    if config.num_symbols < 2 or config.num_queries < 1 or config.max_hops < 0:
      raise ValueError(f"pointer_chasing needs num_symbols >= 2, num_queries >= 1, "
                       f"max_hops >= 0; got {config}")
    self._hop_probs = synthetic.normalized_weights(config.hop_weights, config.max_hops + 1,
                                                   "pointer_chasing hop_weights")
    super().__init__(config)

  # Vocabulary: symbols [0, M), pair tokens [M, M + M*M), hop tokens, then specials.
  @property
  def pair_base(self) -> int:
    return self.config.num_symbols

  @property
  def hop_base(self) -> int:
    return self.pair_base + self.config.num_symbols**2

  @property
  def num_plain_tokens(self) -> int:
    return self.hop_base + self.config.max_hops + 1

  @property
  def max_difficulty(self) -> int:
    return self.config.max_hops

  @property
  def difficulty_names(self) -> dict[int, str]:
    names = {h: f"{h} hops" for h in range(self.config.max_hops + 1)}
    names[0] = "0 hops (copy)"
    names[self.format_label] = "format"
    return names

  @property
  def content_len(self) -> int:
    return 1 + self.config.num_symbols + 4 * self.config.num_queries

  @property
  def max_loss_targets(self) -> int:
    return 2 * self.config.num_queries  # each answer and its ';'

  def _build(self, rng, stream):
    m, q, max_hops = self.config.num_symbols, self.config.num_queries, self.config.max_hops
    if self.config.single_cycle:
      cycle = rng.permutation(m)
      successor = np.empty(m, dtype=np.int64)
      successor[cycle] = np.roll(cycle, -1)
    else:
      successor = rng.permutation(m)
    listed = rng.permutation(m)
    stream.add(self.pair_base + listed * m + successor[listed])

    hops_Q = rng.choice(max_hops + 1, size=q, p=self._hop_probs)
    starts_Q = rng.integers(0, m, size=q)
    answers_Q = starts_Q.copy()
    for step in range(max_hops):
      answers_Q = np.where(hops_Q > step, successor[answers_Q], answers_Q)

    queries_Q4 = np.stack([self.hop_base + hops_Q, starts_Q, answers_Q,
                           np.full(q, self.end_id)], axis=1)
    is_target_Q4 = np.zeros((q, 4), dtype=bool)
    is_target_Q4[:, 2:] = True
    difficulty_Q4 = np.full((q, 4), -1, dtype=np.int32)
    difficulty_Q4[:, 2] = hops_Q
    difficulty_Q4[:, 3] = self.format_label
    stream.add(queries_Q4.reshape(-1), is_target_Q4.reshape(-1), difficulty_Q4.reshape(-1))
