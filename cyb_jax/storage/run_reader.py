"""Reading a run back for eval and sampling: its parameters and the config it was trained with, from a
checkpoint of its work directory (the read-only side of `checkpointing`).

Errors are one line each: `configuration.ConfigError` naming --workdir or --checkpoint when there is no such
checkpoint, `checkpointing.CheckpointError` naming the damaged file when it cannot be read.
"""

from __future__ import annotations

import logging
from typing import Optional

import jax
import ml_collections

from cyb_jax import configuration
from cyb_jax.storage import checkpointing

log = logging.getLogger("cyb_jax")


def _open_checkpoint(workdir: str, step: Optional[int]) -> tuple[checkpointing.Checkpointer, int]:
  """A read-only checkpointer of `workdir` and the step to read (default: the latest); ConfigError
  naming the flag when there is none."""
  try:
    checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  except FileNotFoundError:
    raise configuration.ConfigError(f"--workdir {workdir!r} holds no checkpoints directory") from None
  available = checkpointer.all_steps()
  if not available:
    checkpointer.close()
    raise configuration.ConfigError(f"--workdir {workdir!r} holds no checkpoint")
  if step is None:
    step = max(available)
  elif step not in available:
    checkpointer.close()
    raise configuration.ConfigError(
        f"--checkpoint {step} is not in {workdir!r}; available: {sorted(available)}")
  return checkpointer, step


def load_params(workdir: str, step: Optional[int] = None) -> tuple[dict, dict, int]:
  """(params, meta, step) of checkpoint `step` (default: the latest) in `workdir`."""
  checkpointer, step = _open_checkpoint(workdir, step)
  try:
    meta, params = checkpointer.params_or_explain(step)
  finally:
    checkpointer.close()
  return params, meta, step


def load_run_config(workdir: str, step: Optional[int] = None,
                    overrides: Optional[dict] = None) -> tuple[ml_collections.ConfigDict, int]:
  """(config, step): the config checkpoint `step` (default: the latest) of `workdir` was trained with,
  saved in its meta, with `overrides` ({dotted key: value}) applied: the base of eval.py and sample.py
  when no --config is given (see `configuration.saved_run_config`)."""
  checkpointer, step = _open_checkpoint(workdir, step)
  try:
    meta = checkpointer.meta_or_explain(step)
  finally:
    checkpointer.close()
  if jax.process_index() == 0:
    log.info("config: the one checkpoint %d in %s was trained with%s", step, workdir,
             f", overridden by --config.{', --config.'.join(sorted(overrides))}" if overrides else "")
  return configuration.saved_run_config(meta["config"], overrides), step


def warn_data_differences(config: ml_collections.ConfigDict, meta: dict, workdir: str, step: int) -> None:
  """Logs a warning when a --config given on the command line reads other data (or another tokenizer)
  than checkpoint `step` was trained on: allowed (e.g. another text file), but rarely meant."""
  differences = configuration.data_differences(meta["config"], config)
  if differences:
    log.warning("--config reads other data than checkpoint %d in %s was trained on: %s (without --config "
                "the checkpoint's own settings are used)", step, workdir, "; ".join(differences))
