"""What a run tells its user while it waits (issue 24): the train and eval steps announced with what they
are compiled for and how long that took, and what the end-of-run eval covers (`train.final_eval_batches`).
The `<dk>` calibration's lines are checked on a fine-tune in test_eval.py."""

import logging
import re

import numpy as np
import pytest

from cyb_jax import configuration
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.evaluation import evaluate
from cyb_jax.training import trainer
from helpers import forbid_compilation
from helpers import tiny


def messages(caplog) -> list[str]:
  return [record.getMessage() for record in caplog.records if record.name == "cyb_jax"]


def test_a_run_logs_its_compilations_and_what_its_final_eval_covers(tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO, logger="cyb_jax")
  # As in a fresh process: an eval step another test compiled in this one would be reused, unannounced.
  monkeypatch.setattr(evaluate, "_COMPILED_STEPS", {})
  config = tiny("", {"train.num_steps": 2, "train.eval_every": 100, "train.checkpoint_every": 2,
                     "train.final_eval_batches": 1})
  final = trainer.train(config, str(tmp_path / "run"))
  lines = messages(caplog)
  # The tiny config: pointer chasing rows of 16 tokens, batch 8, K = 2, on conftest.py's 8 CPU devices.
  start = lines.index("compiling train step (K=2, batch 8 x 16, 8 devices)...")
  assert re.fullmatch(r"compiled train step in \d+\.\d s", lines[start + 1]), lines[start + 1]
  start = lines.index("compiling eval step (K=2, batch 8 x 16, 8 devices)...")
  assert re.fullmatch(r"compiled eval step in \d+\.\d s", lines[start + 1]), lines[start + 1]

  # The final eval read one batch, the first of the eval split (16 examples: two batches of 8).
  settings = configuration.settings_from_config(config, device_count=8)
  batches = list(data_pipeline.make_dataset(settings.data, "eval", 8, seed=int(config.seed)))
  assert len(batches) == 2
  first = int(np.sum(batches[0]["loss_mask"]))
  assert first < sum(int(np.sum(b["loss_mask"])) for b in batches)
  assert final["num_tokens"] == first and final["num_batches"] == 1
  assert "final eval on its first batch (batches of 8; train.final_eval_batches = 1, 0 = all)..." in lines
  covered = [line for line in lines if line.startswith("final eval covered")]
  assert len(covered) == 1 and re.fullmatch(
      rf"final eval covered {first} scored tokens in 1 batch \(its first batch\) in \d+\.\d s", covered[0])


def test_final_eval_batches_is_validated_before_compiling(tmp_path, monkeypatch):
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match=r"^config\.train\.final_eval_batches must be an "
                     r"integer >= 0 \(0 = the whole eval split\), got -1$"):
    trainer.train(tiny("", {"train.final_eval_batches": -1}), str(tmp_path / "run"))
