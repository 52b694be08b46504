"""A local multi-process launcher: N processes of one script on this machine, as N hosts would run it.

    python -m cyb_jax.launch --num_processes=2 --devices_per_process=2 -- train.py --workdir=runs/x ...

starts `python train.py ...` N times with CPU devices (`devices_per_process` fake ones each), CPU
collectives (gloo) and a coordinator on a free local port, passed to each process in the environment
(`runtime.ENV_*`; `cyb_jax.parallel.runtime.initialize` reads it). Process 0's output is streamed; the
others' goes to `LOG_DIR/process_<i>.log`. SIGTERM or Ctrl-C to the launcher is passed on to every
process. When one process fails, the others are killed and the launcher exits non-zero, naming it and
showing the end of its log.

It is a test and debugging aid: on a TPU pod slice or a GPU cluster the same script runs under the
platform's own launch, one process per host (see README, "Running on accelerators and several hosts").
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from cyb_jax.parallel import runtime

_TAIL_LINES = 20


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def process_env(index: int, num_processes: int, devices_per_process: int, port: int) -> dict:
  """The environment of process `index`: CPU devices, gloo collectives and the runtime settings."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update({
      "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]),
      "JAX_PLATFORMS": "cpu",
      "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
      runtime.ENV_COORDINATOR: f"127.0.0.1:{port}",
      runtime.ENV_NUM_PROCESSES: str(num_processes),
      runtime.ENV_PROCESS_ID: str(index),
  })
  return env


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def _tail(path: str) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as handle:
      return "".join(collections.deque(handle, maxlen=_TAIL_LINES))
  except OSError:
    return ""


def launch(script_args: Sequence[str], num_processes: int, devices_per_process: int,
           log_dir: Optional[str] = None, poll_s: float = 0.2) -> int:
  """Runs `python *script_args` as `num_processes` processes; returns 0 when all exit 0, otherwise the
  failing process's exit code (128 + signal number when it was killed)."""
  log_dir = log_dir or tempfile.mkdtemp(prefix="cyb_jax_launch_")
  os.makedirs(log_dir, exist_ok=True)
  port = free_port()
  say = lambda text: print(f"launch: {text}", file=sys.stderr, flush=True)
  say(f"{num_processes} process(es) x {devices_per_process} CPU device(s), coordinator 127.0.0.1:{port}, "
      f"logs of processes 1.. in {log_dir}")
  processes, logs = [], []
  for index in range(num_processes):
    log_path = os.path.join(log_dir, f"process_{index}.log")
    output = None if index == 0 else open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    # A session of its own: Ctrl-C in a terminal reaches the launcher, which passes it on once.
    process = subprocess.Popen([sys.executable, *script_args], stdout=output,
                               stderr=subprocess.STDOUT if output else None, start_new_session=True,
                               env=process_env(index, num_processes, devices_per_process, port))
    processes.append(process)
    logs.append(log_path if output else None)
    say(f"process {index}: pid {process.pid}")

  def forward(signum, frame):
    del frame
    for process in processes:
      if process.poll() is None:
        process.send_signal(signum)
  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    while True:
      codes = [process.poll() for process in processes]
      failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
      if failed:
        index = failed[0]
        for process in processes:
          if process.poll() is None:
            process.kill()
        for process in processes:
          process.wait()
        say(f"process {index} failed ({_describe(codes[index])}); the others were stopped")
        if logs[index]:
          tail = _tail(logs[index])
          if tail:
            say(f"last lines of {logs[index]}:\n{tail}")
        return codes[index] if codes[index] > 0 else 128 - codes[index]
      if all(code == 0 for code in codes):
        return 0
      time.sleep(poll_s)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cyb_jax.launch", description=__doc__.split("\n\n")[0],
      usage="python -m cyb_jax.launch [--num_processes=N] [--devices_per_process=D] [--log_dir=DIR] "
            "-- SCRIPT.py ARGS...")
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start (default 2)")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="fake CPU devices of each process (default 1)")
  parser.add_argument("--log_dir", default=None,
                      help="where processes 1.. write their output (default: a new temporary directory)")
  parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT.py ARGS...")
  args = parser.parse_args(argv)
  script = args.script[1:] if args.script[:1] == ["--"] else args.script
  if not script:
    parser.error("no script given: add -- SCRIPT.py ARGS...")
  if args.num_processes < 1:
    parser.error(f"--num_processes must be >= 1, got {args.num_processes}")
  if args.devices_per_process < 1:
    parser.error(f"--devices_per_process must be >= 1, got {args.devices_per_process}")
  return launch(script, args.num_processes, args.devices_per_process, args.log_dir)
