"""Tests of cyb_jax/data/fingerprint.py: a resume after the data itself changed is refused in one line.

The end-to-end test trains a tiny model on documents (a .jsonl file, packed rows with segment ids),
evaluates it (the report's text samples included), edits the data and tries to resume.
"""

from __future__ import annotations

import json
import os

import pytest

from cyb_jax import configuration
from cyb_jax.data import fingerprint
from cyb_jax.data import text as text_lib
from cyb_jax.evaluation import eval_checkpoint
from cyb_jax.training import trainer
from helpers import forbid_compilation
from helpers import tiny

TEXTS = [f"Document number {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 3)
         for i in range(12)]


def write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def docs_config(corpus, num_steps):
  return tiny("nopause", overrides={"data.name": "text_file", "data.text_path": str(corpus), "data.task": {},
                                    "data.seq_len": 16, "data.eval_fraction": 0.25,
                                    "train.num_steps": num_steps, "train.checkpoint_every": 2,
                                    "train.eval_every": 2})


def test_a_resume_after_the_data_changed_is_refused_naming_the_file(tmp_path, monkeypatch):
  corpus = tmp_path / "docs.jsonl"
  write_jsonl(corpus, TEXTS)
  workdir = str(tmp_path / "run")
  # Rows pack documents: the train step reads their segment ids (as for TFDS), and so does eval.
  settings = configuration.settings_from_config(docs_config(corpus, 2), device_count=8)
  assert settings.data_info.packed and "segment_ids" in trainer.step_keys(settings.data_info)
  final = trainer.train(docs_config(corpus, 2), workdir)
  assert final["num_tokens"] > 0
  # The packed eval source through eval.py's path too: its report has text samples (prompts cut to one
  # document and whole characters).
  report = eval_checkpoint.evaluate_checkpoint(docs_config(corpus, 2), workdir, num_samples=2, progress=False)
  assert len(report["samples"]) == 2 and all("|>" in s for s in report["samples"])

  # One document edited, same size: refused before anything is compiled, in one line naming the file.
  size = corpus.stat().st_size
  edited = list(TEXTS)
  edited[3] = edited[3].replace("quick", "QUICK")
  write_jsonl(corpus, edited)
  assert corpus.stat().st_size == size
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError) as error:
    trainer.train(docs_config(corpus, 4), workdir)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"the data changed under the run: {corpus} has other content of the same size")
  assert f"(checkpoint step 2 in {workdir!r})" in message

  # A document added: named by the new size.
  write_jsonl(corpus, TEXTS + ["one more document, long enough to matter"])
  with pytest.raises(configuration.ConfigError, match=f"{corpus} is {corpus.stat().st_size} bytes, {size} when "):
    trainer.train(docs_config(corpus, 4), workdir)

  # The data restored: the resume goes ahead (it fails only at compiling, which this test forbids).
  write_jsonl(corpus, TEXTS)
  with pytest.raises(AssertionError, match="reached jax.jit"):
    trainer.train(docs_config(corpus, 4), workdir)


def test_folder_fingerprint_names_new_gone_and_changed_files(tmp_path):
  folder = tmp_path / "docs"
  folder.mkdir()
  (folder / "a.txt").write_text("first")
  (folder / "b.txt").write_text("second")
  (folder / "notes.md").write_text("not read, not fingerprinted")
  config = {"name": "text_file", "text_path": str(folder)}
  before = fingerprint.data_fingerprint(config)
  assert sorted(before["files"]) == ["a.txt", "b.txt"]
  assert before["files"]["a.txt"] == {
      "bytes": 5, "sha256": "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"}  # sha256("first")
  (folder / "notes.md").write_text("edited, but not data")
  assert fingerprint.change_message(before, fingerprint.data_fingerprint(config), 7, "W") is None
  (folder / "c.txt").write_text("third")
  assert fingerprint.change_message(before, fingerprint.data_fingerprint(config), 7, "W").startswith(
      f"the data changed under the run: {folder / 'c.txt'} is new (checkpoint step 7 in 'W')")
  (folder / "c.txt").unlink()
  (folder / "b.txt").unlink()
  assert f"{folder / 'b.txt'} is gone" in fingerprint.change_message(before, fingerprint.data_fingerprint(config),
                                                                     7, "W")
  # Sources without files, and checkpoints from before fingerprints, are not compared.
  assert fingerprint.data_fingerprint({"name": "pointer_chasing"}) is None
  assert fingerprint.change_message(None, before, 7, "W") is None
  assert text_lib.is_documents(str(folder))
