"""Registry of the synthetic tasks by name."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cyb_jax.data import addition
from cyb_jax.data import pointer_chasing
from cyb_jax.data import set_sum

# name -> (config dataclass, task class)
TASKS = {
    "pointer_chasing": (pointer_chasing.PointerChasingConfig, pointer_chasing.PointerChasingTask),
    "addition": (addition.AdditionConfig, addition.AdditionTask),
    "set_sum": (set_sum.SetSumConfig, set_sum.SetSumTask),
}


def make_task(name: str, overrides: Mapping[str, Any] | None = None):
  """Builds task ``name`` from its default config with ``overrides`` (field -> value).

  Raises ValueError naming the task or field when either is unknown.
  """
  if name not in TASKS:
    raise ValueError(f"unknown synthetic task {name!r}; known tasks: {sorted(TASKS)}")
  config_cls, task_cls = TASKS[name]
  overrides = dict(overrides or {})
  fields = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown config field(s) {unknown} for task {name!r}; "
                     f"known: {sorted(fields)}")
  # Sequences (e.g. from a ConfigDict or JSON) become tuples so the frozen config hashes.
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  return task_cls(config_cls(**overrides))
