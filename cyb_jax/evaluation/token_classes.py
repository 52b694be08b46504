"""Classes of text tokens, for reporting where a model pauses (the paper's observations on text).

The paper reports that a CYB model pauses after plural nouns, never after the first piece of a
contraction, and variably on ambiguous pieces. These classes make that checkable on any tokenizer:
each target token of a row is classified from the decoded text of the row (`tokenizer.token_pieces`),
so the same rules hold for bytes, byte-level BPE and SentencePiece.

Classes (a token may be in several; a token that only adds part of a character, "" in
`token_pieces`, is in none):
  word-initial        starts a word: its text (after any leading whitespace) starts with a word
                      character and contains a letter or digit, and it follows whitespace, punctuation
                      or the row's start.
  continuation        the rest of a word: as above, but it follows a word character directly
                      (e.g. "ll" or "'ll" after "I").
  punctuation         non-space text with no letter or digit (",", "'", "--").
  whitespace          only whitespace (" ", "\\n").
  capitalised         a word piece whose first letter or digit is an upper-case letter.
  contraction, first piece / contraction, later piece
                      the token lies in a word (a run of letters, digits and apostrophes) with an
                      apostrophe followed by a letter, e.g. 'tis, I'll, o'er, don't; "first piece" when
                      the word starts in this token, "later piece" otherwise. A single-quoted word
                      ('Hello) counts too: plain text cannot tell the two apart.
Word characters are letters, digits and the apostrophes ' and U+2019.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CLASSES = ("word-initial", "continuation", "punctuation", "whitespace", "capitalised",
           "contraction, first piece", "contraction, later piece")
APOSTROPHES = ("'", "\u2019")


def _is_word_char(char: str) -> bool:
  return char.isalnum() or char in APOSTROPHES


def _is_contraction(word: str) -> bool:
  """A word with an apostrophe that a letter follows: 'tis, I'll, o'er (not James')."""
  return any(c in APOSTROPHES and i + 1 < len(word) and word[i + 1].isalpha() for i, c in enumerate(word))


def classify(pieces: Sequence[str]) -> np.ndarray:
  """bool `[n, len(CLASSES)]`: the classes of each of a row's `n` tokens, given the text each adds.

  pieces: per token, the text it adds to the row (`tokenizer.token_pieces`), so "".join(pieces) is the
  decoded row.
  """
  text = "".join(pieces)
  starts = np.cumsum([0] + [len(p) for p in pieces])[:-1]
  out = np.zeros((len(pieces), len(CLASSES)), bool)
  column = {name: i for i, name in enumerate(CLASSES)}
  for i, piece in enumerate(pieces):
    stripped = piece.lstrip()
    if not piece:
      continue
    if not stripped:
      out[i, column["whitespace"]] = True
      continue
    if not any(c.isalnum() for c in stripped):
      out[i, column["punctuation"]] = True
    head = int(starts[i]) + len(piece) - len(stripped)  # offset of the first non-space character
    is_word_piece = _is_word_char(stripped[0]) and any(c.isalnum() for c in stripped)
    if is_word_piece:
      follows_word = head > 0 and _is_word_char(text[head - 1])
      out[i, column["continuation" if follows_word else "word-initial"]] = True
      first_alnum = next(c for c in stripped if c.isalnum())
      out[i, column["capitalised"]] = first_alnum.isupper()
    if _is_word_char(stripped[0]):
      word_start = head
      while word_start > 0 and _is_word_char(text[word_start - 1]):
        word_start -= 1
      word_end = head
      while word_end < len(text) and _is_word_char(text[word_end]):
        word_end += 1
      if _is_contraction(text[word_start:word_end]):
        out[i, column["contraction, first piece" if word_start == head else "contraction, later piece"]] = True
  return out


def row_classifier(pieces_of: Callable[[np.ndarray], list[str]]) -> Callable[[np.ndarray], np.ndarray]:
  """A function from target ids `[B, N]` to classes bool `[B, N, len(CLASSES)]`, classifying each row
  from the text `pieces_of(row_ids)` gives (e.g. `functools.partial(tokenizer.token_pieces, tok)`)."""

  def classify_rows(targets_BN: np.ndarray) -> np.ndarray:
    targets_BN = np.asarray(targets_BN)
    return np.stack([classify(pieces_of(row)) for row in targets_BN.reshape(-1, targets_BN.shape[-1])]
                    ).reshape(*targets_BN.shape, len(CLASSES))

  return classify_rows
