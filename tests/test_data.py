"""Tests for cyb_jax.data: task answers re-derived independently, batch layout, text windows,
TFDS packing on mock data, sharding, and resumable iterator state."""

import collections
import json
import os

import numpy as np
import pytest

from cyb_jax import data
from cyb_jax.data import tfds_text

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
SHAKESPEARE = os.path.join(SHARED, "data", "tinyshakespeare.txt")
BOS_BYTE = data.ByteTokenizer.BOS_ID


def stream_of(example):
  """The T = N + 1 tokens an example was cut from."""
  return np.concatenate([example["inputs"], example["targets"][-1:]])


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def row_keys(batches):
  return [row.tobytes() for batch in batches for row in batch["inputs"]]


# ----------------------------------------------------------------------------------------
# Independent decoders of the documented layouts. Each returns the loss mask and labels it
# expects, after asserting every answer it finds.


def check_pointer_chasing(task, example):
  m = task.config.num_symbols
  tokens = stream_of(example)
  assert tokens[0] == task.bos_id
  successor = {}
  for token in tokens[1:1 + m]:
    a, b = divmod(int(token) - task.pair_base, m)
    assert 0 <= a < m and a not in successor
    successor[a] = b
  assert sorted(successor.values()) == list(range(m)), "pairs must list a permutation"
  expected_mask = np.zeros(len(tokens) - 1, dtype=bool)
  expected_difficulty = np.full(len(tokens) - 1, -1)
  hops_seen = []
  position = 1 + m
  for _ in range(task.config.num_queries):
    hop_token, start, answer, end = tokens[position:position + 4]
    hops = int(hop_token) - task.hop_base
    assert 0 <= hops <= task.config.max_hops and 0 <= start < m
    chased = int(start)
    for _ in range(hops):
      chased = successor[chased]
    assert answer == chased
    assert end == task.end_id
    # Token t is the target of example position t - 1.
    expected_mask[position + 1] = expected_mask[position + 2] = True
    expected_difficulty[position + 1] = hops
    expected_difficulty[position + 2] = task.format_label
    hops_seen.append(hops)
    position += 4
  assert np.all(tokens[position:] == task.pad_id)
  return expected_mask, expected_difficulty, hops_seen, successor


def carry_chain_by_definition(a_digits, b_digits, i):
  """Walk back from digit i: the chain ends at the first generating position (a+b >= 10),
  passes only through positions with a+b == 9, and is 0 if anything else comes first."""
  for g in range(i - 1, -1, -1):
    pair_sum = a_digits[g] + b_digits[g]
    if pair_sum >= 10:
      return i - g
    if pair_sum != 9:
      return 0
  return 0


def lsb_digits_to_int(digits):
  return int("".join(str(int(d)) for d in reversed(digits)))


def check_addition(task, example):
  d = task.config.num_digits
  tokens = stream_of(example)
  assert tokens[0] == task.bos_id
  expected_mask = np.zeros(len(tokens) - 1, dtype=bool)
  expected_difficulty = np.full(len(tokens) - 1, -1)
  chains = []
  position = 1
  for _ in range(task.config.num_problems):
    a = tokens[position:position + d]
    plus = tokens[position + d]
    b = tokens[position + d + 1:position + 2 * d + 1]
    equals = tokens[position + 2 * d + 1]
    total = tokens[position + 2 * d + 2:position + 3 * d + 3]
    end = tokens[position + 3 * d + 3]
    assert plus == task.plus_id and equals == task.equals_id and end == task.end_id
    assert max(a.max(), b.max(), total.max()) <= 9
    assert lsb_digits_to_int(total) == lsb_digits_to_int(a) + lsb_digits_to_int(b)
    fmt = task.format_label
    for offset, label in [(d, fmt), (2 * d + 1, fmt), (3 * d + 3, fmt)]:
      expected_mask[position + offset - 1] = True
      expected_difficulty[position + offset - 1] = label
    for i in range(d + 1):
      chain = carry_chain_by_definition(a, b, i)
      expected_mask[position + 2 * d + 2 + i - 1] = True
      expected_difficulty[position + 2 * d + 2 + i - 1] = chain
      chains.append(chain)
    position += 3 * d + 4
  assert np.all(tokens[position:] == task.pad_id)
  return expected_mask, expected_difficulty, chains


def check_set_sum(task, example):
  c = task.config
  tokens = stream_of(example)
  assert tokens[0] == task.bos_id
  value_of = {}
  for token in tokens[1:1 + c.num_keys]:
    key, value = divmod(int(token) - task.item_base, c.modulus)
    assert 0 <= key < c.num_keys and key not in value_of
    value_of[key] = value
  expected_mask = np.zeros(len(tokens) - 1, dtype=bool)
  expected_difficulty = np.full(len(tokens) - 1, -1)
  sizes = []
  position = 1 + c.num_keys
  for _ in range(c.num_queries):
    keys = []
    while tokens[position] != task.equals_id:
      assert 0 <= tokens[position] < c.num_keys
      keys.append(int(tokens[position]))
      position += 1
    assert 1 <= len(keys) <= c.max_keys and len(set(keys)) == len(keys)
    answer, end = tokens[position + 1:position + 3]
    assert answer - task.value_base == sum(value_of[k] for k in keys) % c.modulus
    assert end == task.end_id
    expected_mask[position] = expected_mask[position + 1] = True
    expected_difficulty[position] = len(keys)
    expected_difficulty[position + 1] = task.format_label
    sizes.append(len(keys))
    position += 3
  assert np.all(tokens[position:] == task.pad_id)
  return expected_mask, expected_difficulty, sizes


CHECKERS = {"pointer_chasing": check_pointer_chasing, "addition": check_addition,
            "set_sum": check_set_sum}


# ----------------------------------------------------------------------------------------
# Synthetic tasks


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_synthetic_answers_masks_and_labels(name):
  source = data.make_source({"name": name}, "train", seed=11)
  for index in range(40):
    example = source[index]
    expected_mask, expected_difficulty = CHECKERS[name](source.task, example)[:2]
    np.testing.assert_array_equal(example["loss_mask"], expected_mask)
    np.testing.assert_array_equal(example["difficulty"], expected_difficulty)
    assert max(source.task.difficulty_names) == source.task.format_label


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_same_seed_and_index_give_same_example(name):
  first = data.make_source({"name": name}, "train", seed=5)
  again = data.make_source({"name": name}, "train", seed=5)
  other_seed = data.make_source({"name": name}, "train", seed=6)
  for index in [0, 7, 123456, 2**31 - 1]:
    a, b = first[index], again[index]
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[3]["inputs"], first[4]["inputs"])
  assert not np.array_equal(first[3]["inputs"], other_seed[3]["inputs"])


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_train_and_eval_never_share_examples(name):
  # Same numeric seed for both splits on purpose: the split alone must separate them.
  config = {"name": name, "eval_seed": 3, "eval_examples": 200}
  train = data.make_source(config, "train", seed=3)
  evaluation = data.make_source(config, "eval")
  assert len(evaluation) == 200
  train_rows = {train[i]["inputs"].tobytes() for i in range(300)}
  eval_rows = {evaluation[i]["inputs"].tobytes() for i in range(200)}
  assert len(eval_rows) == 200
  assert not train_rows & eval_rows


def test_pointer_chasing_hop_weights_and_single_cycle():
  task = data.make_task("pointer_chasing",
                        {"num_symbols": 7, "max_hops": 5, "hop_weights": [0, 0, 0, 1, 0, 0],
                         "single_cycle": True})
  source = data.SyntheticSource(task, seed=1, split="train")
  for index in range(20):
    _, _, hops, successor = check_pointer_chasing(task, source[index])
    assert set(hops) == {3}
    x, cycle_length = 0, 0
    while True:
      x, cycle_length = successor[x], cycle_length + 1
      if x == 0:
        break
    assert cycle_length == 7


def test_pointer_chasing_covers_all_hop_counts():
  source = data.make_source({"name": "pointer_chasing"}, "train", seed=0)
  hops = [h for i in range(20) for h in check_pointer_chasing(source.task, source[i])[2]]
  assert set(hops) == set(range(5))


def test_addition_carry_chains_by_hand():
  # Digits least-significant first. 199 + 1 = 200: the carry made at digit 0 passes
  # through the 9 at digit 1 (chain 2); 456 + 544 = 1000 has one chain through every digit.
  cases = [
      ([9, 9, 1], [1, 0, 0], [0, 0, 2, 0], [0, 1, 2, 0]),
      ([6, 5, 4], [4, 4, 5], [0, 0, 0, 1], [0, 1, 2, 3]),
      ([5, 5, 5], [5, 5, 5], [0, 1, 1, 1], [0, 1, 1, 1]),
      ([1, 2, 3], [4, 5, 6], [5, 7, 9, 0], [0, 0, 0, 0]),
      ([9, 0, 9], [0, 9, 0], [9, 9, 9, 0], [0, 0, 0, 0]),  # 9s with nothing to pass on
  ]
  for a, b, total, chain in cases:
    got_total, got_chain = data.add_lsb_first(np.array([a]), np.array([b]))
    assert got_total[0].tolist() == total
    assert got_chain[0].tolist() == chain


def test_addition_labels_span_short_and_long_chains():
  source = data.make_source({"name": "addition", "task": {"num_digits": 4}}, "train", seed=2)
  chains = [c for i in range(150) for c in check_addition(source.task, source[i])[2]]
  counts = collections.Counter(chains)
  assert counts[0] > counts[1] > counts[2] > 0
  assert max(counts) >= 3


def test_set_sum_query_sizes_follow_weights():
  source = data.make_source(
      {"name": "set_sum", "task": {"num_keys": 11, "max_keys": 5, "modulus": 7,
                                   "query_size_weights": [0, 1, 0, 0, 1]}},
      "train", seed=4)
  sizes = [s for i in range(30) for s in check_set_sum(source.task, source[i])[2]]
  assert set(sizes) == {2, 5}


def test_task_seq_len_pads_and_rejects_too_short():
  natural = data.data_info({"name": "pointer_chasing"}).seq_len
  padded = data.make_source({"name": "pointer_chasing", "seq_len": natural + 13}, "train")
  example = padded[0]
  assert example["inputs"].shape == (natural + 13,)
  expected_mask, expected_difficulty, _, _ = check_pointer_chasing(padded.task, example)
  np.testing.assert_array_equal(example["loss_mask"], expected_mask)
  np.testing.assert_array_equal(example["difficulty"], expected_difficulty)
  assert not example["loss_mask"][natural:].any()
  with pytest.raises(ValueError, match="seq_len"):
    data.make_source({"name": "pointer_chasing", "seq_len": natural - 1}, "train")


def test_unknown_names_are_reported():
  with pytest.raises(ValueError, match=r"'chess'.*pointer_chasing"):
    data.make_dataset({"name": "chess"}, "train", batch_size=2)
  with pytest.raises(ValueError, match="num_sybmols"):
    data.make_task("pointer_chasing", {"num_sybmols": 3})
  with pytest.raises(ValueError, match="bacth"):
    data.DataConfig.from_any({"bacth": 1})


def test_config_dict_is_accepted():
  ml_collections = pytest.importorskip("ml_collections")
  config = ml_collections.ConfigDict({
      "name": "pointer_chasing", "seq_len": 53,
      "task": {"num_symbols": 5, "num_queries": 11, "hop_weights": [0, 1, 0, 0, 0]}})
  info = data.data_info(config)
  assert info.seq_len == 53 and info.vocab_size == 5 + 25 + 5 + 3
  source = data.make_source(config, "train", seed=0)
  assert set(check_pointer_chasing(source.task, source[0])[2]) == {1}


# ----------------------------------------------------------------------------------------
# Batches from the pipeline


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_synthetic_batches_layout(name):
  info = data.data_info({"name": name})
  batches = take(iter(data.make_dataset({"name": name}, "train", batch_size=7, seed=1)), 2)
  for batch in batches:
    assert set(batch) == {"inputs", "targets", "loss_mask", "difficulty", "loss_positions"}
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.bool_),
                       ("difficulty", np.int32)]:
      assert batch[key].shape == (7, info.seq_len) and batch[key].dtype == dtype
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(batch["difficulty"] == -1, ~batch["loss_mask"])
    assert batch["loss_mask"].any(axis=1).all()
    assert batch["inputs"].max() < info.vocab_size and batch["targets"].min() >= 0
    assert set(np.unique(batch["difficulty"][batch["loss_mask"]])) <= set(info.difficulty_names)


@pytest.mark.parametrize("config,split", [({"name": "addition", "task": {"num_digits": 3}}, "train"),
                                          ({"name": "set_sum", "eval_examples": 18}, "eval"),
                                          ("text", "train")])
def test_hosts_rows_side_by_side_are_the_one_process_batch(config, split, tmp_path):
  # DESIGN.md section 10: each host reads its block of every global batch, so the global arrays (the
  # hosts' rows in process order) are the same whatever the number of processes.
  if config == "text":
    config = {"name": "text_file", "seq_len": 16,
              "text_path": write_text(tmp_path, "t.txt", random_text(3000, seed=2))}
  one = take(iter(data.make_dataset(config, split, batch_size=6, seed=9)), 3)
  hosts = [take(iter(data.make_dataset(config, split, batch_size=6, seed=9, process_index=p,
                                       process_count=3)), 3) for p in range(3)]
  for step in range(3):
    for key in one[step]:
      assert all(h[step][key].shape[0] == 2 for h in hosts)
      np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), one[step][key])
  assert len(set(row_keys(one))) == 18  # 18 different rows: the comparison is not between copies


@pytest.mark.parametrize("config", [{"name": "addition", "task": {"num_digits": 3}}, "text"])
@pytest.mark.parametrize("process_count", [1, 2])
def test_skipping_batches_starts_later_in_the_same_order(config, process_count, tmp_path):
  """A run with skip_batches = 5 reads global batches 5, 6, ... of the order a run without it reads
  (a warm start's second half continues its first half's data), on every host."""
  if config == "text":
    config = {"name": "text_file", "seq_len": 16,
              "text_path": write_text(tmp_path, "t.txt", random_text(3000, seed=2))}
  for p in range(process_count):
    kwargs = {"batch_size": 4, "seed": 3, "process_index": p, "process_count": process_count}
    whole = take(iter(data.make_dataset(config, "train", **kwargs)), 8)
    later = take(iter(data.make_dataset(config, "train", skip_batches=5, **kwargs)), 3)
    for step in range(3):
      assert_batches_equal([later[step]], [whole[5 + step]])
    assert len(set(row_keys(whole[:5] + later))) == 8 * 4 // process_count  # no batch read twice


def test_a_skipped_stream_resumes_from_its_saved_state():
  """Resuming a run with skip_batches restores its iterator's position within the skipped stream."""
  config = {"name": "pointer_chasing"}
  iterator = iter(data.make_dataset(config, "train", batch_size=3, seed=4, skip_batches=7))
  take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  resumed = iter(data.make_dataset(config, "train", batch_size=3, seed=4, skip_batches=7))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)
  whole = take(iter(data.make_dataset(config, "train", batch_size=3, seed=4)), 12)
  assert_batches_equal(expected, whole[9:12])


def test_skipping_batches_is_refused_where_it_has_no_meaning():
  for split, config in [("eval", {"name": "set_sum"}), ("train", {"name": "tfds", "tfds_name": "lm1b"})]:
    with pytest.raises(ValueError, match="only for the train split of a synthetic task or text file"):
      data.make_dataset(config, split, batch_size=4, skip_batches=2)
  with pytest.raises(ValueError, match="must be >= 0"):
    data.make_dataset({"name": "set_sum"}, "train", batch_size=4, skip_batches=-1)


def test_synthetic_eval_is_finite_padded_and_shared_across_hosts():
  config = {"name": "set_sum", "eval_examples": 10, "eval_seed": 1}
  source = data.make_source(config, "eval")
  expected = {source[i]["inputs"].tobytes() for i in range(10)}
  seen = collections.Counter()
  counts = []
  for host in range(2):
    dataset = data.make_dataset(config, "eval", batch_size=4, seed=123, process_index=host,
                                process_count=2)
    batches = list(dataset)
    assert_batches_equal(batches, list(dataset))  # deterministic, re-iterable
    counts.append(len(batches))
    for batch in batches:
      assert batch["inputs"].shape[0] == 2
      real = batch["loss_mask"].any(axis=1)
      seen.update(row.tobytes() for row in batch["inputs"][real])
      assert (batch["difficulty"][~real] == -1).all()
  assert counts == [3, 3]  # 10 examples -> 12 rows over 2 hosts, 2 rows of filler
  assert set(seen) == expected and set(seen.values()) == {1}


def test_synthetic_state_restore_resumes_identical_stream():
  config = {"name": "pointer_chasing", "read_threads": 2}
  iterator = iter(data.make_dataset(config, "train", batch_size=3, seed=4))
  take(iterator, 5)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 4)
  resumed = iter(data.make_dataset(config, "train", batch_size=3, seed=4))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), expected)


# ----------------------------------------------------------------------------------------
# Local text files


def write_text(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  return str(path)


def random_text(length, seed=0):
  rng = np.random.default_rng(seed)
  alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ,.\n", dtype=np.uint8)
  return rng.choice(alphabet, size=length).tobytes()


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="local corpus not present")
def test_shakespeare_windows_decode_to_file_substrings():
  with open(SHAKESPEARE, "rb") as handle:
    raw = handle.read()
  tokenizer = data.ByteTokenizer()
  seq_len = 101
  cut = int(round(len(raw) * 0.9))
  train = data.TextWindowSource(SHAKESPEARE, seq_len, "train")
  evaluation = data.TextWindowSource(SHAKESPEARE, seq_len, "eval")
  assert len(train) == (cut - 1) // seq_len
  assert len(evaluation) == (len(raw) - cut - 1) // seq_len
  for window in [0, 1, 500, len(train) - 1]:
    example = train[window]
    start = window * seq_len
    assert tokenizer.decode(stream_of(example)) == raw[start:start + seq_len + 1].decode()
    assert example["loss_mask"].all()
  for window in [0, len(evaluation) - 1]:
    start = cut + window * seq_len
    assert tokenizer.decode(stream_of(evaluation[window])) == \
        raw[start:start + seq_len + 1].decode()
  assert data.data_info({"name": "text_file"}).vocab_size == 257


def test_text_epoch_covers_every_window_once_per_host(tmp_path):
  raw = random_text(2000)
  path = write_text(tmp_path, "small.txt", raw)
  seq_len = 16
  cut = int(round(len(raw) * 0.9))
  all_windows = {raw[w * seq_len:w * seq_len + seq_len + 1] for w in range((cut - 1) // seq_len)}
  assert len(all_windows) == 112
  config = {"name": "text_file", "text_path": path, "seq_len": seq_len}
  epochs = []
  for host in range(2):
    batches = take(iter(data.make_dataset(config, "train", batch_size=8, seed=7,
                                          process_index=host, process_count=2)), 28)
    epochs.append([[stream_of({"inputs": b["inputs"][r], "targets": b["targets"][r]})
                    .astype(np.uint8).tobytes() for b in batches[e * 14:(e + 1) * 14]
                    for r in range(4)] for e in range(2)])
  for epoch in range(2):
    first_host, second_host = epochs[0][epoch], epochs[1][epoch]
    assert len(set(first_host)) == 56 and len(set(second_host)) == 56
    assert set(first_host) | set(second_host) == all_windows
  assert epochs[0][0] != epochs[0][1], "each epoch is reshuffled"


def test_text_shuffle_depends_on_seed_only(tmp_path):
  path = write_text(tmp_path, "small.txt", random_text(3000, seed=1))
  config = {"name": "text_file", "text_path": path, "seq_len": 20}

  def first_batches(seed):
    return take(iter(data.make_dataset(config, "train", batch_size=4, seed=seed)), 3)

  assert_batches_equal(first_batches(1), first_batches(1))
  assert row_keys(first_batches(1)) != row_keys(first_batches(2))


def test_text_state_restore_across_epoch_boundary(tmp_path):
  path = write_text(tmp_path, "small.txt", random_text(1000, seed=2))
  config = {"name": "text_file", "text_path": path, "seq_len": 30}  # 29 windows, 7 batches
  iterator = iter(data.make_dataset(config, "train", batch_size=4, seed=0))
  take(iterator, 5)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 6)
  resumed = iter(data.make_dataset(config, "train", batch_size=4, seed=0))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 6), expected)


def test_text_file_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "nowhere.txt")
  with pytest.raises(FileNotFoundError, match="nowhere.txt"):
    data.make_dataset({"name": "text_file", "text_path": missing}, "train", batch_size=2)
  empty = write_text(tmp_path, "empty.txt", b"")
  with pytest.raises(ValueError, match="empty.txt"):
    data.make_dataset({"name": "text_file", "text_path": empty}, "eval", batch_size=2)
  short = write_text(tmp_path, "short.txt", b"x" * 100)
  with pytest.raises(ValueError, match="short.txt"):
    data.TextWindowSource(short, seq_len=64, split="eval")


def test_byte_tokenizer_round_trip():
  tokenizer = data.ByteTokenizer()
  text = "Catch your breath — é ✓\n"
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
  assert tokenizer.decode(ids) == text
  assert tokenizer.decode(np.concatenate([[tokenizer.bos_id], ids])) == text
  np.testing.assert_array_equal(tokenizer.encode(text.encode("utf-8")), ids)


def test_sentencepiece_is_optional(tmp_path):
  try:
    import sentencepiece  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(ImportError, match="sentencepiece"):
      data.make_tokenizer("sentencepiece", str(tmp_path / "m.model"))
    return
  spm = pytest.importorskip("sentencepiece")
  corpus = write_text(tmp_path, "corpus.txt", random_text(20000, seed=3))
  spm.SentencePieceTrainer.train(input=corpus, model_prefix=str(tmp_path / "m"),
                                 vocab_size=60, model_type="bpe")
  tokenizer = data.make_tokenizer("sentencepiece", str(tmp_path / "m.model"))
  assert tokenizer.vocab_size == 60 and tokenizer.bos_id is not None
  ids = tokenizer.encode("the quick brown fox")
  assert ids.dtype == np.int32 and tokenizer.decode(ids) == "the quick brown fox"


# ----------------------------------------------------------------------------------------
# TFDS (mock data: no TensorFlow, nothing downloaded)


def tfds_config(**overrides):
  config = {"name": "tfds", "tfds_name": "lm1b", "seq_len": 23, "packing_bins": 3,
            "read_threads": 0}
  config.update(overrides)
  return config


def documents_in(batch):
  """Splits each packed row at its BOS tokens, checks masks and segment ids against that
  split, and returns the decoded documents. Mock texts hold no NUL byte, so the packer's
  padding (token 0) is recognisable."""
  tokenizer = data.ByteTokenizer()
  documents = []
  for inputs, targets, mask, segments in zip(batch["inputs"], batch["targets"],
                                             batch["loss_mask"], batch["segment_ids"]):
    row = np.concatenate([inputs, targets[-1:]])
    num_real = int(np.count_nonzero(row))
    assert (row[:num_real] != 0).all(), "padding must be a suffix"
    real = np.arange(len(row)) < num_real
    assert row[0] == BOS_BYTE
    # Loss exactly where input and target are real tokens of the same document.
    np.testing.assert_array_equal(mask, real[:-1] & real[1:] & (row[1:] != BOS_BYTE))
    np.testing.assert_array_equal(segments, np.where(real[:-1], np.cumsum(row == BOS_BYTE)[:-1],
                                                     0))
    starts = list(np.flatnonzero(row[:num_real] == BOS_BYTE)) + [num_real]
    for start, end in zip(starts[:-1], starts[1:]):
      documents.append(tokenizer.decode(row[start + 1:end]))
  return documents


def test_tfds_text_field_bytes_or_str():
  tokenize = tfds_text.TokenizeDocument(data.ByteTokenizer(), "text", max_tokens=3)
  expected = [BOS_BYTE, ord("a"), ord("b")]
  for text in ["abcd", b"abcd", np.array(b"abcd", dtype=object)]:
    assert tokenize.map({"text": text})["tokens"].tolist() == expected


@pytest.mark.parametrize("seq_len", [16, 29])
def test_tfds_packed_eval_holds_every_document_once(seq_len):
  # Mock lm1b texts have 10-19 bytes: seq_len 16 truncates the longer ones, seq_len 29 packs
  # two short documents into one row.
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=30):
    texts = [r["text"] for r in tfds.data_source("lm1b", split="test", download=False)]
    batches = list(data.make_dataset(tfds_config(seq_len=seq_len), "eval", batch_size=5))
  assert all(isinstance(t, str) and "\0" not in t for t in texts)
  # A document is BOS + text, cut to seq_len + 1 tokens.
  truncated = collections.Counter(t.encode()[:seq_len].decode() for t in texts)
  found = collections.Counter()
  documents_per_row = []
  for batch in batches:
    assert batch["inputs"].shape == (5, seq_len) and batch["inputs"].dtype == np.int32
    assert batch["loss_mask"].dtype == np.bool_ and batch["segment_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    real_rows = batch["segment_ids"].any(axis=1)
    assert not batch["loss_mask"][~real_rows].any()
    full = {key: value[real_rows] for key, value in batch.items()}
    found.update(documents_in(full))
    documents_per_row.extend(full["segment_ids"].max(axis=1).tolist())
  assert found == truncated
  if seq_len == 16:
    assert any(len(t) > seq_len for t in texts)
  else:
    assert max(documents_per_row) >= 2


def test_tfds_train_state_restore_and_sharding():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    def stream(host=0, count=1):
      return iter(data.make_dataset(tfds_config(read_threads=1), "train", batch_size=4,
                                    seed=3, process_index=host, process_count=count))

    iterator = stream()
    take(iterator, 4)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 5)
    resumed = stream()
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 5), expected)
    for batch in expected:
      documents_in(batch)  # masks at document boundaries hold in train rows too

    texts = [r["text"] for r in tfds.data_source("lm1b", split="train", download=False)]
    per_host = []
    for host in range(2):
      # One pass over a host's 20 documents fits in the first few batches.
      batches = take(stream(host, 2), 4)
      per_host.append(set(d for b in batches for d in documents_in(b)))
  for host in range(2):
    own = {t.encode()[:23].decode() for t in texts[host::2]}
    assert per_host[host] <= own and len(per_host[host]) > 5


def test_tfds_missing_dataset_names_it(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match="lm1b"):
    data.make_dataset(tfds_config(tfds_data_dir=str(tmp_path)), "train", batch_size=2)


def test_tfds_documents_with_a_pretrained_tokenizer():
  # Word pieces from a Llama 3-style tokenizer.json: every packed document starts with that model's BOS
  # and decodes back to its text.
  tfds = pytest.importorskip("tensorflow_datasets")
  directory = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers", "llama3_style")
  tokenizer = data.load_pretrained_tokenizer(directory)
  assert tokenizer.add_bos
  with tfds.testing.mock_data(num_examples=20):
    texts = [r["text"] for r in tfds.data_source("lm1b", split="test", download=False)]
    batches = list(data.make_dataset(tfds_config(seq_len=48, tokenizer="hf", tokenizer_path=directory),
                                     "eval", batch_size=4))
  found = collections.Counter()
  for batch in batches:
    assert batch["inputs"].max() < tokenizer.vocab_size
    for inputs, targets, segments, mask in zip(batch["inputs"], batch["targets"], batch["segment_ids"],
                                               batch["loss_mask"]):
      row = np.concatenate([inputs, targets[-1:]])
      # The last target belongs to the last input's document exactly when it carries loss.
      row_segments = np.concatenate([segments, segments[-1:] * mask[-1]])
      for document in range(1, int(segments.max()) + 1):
        ids = row[row_segments == document]
        assert ids[0] == tokenizer.bos_id
        found[tokenizer.decode(ids[1:])] += 1
  assert found == collections.Counter(texts)


@pytest.mark.parametrize("name", sorted(data.TASKS))
@pytest.mark.parametrize("overrides", [{}, {"seq_len": 120}])
def test_loss_positions_list_every_loss_token(name, overrides):
  # The trainer computes pause chains only at `loss_positions`: every loss-carrying target must be there
  # (none dropped), each once, and the filler positions must carry no loss. P is the same for every row.
  config = data.DataConfig(name=name, eval_examples=64, read_threads=0, **overrides)
  info = data.data_info(config)
  for split in ("train", "eval"):
    iterator = iter(data.make_dataset(config, split, batch_size=16, seed=3))
    for _ in range(4 if split == "train" else 4):
      batch = next(iterator)
      positions, mask = batch["loss_positions"], batch["loss_mask"]
      assert positions.shape == (16, info.loss_positions) and positions.dtype == np.int32
      for row_positions, row_mask in zip(positions, mask):
        assert len(set(row_positions.tolist())) == len(row_positions)  # no position twice
        listed = row_positions[row_mask[row_positions]]
        np.testing.assert_array_equal(np.sort(listed), np.flatnonzero(row_mask))
  with pytest.raises(ValueError, match="3 positions carry loss, more than the 2"):
    data.example.loss_positions(np.array([True, False, True, True]), 2)


# ----------------------------------------------------------------------------------------
# Documents: a .jsonl file or a folder of .txt files


SOTU = os.path.join(SHARED, "data", "sotu.jsonl")
TOKENIZERS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")
QWEN_STYLE = os.path.join(TOKENIZERS, "qwen_style")      # add_bos False, EOS <|endoftext|> = 267
LLAMA3_STYLE = os.path.join(TOKENIZERS, "llama3_style")  # add_bos True, BOS 285, EOS 286


def write_jsonl(tmp_path, name, texts, field="text"):
  return write_text(tmp_path, name, "".join(json.dumps({field: t, "id": i}) + "\n"
                                            for i, t in enumerate(texts)).encode("utf-8"))


def whole_stream(source):
  """The token stream a text source's windows tile (windows without BOS share one token)."""
  return np.concatenate([stream_of(source[w])[:-1] for w in range(len(source))] +
                        [source[len(source) - 1]["targets"][-1:]])


def as_bytes(ids):
  return bytes(int(i) for i in ids)


def test_jsonl_documents_split_and_pack_by_hand(tmp_path):
  # 4 documents, eval_fraction 0.25: E = max(1, round(4 * 0.25)) = 1 eval document, the first entry of
  # default_rng(0).permutation(4) = [2, 0, 1, 3] (numpy's documented Generator): document 2, "hi".
  path = write_jsonl(tmp_path, "d.jsonl", ["abc", "defg", "hi", "jklmn"])
  config = {"name": "text_file", "text_path": path, "seq_len": 4, "eval_fraction": 0.25}
  assert np.random.default_rng(0).permutation(4).tolist() == [2, 0, 1, 3]
  train = data.make_source(config, "train")
  assert train.documents.tolist() == [0, 1, 3]
  # Bytes have no BOS (add_bos False) and no EOS: the train stream is "abc|defg|jklmn", 12 tokens, so
  # (12 - 1) // 4 = 2 windows of 5 tokens sharing one: "abcde", "efgjk".
  assert len(train) == 2
  first, second = train[0], train[1]
  assert as_bytes(first["inputs"]) == b"abcd" and as_bytes(first["targets"]) == b"bcde"
  assert first["loss_mask"].tolist() == [True, True, False, True]   # c -> d crosses into document 1
  assert first["segment_ids"].tolist() == [1, 1, 1, 2]
  assert as_bytes(second["inputs"]) == b"efgj" and as_bytes(second["targets"]) == b"fgjk"
  assert second["loss_mask"].tolist() == [True, True, False, True]  # g -> j: document 1 -> 3
  assert second["segment_ids"].tolist() == [1, 1, 1, 2]
  assert data.data_info(config).packed
  # The eval split is document 2 alone, "hi": 2 tokens, less than a window of 5, an error naming the file.
  with pytest.raises(ValueError, match="d.jsonl: its eval split \\(1 documents\\) has 2 tokens, fewer than one "
                                       "window of 5"):
    data.make_source(config, "eval")


def test_documents_with_bos_and_eos_by_hand(tmp_path):
  # A Llama 3-style tokenizer: each document is [BOS 285] + ids + [EOS 286].
  tokenizer = data.load_pretrained_tokenizer(LLAMA3_STYLE)
  texts = ["a b", "cd", "e", "fg h"]
  path = write_jsonl(tmp_path, "d.jsonl", texts)
  config = {"name": "text_file", "text_path": path, "seq_len": 5, "eval_fraction": 0.25,
            "tokenizer": "hf", "tokenizer_path": LLAMA3_STYLE}
  train = data.make_source(config, "train")
  assert train.documents.tolist() == [0, 1, 3]  # eval: document 2 (see the test above)
  stream, docs = [], []
  for number, d in enumerate([0, 1, 3]):
    ids = [285] + tokenizer.encode(texts[d]).tolist() + [286]
    stream += ids
    docs += [number] * len(ids)
  # add_bos: window w is BOS + stream[5w : 5w + 5]; len(stream) // 5 windows.
  assert len(train) == len(stream) // 5
  for w in range(len(train)):
    example = train[w]
    body, body_docs = stream[5 * w:5 * w + 5], docs[5 * w:5 * w + 5]
    starts_document = w == 0 or docs[5 * w - 1] != body_docs[0]
    window = [285] + body
    window_docs = [body_docs[0] - 1 if starts_document else body_docs[0]] + body_docs
    assert example["inputs"].tolist() == window[:-1] and example["targets"].tolist() == window[1:]
    for i in range(5):
      same = window_docs[i] == window_docs[i + 1]
      assert example["loss_mask"][i] == (same and window[i + 1] != 285), (w, i)
      assert example["segment_ids"][i] == window_docs[i] - window_docs[0] + 1
      if window[i + 1] == 286:  # an EOS is learnt, from its own document
        assert example["loss_mask"][i]
      if window[i + 1] == 285:  # a BOS never is
        assert not example["loss_mask"][i]
  # Every EOS of the train stream is a target with loss exactly once per epoch.
  examples = [train[w] for w in range(len(train))]
  eos_targets = sum(int(((e["targets"] == 286) & e["loss_mask"]).sum()) for e in examples)
  assert eos_targets == sum(1 for i, t in enumerate(stream) if t == 286 and i < 5 * len(train))


def test_folder_documents_are_the_txt_files_in_name_order(tmp_path):
  folder = tmp_path / "docs"
  folder.mkdir()
  for name, text in [("b.txt", "defg"), ("a.txt", "abc"), ("d.txt", "jklmn"), ("c.txt", "hi"),
                     ("notes.md", "ignored"), (".hidden", "ignored")]:
    (folder / name).write_text(text)
  config = {"name": "text_file", "text_path": str(folder), "seq_len": 4, "eval_fraction": 0.25}
  train = data.make_source(config, "train")
  # Sorted a, b, c, d = "abc", "defg", "hi", "jklmn": the same documents as the JSONL test above.
  assert train.documents.tolist() == [0, 1, 3]
  assert [as_bytes(train[w]["inputs"]) for w in range(len(train))] == [b"abcd", b"efgj"]
  assert [train[w]["segment_ids"].tolist() for w in range(len(train))] == [[1, 1, 1, 2]] * 2


def test_document_split_never_shares_a_document_and_follows_split_seed(tmp_path):
  texts = [f"document {i:02d} " + "x" * i for i in range(20)]
  path = write_jsonl(tmp_path, "d.jsonl", texts)
  config = {"name": "text_file", "text_path": path, "seq_len": 8, "eval_fraction": 0.2}
  splits = {}
  for seed in (0, 1):
    train = data.make_source({**config, "split_seed": seed}, "train")
    evaluation = data.make_source({**config, "split_seed": seed}, "eval")
    assert len(evaluation.documents) == 4 and len(train.documents) == 16  # round(20 * 0.2)
    assert set(train.documents) | set(evaluation.documents) == set(range(20))
    assert not set(train.documents) & set(evaluation.documents)
    # Every eval window is text of eval documents only.
    eval_text = "".join(texts[d] for d in evaluation.documents).encode()
    for w in range(len(evaluation)):
      assert as_bytes(stream_of(evaluation[w])) in eval_text
    splits[seed] = evaluation.documents.tolist()
  assert splits[0] != splits[1]
  # At least one document on each side, whatever the fraction.
  two = write_jsonl(tmp_path, "two.jsonl", ["first document", "second document"])
  for fraction in (0.01, 0.99):
    one = data.make_source({"name": "text_file", "text_path": two, "seq_len": 4,
                            "eval_fraction": fraction}, "eval")
    assert len(one.documents) == 1


def test_document_epochs_cover_every_window_once_across_hosts_and_resume(tmp_path):
  texts = [random_text(int(n), seed=i).decode() for i, n in enumerate(np.arange(30, 330, 20))]
  path = write_jsonl(tmp_path, "d.jsonl", texts)
  config = {"name": "text_file", "text_path": path, "seq_len": 16, "read_threads": 0}
  source = data.make_source(config, "train")
  windows = {source[w]["inputs"].tobytes() for w in range(len(source))}
  per_epoch = len(source) // 8  # batches of 8 rows
  for host in range(2):
    iterator = iter(data.make_dataset(config, "train", batch_size=8, seed=3, process_index=host,
                                      process_count=2))
    batches = take(iterator, per_epoch)
    assert all(b["segment_ids"].shape == (4, 16) for b in batches)
    seen = [row.tobytes() for b in batches for row in b["inputs"]]
    assert len(set(seen)) == len(seen) == per_epoch * 4 and set(seen) <= windows
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 3)
    resumed = iter(data.make_dataset(config, "train", batch_size=8, seed=3, process_index=host,
                                     process_count=2))
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)
  again = take(iter(data.make_dataset(config, "train", batch_size=8, seed=3)), 2)
  assert_batches_equal(again, take(iter(data.make_dataset(config, "train", batch_size=8, seed=3)), 2))
  # Eval: every window once, in order, rows carry segment ids (padding rows: segment 0, no loss).
  evaluation = data.make_source(config, "eval")
  rows = [row for b in data.make_dataset(config, "eval", batch_size=8) for row in
          zip(b["inputs"], b["loss_mask"], b["segment_ids"])]
  real = [r for r in rows if r[1].any()]
  expected = [evaluation[w]["inputs"].tobytes() for w in range(len(evaluation))]
  assert [r[0].tobytes() for r in real] == expected
  assert all((r[2] == 0).all() for r in rows if not r[1].any())


@pytest.mark.skipif(not os.path.exists(SOTU), reason="SOTU corpus not present")
def test_sotu_splits_by_document_and_covers_every_document():
  with open(SOTU, encoding="utf-8") as handle:
    texts = [json.loads(line)["text"] for line in handle if line.strip()]
  assert len(texts) == 233
  config = {"name": "text_file", "text_path": SOTU, "seq_len": 512}
  train, evaluation = data.make_source(config, "train"), data.make_source(config, "eval")
  assert len(evaluation.documents) == 23 and len(train.documents) == 210  # round(233 * 0.1) = 23
  assert sorted(train.documents.tolist() + evaluation.documents.tolist()) == list(range(233))
  # Bytes: each split's stream is its documents' UTF-8 text end to end (no BOS, no EOS for bytes).
  train_bytes = sum(len(texts[d].encode()) for d in train.documents)
  assert len(train) == (train_bytes - 1) // 512
  eval_text = b"".join(texts[d].encode() for d in evaluation.documents)
  for w in (0, len(evaluation) // 2, len(evaluation) - 1):
    start = w * 512
    assert as_bytes(stream_of(evaluation[w])) == eval_text[start:start + 513]


@pytest.mark.parametrize("content,problem", [
    (b'{"text": "fine"}\n{"text": "broken\n', "line 2: malformed JSON"),
    (b'{"text": "fine"}\n["a list"]\n', "line 2: expected a JSON object, got list"),
    (b'{"text": "fine"}\n\n{"body": "x"}\n', "line 3: no field 'text'"),
    (b'{"text": "fine"}\n{"text": 7}\n', "line 2: field 'text' holds int, not a string"),
    (b'{"text": "fine"}\n{"text": "  "}\n', "line 2: field 'text' is an empty document"),
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "line 2: not valid utf-8: byte 0xE9 at byte offset 30"),
    (b'{"text": "only one"}\n', "1 document\\(s\\): at least 2 are needed"),
])
def test_jsonl_errors_are_one_line_naming_file_and_line(tmp_path, content, problem):
  path = write_text(tmp_path, "bad.jsonl", content)
  with pytest.raises(data.text.DataFileError, match=problem) as error:
    data.make_source({"name": "text_file", "text_path": path, "seq_len": 2}, "train")
  assert str(error.value).startswith(path) and "\n" not in str(error.value)


def test_folder_errors_name_the_file(tmp_path):
  folder = tmp_path / "docs"
  folder.mkdir()
  config = {"name": "text_file", "text_path": str(folder), "seq_len": 2}
  with pytest.raises(data.text.DataFileError, match="a folder with no \\*.txt file"):
    data.make_source(config, "train")
  (folder / "a.txt").write_text("some text")
  (folder / "b.txt").write_bytes(b"line one\nna\xefve\n")
  with pytest.raises(data.text.DataFileError,
                     match="b.txt, line 2: not valid utf-8: byte 0xEF at byte offset 11; it looks like Latin-1"):
    data.make_source(config, "train")
  (folder / "b.txt").write_text(" \n")
  with pytest.raises(data.text.DataFileError, match="b.txt: empty document"):
    data.make_source(config, "train")


# ----------------------------------------------------------------------------------------
# Encodings


LATIN1_TEXT = "Caf\u00e9 cr\u00e8me, na\u00efve gar\u00e7on.\n" * 20


def test_latin1_text_file_is_refused_with_hf_tokenizer_and_read_with_its_encoding(tmp_path):
  raw = LATIN1_TEXT.encode("latin-1")
  path = write_text(tmp_path, "latin.txt", raw)
  config = {"name": "text_file", "text_path": path, "seq_len": 8, "tokenizer": "hf", "tokenizer_path": QWEN_STYLE}
  # The first non-ASCII byte: "Caf" then 0xE9 at offset 3.
  with pytest.raises(data.text.DataFileError,
                     match="latin.txt, line 1: not valid utf-8: byte 0xE9 at byte offset 3; it looks like Latin-1"):
    data.make_source(config, "train")
  tokenizer = data.load_pretrained_tokenizer(QWEN_STYLE)
  expected = tokenizer.encode(LATIN1_TEXT)  # the text as a str: no replacement character anywhere
  assert tokenizer.decode(expected) == LATIN1_TEXT
  source = data.make_source({**config, "encoding": "latin-1"}, "train")
  cut = int(round(len(expected) * 0.9))
  np.testing.assert_array_equal(stream_of(source[0]), expected[:9])
  assert len(source) == (cut - 1) // 8


def test_byte_tokenizer_reads_bytes_unless_an_encoding_is_set(tmp_path):
  raw = LATIN1_TEXT.encode("latin-1")
  path = write_text(tmp_path, "latin.txt", raw)
  config = {"name": "text_file", "text_path": path, "seq_len": 8}
  assert as_bytes(stream_of(data.make_source(config, "train")[0])) == raw[:9]
  utf8 = LATIN1_TEXT.encode("utf-8")
  assert as_bytes(stream_of(data.make_source({**config, "encoding": "latin-1"}, "train")[0])) == utf8[:9]


def test_cp1252_bytes_are_named_as_such(tmp_path):
  path = write_text(tmp_path, "quotes.txt", "\u201cquoted\u201d".encode("cp1252"))  # 0x93 ... 0x94
  config = {"name": "text_file", "text_path": path, "seq_len": 2, "tokenizer": "hf", "tokenizer_path": QWEN_STYLE}
  with pytest.raises(data.text.DataFileError, match="byte 0x93 at byte offset 0; it looks like Windows-1252"):
    data.make_source(config, "train")


def test_bpe_is_never_trained_on_damaged_text(tmp_path):
  path = write_text(tmp_path, "latin.txt", LATIN1_TEXT.encode("latin-1"))
  config = data.DataConfig(name="text_file", text_path=path, tokenizer="bpe", bpe_vocab_size=300)
  with pytest.raises(data.text.DataFileError, match="byte offset 3"):
    data.pipeline.prepare_tokenizer(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "tokenizer.json")
  trained = data.pipeline.prepare_tokenizer(
      data.DataConfig(name="text_file", text_path=path, tokenizer="bpe", bpe_vocab_size=300,
                      encoding="latin-1"), str(tmp_path / "run"))
  tokenizer = data.pipeline.configured_tokenizer(trained)
  assert "\ufffd" not in tokenizer.decode(tokenizer.encode(LATIN1_TEXT))
  assert tokenizer.decode(tokenizer.encode(LATIN1_TEXT)) == LATIN1_TEXT


# ----------------------------------------------------------------------------------------
# Text that spells a special token


def test_special_token_text_in_documents(tmp_path, caplog):
  # "<|endoftext|>" is the Qwen-style tokenizer's EOS (267): inside a document it must not end it.
  texts = ["first doc", "a doc that mentions <|endoftext|> in its text", "third one", "fourth one"]
  path = write_jsonl(tmp_path, "d.jsonl", texts)
  config = {"name": "text_file", "text_path": path, "seq_len": 4, "eval_fraction": 0.25,
            "tokenizer": "hf", "tokenizer_path": QWEN_STYLE}
  tokenizer = data.load_pretrained_tokenizer(QWEN_STYLE)
  assert tokenizer.eos_ids == (267,) and not tokenizer.add_bos
  data.text._CACHE.clear()
  with caplog.at_level("WARNING", logger="cyb_jax"):
    train = data.make_source(config, "train")
  assert train.documents.tolist() == [0, 1, 3]
  stream = whole_stream(train)
  # Document 0, its EOS, then document 1 up to the next 267, which must be its own EOS.
  first = tokenizer.encode(texts[0]).tolist() + [267]
  assert stream[:len(first)].tolist() == first
  end = len(first) + stream[len(first):].tolist().index(267)
  assert tokenizer.decode(stream[len(first):end]) == texts[1]
  third = tokenizer.encode(texts[3]).tolist()
  assert stream[end + 1:end + 1 + len(third)].tolist() == third[:len(stream) - end - 1]
  warnings = [r.getMessage() for r in caplog.records if "special token" in r.getMessage()]
  assert len(warnings) == 1 and "d.jsonl, line 2" in warnings[0] and "'<|endoftext|>'" in warnings[0]
  # "special": the text is the control token, as transformers encodes it (a chat-formatted corpus).
  special = data.make_source({**config, "special_text": "special"}, "train")
  assert (whole_stream(special) == 267).sum() == (stream == 267).sum() + 1
  # "error": refused in one line naming file, line and token.
  with pytest.raises(data.text.DataFileError, match="d.jsonl, line 2: the text holds '<\\|endoftext\\|>'"):
    data.make_source({**config, "special_text": "error"}, "train")


def test_special_token_text_in_a_text_file_is_plain_text(tmp_path):
  text = "line one\nthe end is <|endoftext|> here\n" * 10
  path = write_text(tmp_path, "t.txt", text.encode())
  config = {"name": "text_file", "text_path": path, "seq_len": 8, "tokenizer": "hf", "tokenizer_path": QWEN_STYLE}
  source = data.make_source(config, "train")
  tokens = np.concatenate([source[w]["inputs"] for w in range(len(source))])
  assert 267 not in tokens.tolist()
  with pytest.raises(data.text.DataFileError, match="t.txt, line 2: the text holds '<\\|endoftext\\|>'"):
    data.make_source({**config, "special_text": "error"}, "train")


def test_tfds_records_spelling_a_special_token_stay_one_document():
  directory = os.path.join(TOKENIZERS, "qwen_style")
  tokenizer = data.load_pretrained_tokenizer(directory)
  record = {"text": "ends <|endoftext|> not here"}
  plain = tfds_text.TokenizeDocument(tokenizer, "text", max_tokens=64).map(record)["tokens"]
  assert 267 not in plain.tolist() and tokenizer.decode(plain) == record["text"]
  special = tfds_text.TokenizeDocument(tokenizer, "text", max_tokens=64, plain=False).map(record)["tokens"]
  assert 267 in special.tolist()
