"""A local text file as a grain source of fixed-length windows.

The file is read once, tokenised whole, and split by position: the first
(1 - eval_fraction) of its tokens are train, the rest eval, so no eval text is ever trained
on (only the one window that would straddle the cut is lost).

Windows: window w holds tokens [w*N, w*N + N + 1) of its split, i.e. N inputs and their N
next-token targets; consecutive windows share one token, so every token of the split except
the first is a target exactly once per epoch and no target is seen twice. The tail shorter
than a window is dropped. With a tokenizer whose `add_bos` is set (pretrained models that expect
every sequence to start with BOS), window w is instead BOS + tokens [w*N, w*N + N): its inputs are
BOS and the first N - 1 tokens, its targets the N tokens, so again every token of the split is a
target exactly once per epoch. The same chunking serves train (the pipeline reshuffles the
windows every epoch) and eval (in order). Non-overlapping chunks rather than random offsets
keep "one epoch" exact, which the data-efficiency curves (tokens seen) rely on.
"""

from __future__ import annotations

import os

import numpy as np

from cyb_jax.data import example as example_lib
from cyb_jax.data import tokenizer as tokenizer_lib

SPLITS = ("train", "eval")


def read_text_tokens(path: str, tokenizer) -> np.ndarray:
  """Tokens of the whole file, int32 [n]. Errors name the file if it is missing or empty."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"text file not found: {path}")
  with open(path, "rb") as handle:
    raw = handle.read()
  if not raw:
    raise ValueError(f"text file is empty: {path}")
  if isinstance(tokenizer, tokenizer_lib.ByteTokenizer):
    return tokenizer.encode(raw)
  return tokenizer.encode(raw.decode("utf-8", errors="replace"))


class TextWindowSource:
  """Random-access grain source of [seq_len + 1]-token windows of one split of a text file.

  Each item is an example dict (``inputs``, ``targets``, ``loss_mask``; arrays [seq_len]).
  ``offset(w)`` gives the token offset of window w within the whole file.
  """

  def __init__(self, path: str, seq_len: int, split: str, eval_fraction: float = 0.1,
               tokenizer=None):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 0.0 < eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    self.path = str(path)
    self.seq_len = int(seq_len)
    self.split = split
    self.eval_fraction = float(eval_fraction)
    self.tokenizer = tokenizer if tokenizer is not None else tokenizer_lib.ByteTokenizer()
    tokens = read_text_tokens(self.path, self.tokenizer)
    cut = int(round(len(tokens) * (1.0 - self.eval_fraction)))
    self._start = 0 if split == "train" else cut
    self._tokens = tokens[:cut] if split == "train" else tokens[cut:]
    self._bos = self.tokenizer.bos_id if getattr(self.tokenizer, "add_bos", False) else None
    self._num_windows = (len(self._tokens) - (0 if self._bos is not None else 1)) // self.seq_len
    if self._num_windows < 1:
      raise ValueError(
          f"text file {self.path}: its {split} split has {len(self._tokens)} tokens, fewer "
          f"than one window of {self.seq_len + (0 if self._bos is not None else 1)}")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def offset(self, window: int) -> int:
    """Offset in the whole file's tokens of the first token of ``window``."""
    return self._start + window * self.seq_len

  def __len__(self) -> int:
    return self._num_windows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self._num_windows:
      raise IndexError(f"window {index} out of range for {self!r}")
    start = index * self.seq_len
    if self._bos is not None:
      window_T = np.concatenate([np.asarray([self._bos], np.int32),
                                 self._tokens[start:start + self.seq_len]])
    else:
      window_T = self._tokens[start:start + self.seq_len + 1]
    return example_lib.example_from_stream(window_T, np.ones(len(window_T), dtype=bool))

  def __repr__(self) -> str:
    return (f"TextWindowSource(path={self.path!r}, seq_len={self.seq_len}, "
            f"split={self.split}, eval_fraction={self.eval_fraction}, "
            f"tokenizer={self.tokenizer!r}, windows={self._num_windows})")
