"""Tokenizers: bytes by default, SentencePiece as an option.

Both expose ``vocab_size``, ``bos_id`` (start-of-document token, or None), ``encode`` and
``decode``. Token ids are real-vocabulary ids only; the model appends `<dk>` itself at index
``vocab_size``.
"""

from __future__ import annotations

import numpy as np

_NUM_BYTES = 256


class ByteTokenizer:
  """UTF-8 bytes as tokens, plus one reserved id.

  Ids 0..255 are the bytes themselves, so any text round-trips and nothing needs training.
  Id 256 (``BOS_ID``) marks the start of a document; packed TFDS rows put it before every
  document so the model sees where one ends and the next begins. It never occurs inside text,
  and ``decode`` drops it. ``vocab_size`` = 257 whichever source uses the tokenizer, so a
  byte-level model fits every text source.
  """

  BOS_ID = _NUM_BYTES
  vocab_size = _NUM_BYTES + 1

  @property
  def bos_id(self) -> int:
    return self.BOS_ID

  def encode(self, text: str | bytes) -> np.ndarray:
    """str (encoded as UTF-8) or raw bytes -> int32 [len(bytes)]."""
    if isinstance(text, str):
      text = text.encode("utf-8")
    return np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """int [n] -> str. Reserved ids are dropped; invalid UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    byte_ids = ids[(ids >= 0) & (ids < _NUM_BYTES)].astype(np.uint8)
    return byte_ids.tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class SentencePieceTokenizer:
  """A trained SentencePiece model (``.model`` file) as tokenizer.

  ``sentencepiece`` is optional and imported only here, so the project does not depend on it.
  ``bos_id`` is the model's own BOS id, or None if the model has none.
  """

  def __init__(self, model_path: str):
    try:
      import sentencepiece  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError(
          "SentencePieceTokenizer needs the optional package 'sentencepiece' "
          "(pip install sentencepiece), or use tokenizer='byte'") from error
    self.model_path = str(model_path)
    try:
      self._processor = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
    except (OSError, RuntimeError) as error:
      raise FileNotFoundError(
          f"cannot load SentencePiece model {self.model_path!r}: {error}") from error
    self.vocab_size = int(self._processor.vocab_size())
    bos = int(self._processor.bos_id())
    self.bos_id = bos if bos >= 0 else None

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._processor.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    return self._processor.decode(ids)

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.model_path!r})"


def make_tokenizer(name: str = "byte", model_path: str = ""):
  """'byte' -> ByteTokenizer; 'sentencepiece' -> SentencePieceTokenizer(model_path)."""
  if name == "byte":
    return ByteTokenizer()
  if name == "sentencepiece":
    if not model_path:
      raise ValueError("tokenizer='sentencepiece' needs spm_model_path (a .model file)")
    return SentencePieceTokenizer(model_path)
  raise ValueError(f"unknown tokenizer {name!r}; known: 'byte', 'sentencepiece'")
