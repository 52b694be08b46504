"""Checkpoints read on other devices than they were written on (train on a slice, evaluate elsewhere)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cyb_jax.storage import checkpoint_integrity
from cyb_jax.storage import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process that sees one CPU device: restore the params (the reader eval.py, init_from and
# sampling use) and the raw state, and print what they hold.
READER = """
import json
import sys
import numpy as np
import jax
from cyb_jax.storage import checkpointing
from cyb_jax.storage import run_reader
params, meta, step = run_reader.load_params(sys.argv[1])  # what eval.py, init_from and sample.py read
assert step == 1
checkpointer = checkpointing.Checkpointer(sys.argv[1], read_only=True)
state = checkpointer.restore_raw_state(1)
print(json.dumps({"devices": jax.device_count(), "blocks_1_w": np.asarray(params["blocks"]["w"][1]).tolist(),
                  "embed": np.asarray(params["embed"]).tolist(), "step": int(state["step"])}))
"""


def _saved_on_eight_devices(workdir):
  """A state sharded over 8 devices (fsdp over the first axis), saved as checkpoint step 1."""
  assert jax.device_count() == 8
  mesh = Mesh(np.asarray(jax.devices()), ("fsdp",))
  embed = jax.device_put(jnp.arange(32.0).reshape(16, 2), NamedSharding(mesh, P("fsdp")))
  state = {"params": {"embed": embed, "blocks": [{"w": embed * 2}, {"w": embed - 1}]},
           "step": jnp.asarray(7)}
  checkpointer = checkpointing.Checkpointer(workdir)
  checkpointer.save(1, state, {"model": {}}, force=True)
  checkpointer.close()
  return state


def test_a_checkpoint_from_eight_devices_restores_on_one(tmp_path):
  workdir = str(tmp_path / "run")
  state = _saved_on_eight_devices(workdir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", READER, workdir], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  read = json.loads(proc.stdout.strip().splitlines()[-1])
  assert read["devices"] == 1
  np.testing.assert_array_equal(read["blocks_1_w"], np.asarray(state["params"]["blocks"][1]["w"]))
  np.testing.assert_array_equal(read["embed"], np.asarray(state["params"]["embed"]))
  assert read["step"] == 7


def test_the_same_process_restores_onto_other_shardings(tmp_path):
  workdir = str(tmp_path / "run")
  state = _saved_on_eight_devices(workdir)
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[3])
  restored = checkpointer.restore_raw_state(1, sharding=one_device)
  checkpointer.close()
  assert restored["params"]["embed"].sharding == one_device
  np.testing.assert_array_equal(np.asarray(restored["params"]["blocks"][0]["w"]),
                                np.asarray(state["params"]["blocks"][0]["w"]))


# ----------------------------------------------------------------------------------------------------------
# Resuming state whose meaning depends on settings; unreadable checkpoints; failed saves.

import shutil  # noqa: E402

import pytest  # noqa: E402

from cyb_jax import configuration  # noqa: E402
from cyb_jax.storage import run_reader  # noqa: E402
from cyb_jax.training import trainer  # noqa: E402
from helpers import forbid_compilation  # noqa: E402
from helpers import tiny  # noqa: E402


def _meta(process_count=1, **config):
  base = {"data": {"name": "pointer_chasing", "seq_len": None, "eval_examples": 1024},
          "train": {"batch_size": 8, "num_steps": 10, "skip_batches": 0}, "seed": 0, "num_pauses": 1,
          "objective": {"name": "cyb_dp", "budget": 0.25, "gamma": 0.9},
          "model": {"pause_context": "private", "pause_feedback": True, "pause_feedback_layer": -1,
                    "pause_reads_token": False, "dk_init_prob": 0.5}}
  for dotted, value in config.items():
    *parents, leaf = dotted.split("__")
    node = base
    for part in parents:
      node = node[part]
    node[leaf] = value
  return {"config": base, "process_count": process_count}


@pytest.mark.parametrize("change, message", [
    ({"data__seq_len": 64}, "config.data.seq_len is 64 here but None in the checkpoint"),
    ({"train__batch_size": 16}, "config.train.batch_size is 16 here but 8 in the checkpoint"),
    ({"train__skip_batches": 900}, "config.train.skip_batches is 900 here but 0 in the checkpoint"),
    ({"seed": 3}, "config.seed is 3 here but 0 in the checkpoint"),
    ({"objective__budget": 0.5}, "config.objective.budget is 0.5 here but 0.25 in the checkpoint"),
    ({"objective__name": "cyb_ap"}, "config.objective.name is 'cyb_ap' here but 'cyb_dp' in the checkpoint"),
    ({"process_count": 2}, "process count is 2 here but 1 in the checkpoint"),
    ({"model__pause_feedback_layer": 0},
     "config.model.pause_feedback_layer is 0 here but -1 in the checkpoint"),
    ({"model__pause_feedback": False},
     "config.model.pause_feedback is False here but True in the checkpoint"),
    ({"model__pause_reads_token": True},
     "config.model.pause_reads_token is True here but False in the checkpoint"),
    ({"model__pause_context": "stream"},
     "config.model.pause_context is 'stream' here but 'private' in the checkpoint"),
])
def test_resuming_with_a_setting_that_changes_the_saved_states_meaning_is_refused(change, message):
  process_count = change.pop("process_count", 1)
  with pytest.raises(configuration.ConfigError) as error:
    trainer.check_resumable(_meta(), _meta(process_count, **change), 40, "W")
  assert str(error.value).startswith(message + " (step 40) in 'W'")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("change", [{"train__num_steps": 20}, {"objective__gamma": 0.5},
                                    {"data__eval_examples": 64}, {"model__dk_init_prob": 0.1}])
def test_resuming_with_other_settings_changed_is_allowed(change):
  trainer.check_resumable(_meta(), _meta(**change), 40, "W")  # no error


def test_nested_settings_are_compared_leaf_by_leaf():
  saved, now = _meta(), _meta()
  saved["config"]["data"]["task"] = {"num_symbols": 10}
  now["config"]["data"]["task"] = {"num_symbols": 10, "new_field_added_later": 3}
  trainer.check_resumable(saved, now, 40, "W")  # a field the checkpoint predates: not compared
  now["config"]["data"]["task"]["num_symbols"] = 12
  with pytest.raises(configuration.ConfigError, match=r"^config\.data\.task\.num_symbols is 12 here but 10"):
    trainer.check_resumable(saved, now, 40, "W")


def test_a_checkpoint_older_than_a_pause_rollout_option_is_compared_as_its_default():
  """A config written before model.pause_feedback_layer existed ran the ModelConfig default (-1)."""
  old = _meta()
  del old["config"]["model"]["pause_feedback_layer"]
  trainer.check_resumable(old, _meta(model__pause_feedback_layer=-1), 40, "W")  # no error
  with pytest.raises(configuration.ConfigError, match=r"^config\.model\.pause_feedback_layer is 0 here but -1"):
    trainer.check_resumable(old, _meta(model__pause_feedback_layer=0), 40, "W")


def test_a_checkpoint_older_than_a_setting_is_not_compared_on_it():
  old = _meta()
  del old["process_count"]
  del old["config"]["objective"]["budget"]
  trainer.check_resumable(old, _meta(2, objective__budget=0.5), 40, "W")  # no error


RUN = {"train.checkpoint_every": 1, "train.eval_every": 100, "train.keep_checkpoints": 3}


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
  """A tiny run with checkpoints at steps 1, 2, 3 (shared: each test below reads it its own way)."""
  workdir = tmp_path_factory.mktemp("three_steps") / "run"
  trainer.train(tiny("nopause", {"train.num_steps": 3, **RUN}), str(workdir))
  return workdir


def test_resume_check_runs_before_compiling(three_steps, monkeypatch):
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match=r"^config\.seed is 5 here but 0 in the checkpoint"):
    trainer.train(tiny("nopause", {"train.num_steps": 4, **RUN, "seed": 5}), str(three_steps))


def test_an_unreadable_checkpoint_names_itself_and_the_newest_intact_one(three_steps):
  workdir = three_steps
  broken = workdir / "checkpoints" / "3"
  shutil.rmtree(broken / "state")  # e.g. a copy cut short, or files lost
  with pytest.raises(checkpointing.CheckpointError) as error:
    trainer.train(tiny("nopause", {"train.num_steps": 5, **RUN}), str(workdir))
  message = str(error.value)
  assert message.startswith(f"checkpoint 3 in {workdir / 'checkpoints'} cannot be read: ")
  assert message.endswith(f"the newest intact checkpoint is step 2: move {broken} away to use it")
  assert "\n" not in message
  # eval.py's reader says the same.
  with pytest.raises(checkpointing.CheckpointError, match="newest intact checkpoint is step 2"):
    run_reader.load_params(str(workdir))


class _FailingManager:
  """A CheckpointManager stand-in whose saves fail as a full disk does: at once, or in the background."""

  def __init__(self, at_once: bool):
    self.at_once, self.in_flight = at_once, False

  def save(self, step, args=None, force=False):
    if self.at_once:
      raise OSError(28, "No space left on device")
    self.in_flight = True
    return True

  def wait_until_finished(self):
    if self.in_flight:
      self.in_flight = False
      raise OSError(28, "No space left on device")

  def close(self):
    pass


@pytest.mark.parametrize("at_once", [True, False], ids=["failing_save", "failing_background_write"])
def test_a_failed_save_names_its_step_in_one_line(tmp_path, at_once):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "run"))
  checkpointer.manager = _FailingManager(at_once)
  expected = (f"saving checkpoint 7 to {checkpointer.directory} failed: OSError: [Errno 28] No space left "
              "on device")
  with pytest.raises(checkpointing.CheckpointError) as error:
    checkpointer.save(7, {}, {})
    checkpointer.save(8, {}, {})  # a background failure of 7 surfaces here, named as 7
  assert str(error.value) == expected


def _data_iterator(steps_taken: int):
  from cyb_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  iterator = iter(pipeline.make_dataset({"name": "addition", "read_threads": 0}, "train", 4, seed=1))
  for _ in range(steps_taken):
    next(iterator)
  return iterator


def test_data_iterator_state_restores_from_both_layouts(tmp_path):
  # Per-process files (grain's handler) now; one JSON `data` item in checkpoints written before.
  state = {"w": jnp.arange(3.0)}
  expected = next(_data_iterator(5))["inputs"]
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "now"))
  checkpointer.save(5, state, {"model": {}}, _data_iterator(5), force=True)
  checkpointer.close()
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  older = checkpointing.Checkpointer(str(tmp_path / "older"))
  older.manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({}),
                                                data=ocp.args.JsonSave(_data_iterator(5).get_state())))
  older.close()
  for name in ("now", "older"):
    reader = checkpointing.Checkpointer(str(tmp_path / name))
    resumed = _data_iterator(0)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, _ = reader.restore(5, abstract, resumed)
    reader.close()
    np.testing.assert_array_equal(restored["w"], state["w"])
    np.testing.assert_array_equal(next(resumed)["inputs"], expected)
  assert not np.array_equal(next(_data_iterator(0))["inputs"], expected)  # the position matters


def test_a_changed_objective_is_named_before_the_num_pauses_it_implies():
  """configs/ce.py into a CYB run's work directory changes both; the objective is what the user changed."""
  with pytest.raises(configuration.ConfigError, match=r"^config\.objective\.name is 'ce' here but 'cyb_dp'"):
    trainer.check_resumable(_meta(), _meta(objective__name="ce", num_pauses=0), 40, "W")


def test_the_last_feedback_layer_is_the_same_however_it_is_written():
  saved, now = _meta(), _meta(model__pause_feedback_layer=1)
  saved["model"] = now["model"] = {"num_layers": 2}
  trainer.check_resumable(saved, now, 40, "W")  # -1 and 1 of 2 layers: no error
  with pytest.raises(configuration.ConfigError, match=r"^config\.model\.pause_feedback_layer is 0 here but 1"):
    trainer.check_resumable(saved, _meta(model__pause_feedback_layer=0) | {"model": {"num_layers": 2}}, 40, "W")


def _last_line_and_noise(process: subprocess.CompletedProcess) -> tuple[str, str]:
  output = process.stdout + process.stderr
  lines = [line for line in output.splitlines() if line.strip()]
  return lines[-1], output


def test_a_truncated_array_file_is_one_line_from_train_eval_and_sample(tmp_path):
  """The issue's case: a checkpoint's array file cut short. train.py used to print ~1000 lines (orbax's
  background reads' `Event loop is closed` tracebacks around TensorStore's whole spec)."""
  workdir = tmp_path / "run"
  trainer.train(tiny("nopause", {"train.num_steps": 3, **RUN}), str(workdir))
  # The largest of the files the OCDBT tree reads (its B-tree nodes, which hold small values inline, and the
  # data files of larger values): one the restore needs. (Not simply the largest file under `**/d/`: a data
  # directory can also hold files no tree version points to, and cutting one of those changes nothing,
  # which made this test fail now and then.)
  state = workdir / "checkpoints" / "3" / "state"
  referenced = checkpoint_integrity.referenced_files(str(state))
  assert referenced
  biggest = pathlib.Path(max(referenced, key=os.path.getsize))
  size = biggest.stat().st_size
  assert size > 100
  os.truncate(biggest, 10)
  checkpoints = workdir / "checkpoints"
  # What is wrong, by hand: the file holds 10 bytes where it held `size`, of which the data use some.
  pattern = (rf"checkpoint 3 in {re.escape(str(checkpoints))} cannot be read: {re.escape(str(biggest))} is "
             r"truncated \(10 bytes; its data runs to byte (\d+)\); the newest intact checkpoint is step 2: "
             rf"move {re.escape(str(checkpoints / '3'))} away to use it$")
  commands = {
      "train": ["train.py", "--config=tests/tiny_config.py:nopause", "--config.train.num_steps=5"],
      "eval": ["eval.py", "--config=tests/tiny_config.py:nopause"],
      "sample": ["sample.py", "--num_prompts=1"],
  }
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  running = {name: subprocess.Popen([sys.executable, *args, f"--workdir={workdir}"], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
  for name, process in running.items():
    stdout, stderr = process.communicate(timeout=300)
    last, output = _last_line_and_noise(subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                                                    stderr))
    assert process.returncode == 1, (name, output[-3000:])
    assert "Traceback" not in output and "Event loop is closed" not in output, (name, output[-3000:])
    prefix = {"train": "checkpoint error: ", "eval": "eval error: ", "sample": "sample error: "}[name]
    assert last.startswith(prefix), (name, last)
    match = re.match(pattern, last[len(prefix):])
    assert match and 10 < int(match.group(1)) <= size, (name, last)
  assert checkpoint_steps_here(workdir) == [1, 2, 3]  # nothing was written or removed


def checkpoint_steps_here(workdir) -> list[int]:
  return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def test_unfinished_saves_are_removed_when_a_run_opens_its_checkpoints(tmp_path, caplog):
  directory = tmp_path / "run" / "checkpoints"
  stale = directory / "7.orbax-checkpoint-tmp-1764751234567890"  # a save cut off by a crash
  (stale / "state").mkdir(parents=True)
  (stale / "state" / "half_written").write_bytes(b"\0" * 100)
  (directory / "keep_me.txt").write_text("not orbax's")
  reader = checkpointing.Checkpointer(str(tmp_path / "run"), read_only=True)  # eval.py, sample.py: no writes
  reader.close()
  assert stale.exists()
  with caplog.at_level("INFO", logger="cyb_jax"):
    writer = checkpointing.Checkpointer(str(tmp_path / "run"))
    writer.close()
  assert sorted(os.listdir(directory)) == ["keep_me.txt"]
  assert [r.getMessage() for r in caplog.records if r.name == "cyb_jax"] == [
      f"removing 1 unfinished save(s) left by an interrupted run in {directory}: {stale.name}"]
