"""Checkpoints of a run: train state, config and data-iterator state, saved together by orbax.

Layout: `workdir/checkpoints/<step>/{state,meta,iterators}`. `meta` is JSON: the run's config and the
resolved model config (the shapes a later resume or fine-tune must match). `iterators` holds every
process's data-iterator state in its own file, `process_<i>-of-<n>.json` (grain's orbax handler), so each
process resumes its own data stream wherever it stands (checkpoints before this layout hold one `data`
item, read on resume by a single process). Saves are asynchronous and atomic: a
save cut off by a crash leaves only a temporary directory (`<step>.orbax-checkpoint-tmp-*`) that orbax
ignores, so the latest complete checkpoint is always the one restored; a writing manager removes such
directories when it opens (orbax's `cleanup_tmp_directories`, on the primary process), saying so.

A checkpoint that cannot be read is one line (CheckpointError) naming it, the damaged file where one is
(checkpoint_integrity.py, checked before the restore is tried) and the newest intact step; what orbax and
TensorStore print while failing goes to the log at debug level.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
import time
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from cyb_jax.storage import checkpoint_integrity

log = logging.getLogger("cyb_jax")
TMP_MARKER = ".orbax-checkpoint-tmp"
ITEMS = ("state", "meta", "iterators")
_LEGACY_DATA = "data"  # one JSON data-iterator state (checkpoints written before per-process states)


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written or read; the one-line message names it and what to do."""


def _innermost(error: BaseException) -> BaseException:
  """The root of `error`'s chain of causes: TensorStore's own error under orbax's wrapper, whose message
  is a whole spec."""
  seen = {id(error)}
  while error.__cause__ is not None and id(error.__cause__) not in seen:
    error = error.__cause__
    seen.add(id(error))
  return error


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for the three items of a cyb_jax checkpoint."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints directory in {workdir!r}")
    stale = sorted(name for name in (os.listdir(self.directory) if os.path.isdir(self.directory) else ())
                   if TMP_MARKER in name)
    if stale and not read_only and jax.process_index() == 0:
      log.info("removing %d unfinished save(s) left by an interrupted run in %s: %s", len(stale),
               self.directory, ", ".join(stale))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           enable_async_checkpointing=not read_only,
                                           read_only=read_only, cleanup_tmp_directories=not read_only)
    # Handlers named up front so a read-only manager can read the saved arrays' metadata (shapes, dtypes).
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "iterators": grain.checkpoint.CheckpointHandler(), _LEGACY_DATA: ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._pending: Optional[int] = None  # the step whose asynchronous save is in flight
    self._closed = False

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, data_iterator: Any = None, force: bool = False) -> bool:
    """Starts saving `step` (the arrays asynchronously; `data_iterator`'s state, a grain DatasetIterator
    of this process, is written before this returns, so the iterator may move on). Every process calls
    this. Raises CheckpointError naming the step whose save failed: this one, or the previous one, whose
    background write reports its failure here."""
    self._raise_pending_failure()
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["iterators"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as error:  # pylint: disable=broad-except  (storage errors have many types)
      raise CheckpointError(f"saving checkpoint {step} to {self.directory} failed: {_first_line(error)}") \
          from error
    if saved:
      self._pending = step
    return saved

  def _raise_pending_failure(self) -> None:
    """Waits for the save in flight; a failure there becomes a CheckpointError naming its step."""
    pending, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      step = f"checkpoint {pending}" if pending is not None else "a checkpoint"
      raise CheckpointError(f"saving {step} to {self.directory} failed: {_first_line(error)}") from error

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> tuple[Any, dict]:
    """The state (laid out like `abstract_state`, shardings included) and meta; `data_iterator` (this
    process's grain DatasetIterator, if given) is moved to where this process's stream stood."""
    per_layer = _per_layer_blocks(self.manager.item_metadata(step)["state"])
    if any(_per_layer(node["blocks"]) for node in jax.tree.leaves(abstract_state, is_leaf=_has_blocks)
           if _has_blocks(node)):
      per_layer = 0  # the caller asks for the per-layer layout itself
    target = abstract_state
    if per_layer:
      # Written before layers were stacked: read the per-layer arrays (each as one layer of the stacked
      # array would be sharded), then stack them onto the stacked arrays' shardings below.
      target = _map_blocks(abstract_state, lambda blocks: [
          jax.tree.map(lambda leaf: _layer_struct(leaf), blocks) for _ in range(per_layer)])
    items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
    saved_items = os.listdir(os.path.join(self.directory, str(step)))
    if data_iterator is not None and "iterators" in saved_items:
      items["iterators"] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif data_iterator is not None and _LEGACY_DATA in saved_items:
      items[_LEGACY_DATA] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if _LEGACY_DATA in items and restored[_LEGACY_DATA]:
      data_iterator.set_state(restored[_LEGACY_DATA])
    state = restored.state
    if per_layer:
      state = _map_blocks(state, stack_per_layer)
      state = jax.tree.map(lambda value, leaf: jax.device_put(value, getattr(leaf, "sharding", None)),
                           state, abstract_state)
    return state, restored.meta

  def restore_raw_state(self, step: int, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
    """The saved state as nested dicts of arrays, placed on this process's devices (for `init_from`, eval).

    Every array is restored with `sharding` (default: whole, on this process's first device), whatever
    devices and mesh it was saved from: a checkpoint written on 8 devices reads on 1 and vice versa.
    Callers place the result where they need it (the trainer on its fsdp shardings).
    """
    target = _target(self.manager.item_metadata(step)["state"], sharding)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state

  def restore_params(self, step: int, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
    """The saved model parameters only (not the optimiser state), whole on `sharding` (default: this
    process's first device), whatever devices wrote them (for eval, `init_from` and sampling)."""
    path = os.path.join(self.directory, str(step), "state")
    reader = ocp.PyTreeCheckpointer()
    target = {"params": _target(reader.metadata(path).item_metadata, sharding)["params"]}
    restored = reader.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    params = jax.tree.map(jnp.asarray, restored["params"])
    if _per_layer(params["blocks"]):  # written before layers were stacked on a leading axis
      params["blocks"] = stack_per_layer(params["blocks"])
    return params

  def restore_or_explain(self, step: int, abstract_state: Any, data_iterator: Any = None) -> tuple[Any, dict]:
    """`restore`, or CheckpointError naming the unreadable step, the damaged file and the newest older
    step that reads."""
    return self._explained(step, lambda s: self.restore(s, abstract_state, data_iterator), arrays=True)

  def params_or_explain(self, step: int) -> tuple[dict, Any]:
    """(meta, params) of `step` (see `restore_params`), or CheckpointError as `restore_or_explain`."""
    return self._explained(step, lambda s: (self.restore_meta(s), self.restore_params(s)), arrays=True)

  def meta_or_explain(self, step: int) -> dict:
    """`restore_meta`, or CheckpointError as `restore_or_explain`."""
    return self._explained(step, self.restore_meta, arrays=False)

  def _explained(self, step: int, read, arrays: bool):
    """`read(step)`, or CheckpointError naming the step, what is wrong (the damaged array file, found
    before any restore is tried, or the library's innermost error) and the newest older step that reads."""
    problem = self._damaged(step) if arrays else None
    if problem is None:
      try:
        with _library_output_to_debug_log():
          return read(step)
      except Exception as error:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
        log.debug("reading checkpoint %d failed", step, exc_info=True)
        problem = _first_line(_innermost(error))
    intact = next((older for older in sorted((s for s in self.all_steps() if s < step), reverse=True)
                   if self._reads(older, read, arrays)), None)
    advice = (f"the newest intact checkpoint is step {intact}: move {os.path.join(self.directory, str(step))} "
              "away to use it" if intact is not None else "no older checkpoint reads either")
    raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read: {problem}; {advice}")

  def _damaged(self, step: int) -> Optional[str]:
    return checkpoint_integrity.damaged_file(os.path.join(self.directory, str(step), "state"))

  def _reads(self, step: int, read, arrays: bool) -> bool:
    if arrays and self._damaged(step):
      return False
    try:
      with _library_output_to_debug_log():
        read(step)
      return True
    except Exception:  # pylint: disable=broad-except
      log.debug("reading checkpoint %d failed", step, exc_info=True)
      return False

  def wait(self) -> None:
    """Waits for the save in flight; raises CheckpointError if it failed."""
    self._raise_pending_failure()

  def close(self) -> None:
    """Waits for the save in flight (raising CheckpointError if it failed) and for orbax's background
    work, then closes the manager. Closing twice is closing once."""
    if self._closed:
      return
    self._closed = True
    try:
      self._raise_pending_failure()
    finally:
      # The removal of stale temporary directories runs in the background and is awaited only by a save.
      getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
      self.manager.close()


@contextlib.contextmanager
def _library_output_to_debug_log():
  """Sends what is written to stderr (file descriptor 2: Python's and C++'s alike) while the block runs to
  the log at debug level when the block fails, or back to stderr when it succeeds. A failed TensorStore
  restore leaves reads in flight whose callbacks print `RuntimeError: Event loop is closed` tracebacks as
  they finish: they are collected (and their coroutines garbage-collected) before stderr is given back."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      time.sleep(0.2)  # the reads still in flight finish and print into the capture
      gc.collect()
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode("utf-8", errors="replace")
      if failed and text:
        log.debug("checkpoint library output while failing:\n%s", text)
      elif text:
        sys.stderr.write(text)
        sys.stderr.flush()


def _per_layer(blocks: Any) -> bool:
  """Whether `blocks` is the old per-layer layout: a list, or the dict keyed "0", "1", ... orbax may hand
  a saved list back as."""
  return isinstance(blocks, (list, tuple)) or (isinstance(blocks, dict) and "0" in blocks)


def stack_per_layer(blocks: Any) -> Any:
  """Old per-layer `blocks` (a list or a dict keyed "0", "1", ...) stacked on a leading layer axis [L]."""
  if isinstance(blocks, dict):
    blocks = [blocks[str(i)] for i in range(len(blocks))]
  return jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)


def _has_blocks(node: Any) -> bool:
  return isinstance(node, dict) and "blocks" in node


def _map_blocks(tree: Any, fn) -> Any:
  """`tree` with every `blocks` entry (the params, and the optimiser's moments of them) replaced by fn(it)."""
  return jax.tree.map(lambda node: {**node, "blocks": fn(node["blocks"])} if _has_blocks(node) else node,
                      tree, is_leaf=_has_blocks)


def _per_layer_blocks(saved_metadata: Any) -> int:
  """The number of layers when a saved state holds its blocks per layer (the old layout), else 0."""
  found = []

  def visit(node):
    if isinstance(node, dict):
      if "blocks" in node and _per_layer(node["blocks"]):
        found.append(len(node["blocks"]))
      for value in node.values():
        visit(value)
    elif isinstance(node, (list, tuple)):
      for value in node:
        visit(value)

  visit(getattr(saved_metadata, "tree", saved_metadata))
  return found[0] if found else 0


def _layer_struct(leaf: Any) -> jax.ShapeDtypeStruct:
  """The restore target of one layer of a stacked leaf: its shape and sharding without the layer axis."""
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
  return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


def _target(saved_metadata: Any, sharding: Optional[jax.sharding.Sharding]) -> Any:
  """Restore targets for a saved tree's metadata: its shapes and dtypes on `sharding` (default: whole, on
  this process's first device) instead of the devices it was saved from."""
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = getattr(saved_metadata, "tree", saved_metadata)
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree)
