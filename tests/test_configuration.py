"""Tests of cyb_jax/configuration.py and train.py's flag handling: every bad input is a one-line error that
names the key (or the file), raised before anything is compiled."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from cyb_jax import configuration
from cyb_jax.training import trainer
from helpers import forbid_compilation
from helpers import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8  # conftest.py's fake CPU devices


def train_error(config, workdir, monkeypatch) -> str:
  """The ConfigError message of trainer.train(config), which must come before any jax.jit."""
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError) as error:
    trainer.train(config, str(workdir))
  message = str(error.value)
  assert "\n" not in message
  assert not os.path.exists(workdir)  # nothing written either
  return message


@pytest.mark.parametrize("overrides, pattern", [
    ({"objective.name": "cyb_xx"},
     r"^config\.objective\.name must be one of \('ce', 'pause_ce', 'cyb_ap', 'cyb_va', 'cyb_dp'\), "
     r"got 'cyb_xx'$"),
    ({"data.name": "pointer_hunting"},
     r"^config\.data\.name must be one of \[.*'pointer_chasing'.*\], got 'pointer_hunting'$"),
    ({"num_pauses": -1}, r"^config\.num_pauses must be a non-negative integer, got -1$"),
    ({"num_pauses": 3}, r"^config\.num_pauses = 3 exceeds config\.model\.max_pauses = 2 \(raise that too\)$"),
    ({"objective.budget": -0.5}, r"^config\.objective\.budget must be >= 0 \(or None\), got -0\.5$"),
    ({"objective.cost": -0.1}, r"^config\.objective\.cost must be >= 0, got -0\.1$"),
    ({"train.batch_size": 12},
     rf"^config\.train\.batch_size = 12 is not divisible by the device count {NUM_DEVICES}$"),
    ({"mesh.num_devices": 16},
     rf"^config\.mesh\.num_devices must be -1 or in \[1, {NUM_DEVICES}\] .*got 16$"),
    ({"optim.schedule": "linear"},
     r"^config\.optim\.schedule must be one of \('cosine', 'constant'\), got 'linear'$"),
    ({"eval.tau_sweep": (0.5, 1.0)},
     r"^config\.eval\.tau_sweep must hold thresholds in \(0, 1\), got \(0\.5, 1\.0\)$"),
    ({"train.skip_batches": -2}, r"^config\.train\.skip_batches must be >= 0, got -2$"),
    # Finite as a Python float, inf in the float32 the run computes in: it used to die at step 1.
    ({"optim.learning_rate": 1e39},
     r"^config\.optim\.learning_rate = 1e\+39: not a finite float32 number \(the run computes in float32, "
     r"whose largest value is 3\.403e\+38\)$"),
    ({"optim.b2": float("nan"), "optim.weight_decay": float("inf")},
     r"^config\.optim\.b2 = nan; config\.optim\.weight_decay = inf: not a finite float32 number"),
], ids=["objective", "task", "negative_num_pauses", "num_pauses_above_max", "negative_budget",
        "negative_cost", "batch_vs_devices", "too_many_devices", "schedule", "tau_sweep", "skip_batches",
        "learning_rate_inf_in_float32", "nan_and_inf"])
def test_bad_config_is_a_one_line_error_before_compiling(overrides, pattern, tmp_path, monkeypatch):
  message = train_error(tiny(overrides=overrides), tmp_path / "run", monkeypatch)
  assert re.search(pattern, message), message


@pytest.mark.parametrize("section, key, value, message", [
    # The four misspellings of the issue that used to train silently with the defaults.
    ("objective", "gama", 0.5, "config.objective.gama is not a known key (did you mean objective.gamma?)"),
    ("optim", "lr", 0.1, "config.optim.lr is not a known key (did you mean optim.learning_rate?)"),
    ("train", "num_step", 5, "config.train.num_step is not a known key (did you mean train.num_steps?)"),
    ("eval", "tua", 0.2, "config.eval.tua is not a known key (did you mean eval.tau?)"),
    # The other sections, the top level, and the dataclass-checked ones, which now also suggest.
    ("mesh", "fdsp", 2, "config.mesh.fdsp is not a known key (did you mean mesh.fsdp?)"),
    ("", "num_pause", 2, "config.num_pause is not a known key (did you mean num_pauses?)"),
    ("model", "widht", 32, "config.model.widht is not a known key (did you mean model.width?)"),
    ("data", "seq_length", 32, "config.data.seq_length is not a known key (did you mean data.seq_len?)"),
], ids=["objective", "optim", "train", "eval", "mesh", "top_level", "model", "data"])
def test_misspelt_keys_in_a_config_file_are_named_with_the_closest(section, key, value, message, tmp_path,
                                                                   monkeypatch):
  """What a config file does (`config.objective.gama = 0.5` on a ConfigDict adds a key): one line."""
  config = tiny()
  node = config[section] if section else config
  with node.unlocked():
    setattr(node, key, value)
  assert train_error(config, tmp_path / "run", monkeypatch) == message


def test_several_misspelt_keys_in_a_config_file_are_all_named_at_once(tmp_path, monkeypatch):
  config = tiny()
  for node, key, value in ((config.optim, "lr", 0.1), (config.objective, "gama", 0.5), (config, "num_pause", 2),
                           (config.train, "num_step", 5), (config.train, "eval_evry", 5)):
    with node.unlocked():
      setattr(node, key, value)
  assert train_error(config, tmp_path / "run", monkeypatch) == (
      "config.num_pause is not a known key (did you mean num_pauses?); "
      "config.objective.gama is not a known key (did you mean objective.gamma?); "
      "config.optim.lr is not a known key (did you mean optim.learning_rate?); "
      "config.train.eval_evry is not a known key (did you mean train.eval_every?); "
      "config.train.num_step is not a known key (did you mean train.num_steps?)")


def test_batch_divisibility_counts_the_devices_in_use():
  # 12 rows do not split over 8 devices (above) but do over the first 4.
  settings = configuration.settings_from_config(tiny(overrides={"train.batch_size": 12, "mesh.num_devices": 4}),
                                                device_count=NUM_DEVICES)
  assert settings.model.max_pauses == 2 and settings.num_pauses == 2


def test_missing_or_empty_text_file_is_named(tmp_path, monkeypatch):
  missing = tmp_path / "nowhere" / "corpus.txt"
  config = tiny(overrides={"data.name": "text_file", "data.text_path": str(missing), "data.task": {}})
  message = train_error(config, tmp_path / "run", monkeypatch)
  assert message == f"config.data.text_path: no such file or folder {str(missing)!r}"

  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  config = tiny(overrides={"data.name": "text_file", "data.text_path": str(empty), "data.task": {}})
  message = train_error(config, tmp_path / "run", monkeypatch)
  assert message == f"config.data.text_path: file {str(empty)!r} is empty"


@pytest.mark.parametrize("name", ["default", "ce", "cyb_ap", "cyb_dp", "cyb_va", "pause_ce", "lm1b"])
def test_shipped_configs_validate(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  settings = configuration.settings_from_config(config, device_count=NUM_DEVICES)
  assert settings.objective.name == config.objective.name
  assert settings.num_pauses == config.num_pauses <= settings.model.max_pauses
  # The config goes into every checkpoint as JSON, where tuples (e.g. hop_weights) become lists.
  assert json.loads(json.dumps(configuration.as_json_dict(config))) == _tuples_as_lists(config.to_dict())


def _tuples_as_lists(value):
  if isinstance(value, dict):
    return {key: _tuples_as_lists(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_tuples_as_lists(item) for item in value]
  return value


def test_finetune_config_names_its_missing_init_from(tmp_path, monkeypatch):
  config = importlib.import_module("configs.finetune").get_config()
  monkeypatch.chdir(tmp_path)  # no runs/pretrain here
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.init_from = 'runs/pretrain' is not a directory$"):
    configuration.settings_from_config(config, device_count=NUM_DEVICES)


def test_train_py_flag_errors_are_one_line_and_fast(tmp_path):
  """Subprocesses (run side by side): unknown key, wrong type, a missing --config file, and a ConfigError
  from the trainer, which must come before jax compiles anything (JAX_LOG_COMPILES would log it)."""
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"],
             JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
  typo_file = tmp_path / "typo_config.py"
  typo_file.write_text("from tests import tiny_config\n\ndef get_config():\n"
                       "  config = tiny_config.get_config()\n  config.optim.lr = 0.1\n  return config\n")
  cases = {
      "typo_in_file": [f"--config={typo_file}"],
      "unknown_key": ["--config=tests/tiny_config.py", "--config.nonexistent=1"],
      "unknown_nested_key": ["--config.trian.num_steps=3"],
      "wrong_type": ["--config=tests/tiny_config.py", "--config.train.num_steps=abc"],
      "missing_config_file": ["--config=configs/no_such_config.py"],
      "config_error": ["--config=tests/tiny_config.py", "--config.train.batch_size=12"],
  }
  processes = {
      name: subprocess.Popen([sys.executable, "train.py", *args, f"--workdir={tmp_path / name}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, args in cases.items()}
  results = {name: (p.communicate(timeout=300), p.returncode) for name, p in processes.items()}

  def error_lines(name):
    (stdout, stderr), returncode = results[name]
    assert returncode != 0, (name, stdout, stderr)
    assert "Traceback" not in stderr and not os.path.exists(tmp_path / name), (name, stderr)
    return [line for line in stderr.splitlines() if "error" in line.lower()]

  assert error_lines("unknown_key") == [
      "FATAL Flags parsing error: --config.nonexistent: unknown config key 'nonexistent'"]
  [line] = error_lines("unknown_nested_key")
  assert line.startswith("FATAL Flags parsing error: --config.trian.num_steps: unknown config key 'trian'")
  assert 'Did you mean "train"' in line
  assert error_lines("wrong_type") == [
      "FATAL Flags parsing error: flag --config.train.num_steps=abc: invalid literal for int() with base "
      "10: 'abc'"]
  [line] = error_lines("missing_config_file")
  assert line.startswith("config error: ") and "configs/no_such_config.py" in line
  assert "No such file or directory" in line
  assert error_lines("config_error") == [
      f"config error: config.train.batch_size = 12 is not divisible by the device count {NUM_DEVICES}"]
  assert "Compiling" not in results["config_error"][0][1]
  assert error_lines("typo_in_file") == [
      "config error: config.optim.lr is not a known key (did you mean optim.learning_rate?)"]
  assert "Compiling" not in results["typo_in_file"][0][1]


def test_a_text_file_too_short_for_its_eval_split_fails_before_training(tmp_path, monkeypatch):
  """The issue's case: 300 bytes, seq_len 32: the eval split (30 bytes) holds no 33-token window. This
  used to train every step and then crash in the final eval, on every rerun."""
  corpus = tmp_path / "short.txt"
  corpus.write_bytes(bytes(range(32, 127)) * 3 + b"abcdefghijklmno")  # 300 bytes
  assert corpus.stat().st_size == 300
  config = tiny(overrides={"data.name": "text_file", "data.text_path": str(corpus), "data.task": {},
                           "data.seq_len": 32})
  message = train_error(config, tmp_path / "run", monkeypatch)
  assert message == (f"config.data.seq_len = 32 with data.eval_fraction = 0.1: text file {corpus}: its eval "
                     "split has 30 tokens, fewer than one window of 33")


@pytest.mark.parametrize("content, overrides, expected", [
    (b'{"text": "a first document"}\n{"text": "second\n', {},
     "config.data.text_path: {path}, line 2: malformed JSON: Invalid control character at (column 17)"),
    (b'{"text": "a first document"}\n{"body": "x"}\n', {},
     "config.data.text_path: {path}, line 2: no field 'text' (fields: ['body']); set data.text_field"),
    (b'{"text": "a first document"}\n{"text": "caf\xe9 au lait"}\n', {},
     "config.data.text_path: {path}, line 2: not valid utf-8: byte 0xE9 at byte offset 42; it looks like "
     "Latin-1 (ISO-8859-1): set data.encoding if it is meant to be read that way"),
    (b'{"text": "a first document"}\n', {"data.encoding": "utf-9"},
     "config.data.encoding: unknown encoding 'utf-9'"),
    (b'{"text": "a first document"}\n', {"data.special_text": "drop"},
     "config.data.special_text must be one of ('plain', 'special', 'error'), got 'drop'"),
], ids=["malformed", "missing_field", "not_utf8", "unknown_encoding", "special_text"])
def test_bad_documents_are_one_line_errors_before_compiling(content, overrides, expected, tmp_path,
                                                           monkeypatch):
  corpus = tmp_path / "docs.jsonl"
  corpus.write_bytes(content)
  config = tiny(overrides={"data.name": "text_file", "data.text_path": str(corpus), "data.task": {},
                           "data.seq_len": 4, **overrides})
  assert train_error(config, tmp_path / "run", monkeypatch) == expected.format(path=corpus)


def test_a_work_directory_that_cannot_be_created_fails_before_anything(tmp_path, monkeypatch):
  a_file = tmp_path / "notes.txt"
  a_file.write_text("not a directory")
  workdir = a_file / "run"
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError) as error:
    trainer.train(tiny(), str(workdir))
  assert str(error.value) == (f"--workdir {str(workdir)!r} cannot be created: {str(a_file)!r} is a file, "
                              "not a directory")
