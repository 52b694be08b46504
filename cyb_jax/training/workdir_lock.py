"""One run per work directory: an OS advisory lock held for the run's lifetime.

Two `train.py` on one `--workdir` would interleave their records in `metrics.jsonl` and overwrite each
other's checkpoints. Each process of a run takes `fcntl.flock` on its own file,
`WORKDIR/.lock.process_<i>` (so the processes of one multi-process run never refuse each other, and every
process of a second run refuses at once, without waiting for a collective its process 0 will never join).
The kernel releases a flock when its process dies, SIGKILL included, so a stale file never blocks a
legitimate resume; the file only holds who has it (pid, host, start time) for the message of the run
that is refused. flock works across hosts on NFSv4 (Linux emulates it with fcntl byte-range locks there).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator

LOCK_PREFIX = ".lock.process_"


class WorkdirLockedError(RuntimeError):
  """Another run holds the work directory; the one-line message names it (pid, host, since when)."""


def lock_path(workdir: str, process_index: int) -> str:
  return os.path.join(workdir, f"{LOCK_PREFIX}{process_index}")


def _holder(fd: int) -> str:
  """'pid 123 on host h since 2026-01-01 10:00:00 UTC' from a lock file, or what can be said without it."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode("utf-8"))
    return f"pid {info['pid']} on host {info['host']} since {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):  # written this very moment, or by something else
    return "a process whose details are not written yet"


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0) -> Iterator[str]:
  """Holds this process's lock on `workdir` (created if needed) while the block runs; yields the lock
  file's path. Raises WorkdirLockedError at once if another run holds it. A directory this call created
  and that holds nothing but lock files when the block ends (a run refused by its config) is removed."""
  workdir = os.path.abspath(workdir)
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = lock_path(workdir, process_index)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children (PEP 446)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLockedError(
          f"work directory {workdir!r} is in use by another run: {_holder(fd)} holds {path}; wait for it "
          "to finish (or stop it), or use another --workdir") from None
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
    try:
      yield path
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
    if created:
      _remove_if_only_locks(workdir, path)


def _remove_if_only_locks(workdir: str, path: str) -> None:
  """Removes this process's lock file, and the directory once nothing else is left in it."""
  try:
    if all(name.startswith(LOCK_PREFIX) for name in os.listdir(workdir)):
      os.remove(path)
      os.rmdir(workdir)  # fails while another process's lock file is there: the last one removes it
  except OSError:
    pass
