"""Set sum: add up the values of k listed keys. Width-bound difficulty (DESIGN.md section 8).

Layout of one sequence (T = seq_len + 1 tokens):

    BOS  I_1 .. I_M  [k_1 .. k_k = v ;] * Q  PAD*

- I_j, an *item token*, states value(key) = val for one key; a single token (id
  ``item_base + key*P + val``), so fetching one value is one attention lookup. All M keys are
  listed once, in random order, with values drawn uniformly from 0..P-1.
- Each query lists k distinct keys (ids 0..M-1, random order), then '=' (``equals_id``), then
  the answer v = (sum of their values) mod P (id ``value_base + v``), then ';' (``end_id``).
  k is drawn per query from 1..max_keys (``query_size_weights``, uniform by default).

Why it is width-bound rather than depth-bound: the k lookups are independent of each other,
so they can all run in the same layer, but each head fetches about one item per layer, and
the answer position must gather k of them. The more keys per query, the more parallel
fetches (attention queries) the answer needs; extra pause steps without feedback add exactly
that (more queries per layer). Caveat: each listed key token can fetch its own value at its
own position, so a model can also spread the fetching over the query's positions and then
needs to aggregate k values at '='; either way the work grows with k.

Loss and labels (a label belongs to the target token):
- answer v: loss, difficulty k.
- ';' after the answer: loss, label ``format_label`` = max_keys + 1 (always predictable).
- items, keys, '=' (whether another key follows is random) and padding: no loss, label -1.
Label 0 is unused. The sequence length varies with the drawn k, so rows are padded to the
longest case (all queries of size max_keys).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyb_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class SetSumConfig:
  num_keys: int = 16            # M, keys listed in the context
  modulus: int = 10             # P, values and answers are in 0..P-1
  max_keys: int = 6             # largest k (keys per query); k is drawn from 1..max_keys
  num_queries: int = 8          # Q, queries per sequence
  query_size_weights: tuple[float, ...] | None = None  # P(k) for k = 1..max_keys; None = uniform
  seq_len: int | None = None    # N; None = 1 + M + Q*(max_keys + 3) - 1 (room for the worst case)


class SetSumTask(synthetic.SyntheticTask):
  name = "set_sum"

  def __init__(self, config: SetSumConfig = SetSumConfig()):
    if config.num_keys < 1 or config.modulus < 2 or config.num_queries < 1:
      raise ValueError(f"set_sum needs num_keys >= 1, modulus >= 2, num_queries >= 1; "
                       f"got {config}")
    if not 1 <= config.max_keys <= config.num_keys:
      raise ValueError(f"set_sum needs 1 <= max_keys <= num_keys; got {config}")
    self._size_probs = synthetic.normalized_weights(
        config.query_size_weights, config.max_keys, "set_sum query_size_weights")
    super().__init__(config)

  # Vocabulary: keys [0, M), values [M, M+P), items [M+P, M+P+M*P), '=', then specials.
  @property
  def value_base(self) -> int:
    return self.config.num_keys

  @property
  def item_base(self) -> int:
    return self.value_base + self.config.modulus

  @property
  def equals_id(self) -> int:
    return self.item_base + self.config.num_keys * self.config.modulus

  @property
  def num_plain_tokens(self) -> int:
    return self.equals_id + 1

  @property
  def max_difficulty(self) -> int:
    return self.config.max_keys

  @property
  def difficulty_names(self) -> dict[int, str]:
    names = {k: f"sum of {k} values" for k in range(1, self.config.max_keys + 1)}
    names[1] = "1 value (lookup)"
    names[self.format_label] = "format"
    return names

  @property
  def content_len(self) -> int:
    c = self.config
    return 1 + c.num_keys + c.num_queries * (c.max_keys + 3)

  @property
  def max_loss_targets(self) -> int:
    return 2 * self.config.num_queries  # each answer and its ';'

  def _build(self, rng, stream):
    c = self.config
    values_M = rng.integers(0, c.modulus, size=c.num_keys)
    listed = rng.permutation(c.num_keys)
    stream.add(self.item_base + listed * c.modulus + values_M[listed])
    sizes_Q = 1 + rng.choice(c.max_keys, size=c.num_queries, p=self._size_probs)
    # Each query's keys: the first k of an independent random ordering of all keys.
    orderings_QM = np.argsort(rng.random((c.num_queries, c.num_keys)), axis=1)
    for size, ordering in zip(sizes_Q, orderings_QM):
      keys = ordering[:size]
      answer = int(values_M[keys].sum() % c.modulus)
      stream.add(keys)
      stream.add(self.equals_id)
      stream.add([self.value_base + answer, self.end_id], True, [size, self.format_label])
