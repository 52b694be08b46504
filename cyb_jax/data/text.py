"""Local text as grain sources of fixed-length windows: one text file, or documents (JSONL or a folder).

**One text file** (``text_path`` = a file that is not ``.jsonl``). The file is read once, tokenised
whole, and split by position: the first (1 - eval_fraction) of its tokens are train, the rest eval, so
no eval text is ever trained on (only the one window that would straddle the cut is lost).

Windows: window w holds tokens [w*N, w*N + N + 1) of its split, i.e. N inputs and their N
next-token targets; consecutive windows share one token, so every token of the split except
the first is a target exactly once per epoch and no target is seen twice. The tail shorter
than a window is dropped. With a tokenizer whose `add_bos` is set (pretrained models that expect
every sequence to start with BOS), window w is instead BOS + tokens [w*N, w*N + N): its inputs are
BOS and the first N - 1 tokens, its targets the N tokens, so again every token of the split is a
target exactly once per epoch. The same chunking serves train (the pipeline reshuffles the
windows every epoch) and eval (in order). Non-overlapping chunks rather than random offsets
keep "one epoch" exact, which the data-efficiency curves (tokens seen) rely on.

**Documents** (``text_path`` = a ``.jsonl`` file, one JSON object per line with the text in
``text_field``, blank lines skipped; or a folder, each ``*.txt`` file directly in it one document, in
sorted name order). Documents, not tokens, are split (``split_documents``): with D documents,
E = min(D - 1, max(1, round(D * eval_fraction))) of them, chosen by a permutation of 0..D-1 drawn from
``numpy.random.default_rng(split_seed)`` (its first E entries), are eval, the rest train; both keep file
order. A document is [BOS] + its tokens + [EOS]: BOS as the tokenizer's rule says (``add_bos``), EOS the
tokenizer's first EOS id if it has one (the byte tokenizer has none). A split's documents are laid end to
end into one stream and windowed exactly as one text file (above), so "one epoch" stays exact. Each
window also carries ``segment_ids`` [N] (the document of each input, numbered 1, 2, ... within the
row), so attention never crosses a document, and its ``loss_mask`` is True only where input and target
lie in one document and the target is not BOS: the last token of a document never learns to predict the
next document's first token, while its EOS is a target like any other token. With ``add_bos``, a window
that starts inside a document begins with an extra BOS in that document (as text-file windows do); one
that starts exactly at a document's own BOS gets the extra BOS as a segment of its own, which predicts
nothing.

**Reading.** Text is decoded strictly with ``encoding`` (UTF-8 by default): a byte that is not valid
stops the run with a one-line ``DataFileError`` naming the file, the line, the byte offset and the
encoding the bytes look like. The byte tokenizer reads one text file's raw bytes unless another encoding
is set (the text is then re-encoded as UTF-8); documents are always decoded. Text that spells a special
token of the tokenizer (``<|endoftext|>``, ``<s>``...) is encoded by ``special_text``: "plain" (default)
as the ordinary characters it is, with one warning naming the file, line and token (a corpus that
mentions a token must not inject a fake document boundary); "special" as the control token (corpora
written in a chat template); "error" refuses it in one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from cyb_jax.data import example as example_lib
from cyb_jax.data import tokenizer as tokenizer_lib

SPLITS = ("train", "eval")
DEFAULT_ENCODING = "utf-8"
SPECIAL_TEXT_MODES = ("plain", "special", "error")
JSONL_SUFFIX = ".jsonl"
FOLDER_SUFFIX = ".txt"

log = logging.getLogger("cyb_jax")


class DataFileError(ValueError):
  """A problem in the text data itself; the message is one line naming the file (and line)."""


def is_documents(path: str) -> bool:
  """Whether ``path`` is read as documents (a .jsonl file or a folder) rather than one text."""
  return os.path.isdir(path) or str(path).lower().endswith(JSONL_SUFFIX)


def _looks_like(raw: bytes) -> str:
  """A guess at the encoding of bytes that are not valid UTF-8, for error messages."""
  if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
    return "UTF-16 (it starts with a UTF-16 byte-order mark)"
  if not any(0x80 <= b <= 0x9F for b in raw):
    return "Latin-1 (ISO-8859-1)"
  try:
    raw.decode("cp1252")
    return "Windows-1252 (cp1252)"
  except UnicodeDecodeError:
    return "an 8-bit encoding other than UTF-8"


def decode_strict(raw: bytes, encoding: str, path: str, *, line: int | None = None,
                  base_offset: int = 0) -> str:
  """``raw`` decoded with ``encoding``, or DataFileError naming the file, the line (``line``, else counted
  in ``raw``), the byte offset in the file of the first bad byte (``base_offset`` + its index in ``raw``)
  and, for UTF-8, the encoding the bytes look like."""
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as error:
    bad = raw[error.start:error.end]
    line = raw.count(b"\n", 0, error.start) + 1 if line is None else line
    hint = (f"; it looks like {_looks_like(raw)}: set data.encoding if it is meant to be read that way"
            if _is_utf8(encoding) else "; set data.encoding to the file's encoding")
    raise DataFileError(f"{path}, line {line}: not valid {encoding}: byte 0x{bad[0]:02X} at byte offset "
                        f"{base_offset + error.start}{hint}") from None


@dataclasses.dataclass
class _SpecialTextCheck:
  """Applies the ``special_text`` mode to each text read; warns once per read."""
  tokenizer: object
  mode: str
  found: int = 0

  def encode(self, text: str, where, add_bos: bool = False) -> np.ndarray:
    """``where(char_offset)`` -> "file, line L" for messages."""
    plain = self.mode != "special"
    if self.mode != "special":
      hit = tokenizer_lib.find_special_text(self.tokenizer, text)
      if hit is not None:
        offset, token = hit
        message = (f"{where(offset)}: the text holds {token!r}, the text of a special token of the tokenizer")
        if self.mode == "error":
          raise DataFileError(f"{message}; remove it, or set data.special_text='plain' (encode it as "
                              "ordinary text) or 'special' (as the control token)")
        if not self.found:
          log.warning("%s; it is encoded as ordinary text (data.special_text='plain'; 'special' makes it the "
                      "control token). Further such texts are not reported.", message)
        self.found += 1
    if add_bos:
      return self.tokenizer.encode_document(text, plain=plain)
    return self.tokenizer.encode_plain(text) if plain else self.tokenizer.encode(text)


def _check_mode(special_text: str) -> None:
  if special_text not in SPECIAL_TEXT_MODES:
    raise ValueError(f"special_text must be one of {SPECIAL_TEXT_MODES}, got {special_text!r}")


def _is_utf8(encoding: str) -> bool:
  return encoding.replace("_", "-").lower() in ("utf-8", "utf8")


def read_text_tokens(path: str, tokenizer, encoding: str = DEFAULT_ENCODING,
                     special_text: str = "plain") -> np.ndarray:
  """Tokens of the whole file, int32 [n]. Errors name the file if it is missing, empty or not valid in
  ``encoding`` (see the module docstring)."""
  _check_mode(special_text)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"text file not found: {path}")
  with open(path, "rb") as handle:
    raw = handle.read()
  if not raw:
    raise ValueError(f"text file is empty: {path}")
  if isinstance(tokenizer, tokenizer_lib.ByteTokenizer):
    if _is_utf8(encoding):
      return tokenizer.encode(raw)
    return tokenizer.encode(decode_strict(raw, encoding, path).encode("utf-8"))
  text = decode_strict(raw, encoding, path)
  check = _SpecialTextCheck(tokenizer, special_text)
  return check.encode(text, lambda offset: f"{path}, line {text.count(chr(10), 0, offset) + 1}")


# ----------------------------------------------------------------------------------------------
# Documents


def read_documents(path: str, tokenizer, *, text_field: str = "text", encoding: str = DEFAULT_ENCODING,
                   special_text: str = "plain") -> list[np.ndarray]:
  """Each document of a .jsonl file or folder as int32 [n_d] tokens, [BOS] + text + [EOS] (see the module
  docstring), in file order. Raises DataFileError (one line naming the file and line) for malformed JSON, a
  line that is not an object, a missing or non-string field, an empty document, undecodable bytes, or a
  source with no document; FileNotFoundError when nothing is at ``path``."""
  _check_mode(special_text)
  check = _SpecialTextCheck(tokenizer, special_text)
  eos = tokenizer.eos_ids[0] if tokenizer.eos_ids else None
  texts = _jsonl_texts(path, text_field, encoding) if os.path.isfile(path) else _folder_texts(path, encoding)
  documents = []
  for text, where in texts:
    ids = check.encode(text, where, add_bos=True)
    if eos is not None:
      ids = np.concatenate([ids, np.asarray([eos], np.int32)])
    documents.append(np.asarray(ids, np.int32))
  if not documents:
    raise DataFileError(f"{path}: holds no document")
  return documents


def _jsonl_texts(path: str, field: str, encoding: str):
  """(text, where) per non-blank line of a JSONL file; ``where(char_offset)`` names file and line."""
  offset = 0
  with open(path, "rb") as handle:
    for number, line in enumerate(handle, 1):
      start, offset = offset, offset + len(line)
      place = f"{path}, line {number}"
      decoded = decode_strict(line, encoding, path, line=number, base_offset=start)
      if not decoded.strip():
        continue
      try:
        record = json.loads(decoded)
      except json.JSONDecodeError as error:
        raise DataFileError(f"{place}: malformed JSON: {error.msg} (column {error.colno})") from None
      if not isinstance(record, dict):
        raise DataFileError(f"{place}: expected a JSON object, got {type(record).__name__}")
      if field not in record:
        raise DataFileError(f"{place}: no field {field!r} (fields: {sorted(record)[:8]}); set data.text_field")
      text = record[field]
      if not isinstance(text, str):
        raise DataFileError(f"{place}: field {field!r} holds {type(text).__name__}, not a string")
      if not text.strip():
        raise DataFileError(f"{place}: field {field!r} is an empty document")
      yield text, (lambda _offset, place=place: place)


def _folder_texts(path: str, encoding: str):
  """(text, where) per *.txt file directly in a folder, sorted by name."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no text file, .jsonl file or folder at {path}")
  names = sorted(name for name in os.listdir(path)
                 if name.endswith(FOLDER_SUFFIX) and os.path.isfile(os.path.join(path, name)))
  if not names:
    raise DataFileError(f"{path}: a folder with no *{FOLDER_SUFFIX} file")
  for name in names:
    file_path = os.path.join(path, name)
    with open(file_path, "rb") as handle:
      raw = handle.read()
    if not raw.strip():
      raise DataFileError(f"{file_path}: empty document")
    text = decode_strict(raw, encoding, file_path)
    yield text, (lambda offset, file_path=file_path, text=text:
                 f"{file_path}, line {text.count(chr(10), 0, offset) + 1}")


def split_documents(count: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) document indices, int [D - E] and [E], each ascending (the rule in the module
  docstring). Raises ValueError for fewer than 2 documents."""
  if count < 2:
    raise ValueError(f"{count} document(s): at least 2 are needed (one train, one eval)")
  num_eval = min(count - 1, max(1, int(round(count * eval_fraction))))
  order = np.random.default_rng(seed).permutation(count)
  return np.sort(order[num_eval:]), np.sort(order[:num_eval])


# One read kept: the configuration, the trainer and eval each build both splits of the same source.
_CACHE: dict = {}


def _documents_cached(path, tokenizer, text_field, encoding, special_text) -> list[np.ndarray]:
  stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns)]
  if os.path.isdir(path):
    stats += [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)]
  key = (repr(tokenizer), text_field, encoding, special_text, tuple(sorted(stats)))
  if key not in _CACHE:
    _CACHE.clear()
    _CACHE[key] = read_documents(path, tokenizer, text_field=text_field, encoding=encoding,
                                 special_text=special_text)
  return _CACHE[key]


def _check_window_args(split: str, seq_len: int, eval_fraction: float) -> None:
  """The arguments both window sources take, checked alike (ValueError naming the argument)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")


def _window_length(num_tokens: int, seq_len: int, with_bos: bool) -> int:
  return (num_tokens - (0 if with_bos else 1)) // seq_len


class TextWindowSource:
  """Random-access grain source of [seq_len + 1]-token windows of one split of a text file.

  Each item is an example dict (``inputs``, ``targets``, ``loss_mask``; arrays [seq_len]).
  ``offset(w)`` gives the token offset of window w within the whole file.
  """

  def __init__(self, path: str, seq_len: int, split: str, eval_fraction: float = 0.1,
               tokenizer=None, *, encoding: str = DEFAULT_ENCODING, special_text: str = "plain"):
    _check_window_args(split, seq_len, eval_fraction)
    self.path = str(path)
    self.seq_len = int(seq_len)
    self.split = split
    self.eval_fraction = float(eval_fraction)
    self.tokenizer = tokenizer if tokenizer is not None else tokenizer_lib.ByteTokenizer()
    tokens = read_text_tokens(self.path, self.tokenizer, encoding, special_text)
    cut = int(round(len(tokens) * (1.0 - self.eval_fraction)))
    self._start = 0 if split == "train" else cut
    self._tokens = tokens[:cut] if split == "train" else tokens[cut:]
    self._bos = self.tokenizer.bos_id if getattr(self.tokenizer, "add_bos", False) else None
    self._num_windows = _window_length(len(self._tokens), self.seq_len, self._bos is not None)
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


class DocumentWindowSource:
  """Random-access grain source of windows packed across the documents of one split of a .jsonl file or
  folder (module docstring). Items: ``inputs``, ``targets``, ``loss_mask``, ``segment_ids`` [seq_len].

  ``documents`` (int [D_split]): the source's document numbers (0-based, file order) in this split.
  """

  def __init__(self, path: str, seq_len: int, split: str, eval_fraction: float = 0.1, tokenizer=None, *,
               text_field: str = "text", encoding: str = DEFAULT_ENCODING, special_text: str = "plain",
               split_seed: int = 0):
    _check_window_args(split, seq_len, eval_fraction)
    if not os.path.exists(path):
      raise FileNotFoundError(f"text path not found: {path}")
    self.path = str(path)
    self.seq_len = int(seq_len)
    self.split = split
    self.eval_fraction = float(eval_fraction)
    self.tokenizer = tokenizer if tokenizer is not None else tokenizer_lib.ByteTokenizer()
    documents = _documents_cached(self.path, self.tokenizer, text_field, encoding, special_text)
    try:
      train, evaluation = split_documents(len(documents), self.eval_fraction, split_seed)
    except ValueError as error:
      raise DataFileError(f"{self.path}: {error}") from None
    self.documents = train if split == "train" else evaluation
    chosen = [documents[d] for d in self.documents]
    self._tokens = np.concatenate(chosen).astype(np.int32)
    self._docs = np.repeat(np.arange(len(chosen), dtype=np.int32), [len(d) for d in chosen])
    self._bos = self.tokenizer.bos_id if getattr(self.tokenizer, "add_bos", False) else None
    self._num_windows = _window_length(len(self._tokens), self.seq_len, self._bos is not None)
    if self._num_windows < 1:
      raise ValueError(
          f"text path {self.path}: its {split} split ({len(chosen)} documents) has {len(self._tokens)} "
          f"tokens, fewer than one window of {self.seq_len + (0 if self._bos is not None else 1)}")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def __len__(self) -> int:
    return self._num_windows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self._num_windows:
      raise IndexError(f"window {index} out of range for {self!r}")
    start = index * self.seq_len
    if self._bos is not None:
      body = slice(start, start + self.seq_len)
      first_doc = int(self._docs[start])
      starts_document = start == 0 or int(self._docs[start - 1]) != first_doc
      # The extra BOS belongs to the document the window starts in, or is alone before a document's own BOS.
      tokens_T = np.concatenate([np.asarray([self._bos], np.int32), self._tokens[body]])
      docs_T = np.concatenate([np.asarray([first_doc - 1 if starts_document else first_doc], np.int32),
                               self._docs[body]])
    else:
      tokens_T = self._tokens[start:start + self.seq_len + 1]
      docs_T = self._docs[start:start + self.seq_len + 1]
    is_target_T = np.concatenate([[False], docs_T[1:] == docs_T[:-1]])
    bos_id = self.tokenizer.bos_id
    if bos_id is not None:
      is_target_T &= tokens_T != bos_id
    example = example_lib.example_from_stream(tokens_T, is_target_T)
    example[example_lib.SEGMENT_IDS] = (docs_T[:-1] - docs_T[0] + 1).astype(np.int32)
    return example

  def __repr__(self) -> str:
    return (f"DocumentWindowSource(path={self.path!r}, seq_len={self.seq_len}, split={self.split}, "
            f"eval_fraction={self.eval_fraction}, documents={len(self.documents)}, "
            f"tokenizer={self.tokenizer!r}, windows={self._num_windows})")
