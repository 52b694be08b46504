"""TFDS text datasets (e.g. lm1b), read with ``tfds.data_source`` and packed into rows.

``tfds.data_source`` reads prepared ArrayRecord files directly, without TensorFlow, and never
downloads here (``download=False``): prepare datasets offline into ``data_dir``.

Documents and packing. Each record's text field is tokenised as ``[BOS] + tokens`` and
truncated to seq_len + 1 tokens (grain's packers need every element to fit a row). Documents
are then packed whole into rows of seq_len + 1 tokens by grain's first-fit packer (no document
is split across rows; the rest of a row is padding). A row becomes one example by the usual
shift (inputs = row[:-1], targets = row[1:]) and:

- ``segment_ids`` [N]: the document number (1, 2, ...) of each input, 0 on padding; a model
  that masks attention by segment can use it.
- ``loss_mask`` [N]: True only where input and target belong to the same document. So the
  target that is the BOS of the next document (the cross-document "next token") and every
  target in the padding carry no loss; a document's first real token is still learnt, from
  its BOS.
"""

from __future__ import annotations

import numpy as np

import grain
import grain.experimental

from cyb_jax.data import example as example_lib

_TOKENS = "tokens"


def open_tfds_source(name: str, split: str, data_dir: str | None = None):
  """``tfds.data_source(name, split=split, data_dir=data_dir)``: random access to records.

  Raises FileNotFoundError naming the dataset and directory if it is not prepared there.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # tfds reports a missing dataset in several unrelated ways
    raise FileNotFoundError(
        f"TFDS dataset {name!r} split {split!r} is not available as ArrayRecord in "
        f"data_dir={data_dir!r} (prepare it offline with file_format=array_record): "
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    ) from error


def record_text(record, text_field: str) -> str | bytes:
  """The text of one record; real TFDS data gives bytes, mock data gives str."""
  try:
    text = record[text_field]
  except (KeyError, TypeError) as error:
    raise KeyError(f"record has no text field {text_field!r}; "
                   f"fields: {sorted(record) if hasattr(record, 'keys') else type(record)}"
                   ) from error
  if isinstance(text, np.ndarray):
    text = text.item()
  if not isinstance(text, (str, bytes)):
    raise TypeError(f"text field {text_field!r} holds {type(text).__name__}, not str or bytes")
  return text


class TokenizeDocument(grain.transforms.Map):
  """record -> {"tokens": int32 [<= max_tokens]} = [BOS] + tokenizer(text), truncated. With ``plain``,
  text that spells a special token is encoded as ordinary text (``Tokenizer.encode_plain``), so a record
  that mentions "<|endoftext|>" does not end early."""

  def __init__(self, tokenizer, text_field: str, max_tokens: int, plain: bool = True):
    self.tokenizer = tokenizer
    self.text_field = text_field
    self.max_tokens = int(max_tokens)
    self.plain = bool(plain)

  def map(self, record):
    text = record_text(record, self.text_field)
    tokens = self.tokenizer.encode_plain(text) if self.plain else self.tokenizer.encode(text)
    if self.tokenizer.bos_id is not None:
      tokens = np.concatenate([np.asarray([self.tokenizer.bos_id], dtype=np.int32), tokens])
    return {_TOKENS: tokens[:self.max_tokens].astype(np.int32)}


def packed_row_to_example(row) -> dict[str, np.ndarray]:
  """Packer output {"tokens", "tokens_segment_ids", ...} [N+1] -> example dict [N]."""
  tokens_T = np.asarray(row[_TOKENS], dtype=np.int32)
  segments_T = np.asarray(row[_TOKENS + "_segment_ids"], dtype=np.int32)
  same_document_N = (segments_T[1:] == segments_T[:-1]) & (segments_T[1:] > 0)
  return {
      example_lib.INPUTS: tokens_T[:-1],
      example_lib.TARGETS: tokens_T[1:],
      example_lib.LOSS_MASK: same_document_N,
      example_lib.SEGMENT_IDS: segments_T[:-1],
  }


def pack_documents(documents: grain.IterDataset, seq_len: int, num_bins: int, seed: int,
                   shuffle_bins: bool) -> grain.IterDataset:
  """Tokenised documents (each <= seq_len + 1 tokens) -> example dicts of [seq_len]."""
  packed = grain.experimental.FirstFitPackIterDataset(
      documents, length_struct={_TOKENS: seq_len + 1}, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=shuffle_bins)
  return packed.map(packed_row_to_example)
