"""Several processes on one machine, as several hosts run (DESIGN.md section 10).

Runs go through the local launcher, `python -m cyb_jax.launch`: N processes with CPU devices and gloo
collectives, joined by `jax.distributed`. They share this module's persistent compilation cache, so a
restart reads its compiled train step back. A one-process reference runs in this pytest process on 4 of
its 8 fake devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cyb_jax import configuration
from cyb_jax import model as model_lib
from cyb_jax.evaluation import eval_checkpoint
from cyb_jax.parallel import launcher
from cyb_jax.parallel import runtime
from cyb_jax.storage import checkpointing
from cyb_jax.training import train_state as train_state_lib
from cyb_jax.training import trainer
from helpers import (assert_bitwise_equal, checkpoint_steps, latest_by_step, saved_params, saved_state, tiny,
                     wait_for)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300
NUM_STEPS = 12  # tiny_config's train.num_steps


@pytest.fixture(scope="module")
def launch_env(tmp_path_factory, _session_compilation_cache):
  """The environment of launched runs: this session's compilation cache."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=_session_compilation_cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def launch_command(num_processes: int, devices: int, *script: str) -> list[str]:
  return [sys.executable, "-m", "cyb_jax.launch", f"--num_processes={num_processes}",
          f"--devices_per_process={devices}", "--", *script]


def run_launch(env, num_processes: int, devices: int, *script: str) -> subprocess.CompletedProcess:
  result = subprocess.run(launch_command(num_processes, devices, *script), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=TIMEOUT, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


# One pause step (tiny_config has two): what these tests check does not depend on it, and a smaller
# program is quicker to trace in every process.
ONE_PAUSE = {"num_pauses": 1, "model.max_pauses": 1}


def tiny_flags(workdir: str, *extra: str) -> list[str]:
  return ["train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
          *(f"--config.{key}={value}" for key, value in ONE_PAUSE.items()), *extra]


# ----------------------------------------------------------------------------------------------------------
# 2 processes x 2 devices against 1 process x 4 devices: a fine-tune from a no-pause checkpoint. The MLP
# is wide enough (32 x 64) for its weights to be fsdp-sharded, which the 2-process run does across both
# processes; the 1-process run is data-parallel.

MLP_HIDDEN = 64
PRETRAINED_STEP = 1


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A no-pause checkpoint to fine-tune from: fresh parameters, saved as the trainer saves them (init_from
  reads the parameters and the model config)."""
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  config = tiny("nopause", {"model.mlp_hidden": MLP_HIDDEN})
  model_config = configuration.settings_from_config(config, device_count=1).model
  state = train_state_lib.create(model_lib.init(model_config, jax.random.PRNGKey(3)),
                                 train_state_lib.make_optimizer(config.optim, 1), 0.0)
  checkpointer = checkpointing.Checkpointer(workdir)
  checkpointer.save(PRETRAINED_STEP, state, {"config": configuration.as_json_dict(config),
                                             "model": dataclasses.asdict(model_config)}, force=True)
  checkpointer.close()
  return workdir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, launch_env, pretrained):
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  result = run_launch(launch_env, 2, 2, *tiny_flags(workdir, f"--config.init_from={pretrained}",
                                                    f"--config.model.mlp_hidden={MLP_HIDDEN}",
                                                    "--config.mesh.fsdp=4",
                                                    f"--config.train.eval_every={NUM_STEPS}"))
  return workdir, result


def test_two_processes_give_the_losses_and_parameters_of_one(two_process_run, pretrained, tmp_path):
  workdir, result = two_process_run
  assert "2 process(es), 4 device(s) (cpu), mesh {'data': 1, 'fsdp': 4}" in result.stderr
  one = str(tmp_path / "one")
  trainer.train(tiny(overrides={"init_from": pretrained, "mesh.num_devices": 4, **ONE_PAUSE,
                                "model.mlp_hidden": MLP_HIDDEN, "train.eval_every": NUM_STEPS}), one)
  two_losses, one_losses = latest_by_step(workdir), latest_by_step(one)
  assert sorted(two_losses) == sorted(one_losses) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([two_losses[s] for s in range(1, NUM_STEPS + 1)],
                             [one_losses[s] for s in range(1, NUM_STEPS + 1)], rtol=0, atol=1e-5)
  two_params, one_params = saved_params(workdir, NUM_STEPS), saved_params(one, NUM_STEPS)
  for a, b in zip(jax.tree.leaves(two_params), jax.tree.leaves(one_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  # Training moved the parameters away from the pretrained ones: the agreement is not the trivial one.
  assert not np.allclose(two_params["embed"], saved_params(pretrained, PRETRAINED_STEP)["embed"], atol=1e-3)
  # Each process saved its own data-iterator state; only process 0 wrote the summary and metrics once.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", str(NUM_STEPS), "iterators"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert steps == list(range(1, NUM_STEPS + 1))


def test_eval_of_a_two_process_checkpoint_in_one_and_in_two_processes(two_process_run, launch_env,
                                                                      tmp_path):
  workdir, _ = two_process_run
  config = tiny(overrides={"model.mlp_hidden": MLP_HIDDEN, **ONE_PAUSE})
  one = eval_checkpoint.evaluate_checkpoint(config, workdir, out_dir=str(tmp_path / "one"), num_samples=0,
                                            progress=False)
  run_launch(launch_env, 2, 1, "eval.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
             *(f"--config.{key}={value}" for key, value in ONE_PAUSE.items()),
             f"--config.model.mlp_hidden={MLP_HIDDEN}", f"--out={tmp_path / 'two'}", "--num_samples=0")
  with open(tmp_path / "two" / "report.json", encoding="utf-8") as f:
    two = json.load(f)
  with open(tmp_path / "one" / "report.json", encoding="utf-8") as f:
    one_file = json.load(f)
  assert one_file["num_tokens"] == one["num_tokens"] > 0
  compare_reports(one_file, two)


def compare_reports(one, two, path="report") -> None:
  """Equal structure and text; numbers equal to 1e-6 (the two runs batch the same rows differently)."""
  if isinstance(one, dict):
    assert set(one) == set(two), path
    for key in one:
      if key not in ("out_dir", "workdir", "config"):
        compare_reports(one[key], two[key], f"{path}.{key}")
  elif isinstance(one, list):
    assert len(one) == len(two), path
    for i, (a, b) in enumerate(zip(one, two)):
      compare_reports(a, b, f"{path}[{i}]")
  elif isinstance(one, (int, float)) and not isinstance(one, bool):
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6, err_msg=path)
  else:
    assert one == two, path


# ----------------------------------------------------------------------------------------------------------
# Crashes and preemption with a source whose processes are not in lockstep (each packs its own documents).


TFDS_STEPS = 10
MOCK_DOCUMENTS = 30  # per split


def tfds_flags(workdir: str, paced: bool = False) -> list[str]:
  # Rows of 32 bytes hold two or three mock documents, so the processes' packers take documents at
  # different rates from step 4 on. Of the 30 test documents each process packs 15, process 0 into three
  # eval batches and process 1 into two. A checkpoint every step (`paced`) slows the run (each save waits for
  # the one before), so signals land mid-run; how often checkpoints are saved does not change the numbers.
  return ["tests/mock_tfds_run.py", str(MOCK_DOCUMENTS), *tiny_flags(
      workdir, "--config.data.name=tfds", "--config.data.tfds_name=lm1b", "--config.data.seq_len=32",
      f"--config.train.num_steps={TFDS_STEPS}",
      f"--config.train.checkpoint_every={1 if paced else TFDS_STEPS}",
      f"--config.train.eval_every={TFDS_STEPS}")]


def iterator_states(workdir: str, step: int) -> list[dict]:
  directory = os.path.join(workdir, "checkpoints", str(step), "iterators")
  states = []
  for index in range(2):
    with open(os.path.join(directory, f"process_{index}-of-2.json"), encoding="utf-8") as f:
      states.append(json.load(f))
  return states


def test_killed_then_preempted_two_process_run_resumes_bitwise(launch_env, tmp_path):
  """An uninterrupted 2-process run keeps a checkpoint of every step. Another is killed (SIGKILL to one
  process), restarted, and stopped by SIGTERM to both after some steps: its last state, each process's
  data position included, is bitwise the uninterrupted run's at that step."""
  reference = str(tmp_path / "reference")
  run_launch(launch_env, 2, 1, *tfds_flags(reference, paced=True))
  # The final eval, gathered from processes that pack their own documents (and run out of batches at
  # different steps), counts every test document once: [BOS] + its bytes cut to seq_len + 1 tokens gives
  # min(bytes, seq_len) targets with loss.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=MOCK_DOCUMENTS):
    texts = [r["text"] for r in tfds.data_source("lm1b", split="test", download=False)]
  with open(os.path.join(reference, "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["num_tokens"] == sum(min(len(t.encode()), 32) for t in texts)
  workdir = str(tmp_path / "run")

  def start(name):
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "w", encoding="utf-8") as stderr:
      process = subprocess.Popen(launch_command(2, 1, *tfds_flags(workdir, paced=True)), cwd=REPO,
                                 env=launch_env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    return process, stderr_path

  def pids(stderr_path):
    with open(stderr_path, encoding="utf-8") as f:
      return [int(pid) for pid in re.findall(r"launch: process \d+: pid (\d+)", f.read())]

  # 1. SIGKILL process 1 once the processes' data streams stand at different places (step 4 on): the
  # launcher stops process 0 and names process 1.
  process, stderr_path = start("killed")
  wait_for(lambda: checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] >= 4, process,
           "checkpoint 4", stderr_path)
  os.kill(pids(stderr_path)[1], signal.SIGKILL)
  assert process.wait(timeout=TIMEOUT) == 128 + signal.SIGKILL
  with open(stderr_path, encoding="utf-8") as f:
    assert "process 1 failed (killed by SIGKILL)" in f.read()
  killed_at = checkpoint_steps(workdir)[-1]
  assert killed_at < TFDS_STEPS
  states = iterator_states(workdir, killed_at)
  assert states[0] != states[1], states  # a resume from one process's state would be caught

  # 2. Restart both; SIGTERM to both once resumed: both save the same step and exit 0.
  process, stderr_path = start("preempted")
  wait_for(lambda: "resumed from" in open(stderr_path, encoding="utf-8").read(), process, "the resume",
           stderr_path)
  for pid in pids(stderr_path):
    os.kill(pid, signal.SIGTERM)
  assert process.wait(timeout=TIMEOUT) == 0, open(stderr_path, encoding="utf-8").read()[-3000:]
  stopped_at = checkpoint_steps(workdir)[-1]
  with open(stderr_path, encoding="utf-8") as f:
    assert f"SIGTERM: saved step {stopped_at}" in f.read()
  assert killed_at < stopped_at < TFDS_STEPS

  # 3. The resumed run took the uninterrupted run's steps: same losses, bitwise the same train state, each
  # process's data stream where the uninterrupted one was.
  resumed, uninterrupted = latest_by_step(workdir), latest_by_step(reference)
  assert set(range(1, stopped_at + 1)) <= set(resumed)  # (the killed run may have logged a step or two more)
  assert {step: resumed[step] for step in resumed} == {step: uninterrupted[step] for step in resumed}
  assert iterator_states(workdir, stopped_at) == iterator_states(reference, stopped_at)
  assert_bitwise_equal(saved_state(workdir, stopped_at), saved_state(reference, stopped_at))
  # Training moved the state since the kill: the equality above is not that of a restored checkpoint.
  with pytest.raises(AssertionError):
    assert_bitwise_equal(saved_params(workdir, stopped_at), saved_params(workdir, killed_at))


# ----------------------------------------------------------------------------------------------------------
# The launcher and the runtime settings, without training.


def test_launcher_fails_as_a_whole_naming_the_failing_process(tmp_path):
  script = tmp_path / "fail_on_1.py"
  script.write_text("import os, sys, time\n"
                    f"if os.environ['{runtime.ENV_PROCESS_ID}'] == '1':\n"
                    "  print('process one gives up'); sys.exit(3)\n"
                    "time.sleep(60)\n")
  result = subprocess.run([sys.executable, "-m", "cyb_jax.launch", "--num_processes=3",
                           f"--log_dir={tmp_path / 'logs'}", "--", str(script)], cwd=REPO, text=True,
                          capture_output=True, timeout=60, check=False)
  assert result.returncode == 3
  assert "process 1 failed (exit code 3)" in result.stderr and "process one gives up" in result.stderr


def test_process_env_sets_devices_collectives_and_coordinator(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
  env = launcher.process_env(1, 2, 3, 4567)
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=3"]
  assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
  assert (env[runtime.ENV_COORDINATOR], env[runtime.ENV_NUM_PROCESSES], env[runtime.ENV_PROCESS_ID]) == (
      "127.0.0.1:4567", "2", "1")


@pytest.mark.parametrize("cluster,message", [
    ({"coordinator_address": "nohost"}, "coordinator_address = 'nohost' is not 'host:port'"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "process_id = 2 is not in 0 .. 1"),
    ({"num_processes": 2, "process_id": 0}, "need config.cluster.coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": -1}, "num_processes must be >= 1"),
])
def test_bad_cluster_settings_are_one_line_errors(cluster, message, monkeypatch):
  for name in (runtime.ENV_COORDINATOR, runtime.ENV_NUM_PROCESSES, runtime.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  config = tiny(overrides={"distributed": True, **{f"cluster.{k}": v for k, v in cluster.items()}})
  with pytest.raises(runtime.RuntimeConfigError, match=re.escape(message)):
    runtime.cluster_settings(config)


def test_cluster_settings_from_config_or_launcher(monkeypatch):
  for name in (runtime.ENV_COORDINATOR, runtime.ENV_NUM_PROCESSES, runtime.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  assert runtime.cluster_settings(tiny()) is None  # one process: nothing to join
  assert runtime.cluster_settings(tiny(overrides={"distributed": True})) == runtime.ClusterSettings(
      None, None, None)  # JAX discovers the cluster (TPU pod slice, SLURM, ...)
  monkeypatch.setenv(runtime.ENV_COORDINATOR, "127.0.0.1:99")
  monkeypatch.setenv(runtime.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(runtime.ENV_PROCESS_ID, "1")
  assert runtime.cluster_settings(tiny()) == runtime.ClusterSettings("127.0.0.1:99", 2, 1)
  explicit = tiny(overrides={"cluster.process_id": 0})
  assert runtime.cluster_settings(explicit) == runtime.ClusterSettings("127.0.0.1:99", 2, 0)
