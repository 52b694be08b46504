"""What a rerun in a work directory that already holds checkpoints may do, decided before compiling.

- A checkpoint past `train.num_steps` is refused: resuming would train nothing and report the later
  model's eval as the step `num_steps` one.
- A finished run (its checkpoint at `num_steps` and its summary.json written for that step) is left as
  it is: a rerun says so and writes nothing.
- A changed learning-rate schedule (extending a cosine run re-warms it) is said in one line.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from cyb_jax import configuration
from cyb_jax.training import train_state as train_state_lib

SUMMARY_FILE = "summary.json"


def check_steps(latest: int, num_steps: int, workdir: str) -> None:
  """Raises ConfigError when the work directory's checkpoint `latest` is past `num_steps`."""
  if latest > num_steps:
    raise configuration.ConfigError(
        f"config.train.num_steps = {num_steps} but the work directory {workdir!r} holds checkpoint step "
        f"{latest}, past it: raise train.num_steps above {latest} to train on, or use a new --workdir")


def finished_summary(workdir: str, latest: int, num_steps: int) -> Optional[dict]:
  """The run's summary.json when the run is finished at `num_steps` (its last checkpoint is that step and
  the final eval of that step was written), else None (a run that stopped before or during its final
  eval is finished by resuming)."""
  if latest != num_steps:
    return None
  try:
    with open(os.path.join(workdir, SUMMARY_FILE), encoding="utf-8") as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  return summary if isinstance(summary, dict) and summary.get("step") == num_steps else None


def finished_message(workdir: str, num_steps: int) -> str:
  return (f"work directory {workdir!r} is finished: its checkpoint and {SUMMARY_FILE} are at "
          f"train.num_steps = {num_steps}; nothing to do (raise train.num_steps to train on, or use a new "
          "--workdir)")


def _schedule_settings(config: dict) -> dict:
  optim = config.get("optim", {})
  return {"schedule": optim.get("schedule", "cosine"), "num_steps": config.get("train", {}).get("num_steps"),
          "warmup_steps": optim.get("warmup_steps"), "learning_rate": optim.get("learning_rate")}


def learning_rate(optim_config, num_steps: int, step: int) -> float:
  """The learning rate of the update that makes step `step` + 1 (optax counts updates from 0)."""
  return float(train_state_lib.learning_rate_schedule(optim_config, num_steps)(step))


def schedule_change(saved_config: dict, config, step: int) -> Optional[str]:
  """One line saying how the learning-rate schedule differs from the checkpoint's (`saved_config`, the JSON
  config saved with it) and the rate at the resumed `step` before and after; None if it is the same."""
  before, now = _schedule_settings(saved_config), _schedule_settings(configuration.as_json_dict(config))
  if any(value is None for value in before.values()) or before == now:
    return None
  changes = ", ".join(f"{key} {before[key]} -> {now[key]}" for key in before if before[key] != now[key])

  class _Optim(dict):  # the saved optim settings as the schedule reads them (attributes and .get)
    __getattr__ = dict.__getitem__

  old_optim = _Optim({**saved_config["optim"], "schedule": before["schedule"]})
  old = learning_rate(old_optim, int(before["num_steps"]), step)
  new = learning_rate(config.optim, int(now["num_steps"]), step)
  return (f"the learning-rate schedule changed since the checkpoint (step {step}): {changes}; the learning "
          f"rate at step {step} was {old:.3g} and is now {new:.3g}")
