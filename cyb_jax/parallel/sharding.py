"""Device mesh and shardings: batches split over (data, fsdp), parameters split over fsdp.

Mesh axes: "data" (pure data parallelism: parameters replicated) and "fsdp" (data parallelism with
parameters and optimiser state sharded). A batch's leading axis is split over both, so every device
holds batch_size / device_count rows.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


def make_mesh(data: int, fsdp: int, num_devices: int = -1, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over the first `num_devices` of `devices` (default `jax.devices()`; -1 = all);
  data = -1 takes what fsdp leaves; fsdp = -1 shards over every device (data 1). `devices` may be another
  machine's (a TPU topology's, to compile for it: cyb_jax/compile_check.py)."""
  devices = list(jax.devices() if devices is None else devices)
  devices = devices if num_devices == -1 else devices[:num_devices]
  if fsdp == -1:
    fsdp, data = len(devices), 1
  if data == -1:
    data = len(devices) // fsdp
  # Auto axes: XLA propagates shardings through ops such as the embedding gather on a sharded batch.
  return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _batch_mesh():
  """The (abstract) mesh in context when it has the (data, fsdp) axes, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names) else mesh


def constrain_batch(x: jax.Array) -> jax.Array:
  """`x` with its leading (batch) axis split over the (data, fsdp) axes of the mesh in context, so every
  device computes on its own rows; `x` unchanged when no mesh with those axes is in context (a single-device
  call, a test) or the mesh does not divide the axis.

  Called on the residual stream at every layer boundary (transformer.run_layers): without it, XLA's
  sharding propagation through the scanned layer loop may follow the fsdp-sharded weights instead of the
  batch and run every row of the global batch on every device (measured for a v5e:2x2 compile of
  SmolLM2-135M: stacked residuals of all 4 rows on each chip, 5.42 GiB of temporaries, 3.61 GiB with
  this constraint). The trainer traces its steps inside `jax.sharding.use_abstract_mesh(mesh.abstract_mesh)`
  (`in_mesh`).
  """
  mesh = _batch_mesh()
  if mesh is None or x.ndim == 0 or x.shape[0] % (mesh.shape[DATA] * mesh.shape[FSDP]):
    return x
  return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES))


def map_over_batch(fn, *args):
  """`fn(*args)` run on each device's own rows (`jax.shard_map` over the (data, fsdp) axes of the mesh in
  context; every array of `args` and of the result has the batch as its leading axis); a plain call when no
  mesh with those axes is in context or it does not divide the batch.

  For what XLA cannot partition itself: a Pallas kernel compiled by Mosaic is one opaque TPU call, which
  sharding propagation refuses to split ("Mosaic kernels cannot be automatically partitioned").
  """
  mesh = _batch_mesh()
  if mesh is None or jax.tree.leaves(args)[0].shape[0] % (mesh.shape[DATA] * mesh.shape[FSDP]):
    return fn(*args)
  rows = PartitionSpec(BATCH_AXES)
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(rows for _ in args), out_specs=rows,
                       check_vma=False)(*args)


def gather_weight(w: jax.Array) -> jax.Array:
  """`w` whole on every device of the mesh in context (an fsdp all-gather before its use), unchanged when no
  mesh is in context. For the output head: left to sharding propagation, a tied embedding table sharded on
  its vocabulary axis makes every device compute the logits of every row for its slice of the vocabulary,
  then exchange them (an all-to-all of `[B, Q, V]`), where gathering the table is 1 / (rows per device x
  sequence length) of that traffic and needs no `[B, Q, V / n]` blocks of all B rows."""
  if _batch_mesh() is None:
    return w
  return jax.lax.with_sharding_constraint(w, PartitionSpec())


def mesh_context(x: Any):
  """A context in which `constrain_batch` applies the mesh of `x`'s NamedSharding (an array or a
  ShapeDtypeStruct), for tracing or lowering a function of `x`; a no-op context otherwise."""
  named = getattr(x, "sharding", None)
  if isinstance(named, NamedSharding):
    return jax.sharding.use_abstract_mesh(named.mesh.abstract_mesh)
  return contextlib.nullcontext()


def in_mesh(fn, mesh: jax.sharding.Mesh):
  """`fn` traced with `mesh`'s abstract mesh in context, so `constrain_batch` inside it applies."""

  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  # The jitted program keeps fn's name (jit_train_step in logs and dumps), a functools.partial's too.
  wrapped.__name__ = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "fn")
  return wrapped


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
  """Shards the largest axis that the fsdp size divides; small or indivisible arrays stay replicated."""
  if fsdp_size == 1 or not shape or int(np.prod(shape)) < 1024:
    return PartitionSpec()
  candidates = [axis for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return PartitionSpec()
  axis = max(candidates, key=lambda a: shape[a])
  return PartitionSpec(*([None] * axis + [FSDP]))


def is_layer_stacked(path) -> bool:
  """Whether a leaf at `path` lies under `blocks`, whose arrays carry a leading layer axis [L]."""
  return any(getattr(key, "key", None) == "blocks" for key in path)


def layer_fsdp_spec(path, shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
  """`fsdp_spec`, where a layer-stacked leaf is sharded as one layer would be (never on its layer axis):
  each scan step then reads one layer's shards, as the unrolled loop did."""
  if not is_layer_stacked(path) or not shape:
    return fsdp_spec(shape, fsdp_size)
  per_layer = fsdp_spec(shape[1:], fsdp_size)
  return PartitionSpec(None, *per_layer) if len(per_layer) else PartitionSpec()


def param_spec(path: str, shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
  """`layer_fsdp_spec` of a parameter named by a "/"-separated path (e.g. "blocks/q_proj/kernel")."""
  return layer_fsdp_spec([jax.tree_util.DictKey(part) for part in path.split("/")], shape, fsdp_size)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """A NamedSharding for every leaf of a (shape-only) train state, by the fsdp rule (per layer for the
  layer-stacked blocks, parameters and optimiser moments alike)."""
  fsdp_size = mesh.shape[FSDP]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, layer_fsdp_spec(path, tuple(leaf.shape), fsdp_size)),
      abstract_state)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each host's rows into global arrays (one host: a plain device_put with the sharding)."""
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()}


def put_global(tree: Any, shardings: Any) -> Any:
  """`tree`'s arrays (the same values on every process, e.g. read whole from a checkpoint) placed on
  `shardings`, which may span other processes' devices: each process builds its own shards."""
  def put(value, leaf_sharding):
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, leaf_sharding, lambda index: host[index])
  return jax.tree.map(put, tree, shardings)
