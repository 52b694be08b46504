"""cyb_jax/training/workdir_lock.py: one run per work directory, released however the holder ends."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from cyb_jax.training import trainer
from cyb_jax.training import workdir_lock
from helpers import checkpoint_steps, forbid_compilation, records, tiny, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_lock_is_exclusive_per_process_index_and_released_on_exit(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir):
    # A second open file description is refused, even in this process (flock is per open file).
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf"^work directory {re.escape(repr(workdir))} is in use by another run: pid "
                       rf"{os.getpid()} on host {re.escape(socket.gethostname())} since "):
      with workdir_lock.hold(workdir):
        pass
    with workdir_lock.hold(workdir, 1):  # the other processes of the same multi-process run
      pass
  with workdir_lock.hold(workdir):  # released
    pass
  # A directory the lock created for a run that wrote nothing (refused by its config) is not left behind.
  fresh = str(tmp_path / "fresh")
  with workdir_lock.hold(fresh):
    assert os.listdir(fresh) == [".lock.process_0"]
  assert not os.path.exists(fresh)


def test_a_second_run_is_refused_at_once_and_a_killed_holder_blocks_no_resume(tmp_path, monkeypatch,
                                                                              _session_compilation_cache):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=_session_compilation_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  holder_log = tmp_path / "holder.log"
  started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
  with open(holder_log, "w", encoding="utf-8") as log:
    holder = subprocess.Popen(
        [sys.executable, "train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
         "--config.train.num_steps=1000000", "--config.train.checkpoint_every=2", "--config.train.eval_every=1000000"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
  try:
    wait_for(lambda: 2 in checkpoint_steps(workdir), holder, "the first run's first checkpoint", holder_log)
    since = r"since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC"
    expected = (rf"^work directory {re.escape(repr(str(workdir)))} is in use by another run: pid {holder.pid} "
                rf"on host {re.escape(socket.gethostname())} {since} holds "
                rf"{re.escape(str(workdir / '.lock.process_0'))}; wait for it to finish \(or stop it\), or use "
                r"another --workdir$")
    # In this process: refused before anything compiles.
    with monkeypatch.context() as patch:
      forbid_compilation(patch)
      with pytest.raises(workdir_lock.WorkdirLockedError) as error:
        trainer.train(tiny(), str(workdir))
    match = re.match(expected, str(error.value))
    assert match, str(error.value)
    held_since = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    assert started <= held_since <= datetime.datetime.now(datetime.timezone.utc)
    # As a command: one line, no traceback.
    second = subprocess.run([sys.executable, "train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "Traceback" not in second.stderr + second.stdout
    last = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()][-1]
    assert last.startswith("workdir error: ") and re.match(expected, last[len("workdir error: "):]), last
    assert holder.poll() is None  # the first run goes on
  finally:
    holder.kill()
    holder.wait()
  # The lock file still names the dead holder; the kernel released its lock with the process.
  with open(workdir / ".lock.process_0", encoding="utf-8") as f:
    assert json.load(f)["pid"] == holder.pid
  latest = checkpoint_steps(workdir)[-1]
  trainer.train(tiny(overrides={"train.num_steps": latest + 2, "train.checkpoint_every": 2}), str(workdir))
  assert checkpoint_steps(workdir)[-1] == latest + 2
  assert [r["step"] for r in records(str(workdir))][-2:] == [latest + 1, latest + 2]
