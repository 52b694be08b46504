"""Joining a multi-process run: JAX's multi-controller runtime (DESIGN.md section 10).

One process per host, each owning its local devices, all of them one global mesh. `initialize(config)`
calls `jax.distributed.initialize` when `config.distributed` is set, or when the process was started by
the local launcher (`python -m cyb_jax.launch`, which passes its settings in the environment variables
below). Settings left at their defaults are discovered by JAX itself (TPU pod slices, SLURM, Open MPI,
Kubernetes); on a plain cluster give all three:

  config.cluster.coordinator_address   "host:port" of process 0 (its port must be free there)
  config.cluster.num_processes         the number of processes (0 = discovered)
  config.cluster.process_id            this process's index, 0 .. num_processes - 1 (-1 = discovered)

Preemption: with the runtime up, SIGTERM is caught by JAX's preemption notifier and every process learns
of it at the same step through `preemption_requested(step)`, so they all save the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Optional

# Set by the local launcher for each process it starts (explicit config values take precedence).
ENV_COORDINATOR = "CYB_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "CYB_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CYB_JAX_PROCESS_ID"

_initialized = False


class RuntimeConfigError(ValueError):
  """A distributed setting that cannot work; the one-line message names the key."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
  """Arguments of `jax.distributed.initialize`; None = let JAX discover it."""

  coordinator_address: Optional[str]
  num_processes: Optional[int]
  process_id: Optional[int]


def cluster_settings(config) -> Optional[ClusterSettings]:
  """The runtime settings of `config` (a ConfigDict with `distributed` and `cluster.*`) and the launcher's
  environment, or None for a single-process run. Raises RuntimeConfigError naming a bad key."""
  launched = ENV_NUM_PROCESSES in os.environ
  if not (bool(config.get("distributed", False)) or launched):
    return None
  cluster = config.get("cluster") or {}
  address = str(cluster.get("coordinator_address", "") or os.environ.get(ENV_COORDINATOR, ""))
  num_processes = int(cluster.get("num_processes", 0) or os.environ.get(ENV_NUM_PROCESSES, 0))
  process_id = int(cluster.get("process_id", -1))
  if process_id == -1:
    process_id = int(os.environ.get(ENV_PROCESS_ID, -1))
  if address:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise RuntimeConfigError(f"config.cluster.coordinator_address = {address!r} is not 'host:port'")
  if num_processes < 0:
    raise RuntimeConfigError(f"config.cluster.num_processes must be >= 1 (or 0 = discovered), got {num_processes}")
  if process_id < -1 or (num_processes and process_id >= num_processes):
    raise RuntimeConfigError(f"config.cluster.process_id = {process_id} is not in 0 .. {num_processes - 1} "
                             f"(config.cluster.num_processes = {num_processes}; -1 = discovered)")
  if (num_processes or process_id >= 0) and not address:
    raise RuntimeConfigError("config.cluster.num_processes and process_id need "
                             "config.cluster.coordinator_address too (or leave all three to discovery)")
  return ClusterSettings(address or None, num_processes or None, process_id if process_id >= 0 else None)


def initialize(config) -> bool:
  """Joins the multi-process run described by `config` and the environment (see the module docstring).
  Returns True when the runtime is up (it then stays up for the life of the process). Idempotent.
  Raises configuration.ConfigError naming a bad `config.cluster` key."""
  global _initialized
  try:
    settings = cluster_settings(config)
  except RuntimeConfigError as error:  # the entry points report config errors in one line
    from cyb_jax import configuration  # pylint: disable=g-import-not-at-top  (heavy; the launcher skips it)
    raise configuration.ConfigError(str(error)) from None
  if settings is None or _initialized:
    return _initialized
  import jax  # pylint: disable=g-import-not-at-top  (the launcher imports this module without jax)
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes, process_id=settings.process_id)
  _initialized = True
  return True


def is_initialized() -> bool:
  return _initialized


def preemption_requested(call: int) -> bool:
  """True on every process at the same call once any of them received SIGTERM (runtime up only).

  `call` must count this process's calls from 0: JAX's sync point is an exact call number, which a
  notice that arrives before the first call places at 0 or 1, so numbers that start later (a resumed
  run's steps) would never meet it.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.reached_preemption_sync_point(call)


class StopFlag:
  """Whether the run should save and stop (SIGTERM: preemption), asked once per step.

  One process: a SIGTERM handler sets a flag. With the runtime up, JAX's own preemption notifier holds
  SIGTERM (a Python handler would replace it) and the processes agree on the step to stop at.
  """

  def __init__(self, distributed: bool):
    self.distributed = distributed
    self._requested = False
    self._calls = 0
    self._previous = None

  def __enter__(self):
    if self.distributed:
      return self

    def handler(signum, frame):
      del signum, frame
      self._requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self) -> bool:
    """Asked once per step by every process (they all resumed from the same step)."""
    if not self.distributed:
      return self._requested
    self._calls += 1
    return preemption_requested(self._calls - 1)
