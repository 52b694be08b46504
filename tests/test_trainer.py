"""End-to-end tests of cyb_jax/trainer.py on tiny configs (tests/tiny_config.py).

Every run here is a real `trainer.train` on 8 fake CPU devices unless noted. Runs with the same shapes
share one compiled train step through the session's persistent compilation cache (tests/conftest.py),
so a resume or a rerun costs seconds, not a compilation. `python train.py` itself, killed and preempted, is
run in tests/test_multiprocess.py (as two processes) and tests/test_configuration.py (its errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import signal

import jax
import numpy as np
import pytest

from cyb_jax import configuration
from cyb_jax import model as model_lib
from cyb_jax.parallel import sharding
from cyb_jax.training import trainer
from cyb_jax.data import pipeline as data_pipeline
from helpers import (assert_bitwise_equal, checkpoint_steps, forbid_compilation, latest_by_step,
                     records, saved_params, saved_state)
from helpers import tiny


NUM_STEPS = 12          # tiny_config's train.num_steps
NUM_DEVICES = 8         # conftest.py's fake CPU devices


# ----------------------------------------------------------------------------------------------------------
# Helpers.












def all_finite(tree) -> bool:
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))




def model_config(config) -> model_lib.ModelConfig:
  return configuration.settings_from_config(config, device_count=NUM_DEVICES).model


def record_meshes(monkeypatch) -> list:
  meshes = []
  make_mesh = sharding.make_mesh

  def recording(*args, **kwargs):
    meshes.append(make_mesh(*args, **kwargs))
    return meshes[-1]

  monkeypatch.setattr(sharding, "make_mesh", recording)
  return meshes


# ----------------------------------------------------------------------------------------------------------
# Fixtures: the runs that several tests read.


class Run:
  def __init__(self, workdir: str, final: dict, printed: str, mesh_size: int):
    self.workdir, self.final, self.printed, self.mesh_size = workdir, final, printed, mesh_size


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Run:
  """The uninterrupted tiny CYB-DP run on 8 devices: 12 steps, checkpoints at 4, 8, 12."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  printed = io.StringIO()
  with pytest.MonkeyPatch.context() as monkeypatch:
    meshes = record_meshes(monkeypatch)
    with contextlib.redirect_stdout(printed):
      final = trainer.train(tiny(), workdir)
  return Run(workdir, final, printed.getvalue(), meshes[0].devices.size)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
  """A plain LM (model.max_pauses = 0, objective ce) on the same task: the init_from source."""
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  trainer.train(tiny("nopause"), workdir)
  return workdir


# ----------------------------------------------------------------------------------------------------------
# A full run: metrics, checkpoints, eval, summary, the dual variable.


def test_run_writes_metrics_checkpoints_and_summary(reference):
  assert reference.mesh_size == NUM_DEVICES
  assert checkpoint_steps(reference.workdir) == [4, 8, 12]
  assert not any(name.endswith("tmp") for name in os.listdir(os.path.join(reference.workdir,
                                                                          "checkpoints")))

  train = records(reference.workdir)
  assert [r["step"] for r in train] == list(range(1, NUM_STEPS + 1))  # log_every = 1
  for r in train:
    assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0
    assert 0.0 <= r["mean_pauses"] <= 2.0                              # K = 2
    assert len(r["nll_at_step"]) == 3 and all(math.isfinite(v) and v > 0 for v in r["nll_at_step"])
    assert sum(r["halt_distribution"]) == pytest.approx(1.0, abs=1e-5)
  # The model learns something in 12 steps: the last steps' loss is below the first steps'.
  assert np.mean([r["loss"] for r in train[-3:]]) < np.mean([r["loss"] for r in train[:3]])

  # Pointer chasing with 3 queries: each example has 3 answers + 3 ';' tokens with loss. The periodic eval
  # (step 6) reads eval_batches = 1 batch of 8 examples, the final one all 16 eval examples.
  evals = records(reference.workdir, "eval")
  assert [r["step"] for r in evals] == [6, NUM_STEPS]
  assert evals[0]["num_tokens"] == 8 * 6 and evals[1]["num_tokens"] == 16 * 6
  assert reference.final["num_tokens"] == 16 * 6
  for key in ("nll_policy", "accuracy", "mean_pauses", "nll_marginal"):
    assert math.isfinite(evals[1][key])
  # eval.tau_sweep: its tau = 0.5 point is the reported threshold policy itself; 0.99 pauses less often.
  sweep = {point["tau"]: point for point in evals[1]["tau_sweep"]}
  assert sweep[0.5]["nll_policy"] == evals[1]["nll_policy"] and sweep[0.5]["mean_pauses"] == evals[1]["mean_pauses"]
  assert sweep[0.99]["mean_pauses"] <= sweep[0.5]["mean_pauses"]

  with open(os.path.join(reference.workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["num_tokens"] == 16 * 6 and summary["step"] == NUM_STEPS
  assert summary["nll_policy"] == pytest.approx(reference.final["nll_policy"])

  # The printed summary's difficulty table: one row per label of the task, token counts adding up.
  names = data_pipeline.data_info(tiny().data).difficulty_names.values()
  lines = reference.printed.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("difficulty"))
  assert lines[header].split() == ["difficulty", "tokens", "paused", "pauses", "acc", "acc@0", "acc@K"]
  row = re.compile(r"^(\S.*?) +(\d+)" + r" +(\d+\.\d+)" * 5 + "$")
  rows = {m.group(1): int(m.group(2)) for m in map(row.match, lines[header + 1:]) if m}
  assert set(rows) == set(names)
  assert sum(rows.values()) == 16 * 6 and rows["format"] == 16 * 3


def test_cyb_dp_dual_variable_follows_the_budget(reference):
  # Projected dual ascent: cost_{t+1} = max(0, cost_t + dual_lr (mean_pauses_t - budget)), from 0.05.
  config = tiny()
  train = records(reference.workdir)
  costs = [r["dp_cost"] for r in train]
  assert costs[0] == pytest.approx(config.objective.cost)
  for before, after in zip(train, train[1:]):
    expected = max(0.0, before["dp_cost"] + config.objective.dual_lr *
                   (before["mean_pauses"] - config.objective.budget))
    assert after["dp_cost"] == pytest.approx(expected, abs=1e-6)
  # The model pauses more than the budget, so the price of a pause rises.
  assert all(r["mean_pauses"] > config.objective.budget for r in train)
  assert costs[-1] > costs[0] + 0.05


# ----------------------------------------------------------------------------------------------------------
# Stop and resume: bitwise the same as the uninterrupted run.


def test_resume_after_sigterm_in_process_is_bitwise_identical(reference, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  add = trainer._Window.add  # pylint: disable=protected-access

  def add_then_preempt(window, step, metrics):
    add(window, step, metrics)
    if step == 5:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(trainer._Window, "add", add_then_preempt)  # pylint: disable=protected-access
  assert trainer.train(tiny(), workdir) == {"stopped_at": 5}
  assert checkpoint_steps(workdir) == [4, 5]  # 5 is not a checkpoint_every step: the SIGTERM save
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  monkeypatch.undo()

  final = trainer.train(tiny(), workdir)
  assert [r["step"] for r in records(workdir)] == list(range(1, NUM_STEPS + 1))
  assert latest_by_step(workdir) == latest_by_step(reference.workdir)
  # The whole state: step, parameters, optimiser moments and the dual variable.
  assert_bitwise_equal(saved_state(workdir, NUM_STEPS), saved_state(reference.workdir, NUM_STEPS))
  assert final["nll_policy"] == reference.final["nll_policy"]
  # Training moved the parameters, so the equality above is not the trivial one.
  with pytest.raises(AssertionError):
    assert_bitwise_equal(saved_params(reference.workdir, 4), saved_params(reference.workdir, NUM_STEPS))


def _old_layout_copy(source: str, workdir: str, step: int) -> None:
  """`source`'s run up to checkpoint `step`, rewritten with its blocks as a per-layer list (the layout
  every checkpoint had before the layers were stacked): params and optimiser moments alike, saved by orbax
  as the trainer saved them (the metadata, data-iterator state and config files stay as written)."""
  import shutil
  import orbax.checkpoint as ocp
  from cyb_jax.storage import checkpointing
  shutil.copytree(source, workdir)
  for later in checkpoint_steps(workdir):
    if later > step:
      shutil.rmtree(os.path.join(workdir, "checkpoints", str(later)))
  state = saved_state(workdir, step)
  old = checkpointing._map_blocks(  # pylint: disable=protected-access
      state, lambda blocks: model_lib.unstack_blocks(blocks))
  assert isinstance(old["params"]["blocks"], list)
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  shutil.rmtree(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, old)
  checkpointer.wait_until_finished()
  assert isinstance(saved_state(workdir, step)["params"]["blocks"], (list, dict))


def test_checkpoints_with_per_layer_blocks_resume_init_and_evaluate(reference, tmp_path):
  old = str(tmp_path / "old")
  _old_layout_copy(reference.workdir, old, 4)
  stacked = saved_params(reference.workdir, 4)
  # eval.py and sample.py (run_reader.load_params), and init_from: converted to the stacked layout.
  from cyb_jax.storage import run_reader
  params, _, step = run_reader.load_params(old)
  assert step == 4
  assert_bitwise_equal(params, stacked)
  loaded = trainer._load_init_params(old, model_config(tiny()), keep_pauses=True)  # pylint: disable=protected-access
  assert_bitwise_equal(loaded, stacked)
  # Resume: the per-layer state is stacked onto the run's shardings, and training continues bitwise.
  trainer.train(tiny(), old)
  assert_bitwise_equal(saved_state(old, NUM_STEPS), saved_state(reference.workdir, NUM_STEPS))


# ----------------------------------------------------------------------------------------------------------
# Data sources, failures, fine-tuning. (Other device layouts: tests/test_multiprocess.py trains on 1
# process x 4 devices and on 2 processes x 2 devices, fsdp-sharded, and compares the losses.)


def test_non_finite_training_stops_naming_the_first_bad_step(tmp_path):
  # A huge learning rate: step 1 has lr 0 (warm-up), then the parameters blow up.
  blow_up = {"optim.learning_rate": 1e30}
  first_bad = r"^non-finite (loss|parameters)\b.* at step (\d+)\b.*; no checkpoint of this state was written$"
  with pytest.raises(trainer.NonFiniteLossError, match=first_bad) as error:
    trainer.train(tiny("nopause", {**blow_up, "train.checkpoint_every": 2}), str(tmp_path / "a"))
  bad = int(re.search(first_bad, str(error.value)).group(2))
  logged = records(str(tmp_path / "a"))  # log_every = 1: every step before the bad one is logged, finite
  assert [r["step"] for r in logged] == list(range(1, bad)) and bad >= 3
  assert all(math.isfinite(r["loss"]) for r in logged)
  assert checkpoint_steps(str(tmp_path / "a")) == list(range(2, bad, 2))
  assert all(all_finite(saved_state(str(tmp_path / "a"), step)) for step in range(2, bad, 2))

  # Metrics fetched only at checkpoints: the window (bad - 1, 2 (bad - 1)] holds the bad step, and its
  # check runs before that window's checkpoint would be written.
  with pytest.raises(trainer.NonFiniteLossError, match=rf"at step {bad}\b"):
    trainer.train(tiny("nopause", {**blow_up, "train.log_every": 100, "train.checkpoint_every": bad - 1}),
                  str(tmp_path / "b"))
  assert checkpoint_steps(str(tmp_path / "b")) == [bad - 1]
  assert all_finite(saved_state(str(tmp_path / "b"), bad - 1))


def test_init_from_no_pause_checkpoint_keeps_step0_logits(pretrained, tmp_path, monkeypatch):
  initial = []
  load = trainer._initial_params  # pylint: disable=protected-access

  def load_and_keep(*args, **kwargs):
    initial.append(load(*args, **kwargs))
    return initial[-1]

  monkeypatch.setattr(trainer, "_initial_params", load_and_keep)
  config = tiny(overrides={"init_from": pretrained})
  trainer.train(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == [4, 8, 12]

  plain_config, pause_config = model_config(tiny("nopause")), model_config(config)
  plain_params, start_params = saved_params(pretrained, NUM_STEPS), initial[0]
  assert set(start_params) > set(plain_params)  # <dk> and pause parameters added
  tokens = next(iter(data_pipeline.make_dataset(config.data, "eval", 8)))["inputs"]
  vocab = plain_config.vocab_size
  step0_logits = jax.jit(lambda params, config: model_lib.rollout(params, tokens, config, 0)[:, :, 0, :vocab],
                         static_argnums=1)
  plain = step0_logits(plain_params, plain_config)
  np.testing.assert_allclose(step0_logits(start_params, pause_config), plain, rtol=1e-6, atol=1e-6)
  # A fresh pause model's step-0 logits are different: the comparison above can fail.
  fresh = step0_logits(model_lib.init(pause_config, jax.random.PRNGKey(1)), pause_config)
  assert np.max(np.abs(fresh - plain)) > 1e-2
  # The <dk> bias was calibrated on this eval batch: the trained model starts at dk_init_prob.
  batch = next(iter(data_pipeline.make_dataset(config.data, "eval", 8)))
  logits = np.asarray(jax.jit(lambda p: model_lib.rollout(p, batch["inputs"], pause_config, 0))(start_params),
                      np.float64)[:, :, 0]
  top = logits.max(-1, keepdims=True)
  dk = (np.exp(logits[..., vocab] - top[..., 0]) / np.exp(logits - top).sum(-1))[batch["loss_mask"]]
  np.testing.assert_allclose(dk.mean(), pause_config.dk_init_prob, atol=1e-3)


def test_init_keep_pauses_warm_starts_from_a_pause_model(reference, tmp_path):
  """init_keep_pauses: the source's pause parameters and body are kept; only <dk> restarts, calibrated."""
  config = tiny(overrides={"init_from": reference.workdir, "init_keep_pauses": True, "model.dk_init_prob": 0.8})
  settings = configuration.settings_from_config(config, device_count=NUM_DEVICES, workdir=str(tmp_path))
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  start = trainer._initial_params(config, settings, mesh, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  source = saved_params(reference.workdir, NUM_STEPS)
  assert set(start) == set(source)
  assert_bitwise_equal({k: v for k, v in start.items() if k != "dk_head"},
                       {k: v for k, v in source.items() if k != "dk_head"})
  assert np.max(np.abs(np.asarray(source["dk_head"]["kernel"]))) > 0  # the source's <dk> head was trained
  assert not np.any(np.asarray(start["dk_head"]["kernel"]))
  # The fresh head is calibrated on the warm model: mean step-0 <dk> probability dk_init_prob.
  pause_config = model_config(config)
  batch = next(iter(data_pipeline.make_dataset(config.data, "eval", 8)))
  logits = np.asarray(jax.jit(lambda p: model_lib.rollout(p, batch["inputs"], pause_config, 0))(start),
                      np.float64)[:, :, 0]
  top = logits.max(-1, keepdims=True)
  dk = (np.exp(logits[..., pause_config.vocab_size] - top[..., 0]) / np.exp(logits - top).sum(-1))
  np.testing.assert_allclose(dk[batch["loss_mask"]].mean(), 0.8, atol=1e-3)


def test_init_keep_pauses_errors_name_the_problem(pretrained, reference, tmp_path, monkeypatch):
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match=r"^config\.init_keep_pauses needs config\.init_from"):
    trainer.train(tiny(overrides={"init_keep_pauses": True}), str(tmp_path / "a"))
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.init_keep_pauses: the checkpoint in .* has \{'max_pauses': 0, .*\}, this "
                     r"config \{'max_pauses': 2, 'pause_feedback': True, 'pause_feedback_layer': 0\}"):
    trainer.train(tiny(overrides={"init_from": pretrained, "init_keep_pauses": True}), str(tmp_path / "b"))
  with pytest.raises(configuration.ConfigError, match=r"'max_pauses': 2.*this config \{'max_pauses': 1"):
    trainer.train(tiny(overrides={"init_from": reference.workdir, "init_keep_pauses": True,
                                  "model.max_pauses": 1, "num_pauses": 1}), str(tmp_path / "c"))


def test_kept_pause_parameters_must_read_the_same_feedback_layer():
  # The feedback projection learnt to read one layer's output; -1 and 1 name the same of two layers.
  two = model_lib.ModelConfig(num_layers=2, pause_feedback=True)
  last, first = two, dataclasses.replace(two, pause_feedback_layer=0)
  assert trainer.pause_fields(last) == trainer.pause_fields(dataclasses.replace(two, pause_feedback_layer=1))
  assert trainer.pause_fields(last) != trainer.pause_fields(first)
  assert trainer.pause_fields(first)["pause_feedback_layer"] == 0


def test_init_from_with_another_vocabulary_fails_before_compiling(pretrained, tmp_path, monkeypatch):
  config = tiny(overrides={"init_from": pretrained, "data.task.num_symbols": 5})
  theirs = data_pipeline.data_info(tiny().data).vocab_size
  ours = data_pipeline.data_info(config.data).vocab_size
  assert ours != theirs
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match=(
      rf"config\.init_from: vocabulary mismatch: .*{re.escape(repr(pretrained))} has vocab_size "
      rf"{theirs}, this run's data has {ours}$")) as error:
    trainer.train(config, str(tmp_path))
  assert "\n" not in str(error.value)


def test_init_from_a_directory_without_checkpoints_fails_before_compiling(tmp_path, monkeypatch):
  (tmp_path / "not_a_run").mkdir()
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError,
                     match=rf"^config\.init_from = {re.escape(repr(str(tmp_path / 'not_a_run')))} holds no "
                     r"checkpoint$"):
    trainer.train(tiny(overrides={"init_from": str(tmp_path / "not_a_run")}), str(tmp_path / "run"))


def test_workdir_of_another_model_shape_fails_before_compiling(pretrained, monkeypatch):
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError,
                     match=rf"work directory {re.escape(repr(pretrained))} holds a checkpoint \(step 12\) "
                     r"of a different model shape: model\.max_pauses is 0 in the checkpoint but 2 here; "
                     r"use a new --workdir$") as error:
    trainer.train(tiny(), pretrained)
  assert "\n" not in str(error.value)
  assert checkpoint_steps(pretrained) == [4, 8, 12]


@pytest.mark.parametrize("objective", ["cyb_dp"])  # the positions path is the objectives' shared input
def test_chains_at_loss_positions_only_give_the_same_step(objective):
  # Pause chains are private, so computing them only where the target carries loss (the synthetic
  # tasks' `loss_positions`) must give the step that computing them everywhere gives.
  from cyb_jax.training import train_state as train_state_lib  # pylint: disable=import-outside-toplevel
  config = tiny(overrides={"objective.name": objective})
  settings = configuration.settings_from_config(config, device_count=NUM_DEVICES)
  assert settings.data_info.loss_positions < settings.data_info.seq_len  # the sparse path is taken
  optimizer = train_state_lib.make_optimizer(config.optim, NUM_STEPS)
  state = train_state_lib.create(model_lib.init(settings.model, jax.random.PRNGKey(4)), optimizer, 0.05)
  batch = next(iter(data_pipeline.make_dataset(settings.data, "train", 8, seed=0)))
  step = jax.jit(lambda state, batch: trainer.train_step(
      state, batch, model_config=settings.model, num_pauses=settings.num_pauses,
      objective=settings.objective, optimizer=optimizer))
  sparse_state, sparse = step(state, {k: batch[k] for k in trainer.step_keys(settings.data_info)})
  dense_state, dense = step(state, {k: batch[k] for k in trainer.STEP_KEYS})
  for key in ("loss", "mean_pauses", "grad_norm", "tokens"):
    np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(sparse_state.params), jax.tree.leaves(dense_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Reruns: past train.num_steps, finished, extended (issue 27).


def test_a_rerun_past_num_steps_is_refused_and_a_finished_one_writes_nothing(reference, tmp_path, monkeypatch,
                                                                              capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  shutil.copytree(reference.workdir, workdir)
  before = {name: open(os.path.join(workdir, name), "rb").read() for name in ("metrics.jsonl", "summary.json")}
  forbid_compilation(monkeypatch)  # both are decided before anything compiles
  # It used to train nothing and write the step-12 model's eval as step 6.
  with pytest.raises(configuration.ConfigError) as error:
    trainer.train(tiny(overrides={"train.num_steps": 6}), workdir)
  assert str(error.value) == (
      f"config.train.num_steps = 6 but the work directory {workdir!r} holds checkpoint step {NUM_STEPS}, past "
      f"it: raise train.num_steps above {NUM_STEPS} to train on, or use a new --workdir")
  capsys.readouterr()
  final = trainer.train(tiny(), workdir)
  assert capsys.readouterr().out == (
      f"work directory {workdir!r} is finished: its checkpoint and summary.json are at train.num_steps = "
      f"{NUM_STEPS}; nothing to do (raise train.num_steps to train on, or use a new --workdir)\n")
  assert final["step"] == NUM_STEPS and final["nll_policy"] == pytest.approx(reference.final["nll_policy"])
  for name, content in before.items():
    assert open(os.path.join(workdir, name), "rb").read() == content, name
  assert checkpoint_steps(workdir) == [4, 8, 12]


def _cosine_lr(peak: float, warmup: int, num_steps: int, update: int) -> float:
  """Linear warm-up from 0 over `warmup` updates, then half a cosine to 0 at `num_steps`, by hand."""
  if update < warmup:
    return peak * update / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * min(update - warmup, num_steps - warmup) / (num_steps - warmup)))


def test_each_logged_step_has_its_learning_rate(reference):
  config = tiny()
  peak, warmup = config.optim.learning_rate, config.optim.warmup_steps
  train = records(reference.workdir)
  for record in train:  # step s is made by update s - 1 (optax counts updates from 0)
    assert record["learning_rate"] == pytest.approx(_cosine_lr(peak, warmup, NUM_STEPS, record["step"] - 1),
                                                    rel=1e-5, abs=1e-12)
  assert train[0]["learning_rate"] == 0.0 and max(r["learning_rate"] for r in train) == pytest.approx(peak)


def test_extending_a_cosine_run_says_how_its_schedule_changed(tmp_path, caplog):
  workdir = str(tmp_path)
  trainer.train(tiny(overrides={"train.num_steps": 4}), workdir)
  with caplog.at_level("WARNING", logger="cyb_jax"):
    trainer.train(tiny(overrides={"train.num_steps": 8}), workdir)
  peak, warmup = tiny().optim.learning_rate, tiny().optim.warmup_steps
  old, new = _cosine_lr(peak, warmup, 4, 4), _cosine_lr(peak, warmup, 8, 4)
  assert old == 0.0 and new == pytest.approx(0.75 * peak)  # the finished run's lr 0 would jump back up
  notes = [r.getMessage() for r in caplog.records if "learning-rate schedule" in r.getMessage()]
  assert notes == [f"the learning-rate schedule changed since the checkpoint (step 4): num_steps 4 -> 8; the "
                   f"learning rate at step 4 was {old:.3g} and is now {new:.3g}"]
  # The logged rates follow the 4-step schedule, then the 8-step one from step 5.
  logged = latest_by_step(workdir, "learning_rate")
  assert [logged[s] for s in (4, 5)] == pytest.approx([_cosine_lr(peak, warmup, 4, 3),
                                                      _cosine_lr(peak, warmup, 8, 4)])


def test_train_py_ends_a_non_finite_run_in_one_line(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "train.py", "--config=tests/tiny_config.py:nopause",
                           "--config.optim.learning_rate=1e30", f"--workdir={tmp_path / 'run'}"], cwd=root,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  output = result.stdout + result.stderr
  last = [line for line in output.splitlines() if line.strip()][-1]
  assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
  assert re.match(r"^training error: non-finite (loss|parameters)\b.* at step \d+\b.*; no checkpoint of this "
                  r"state was written$", last), last
