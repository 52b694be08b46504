"""Generated text as a person reads it, pauses shown: one `PAUSE_MARK` before a token per pause it took.

Shared by sample.py's output and eval.py's report (which imports it from here).
"""

from __future__ import annotations

from typing import Sequence

PAUSE_MARK = "\u23f8"  # ⏸, written before a token once per pause it took


def render_sample(pieces: Sequence[str], pauses: Sequence[int]) -> str:
  """Generated text with `PAUSE_MARK` x pauses before each token's piece of text (see
  `tokenizer.token_pieces`): `pieces` and `pauses` are per token, of the same length."""
  return "".join(PAUSE_MARK * int(p) + piece for piece, p in zip(pieces, pauses))
