"""Tokenizers: bytes by default; SentencePiece, Hugging Face tokenizer.json and a BPE we train.

Every tokenizer here has one interface (``Tokenizer``):

- ``vocab_size``: every id it can produce is < vocab_size (added and special tokens included).
- ``bos_id`` (or None), ``eos_ids`` (tuple, may be empty), ``add_bos`` (whether a document
  should start with BOS, as the model expects).
- ``encode(text)`` -> int32 [n], the text's ids without any special token added (special-token
  text in ``text``, e.g. "<|endoftext|>", becomes its control id, as transformers does);
  ``encode_plain(text)`` the same with such text spelt out as ordinary text (what a corpus means);
  ``special_texts``: the texts ``encode`` turns into control ids (``find_special_text`` finds one);
  ``encode_document(text)`` -> [BOS] + encode(text) when ``add_bos`` (no second BOS if the
  text already starts with it).
- ``decode(ids)`` -> str, special tokens skipped, the run decoded as a whole.
- ``token_text(id)`` -> how one token is shown to a person (never empty).

Token ids are real-vocabulary ids only; the model appends `<dk>` itself at index ``vocab_size``.
Which pretrained tokenizers add BOS, and which ids end a sequence, is decided in one place:
``special_token_rule`` (sources: transformers 5.23's AutoTokenizer as measured on our fixtures,
tests/fixtures/HF_FACTS.md section (f)).
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

_NUM_BYTES = 256
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
MODEL_CONFIG = "config.json"
KNOWN_TOKENIZERS = ("byte", "sentencepiece", "hf", "bpe")

# Special tokens of the BPE tokenizers that `train_bpe_tokenizer` makes (ids 0 and 1).
BPE_BOS = "<|bos|>"
BPE_EOS = "<|eos|>"
_BPE_SPECIALS = (BPE_BOS, BPE_EOS)
MIN_BPE_VOCAB = _NUM_BYTES + len(_BPE_SPECIALS)


def _byte_name(byte: int) -> str:
  return f"<0x{byte:02X}>"


def _bytes_text(raw: bytes) -> str:
  """bytes -> text, each byte that is not part of valid UTF-8 written as ``<0xC3>``.

  Used for display only: a token holding half of a 2-byte character then shows its byte
  instead of U+FFFD, which would hide which byte it is.
  """
  parts = []
  while raw:
    try:
      parts.append(raw.decode("utf-8"))
      break
    except UnicodeDecodeError as error:
      parts.append(raw[:error.start].decode("utf-8"))
      parts.extend(_byte_name(b) for b in raw[error.start:error.end])
      raw = raw[error.end:]
  return "".join(parts)


def _as_ids(ids) -> list[int]:
  return [int(i) for i in np.asarray(ids).reshape(-1)]


def _as_text(text: str | bytes) -> str:
  if isinstance(text, bytes):
    return text.decode("utf-8", errors="replace")
  return text


class Tokenizer(abc.ABC):
  """The interface every tokenizer here has (see the module docstring)."""

  vocab_size: int
  bos_id: int | None
  eos_ids: tuple[int, ...]
  add_bos: bool

  @abc.abstractmethod
  def encode(self, text: str | bytes) -> np.ndarray:
    """Text -> int32 [n] ids, without BOS/EOS. Bytes are read as UTF-8 (bad bytes -> U+FFFD)."""

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """int [n] -> str; special tokens are skipped and the run is decoded as a whole."""

  @abc.abstractmethod
  def token_text(self, token_id: int) -> str:
    """One token as a person should see it in a table; never empty."""

  # Texts that `encode` turns into control ids; none unless a tokenizer says so.
  special_texts: tuple[str, ...] = ()

  def encode_plain(self, text: str | bytes) -> np.ndarray:
    """int32 [n]: like ``encode``, but text that spells a special token (``special_texts``) is
    encoded as the ordinary characters it is made of, never as the control id."""
    return self.encode(text)

  def encode_document(self, text: str | bytes, *, plain: bool = False) -> np.ndarray:
    """int32 [n (+1)]: [bos_id] + ids if ``add_bos``, else ids, where ids = ``encode(text)``
    (``encode_plain`` with ``plain``). Text that already starts with the BOS token's text (a prompt
    typed as "<s>Hello") is not given a second BOS."""
    ids = self.encode_plain(text) if plain else self.encode(text)
    if not self.add_bos or (len(ids) and int(ids[0]) == self.bos_id):
      return ids
    return np.concatenate([np.asarray([self.bos_id], dtype=np.int32), ids])

  def _check_id(self, token_id: int) -> int:
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"token id {token_id} is outside [0, {self.vocab_size}) of {self!r}")
    return token_id


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as tokens, plus one reserved id.

  Ids 0..255 are the bytes themselves, so any text round-trips and nothing needs training.
  Id 256 (``BOS_ID``) marks the start of a document; packed TFDS rows put it before every
  document (whatever ``add_bos`` says) so the model sees where one ends and the next begins. Text-file
  windows, which cut one long document, start without it unless ``add_bos`` is set. It never occurs
  inside text, and ``decode`` drops it. There is no EOS. ``vocab_size`` = 257 whichever source uses the
  tokenizer, so a byte-level model fits every text source.
  """

  BOS_ID = _NUM_BYTES
  vocab_size = _NUM_BYTES + 1
  eos_ids: tuple[int, ...] = ()

  def __init__(self, add_bos: bool = False):
    self.add_bos = bool(add_bos)

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

  def token_text(self, token_id: int) -> str:
    """ASCII bytes as themselves, bytes >= 0x80 as ``<0xC3>`` (never valid alone), BOS as
    ``<bos>``."""
    token_id = self._check_id(token_id)
    if token_id == self.BOS_ID:
      return "<bos>"
    return _bytes_text(bytes([token_id]))

  def __repr__(self) -> str:
    return "ByteTokenizer(add_bos=True)" if self.add_bos else "ByteTokenizer()"


# ----------------------------------------------------------------------------------------------
# The BOS/EOS rule


class SpecialTokens(NamedTuple):
  add_bos: bool
  bos_id: int | None
  eos_ids: tuple[int, ...]


def _token_content(value) -> str | None:
  """tokenizer_config.json names a token as a string or as {"content": ..., ...}."""
  if isinstance(value, Mapping):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _int_ids(value) -> list[int]:
  """``eos_token_id`` of a config: int, list of ints, or absent/null."""
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [int(v) for v in value]
  return [int(value)]


def special_token_rule(*, source: str, token_to_id: Callable[[str], int | None],
                       tokenizer_config: Mapping[str, Any] | None = None,
                       generation_config: Mapping[str, Any] | None = None,
                       model_config: Mapping[str, Any] | None = None,
                       post_processor_bos_id: int | None = None,
                       model_bos_id: int | None = None, model_eos_id: int | None = None,
                       add_bos: bool | None = None) -> SpecialTokens:
  """Whether documents start with BOS, the BOS id, and the ids that end a sequence.

  Based on transformers 5.23's AutoTokenizer (tests/fixtures/HF_FACTS.md (f)):

  - ``source="tokenizer.json"``: BOS is added iff the tokenizer.json post-processor adds it
    (``post_processor_bos_id``, found by encoding with special tokens and looking for a leading
    special token); ``add_bos_token`` in tokenizer_config.json is ignored, as 5.x drops it
    whenever a tokenizer.json exists. (4.57's LlamaTokenizerFast instead rebuilt the
    post-processor from ``add_bos_token``; pass ``add_bos`` to get that.) If no BOS is added,
    ``bos_id`` is the id of tokenizer_config's ``bos_token``, or None.
  - ``source="tokenizer.model"`` (SentencePiece only): BOS is added iff tokenizer_config's
    ``add_bos_token`` is true. If the key is missing we add BOS when the model has a BOS
    (``bos_token`` of tokenizer_config if that key is present, else the model's BOS piece,
    ``model_bos_id``). transformers 5 adds none in that case (both add_* default to False
    there) while 4.x did (GemmaTokenizerFast/LlamaTokenizerFast defaulted to True); we follow 4.x
    because a SentencePiece model with a BOS piece was trained with it.
  - ``add_bos`` (not None) overrides the rule; True needs a known BOS id.

  EOS ids, de-duplicated in this order: generation_config.json ``eos_token_id`` (int or list),
  config.json ``eos_token_id`` (or its ``text_config``'s), then the tokenizer's eos token
  (tokenizer_config ``eos_token``, a string or {"content": ...}; without that key, the
  SentencePiece model's EOS piece ``model_eos_id``).

  Args:
    source: "tokenizer.json" or "tokenizer.model".
    token_to_id: token string -> id, or None if the tokenizer has no such token.
    tokenizer_config, generation_config, model_config: the parsed JSON files, or None.

  Raises:
    ValueError: unknown source; a token named in tokenizer_config that the tokenizer does not
      know; ``add_bos=True`` with no BOS token.
  """
  tokenizer_config = tokenizer_config or {}
  generation_config = generation_config or {}
  model_config = model_config or {}

  def config_token_id(key: str) -> int | None:
    content = _token_content(tokenizer_config.get(key))
    if content is None:
      return None
    token_id = token_to_id(content)
    if token_id is None:
      raise ValueError(f"{TOKENIZER_CONFIG} names {key}={content!r}, which the tokenizer lacks")
    return int(token_id)

  config_bos_id = config_token_id("bos_token")
  if source == TOKENIZER_JSON:
    rule_add = post_processor_bos_id is not None
    bos_id = post_processor_bos_id if rule_add else config_bos_id
  elif source == SENTENCEPIECE_MODEL:
    bos_id = config_bos_id if "bos_token" in tokenizer_config else model_bos_id
    key = tokenizer_config.get("add_bos_token")
    rule_add = bool(key) if key is not None else bos_id is not None
    rule_add = rule_add and bos_id is not None
  else:
    raise ValueError(f"unknown tokenizer source {source!r}; known: {TOKENIZER_JSON!r}, "
                     f"{SENTENCEPIECE_MODEL!r}")
  if add_bos is None:
    add_bos = rule_add
  elif add_bos and bos_id is None:
    raise ValueError("add_bos=True, but this tokenizer has no BOS token")

  model_eos = model_config.get("eos_token_id")
  if model_eos is None and isinstance(model_config.get("text_config"), Mapping):
    model_eos = model_config["text_config"].get("eos_token_id")
  tokenizer_eos = (config_token_id("eos_token") if "eos_token" in tokenizer_config
                   else model_eos_id)
  eos_ids = (_int_ids(generation_config.get("eos_token_id")) + _int_ids(model_eos) +
             _int_ids(tokenizer_eos))
  return SpecialTokens(bool(add_bos), None if bos_id is None else int(bos_id),
                       tuple(dict.fromkeys(eos_ids)))


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as handle:
    return json.load(handle)


def _check_ids_in_vocab(tokenizer: Tokenizer) -> None:
  ids = list(tokenizer.eos_ids) + ([] if tokenizer.bos_id is None else [tokenizer.bos_id])
  bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
  if bad:
    raise ValueError(f"BOS/EOS ids {bad} are outside the vocabulary [0, {tokenizer.vocab_size}) "
                     f"of {tokenizer!r}")


# ----------------------------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (``.model`` file), optionally with Hugging Face config files.

  With ``tokenizer_config`` (a parsed tokenizer_config.json), its ``added_tokens_decoder``
  tokens are matched in the text before SentencePiece sees it, as AutoTokenizer does ("<eos>" in
  a text becomes the EOS id; raw SentencePiece would spell it out), and the ``special`` ones are
  skipped by ``decode``. Their ``lstrip``/``rstrip``/``normalized`` flags are not applied.
  BOS/EOS follow ``special_token_rule``; a bare model adds its BOS piece, if it has one.

  Raises:
    ImportError: ``sentencepiece`` is not installed.
    FileNotFoundError: the model cannot be loaded.
  """

  def __init__(self, model_path: str, add_bos: bool | None = None, *,
               tokenizer_config: Mapping[str, Any] | None = None,
               generation_config: Mapping[str, Any] | None = None,
               model_config: Mapping[str, Any] | None = None):
    try:
      import sentencepiece  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError(
          "SentencePieceTokenizer needs the package 'sentencepiece' "
          "(pip install sentencepiece), or use tokenizer='byte'") from error
    self.model_path = str(model_path)
    try:
      self._processor = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
    except (OSError, RuntimeError) as error:
      raise FileNotFoundError(
          f"cannot load SentencePiece model {self.model_path!r}: {error}") from error
    processor = self._processor
    num_pieces = int(processor.get_piece_size())
    # id -> (content, special) for config-declared tokens, which may lie beyond the model's pieces.
    self._added: dict[int, tuple[str, bool]] = {}
    for key, token in ((tokenizer_config or {}).get("added_tokens_decoder") or {}).items():
      self._added[int(key)] = (token["content"], bool(token.get("special", False)))
    self.vocab_size = max([num_pieces] + [i + 1 for i in self._added])
    self._special_ids = frozenset(
        [i for i in range(num_pieces) if processor.is_control(i)] +
        [i for i, (_, special) in self._added.items() if special])
    contents = sorted({content for content, _ in self._added.values()}, key=len, reverse=True)
    # Longest first, so that a token containing a shorter one wins at the same position.
    self._added_pattern = (re.compile("|".join(re.escape(c) for c in contents))
                           if contents else None)
    self._added_ids = {content: i for i, (content, _) in sorted(self._added.items())}
    plain_contents = sorted({c for c, special in self._added.values() if not special}, key=len, reverse=True)
    self._plain_pattern = (re.compile("|".join(re.escape(c) for c in plain_contents))
                           if plain_contents else None)
    self.special_texts = tuple(sorted({c for c, special in self._added.values() if special and c}))

    def token_to_id(content: str) -> int | None:
      if content in self._added_ids:
        return self._added_ids[content]
      piece_id = int(processor.piece_to_id(content))
      # piece_to_id answers the unknown id for any piece the model lacks.
      return piece_id if processor.id_to_piece(piece_id) == content else None

    def optional(piece_id: int) -> int | None:
      return int(piece_id) if piece_id >= 0 else None

    rule = special_token_rule(source=SENTENCEPIECE_MODEL, token_to_id=token_to_id,
                              tokenizer_config=tokenizer_config,
                              generation_config=generation_config, model_config=model_config,
                              model_bos_id=optional(processor.bos_id()),
                              model_eos_id=optional(processor.eos_id()), add_bos=add_bos)
    self.add_bos, self.bos_id, self.eos_ids = rule
    _check_ids_in_vocab(self)

  def encode(self, text: str | bytes) -> np.ndarray:
    """Text -> int32 [n]: config-declared tokens matched first, the rest by SentencePiece."""
    return self._encode(text, self._added_pattern)

  def encode_plain(self, text: str | bytes) -> np.ndarray:
    """Like ``encode``, but special config-declared tokens are left to SentencePiece, which spells
    them out (its control pieces never match text)."""
    return self._encode(text, self._plain_pattern)

  def _encode(self, text: str | bytes, pattern) -> np.ndarray:
    text = _as_text(text)
    ids: list[int] = []
    start = 0
    if pattern is not None:
      for match in pattern.finditer(text):
        ids.extend(self._processor.encode(text[start:match.start()]))
        ids.append(self._added_ids[match.group()])
        start = match.end()
    ids.extend(self._processor.encode(text[start:]))
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids) -> str:
    """int [n] -> str. Special ids are skipped; runs of model pieces are decoded together, so
    byte-fallback pieces of one character join up."""
    parts: list[str] = []
    run: list[int] = []
    num_pieces = self._processor.get_piece_size()
    for token_id in _as_ids(ids):
      if token_id in self._special_ids:
        continue
      if 0 <= token_id < num_pieces:
        run.append(token_id)
      elif token_id in self._added:
        parts.append(self._processor.decode(run))
        run = []
        parts.append(self._added[token_id][0])
    parts.append(self._processor.decode(run))
    return "".join(parts)

  def token_text(self, token_id: int) -> str:
    """Specials as their piece (``<bos>``); byte-fallback pieces as their byte's text if ASCII,
    else as the piece (``<0xC3>``); others as text, the piece's ``▁`` shown as a space."""
    token_id = self._check_id(token_id)
    processor = self._processor
    if token_id in self._added:
      return self._added[token_id][0]
    if token_id >= processor.get_piece_size():
      return f"<id {token_id}>"
    piece = processor.id_to_piece(token_id)
    if processor.is_byte(token_id):
      # Pieces are spelled "<0xC3>"; an ASCII byte is valid text alone, so show it as such.
      return _bytes_text(bytes([int(piece[3:5], 16)]))
    if processor.is_control(token_id) or processor.is_unknown(token_id):
      return piece
    return piece.replace("\u2581", " ") or f"<id {token_id}>"

  def __repr__(self) -> str:
    return (f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size}, "
            f"add_bos={self.add_bos}, bos_id={self.bos_id}, eos_ids={self.eos_ids})")


# ----------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json


def _import_tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("HF tokenizers need the package 'tokenizers' (pip install tokenizers), "
                      "or use tokenizer='byte'") from error
  return tokenizers


def _byte_level_chars() -> dict[str, int]:
  """Byte-level BPE character -> byte (GPT-2's table, as ``tokenizers`` ByteLevel uses it).

  Printable bytes stand for themselves; the others (controls, space, 0x7F-0xA0, 0xAD) are
  shifted to 256 + n in byte order, so that every token string is printable.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  table = {chr(b): b for b in printable}
  shifted = 0
  for b in range(_NUM_BYTES):
    if b not in printable:
      table[chr(_NUM_BYTES + shifted)] = b
      shifted += 1
  return table


def _decoder_types(decoder: Mapping[str, Any] | None) -> set[str]:
  if not decoder:
    return set()
  types = {decoder.get("type")}
  for inner in decoder.get("decoders") or []:
    types |= _decoder_types(inner)
  return types


class HFTokenizer(Tokenizer):
  """A Hugging Face ``tokenizer.json``, run by the ``tokenizers`` library.

  ``path``: a directory holding tokenizer.json (its optional tokenizer_config.json,
  generation_config.json and config.json are read too), or a tokenizer.json file (no other file
  is read; pass the configs as dicts if wanted). Dicts given here replace the files.
  Truncation and padding are switched off. ``vocab_size`` counts added tokens (what
  ``len(AutoTokenizer)`` reports). BOS/EOS follow ``special_token_rule``.

  Differences from transformers 5.23 AutoTokenizer: ``decode`` never applies
  ``clean_up_tokenization_spaces`` (5.23 ignores it for BPE models too; 4.x applied it); added
  tokens listed only in tokenizer_config.json (not in tokenizer.json) are not added; classes
  that 5.x rebuilds in code (Qwen2Tokenizer rebuilds normalizer and pre-tokenizer,
  HF_FACTS.md (g)1) run tokenizer.json's pipeline as written; a post-processor's trailing EOS is
  not added by ``encode_document``.

  Raises:
    FileNotFoundError: no tokenizer.json at ``path``.
    ImportError: ``tokenizers`` is not installed.
  """

  def __init__(self, path: str, add_bos: bool | None = None, *,
               tokenizer_config: Mapping[str, Any] | None = None,
               generation_config: Mapping[str, Any] | None = None,
               model_config: Mapping[str, Any] | None = None,
               tokenizer_json: str | None = None):
    tokenizers = _import_tokenizers()
    path = str(path)
    if tokenizer_json is not None:  # built in memory (a GGUF file's vocabulary); `path` names its source
      file_path = path
    elif os.path.isdir(path):
      file_path = os.path.join(path, TOKENIZER_JSON)
      if tokenizer_config is None:
        tokenizer_config = _read_json(os.path.join(path, TOKENIZER_CONFIG))
      if generation_config is None:
        generation_config = _read_json(os.path.join(path, GENERATION_CONFIG))
      if model_config is None:
        model_config = _read_json(os.path.join(path, MODEL_CONFIG))
    else:
      file_path = path
    if tokenizer_json is None and not os.path.isfile(file_path):
      raise FileNotFoundError(f"no {TOKENIZER_JSON} at {file_path!r}")
    self.path = file_path
    self._tokenizer = (tokenizers.Tokenizer.from_str(tokenizer_json) if tokenizer_json is not None
                       else tokenizers.Tokenizer.from_file(file_path))
    self._tokenizer.no_truncation()
    self._tokenizer.no_padding()
    tok = self._tokenizer
    self._added = {int(i): token.content for i, token in tok.get_added_tokens_decoder().items()}
    self.special_texts = tuple(sorted({token.content for token in tok.get_added_tokens_decoder().values()
                                       if token.special and token.content}))
    self._plain_tokenizer = None  # made on first use of encode_plain
    vocab = tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(int(tok.get_vocab_size(with_added_tokens=True)),
                          max(vocab.values(), default=-1) + 1)
    decoder = json.loads(tok.to_str()).get("decoder")
    self._byte_chars = _byte_level_chars() if "ByteLevel" in _decoder_types(decoder) else None

    # A leading special token that the post-processor adds to any text is its BOS.
    probe = "a"
    with_special = tok.encode(probe, add_special_tokens=True)
    plain = tok.encode(probe, add_special_tokens=False)
    post_processor_bos_id = None
    if len(with_special.ids) > len(plain.ids) and with_special.special_tokens_mask[0]:
      post_processor_bos_id = int(with_special.ids[0])
    rule = special_token_rule(source=TOKENIZER_JSON, token_to_id=tok.token_to_id,
                              tokenizer_config=tokenizer_config,
                              generation_config=generation_config, model_config=model_config,
                              post_processor_bos_id=post_processor_bos_id, add_bos=add_bos)
    self.add_bos, self.bos_id, self.eos_ids = rule
    _check_ids_in_vocab(self)

  def encode(self, text: str | bytes) -> np.ndarray:
    """Text -> int32 [n], without the post-processor's special tokens. Special-token strings in
    the text become their ids (as with AutoTokenizer)."""
    ids = self._tokenizer.encode(_as_text(text), add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int32)

  def encode_plain(self, text: str | bytes) -> np.ndarray:
    """Like ``encode``, but special tokens' text is encoded as ordinary text (``tokenizers``'
    ``encode_special_tokens``, transformers' ``split_special_tokens``), on a second copy of the
    tokenizer so that ``encode`` is never affected."""
    if self._plain_tokenizer is None:
      plain = _import_tokenizers().Tokenizer.from_str(self._tokenizer.to_str())
      plain.encode_special_tokens = True
      self._plain_tokenizer = plain
    ids = self._plain_tokenizer.encode(_as_text(text), add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids) -> str:
    return self._tokenizer.decode(_as_ids(ids), skip_special_tokens=True)

  def token_text(self, token_id: int) -> str:
    """Added/special tokens as their content; byte-level tokens as their bytes' text, with
    bytes of an incomplete UTF-8 sequence named ``<0xC3>``; other models' tokens as decoded
    alone, or as the raw token (e.g. a byte-fallback ``<0xC3>``) if that is not clean text."""
    token_id = self._check_id(token_id)
    if token_id in self._added:
      return self._added[token_id] or f"<id {token_id}>"
    token = self._tokenizer.id_to_token(token_id)
    if token is None:
      return f"<id {token_id}>"
    if self._byte_chars is not None and all(c in self._byte_chars for c in token):
      text = _bytes_text(bytes(self._byte_chars[c] for c in token))
    else:
      text = self._tokenizer.decode([token_id], skip_special_tokens=False)
      if "\ufffd" in text and "\ufffd" not in token:
        text = token
    return text or f"<id {token_id}>"

  def __repr__(self) -> str:
    return (f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, add_bos={self.add_bos}, "
            f"bos_id={self.bos_id}, eos_ids={self.eos_ids})")


def load_pretrained_tokenizer(directory: str, add_bos: bool | None = None) -> Tokenizer:
  """The tokenizer of a Hugging Face model directory, or of a GGUF file (``gguf_tokenizer``).

  tokenizer.json if present (``HFTokenizer``), else tokenizer.model (``SentencePieceTokenizer``
  with the directory's tokenizer_config.json, generation_config.json, config.json).
  ``add_bos``: None follows ``special_token_rule``; True/False overrides it.

  Raises:
    FileNotFoundError: the directory holds neither file.
  """
  directory = str(directory)
  if directory.lower().endswith(".gguf"):
    return gguf_tokenizer(directory, add_bos)
  if os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
    return HFTokenizer(directory, add_bos)
  model_path = os.path.join(directory, SENTENCEPIECE_MODEL)
  if os.path.isfile(model_path):
    return SentencePieceTokenizer(
        model_path, add_bos,
        tokenizer_config=_read_json(os.path.join(directory, TOKENIZER_CONFIG)),
        generation_config=_read_json(os.path.join(directory, GENERATION_CONFIG)),
        model_config=_read_json(os.path.join(directory, MODEL_CONFIG)))
  raise FileNotFoundError(f"no tokenizer in {directory!r}: expected {TOKENIZER_JSON} or "
                          f"{SENTENCEPIECE_MODEL}")


def gguf_tokenizer(path: str, add_bos: bool | None = None) -> HFTokenizer:
  """The tokenizer a GGUF file's metadata describes (``cyb_jax.pretrained.gguf_file``), as an
  ``HFTokenizer`` under the same BOS/EOS rule as a Hugging Face directory: BOS is added iff the
  file's ``tokenizer.ggml.add_bos_token`` says so; EOS is ``tokenizer.ggml.eos_token_id``.

  Raises:
    FileNotFoundError: no such file. ValueError: a tokenizer model or pre-tokenizer it does not know.
  """
  from cyb_jax.pretrained import gguf_file  # pylint: disable=import-outside-toplevel
  checkpoint = gguf_file.open_gguf(path)
  return HFTokenizer(path, add_bos, tokenizer_json=checkpoint.tokenizer_json(),
                     tokenizer_config=checkpoint.tokenizer_config(),
                     generation_config=checkpoint.generation_config(), model_config={})


# ----------------------------------------------------------------------------------------------
# A byte-level BPE trained here


def load_bpe_tokenizer(path: str, add_bos: bool | None = None) -> HFTokenizer:
  """A tokenizer.json made by ``train_bpe_tokenizer``: bos_id ``<|bos|>``, eos_ids
  (``<|eos|>``,), add_bos False unless overridden (its post-processor adds nothing; our models
  train on text windows without BOS, while TFDS packing puts bos_id between documents).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: the file lacks ``<|bos|>`` or ``<|eos|>``.
  """
  if not os.path.isfile(str(path)):
    raise FileNotFoundError(f"no BPE tokenizer file at {str(path)!r} (make one with "
                            "train_bpe_tokenizer)")
  return HFTokenizer(path, add_bos, tokenizer_config={"bos_token": BPE_BOS, "eos_token": BPE_EOS})


def train_bpe_tokenizer(text: str, vocab_size: int, path: str) -> HFTokenizer:
  """Trains a byte-level BPE on ``text``, saves it to ``path`` (a tokenizer.json), loads it.

  Byte-level (GPT-2 style pre-tokenizer, no prefix space, no normalizer) with all 256 bytes in
  the initial alphabet, so every text encodes without unknowns and ``decode(encode(t)) == t``.
  Ids 0 and 1 are ``<|bos|>`` and ``<|eos|>``. The same text and size give the same file.
  ``vocab_size`` is an upper bound: a short text may allow fewer merges.

  Raises:
    ValueError: vocab_size < 258 (256 bytes + 2 special tokens).
  """
  if vocab_size < MIN_BPE_VOCAB:
    raise ValueError(f"BPE vocab_size must be >= {MIN_BPE_VOCAB} (256 bytes + "
                     f"{len(_BPE_SPECIALS)} special tokens), got {vocab_size}")
  tokenizers = _import_tokenizers()
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=list(_BPE_SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([text], trainer)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tok.save(str(path))
  return load_bpe_tokenizer(path)


# ----------------------------------------------------------------------------------------------


def make_tokenizer(name: str = "byte", path: str = "", add_bos: bool | None = None) -> Tokenizer:
  """Tokenizer by name; ``path`` is the file or directory it needs.

  - "byte": ``ByteTokenizer`` (no path; add_bos None -> False).
  - "sentencepiece": a ``.model`` file, without config files (add_bos None -> False).
  - "hf": a Hugging Face model directory or GGUF file (``load_pretrained_tokenizer``) or a
    tokenizer.json.
  - "bpe": a tokenizer.json made by ``train_bpe_tokenizer``.
  ``add_bos``: None follows each tokenizer's rule; True/False overrides it.

  Raises:
    ValueError: unknown name, or no path for a tokenizer that needs one.
    FileNotFoundError: nothing at ``path``.
  """
  if name == "byte":
    return ByteTokenizer(bool(add_bos))
  if name not in KNOWN_TOKENIZERS:
    raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(map(repr, KNOWN_TOKENIZERS))}")
  if not path:
    what = {"sentencepiece": "a SentencePiece .model file",
            "hf": "a Hugging Face model directory or tokenizer.json",
            "bpe": "a tokenizer.json made by train_bpe_tokenizer"}[name]
    raise ValueError(f"tokenizer={name!r} needs a path ({what}); for the data config that is "
                     "data.tokenizer_path")
  path = str(path)
  if name == "sentencepiece":
    # Checks the package before the file, so a missing package is reported as such. A bare .model file
    # (our own text runs) starts sequences without BOS unless asked, as before this rule existed;
    # pretrained models' tokenizer.model goes through "hf" and its family's rule.
    return SentencePieceTokenizer(path, bool(add_bos))
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer={name!r}: no file or directory at {path!r}")
  if name == "bpe":
    return load_bpe_tokenizer(path, add_bos)
  if os.path.isdir(path) or path.lower().endswith(".gguf"):
    return load_pretrained_tokenizer(path, add_bos)
  return HFTokenizer(path, add_bos)


class _RestrictedTokenizer(Tokenizer):
  """A tokenizer limited to the ids a model has embedding rows for (see `restrict_vocabulary`)."""

  def __init__(self, inner: Tokenizer, num_ids: int):
    self.inner = inner
    self.vocab_size = int(num_ids)
    self.bos_id, self.add_bos = inner.bos_id, inner.add_bos
    self.eos_ids = tuple(i for i in inner.eos_ids if i < num_ids)
    self.special_texts = inner.special_texts

  def encode(self, text: str | bytes) -> np.ndarray:
    return self._restricted(self.inner.encode(text))

  def encode_plain(self, text: str | bytes) -> np.ndarray:
    return self._restricted(self.inner.encode_plain(text))

  def _restricted(self, ids: np.ndarray) -> np.ndarray:
    beyond = ids[ids >= self.vocab_size]
    if beyond.size:
      token = self.inner.token_text(int(beyond[0]))
      raise ValueError(f"the text holds {token!r} (id {int(beyond[0])}), a token of the tokenizer that the "
                       f"model has no embedding row for (it has {self.vocab_size})")
    return ids

  def decode(self, ids) -> str:
    return self.inner.decode(ids)

  def token_text(self, token_id: int) -> str:
    return self.inner.token_text(self._check_id(token_id))

  def __repr__(self) -> str:
    return f"{self.inner!r}[:{self.vocab_size}]"


def restrict_vocabulary(tokenizer: Tokenizer, num_ids: int) -> Tokenizer:
  """`tokenizer` limited to ids < `num_ids` (a pretrained model's embedding rows).

  Some hub tokenizers hold added tokens beyond the embedding (Gemma 3's `<image_soft_token>` at id
  262144 of 262144 rows). That is accepted when every id past the limit is such an added token; the
  restricted tokenizer raises ValueError naming the token if a text ever encodes to one. Raises
  ValueError when ordinary vocabulary lies past the limit: then it is not this model's tokenizer.
  """
  if num_ids >= tokenizer.vocab_size:
    return tokenizer
  added = set(getattr(tokenizer, "_added", {}) or {})
  ordinary = [i for i in range(num_ids, tokenizer.vocab_size) if i not in added]
  if ordinary:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the model {num_ids} embedding rows, "
                     f"and id {ordinary[0]} ({tokenizer.token_text(ordinary[0])!r}) is ordinary vocabulary: "
                     "not this model's tokenizer")
  return _RestrictedTokenizer(tokenizer, num_ids)


def find_special_text(tokenizer: Tokenizer, text: str) -> tuple[int, str] | None:
  """(character offset, token text) of the first place in ``text`` that spells one of the tokenizer's
  ``special_texts`` (the longest such text at that offset), or None.

  Costs one pass over ``text`` for the first characters of the special texts (usually "<" and "["),
  whatever their number (Gemma's tokenizer has thousands).
  """
  specials = getattr(tokenizer, "special_texts", ())
  if not specials:
    return None
  by_first: dict[str, list[str]] = {}
  for special in sorted(specials, key=len, reverse=True):
    by_first.setdefault(special[0], []).append(special)
  pattern = re.compile("[" + "".join(re.escape(c) for c in by_first) + "]")
  for match in pattern.finditer(text):
    for special in by_first[match.group()]:
      if text.startswith(special, match.start()):
        return match.start(), special
  return None


def trim_to_characters(tokenizer: Tokenizer, ids) -> tuple[int, int]:
  """(start, end) such that ``ids[start:end]`` decodes without a cut character at either end.

  A run cut out of text at token positions (a prompt taken from eval text) can begin or end inside a
  multi-byte character when tokens are bytes (byte tokenizer, byte-level BPE, byte fallback); such a
  character decodes as U+FFFD. Up to 3 tokens are dropped at each end (a UTF-8 character has at most 4
  bytes), and never all of them.
  """
  ids = _as_ids(ids)
  start, end = 0, len(ids)
  while start < min(3, end - 1) and tokenizer.decode(ids[start:start + 4]).startswith("\ufffd"):
    start += 1
  while end - 1 > start and len(ids) - end < 3 and tokenizer.decode(ids[max(start, end - 4):end]).endswith(
      "\ufffd"):
    end -= 1
  return start, end


def token_pieces(tokenizer: Tokenizer, ids) -> list[str]:
  """The text each token of a run adds, so that "".join(pieces) == tokenizer.decode(ids).

  For showing text token by token (samples with pause marks, streaming): a token that ends inside a
  multi-byte character (byte-level BPE, byte fallback, bytes) adds "" and the token completing the
  character adds all of it; SentencePiece's word-initial spaces come out where decoding the whole run
  puts them. Each piece is decoded with a few tokens of context before it, so a long run costs O(n).
  """
  ids = _as_ids(ids)
  pieces = []
  start = 0  # first token whose text has not been emitted yet
  for i in range(len(ids)):
    context = max(0, start - 4)
    before = tokenizer.decode(ids[context:start])
    text = tokenizer.decode(ids[context:i + 1])
    if text.endswith("\ufffd") and i + 1 < len(ids) and i + 1 - start < 4:
      pieces.append("")  # an incomplete character: the next token may complete it
      continue
    pieces.append(text[len(before):] if text.startswith(before) else tokenizer.decode(ids[start:i + 1]))
    start = i + 1
  return pieces
