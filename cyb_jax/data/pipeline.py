"""From a data config to a grain pipeline of batches: sharded, shuffled, resumable.

``make_dataset(config, split, batch_size, seed, process_index, process_count)`` returns a
``grain.IterDataset``; ``iter()`` of it is a ``grain.DatasetIterator`` whose
``get_state()`` (a small JSON-able dict) and ``set_state(state)`` resume the exact stream, for
checkpoints. Batches are dicts of numpy arrays [batch_size // process_count, seq_len], laid
out as in ``example.py``.

- train: repeats forever. Text windows and TFDS records are reshuffled every epoch from
  ``seed``; synthetic examples are i.i.d. draws keyed by (seed, index), so they are not
  shuffled again. Incomplete batches never occur.
- eval: finite and the same on every call. Synthetic eval sets are keyed by
  ``config.eval_seed`` (not the run seed) so runs with different seeds share one eval set.
  The last batch is completed with rows whose ``loss_mask`` is all False, so every example is
  evaluated once; for map-style sources (synthetic, text files) every host also gets the same
  number of batches (needed when hosts step together). For TFDS, packing happens per host
  after sharding, so hosts can end up with different batch counts: a multi-host trainer
  should evaluate a fixed number of batches there.
- sharding: host p of P reads source indices p, p + P, p + 2P, ... (disjoint slices), before
  shuffling; ``batch_size`` is the global batch, split evenly over hosts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import grain
import numpy as np

from cyb_jax.data import example as example_lib
from cyb_jax.data import synthetic
from cyb_jax.data import tasks
from cyb_jax.data import text as text_lib
from cyb_jax.data import tfds_text
from cyb_jax.data import tokenizer as tokenizer_lib

TEXT_FILE = "text_file"
TFDS = "tfds"
SPLITS = ("train", "eval")
DEFAULT_TEXT_SEQ_LEN = 256


def known_sources() -> list[str]:
  return sorted(tasks.TASKS) + [TEXT_FILE, TFDS]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read. Only the fields of the chosen source matter."""
  # A synthetic task name (pointer_chasing, addition, set_sum), "text_file" or "tfds".
  name: str = "pointer_chasing"
  # Row length N. Synthetic: None = the task's own length (else rows are padded to it);
  # text: None = DEFAULT_TEXT_SEQ_LEN.
  seq_len: int | None = None
  # Synthetic tasks: overrides of the task's config fields (see each task's *Config).
  task: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eval_seed: int = 0            # synthetic eval set key, independent of the run seed
  eval_examples: int = 1024     # synthetic eval set size
  # Text file: path, and the fraction of its tokens (at the end) held out for eval. A .jsonl file or a
  # folder of .txt files is read as documents (text.py): eval_fraction of the documents, chosen by
  # split_seed, are held out, and rows pack documents with segment ids.
  text_path: str = ""
  eval_fraction: float = 0.1
  text_field: str = "text"      # .jsonl: the field holding each document's text
  split_seed: int = 0           # documents: which are eval (text.split_documents)
  encoding: str = "utf-8"       # how text is decoded, strictly (the byte tokenizer reads a text file's bytes)
  # Text spelling a special token: "plain" text (warned once), "special" (the control token), "error";
  # TFDS records: "plain" unless "special", without warning.
  special_text: str = "plain"
  # TFDS: dataset prepared as ArrayRecord in tfds_data_dir (None = TFDS default dir).
  tfds_name: str = "lm1b"
  tfds_data_dir: str | None = None
  tfds_text_field: str = "text"
  tfds_train_split: str = "train"
  tfds_eval_split: str = "test"
  packing_bins: int = 16        # first-fit bins; more bins, less padding, more latency
  # Text tokenizer (see tokenizer.py): "byte"; "sentencepiece" (a .model file); "hf" (a Hugging Face
  # model directory's tokenizer.json or tokenizer.model); "bpe" (a byte-level BPE trained on the text
  # file's training split, saved as tokenizer.json in the work directory and reused from there).
  tokenizer: str = "byte"
  tokenizer_path: str = ""      # hf: the directory; bpe: a trained tokenizer.json ("" = the work dir's)
  spm_model_path: str = ""      # sentencepiece: the .model file (or use tokenizer_path)
  bpe_vocab_size: int = 4096    # bpe: vocabulary size to train
  # Whether each sequence starts with BOS: None = the tokenizer's rule (pretrained tokenizers as
  # transformers adds it; byte and our BPE: no). Text-file windows then begin with BOS.
  add_bos: bool | None = None
  # Ids the model has embedding rows for, when the tokenizer has more (added tokens past a pretrained
  # model's embedding, e.g. Gemma 3's); 0 = no limit. Set by the configuration with init_from_hf.
  vocab_limit: int = 0
  # Background reading: threads (0 = read in the consuming thread) and batches buffered.
  read_threads: int = 2
  prefetch_batches: int = 4

  @classmethod
  def from_any(cls, config_like=None, **overrides) -> "DataConfig":
    """DataConfig, Mapping, ml_collections ConfigDict (anything with ``to_dict``) or None."""
    if config_like is None:
      values = {}
    elif isinstance(config_like, DataConfig):
      values = dataclasses.asdict(config_like)
    elif hasattr(config_like, "to_dict"):
      values = dict(config_like.to_dict())
    elif isinstance(config_like, Mapping):
      values = dict(config_like)
    else:
      raise TypeError(f"cannot read a data config from {type(config_like).__name__}")
    values.update(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown data config field(s) {unknown}; known: {sorted(fields)}")
    if values.get("task") is not None and hasattr(values["task"], "to_dict"):
      values["task"] = values["task"].to_dict()
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and reports need to know about a source."""
  vocab_size: int                       # real tokens; the model adds <dk> at this index
  seq_len: int                          # N
  difficulty_names: dict[int, str] | None  # synthetic tasks: label -> name; else None
  # P, the loss positions every batch lists (``loss_positions`` [B, P]); None = every position.
  loss_positions: int | None = None
  packed: bool = False                  # rows pack several documents (``segment_ids`` [B, N])


def _check_name(config: DataConfig) -> None:
  if config.name not in known_sources():
    raise ValueError(f"unknown data source or task {config.name!r}; known: {known_sources()}")


def make_synthetic_task(config: DataConfig) -> synthetic.SyntheticTask:
  overrides = dict(config.task or {})
  if config.seq_len is not None:
    overrides.setdefault("seq_len", config.seq_len)
  return tasks.make_task(config.name, overrides)


def _text_seq_len(config: DataConfig) -> int:
  return DEFAULT_TEXT_SEQ_LEN if config.seq_len is None else int(config.seq_len)


def tokenizer_path(config: DataConfig) -> str:
  """The file or directory the configured tokenizer reads ("" for bytes)."""
  return config.tokenizer_path or config.spm_model_path


def configured_tokenizer(config_like) -> tokenizer_lib.Tokenizer:
  """The configured tokenizer (for "bpe" the tokenizer.json must exist: see `prepare_tokenizer`)."""
  config = DataConfig.from_any(config_like)
  if config.tokenizer == "bpe" and not tokenizer_path(config):
    raise ValueError("tokenizer='bpe' needs tokenizer_path: the tokenizer.json trained for this run "
                     "(the trainer trains it into the work directory)")
  tokenizer = tokenizer_lib.make_tokenizer(config.tokenizer, tokenizer_path(config), add_bos=config.add_bos)
  if config.vocab_limit:
    tokenizer = tokenizer_lib.restrict_vocabulary(tokenizer, config.vocab_limit)
  return tokenizer


BPE_FILE = "tokenizer.json"


def prepare_tokenizer(config: DataConfig, workdir: str, *, write: bool = True) -> DataConfig:
  """Resolves a "bpe" tokenizer without a path to `workdir`/tokenizer.json, training it if absent.

  The BPE is trained on the text file's training split (the first 1 - eval_fraction of its characters,
  so no eval text shapes the vocabulary) and saved beside the run, so resume and eval.py reuse exactly
  it. With `write` False (processes other than the first), the file must already exist. Other tokenizers
  are returned unchanged.
  """
  if config.tokenizer != "bpe" or tokenizer_path(config):
    return config
  path = os.path.join(workdir, BPE_FILE)
  if not os.path.isfile(path):
    if not write:
      raise FileNotFoundError(f"{path} (the run's BPE tokenizer) is missing")
    if config.name != TEXT_FILE:
      raise ValueError("tokenizer='bpe' without tokenizer_path trains on a text file (data.name="
                       "'text_file'); for other sources train one first and set data.tokenizer_path")
    train_text = _bpe_training_text(config)
    os.makedirs(workdir, exist_ok=True)
    temporary = path + ".tmp"
    tokenizer_lib.train_bpe_tokenizer(train_text, config.bpe_vocab_size, temporary)
    os.replace(temporary, path)  # atomic: a crash never leaves a half-written tokenizer
  return dataclasses.replace(config, tokenizer_path=path)


def _bpe_training_text(config: DataConfig) -> str:
  """The text a run's BPE is trained on: a text file's first 1 - eval_fraction characters, or the train
  documents joined by newlines; decoded strictly with `config.encoding`."""
  if is_documents(config):
    byte_level = tokenizer_lib.ByteTokenizer()  # reads the documents; its split is the one the run uses
    documents = text_lib.read_documents(config.text_path, byte_level, text_field=config.text_field,
                                        encoding=config.encoding, special_text="special")
    train, _ = text_lib.split_documents(len(documents), config.eval_fraction, config.split_seed)
    return "\n".join(documents[d].astype(np.uint8).tobytes().decode("utf-8") for d in train)
  with open(config.text_path, "rb") as handle:
    text = text_lib.decode_strict(handle.read(), config.encoding, config.text_path)
  return text[:int(round(len(text) * (1.0 - config.eval_fraction)))]


def _tokenizer(config: DataConfig):
  return configured_tokenizer(config)


def data_info(config_like=None) -> DataInfo:
  """Vocabulary size, row length and difficulty names of the configured source."""
  config = DataConfig.from_any(config_like)
  _check_name(config)
  if config.name in tasks.TASKS:
    task = make_synthetic_task(config)
    return DataInfo(task.vocab_size, task.seq_len, dict(task.difficulty_names),
                    loss_positions=min(task.max_loss_targets, task.seq_len))
  return DataInfo(_tokenizer(config).vocab_size, _text_seq_len(config), None,
                  packed=config.name == TFDS or is_documents(config))


def is_documents(config: DataConfig) -> bool:
  """Whether the source is documents read from a .jsonl file or a folder (packed, with segment ids)."""
  return config.name == TEXT_FILE and bool(config.text_path) and text_lib.is_documents(config.text_path)


def make_source(config_like, split: str, seed: int = 0):
  """The random-access source (``__len__``, ``__getitem__`` -> example dict) of a
  synthetic task or text file, before sharding, shuffling and batching."""
  config = DataConfig.from_any(config_like)
  _check_name(config)
  _check_split(split)
  if config.name in tasks.TASKS:
    task = make_synthetic_task(config)
    if split == "train":
      return synthetic.SyntheticSource(task, seed, "train")
    return synthetic.SyntheticSource(task, config.eval_seed, "eval", config.eval_examples)
  if config.name == TEXT_FILE:
    if not config.text_path:
      raise ValueError("data source 'text_file' needs text_path")
    if is_documents(config):
      return text_lib.DocumentWindowSource(
          config.text_path, _text_seq_len(config), split, config.eval_fraction, _tokenizer(config),
          text_field=config.text_field, encoding=config.encoding, special_text=config.special_text,
          split_seed=config.split_seed)
    return text_lib.TextWindowSource(config.text_path, _text_seq_len(config), split,
                                     config.eval_fraction, _tokenizer(config), encoding=config.encoding,
                                     special_text=config.special_text)
  raise ValueError(f"data source {config.name!r} has no random-access source; "
                   "use make_dataset")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")


class _PaddedSource:
  """``source`` extended to ``length`` items with loss-free copies of item 0 (eval filler)."""

  def __init__(self, source, length: int):
    self._source = source
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    if index < len(self._source):
      return self._source[index]
    return example_lib.masked_copy(self._source[0])

  def __repr__(self) -> str:
    return f"_PaddedSource({self._source!r}, length={self._length})"


def make_dataset(config_like, split: str, batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, skip_batches: int = 0) -> grain.IterDataset:
  """Batches of ``split`` for host ``process_index`` of ``process_count``.

  Args:
    config_like: DataConfig, a mapping or ConfigDict with its fields, or None for defaults.
    split: "train" (infinite, shuffled by ``seed``) or "eval" (finite, deterministic).
    batch_size: global batch size B; each host gets B // process_count rows.
    seed: run seed, in [0, 2**32): shuffling and synthetic train examples.
    skip_batches: "train" only: start at global batch `skip_batches` of the same order (the batches
      another run with this seed already read); not for TFDS, whose hosts pack documents at their own pace.

  Returns:
    grain.IterDataset of batch dicts (see example.py), arrays [B // process_count, N].
  """
  config = DataConfig.from_any(config_like)
  _check_name(config)
  _check_split(split)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  if batch_size < process_count or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  host_batch = batch_size // process_count
  if skip_batches < 0 or (skip_batches and (split != "train" or config.name == TFDS)):
    raise ValueError(f"skip_batches = {skip_batches}: must be >= 0, and is only for the train split of a "
                     "synthetic task or text file")

  if config.name == TFDS:
    # Documents are dealt out to hosts, each packing its own: hosts then advance through their documents
    # at different rates (each one's data-iterator state is checkpointed under its own index).
    return _tfds_dataset(config, split, batch_size, seed, host_batch,
                         host_slice=slice(process_index, None, process_count))

  # Global batch t is examples [t B, (t + 1) B) of one order, and host p reads its p-th block of B / P of
  # them: laid side by side in process order (as `make_array_from_process_local_data` assembles them) the
  # hosts' rows are exactly the one-process batch, so results do not depend on the number of processes.
  host_batches = slice(process_index, None, process_count)
  read_options = grain.ReadOptions(num_threads=config.read_threads,
                                   prefetch_buffer_size=config.prefetch_batches)
  source = make_source(config, split, seed)
  if split == "eval":
    padded_length = math.ceil(len(source) / batch_size) * batch_size
    dataset = grain.MapDataset.source(_PaddedSource(source, padded_length))
    dataset = dataset.batch(host_batch, drop_remainder=True)[host_batches]
    return dataset.to_iter_dataset(read_options)

  dataset = grain.MapDataset.source(source)
  if len(dataset) < batch_size:
    raise ValueError(f"{source!r} gives only {len(dataset)} examples, fewer than one batch of {batch_size}")
  if config.name not in tasks.TASKS:
    # Per-epoch reshuffle: ShuffleMapDataset re-seeds by epoch as repeat runs past its end.
    dataset = dataset.shuffle(seed)
  host_batches = slice(skip_batches * process_count + process_index, None, process_count)
  dataset = dataset.repeat().batch(host_batch, drop_remainder=True)[host_batches]
  return dataset.to_iter_dataset(read_options)


def _tfds_dataset(config: DataConfig, split: str, batch_size: int, seed: int, host_batch: int, *,
                  host_slice: slice) -> grain.IterDataset:
  seq_len = _text_seq_len(config)
  tfds_split = config.tfds_train_split if split == "train" else config.tfds_eval_split
  records = tfds_text.open_tfds_source(config.tfds_name, tfds_split, config.tfds_data_dir)
  if len(records) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f"TFDS dataset {config.tfds_name!r} split {tfds_split!r} is empty")
  documents = grain.MapDataset.source(records)[host_slice]
  if split == "train":
    documents = documents.shuffle(seed).repeat()
  documents = documents.map(tfds_text.TokenizeDocument(_tokenizer(config), config.tfds_text_field,
                                                       max_tokens=seq_len + 1,
                                                       plain=config.special_text != "special"))
  read_options = grain.ReadOptions(num_threads=config.read_threads,
                                   prefetch_buffer_size=config.prefetch_batches * host_batch)
  examples = tfds_text.pack_documents(documents.to_iter_dataset(read_options), seq_len,
                                      num_bins=config.packing_bins, seed=seed,
                                      shuffle_bins=split == "train")
  if split == "train":
    return examples.batch(host_batch, drop_remainder=True)
  batches = examples.batch(host_batch, drop_remainder=False)
  return batches.map(lambda batch: example_lib.pad_batch(batch, host_batch))
