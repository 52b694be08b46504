"""What the run is waiting for: compilations and calibrations that print nothing else for minutes.

At real model size a train step compiles for minutes and the `<dk>` calibration takes tens of seconds;
`announce` logs (process 0 only) what starts, e.g. "compiling train step (K=1, batch 4 x 256,
8 devices)...", and when it is done, "compiled train step in 183.2 s".
"""

from __future__ import annotations

import contextlib
import logging
import time

import jax

log = logging.getLogger("cyb_jax")


@contextlib.contextmanager
def announce(starting: str, done: str):
  """Logs `starting + "..."` before the block and `f"{done} in {seconds:.1f} s"` after it (process 0)."""
  is_main = jax.process_index() == 0
  if is_main:
    log.info("%s...", starting)
  start = time.perf_counter()
  yield
  if is_main:
    log.info("%s in %.1f s", done, time.perf_counter() - start)


def shape_text(batch_size: int, seq_len: int, num_devices: int, num_pauses: int) -> str:
  """"K=1, batch 4 x 256, 8 devices": what a compiled step is specialised for."""
  return f"K={num_pauses}, batch {batch_size} x {seq_len}, {num_devices} device{'s' * (num_devices != 1)}"
