"""Checkpoints of a run: train state, config and data-iterator state, saved together by orbax.

Layout: `workdir/checkpoints/<step>/{state,meta,data}`. `meta` is JSON: the run's config and the resolved
model config (the shapes a later resume or fine-tune must match). Saves are asynchronous and atomic: a
save cut off by a crash leaves only a temporary directory that orbax ignores, so the latest complete
checkpoint is always the one restored.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "meta", "data")


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for the three items of a cyb_jax checkpoint."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints directory in {workdir!r}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           enable_async_checkpointing=not read_only,
                                           read_only=read_only)
    # Handlers named up front so a read-only manager can read the saved arrays' metadata (shapes, dtypes).
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, data_state: Any, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
        data=ocp.args.JsonSave(data_state if data_state is not None else {})), force=force)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, Any]:
    """The state (laid out like `abstract_state`, shardings included), meta and data-iterator state."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore(),
        data=ocp.args.JsonRestore()))
    return restored.state, restored.meta, restored.data

  def restore_raw_state(self, step: int, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
    """The saved state as nested dicts of arrays, placed on this process's devices (for `init_from`, eval).

    Every array is restored with `sharding` (default: replicated over all current devices), whatever
    devices and mesh it was saved from: a checkpoint written on 8 devices reads on 1 and vice versa.
    """
    if sharding is None:
      sharding = replicated_sharding()
    saved = self.manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state

  def restore_params(self, step: int) -> Any:
    """The saved model parameters as jax arrays, without a target (for `init_from` and eval)."""
    params = jax.tree.map(jnp.asarray, self.restore_raw_state(step)["params"])
    if isinstance(params["blocks"], dict):  # orbax may hand a list back keyed "0", "1", ...
      params["blocks"] = [params["blocks"][str(i)] for i in range(len(params["blocks"]))]
    return params

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def replicated_sharding() -> jax.sharding.Sharding:
  """A full copy on every current device (all processes')."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
