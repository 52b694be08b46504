"""Helpers shared by the trainer-side tests (test_trainer.py, test_configuration.py)."""

from __future__ import annotations

import jax

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
