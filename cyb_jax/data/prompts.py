"""Prompts cut from a run's eval split, shared by eval's report and sample.py (so neither reaches into the
other): a synthetic task's queries, right before their scored answers, and a text's row beginnings.
"""

from __future__ import annotations

import numpy as np

from cyb_jax.data import example as example_lib
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import tokenizer as tokenizer_lib


def answer_prompts(data: data_pipeline.DataConfig, count: int) -> tuple[list[list[int]], list[str]]:
  """Synthetic tasks: `count` eval examples cut right after a query, so the next token is a scored
  answer, with each answer's difficulty label ("format" positions skipped). Fewer if the first `count`
  eval examples hold fewer answers."""
  names = data_pipeline.data_info(data).difficulty_names or {}
  prompts, labels = [], []
  batch = next(iter(data_pipeline.make_dataset(data, "eval", max(count, 1), seed=0)))
  inputs = np.asarray(batch[example_lib.INPUTS])
  mask = np.asarray(batch[example_lib.LOSS_MASK])
  difficulty = np.asarray(batch.get(example_lib.DIFFICULTY, np.zeros_like(inputs)))
  for row in range(inputs.shape[0]):
    for position in np.nonzero(mask[row])[0]:
      label = names.get(int(difficulty[row, position]), str(int(difficulty[row, position])))
      if label == "format":
        continue
      prompts.append(inputs[row, :position + 1].tolist())
      labels.append(label)
      if len(prompts) == count:
        return prompts, labels
  return prompts, labels


def text_prompts(batch: dict, prompt_len: int, tokenizer) -> list[list[int]]:
  """The report's text prompts: each row's first `prompt_len` inputs (`batch` arrays `[B, N]`), kept to
  the last document they reach (rows packing documents carry `segment_ids`; 0 is padding), and cut at whole
  characters at both ends (a byte-level cut can split a multi-byte character, which would show as U+FFFD
  and be a prompt no user writes). Returns B lists of token ids, each of length in [1, prompt_len]."""
  inputs = np.asarray(batch[example_lib.INPUTS])[:, :prompt_len]
  segments = batch.get(example_lib.SEGMENT_IDS)
  prompts = []
  for row in range(inputs.shape[0]):
    ids = inputs[row]
    if segments is not None:
      row_segments = np.asarray(segments)[row, :prompt_len]
      real = row_segments[row_segments > 0]  # 0: padding after a row's documents (TFDS packing)
      if real.size:
        ids = ids[row_segments == real[-1]]  # segments rise along a row: one contiguous run
    start, end = tokenizer_lib.trim_to_characters(tokenizer, ids)
    prompts.append([int(i) for i in ids[start:end]])
  return prompts


def eval_text_prompts(data: data_pipeline.DataConfig, tokenizer, count: int) -> list[list[int]]:
  """A text run's default prompts: the first half of each of the first `count` eval rows (`text_prompts`),
  as the report continues them."""
  batch = next(iter(data_pipeline.make_dataset(data, "eval", max(count, 1), seed=0)))
  seq_len = batch[example_lib.INPUTS].shape[1]
  return text_prompts(batch, max(1, seq_len // 2), tokenizer)[:count]
