"""The layout of one training example and of a batch, shared by every data source.

A batch is a dict of numpy arrays, B rows of N positions:

- ``inputs``      int32 [B, N]: real tokens x_0 .. x_{N-1} (never `<dk>` or `<pause>`).
- ``targets``     int32 [B, N]: y_i = x_{i+1}, the next token.
- ``loss_mask``   bool  [B, N]: True where target y_i carries loss.
- ``difficulty``  int32 [B, N]: synthetic tasks only; the label of target y_i
  (see each task's ``difficulty_names``), ``NO_DIFFICULTY`` (-1) wherever ``loss_mask`` is False.
- ``segment_ids`` int32 [B, N]: packed TFDS text only; document number of input x_i within its
  row (1, 2, ...), 0 on padding.
- ``loss_positions`` int32 [B, P]: synthetic tasks only; the positions whose target carries loss,
  in order, then positions that carry none to fill the task's fixed P (the most loss targets one
  of its sequences can have). Pause chains are private, so the trainer computes them only there.

A single example is the same dict without the leading B axis.
"""

from __future__ import annotations

import numpy as np

# Difficulty label of positions whose target carries no loss (context, padding).
NO_DIFFICULTY = -1

INPUTS = "inputs"
TARGETS = "targets"
LOSS_MASK = "loss_mask"
DIFFICULTY = "difficulty"
SEGMENT_IDS = "segment_ids"
LOSS_POSITIONS = "loss_positions"


def loss_positions(loss_mask_N: np.ndarray, count: int) -> np.ndarray:
  """int32 [count]: the indices where ``loss_mask_N`` is True, in order, then indices where it is False.

  Raises ValueError when more than ``count`` positions carry loss (no loss token may be dropped).
  """
  loss_mask_N = np.asarray(loss_mask_N, dtype=bool)
  carrying = np.flatnonzero(loss_mask_N)
  if len(carrying) > count:
    raise ValueError(f"{len(carrying)} positions carry loss, more than the {count} loss positions a "
                     "batch holds")
  filler = np.flatnonzero(~loss_mask_N)[:count - len(carrying)]
  return np.concatenate([carrying, filler]).astype(np.int32)


def example_from_stream(tokens_T: np.ndarray, is_target_T: np.ndarray,
                        difficulty_T: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Turns a token stream of T = N+1 tokens into one example of N positions.

  Args:
    tokens_T: int [N+1] the whole stream; position i of the example reads tokens_T[i] and
      predicts tokens_T[i+1].
    is_target_T: bool [N+1], True where token t, *as a target*, carries loss (entry 0 is
      never a target and is ignored).
    difficulty_T: optional int [N+1], label of token t as a target.

  Returns:
    dict with ``inputs``, ``targets``, ``loss_mask`` [N] (and ``difficulty`` [N] if given).
  """
  tokens_T = np.asarray(tokens_T, dtype=np.int32)
  loss_mask_N = np.asarray(is_target_T[1:], dtype=bool)
  example = {
      INPUTS: tokens_T[:-1].copy(),
      TARGETS: tokens_T[1:].copy(),
      LOSS_MASK: loss_mask_N.copy(),
  }
  if difficulty_T is not None:
    example[DIFFICULTY] = np.where(loss_mask_N, np.asarray(difficulty_T[1:], dtype=np.int32),
                                   NO_DIFFICULTY).astype(np.int32)
  return example


def masked_copy(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Same shapes and dtypes as ``example`` but carrying no loss (filler for eval padding)."""
  filler = {key: value.copy() for key, value in example.items()}
  filler[LOSS_MASK] = np.zeros_like(example[LOSS_MASK])
  if DIFFICULTY in filler:
    filler[DIFFICULTY] = np.full_like(example[DIFFICULTY], NO_DIFFICULTY)
  if SEGMENT_IDS in filler:
    filler[SEGMENT_IDS] = np.zeros_like(example[SEGMENT_IDS])
  return filler


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a short final batch [b < batch_size, ...] with rows that carry no loss.

  Every host must run the same number of eval steps with the same shapes, so the last eval
  batch is filled up instead of dropped (dropping would silently skip examples).
  """
  rows = batch[LOSS_MASK].shape[0]
  if rows == batch_size:
    return batch
  if rows > batch_size:
    raise ValueError(f"batch has {rows} rows, more than batch_size={batch_size}")
  padded = {}
  for key, value in batch.items():
    extra = np.zeros((batch_size - rows,) + value.shape[1:], dtype=value.dtype)
    if key == DIFFICULTY:
      extra[...] = NO_DIFFICULTY
    padded[key] = np.concatenate([value, extra], axis=0)
  return padded
