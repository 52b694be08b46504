"""Helpers shared by the trainer-side tests (test_trainer.py, test_configuration.py, test_multiprocess.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import jax
import numpy as np
import pytest

from cyb_jax.storage import checkpointing
from cyb_jax.training import trainer
import tiny_config


def tiny(variant: str = "", overrides: dict | None = None):
  """tests/tiny_config.py's config with dotted-key overrides, e.g. {"optim.learning_rate": 1.0}."""
  config = tiny_config.get_config(variant)
  for path, value in (overrides or {}).items():
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


class JaxWithoutJit:
  """Stands in for the `jax` module inside trainer.py: everything works except `jax.jit`."""

  def __getattr__(self, name):
    return getattr(jax, name)

  @staticmethod
  def jit(*args, **kwargs):
    raise AssertionError("trainer.train reached jax.jit (compilation) before reporting the error")


def forbid_compilation(monkeypatch) -> None:
  """Makes any jax.jit inside trainer.train fail the test: errors must come before compilation."""
  monkeypatch.setattr(trainer, "jax", JaxWithoutJit())


def records(workdir, kind: str = "train") -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    complete = f.read().split("\n")[:-1]  # a line another process is still writing has no newline yet
  return [record for record in map(json.loads, complete) if record["kind"] == kind]


def latest_by_step(workdir, key: str = "loss") -> dict[int, float]:
  """`key` of each step's train record; a step logged twice (a crash after it) keeps the last."""
  return {record["step"]: record[key] for record in records(workdir)}


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints (orbax renames a finished save to its bare step number)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def saved_state(workdir, step: int) -> dict:
  """The train state saved at `step`, as nested dicts of numpy arrays."""
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    state = checkpointer.restore_raw_state(step)
  finally:
    checkpointer.close()
  return jax.tree.map(np.asarray, state)


def saved_params(workdir, step: int) -> dict:
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    return checkpointer.restore_params(step)
  finally:
    checkpointer.close()


def assert_bitwise_equal(tree_a, tree_b) -> None:
  leaves_a, treedef_a = jax.tree_util.tree_flatten_with_path(tree_a)
  leaves_b, treedef_b = jax.tree_util.tree_flatten_with_path(tree_b)
  assert treedef_a == treedef_b
  for (path, a), (_, b) in zip(leaves_a, leaves_b):
    a, b = np.asarray(a), np.asarray(b)
    assert (a.dtype, a.shape) == (b.dtype, b.shape), jax.tree_util.keystr(path)
    assert a.tobytes() == b.tobytes(), (
        f"{jax.tree_util.keystr(path)} differs: max |a - b| = {np.max(np.abs(a - b))}")


def wait_for(condition, process: subprocess.Popen, what: str, stderr_path, timeout=300):
  """Polls `condition()` until true; fails with the process's stderr if it exits first."""
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      with open(stderr_path, encoding="utf-8") as f:
        pytest.fail(f"the process exited ({process.returncode}) before {what}:\n{f.read()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.02)
