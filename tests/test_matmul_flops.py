"""Tests of cyb_jax/matmul_flops.py: counts by hand for a matmul, a scan, a fori_loop, a gradient, a
cond, a shard_map and the Pallas attention kernels, and the same count for a train step whose layers are
scanned or unrolled."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec

from cyb_jax import matmul_flops
from cyb_jax.model import pallas_attention
from cyb_jax.training import trainer
from cyb_jax import configuration
from cyb_jax.parallel import sharding
from helpers import tiny


def count(fn, *args) -> int:
  return matmul_flops.matmul_flops(jax.make_jaxpr(fn)(*args))


def test_matmul_and_einsum():
  a, b = jnp.ones((4, 8)), jnp.ones((8, 5))
  assert count(jnp.dot, a, b) == 2 * 4 * 8 * 5
  q, k = jnp.ones((2, 7, 3, 16)), jnp.ones((2, 9, 3, 16))
  assert count(lambda q, k: jnp.einsum("bqhd,bthd->bhqt", q, k), q, k) == 2 * (2 * 3 * 7 * 9) * 16


def test_a_scan_counts_its_body_length_times_and_a_gradient_three_matmuls():
  def layers(w, x):
    x, _ = jax.lax.scan(lambda x, wl: (jnp.tanh(x @ wl), None), x, w)
    return jnp.sum(x)

  w, x = jnp.ones((5, 8, 8)), jnp.ones((4, 8))
  one = 2 * 4 * 8 * 8
  assert count(layers, w, x) == 5 * one
  # Backward: d_x and d_w, one matmul each per layer, plus the forward.
  assert count(jax.grad(layers), w, x) == 3 * 5 * one


def test_fori_loop_cond_and_while():
  x = jnp.ones((4, 8))
  assert count(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y @ jnp.ones((8, 8)), x), x) == 3 * 2 * 4 * 8 * 8
  # A cond counts its most expensive branch.
  branchy = lambda p, x: jax.lax.cond(p, lambda x: x @ jnp.ones((8, 8)) @ jnp.ones((8, 8)), lambda x: x, x)
  assert count(branchy, True, x) == 2 * (2 * 4 * 8 * 8)
  # A while loop of unknown trip count with matmuls inside cannot be counted.
  unknown = lambda n, x: jax.lax.fori_loop(0, n, lambda i, y: y @ jnp.ones((8, 8)), x)
  with pytest.raises(ValueError, match="trip count"):
    count(unknown, 3, x)


def test_shard_map_counts_each_device():
  mesh = jax.make_mesh((2,), ("fsdp",), devices=jax.devices()[:2])
  x = jax.device_put(jnp.ones((8, 16)), jax.sharding.NamedSharding(mesh, PartitionSpec("fsdp")))
  w = jax.device_put(jnp.ones((16, 4)), jax.sharding.NamedSharding(mesh, PartitionSpec()))
  fn = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(PartitionSpec("fsdp"), PartitionSpec()),
                     out_specs=PartitionSpec("fsdp"))
  assert count(fn, x, w) == 2 * 8 * 16 * 4  # two devices of 4 rows each


def test_pallas_kernels_count_every_grid_cell():
  """Forward: scores and values, 2 matmuls of Q x T x Dh per head; backward d_q kernel 3, d_k/d_v kernel
  4 (every key block counted, causal or not)."""
  b, t, g, r, d = 1, 64, 1, 2, 16
  q, k = jnp.ones((b, t, g, r, d)), jnp.ones((b, t, g, d))
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  attend = lambda q, k, v: pallas_attention.flash_attention(q, k, v, positions, positions, None, None,  # noqa: E731
                                                              0, 0.0, 16, "interpret")
  one = 2 * b * g * r * t * t * d
  assert count(attend, q, k, k) == 2 * one
  loss = lambda q, k, v: attend(q, k, v)[0].sum()  # noqa: E731
  assert count(jax.grad(loss, argnums=(0, 1, 2)), q, k, k) == (2 + 3 + 4) * one


@pytest.mark.parametrize("num_pauses", [1, 2])
def test_scanned_and_unrolled_train_steps_count_the_same(num_pauses):
  counts = []
  for scan in (True, False):
    config = tiny()
    config.model.scan_layers = scan
    config.num_pauses = num_pauses
    config.model.max_pauses = num_pauses
    settings = configuration.settings_from_config(config, device_count=1, workdir=None, write_files=False)
    mesh = sharding.make_mesh(1, 1, 1)
    plan = trainer.plan_train_step(config, settings, mesh)
    counts.append(matmul_flops.matmul_flops(plan.make_train_step().trace(plan.state_spec, plan.batch_spec).jaxpr))
  assert counts[0] == counts[1] > 0
