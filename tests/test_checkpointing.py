"""Checkpoints read on other devices than they were written on (train on a slice, evaluate elsewhere)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cyb_jax.training import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process that sees one CPU device: restore the params (the reader eval.py, init_from and
# sampling use) and the raw state, and print what they hold.
READER = """
import json
import sys
import numpy as np
import jax
from cyb_jax.training import checkpointing
checkpointer = checkpointing.Checkpointer(sys.argv[1], read_only=True)
params = checkpointer.restore_params(1)
state = checkpointer.restore_raw_state(1)
print(json.dumps({"devices": jax.device_count(), "blocks_1_w": np.asarray(params["blocks"][1]["w"]).tolist(),
                  "embed": np.asarray(params["embed"]).tolist(), "step": int(state["step"])}))
"""


def _saved_on_eight_devices(workdir):
  """A state sharded over 8 devices (fsdp over the first axis), saved as checkpoint step 1."""
  assert jax.device_count() == 8
  mesh = Mesh(np.asarray(jax.devices()), ("fsdp",))
  embed = jax.device_put(jnp.arange(32.0).reshape(16, 2), NamedSharding(mesh, P("fsdp")))
  state = {"params": {"embed": embed, "blocks": [{"w": embed * 2}, {"w": embed - 1}]},
           "step": jnp.asarray(7)}
  checkpointer = checkpointing.Checkpointer(workdir)
  checkpointer.save(1, state, {"model": {}}, {}, force=True)
  checkpointer.close()
  return state


def test_a_checkpoint_from_eight_devices_restores_on_one(tmp_path):
  workdir = str(tmp_path / "run")
  state = _saved_on_eight_devices(workdir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", READER, workdir], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  read = json.loads(proc.stdout.strip().splitlines()[-1])
  assert read["devices"] == 1
  np.testing.assert_array_equal(read["blocks_1_w"], np.asarray(state["params"]["blocks"][1]["w"]))
  np.testing.assert_array_equal(read["embed"], np.asarray(state["params"]["embed"]))
  assert read["step"] == 7


def test_the_same_process_restores_onto_other_shardings(tmp_path):
  workdir = str(tmp_path / "run")
  state = _saved_on_eight_devices(workdir)
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[3])
  restored = checkpointer.restore_raw_state(1, sharding=one_device)
  checkpointer.close()
  assert restored["params"]["embed"].sharding == one_device
  np.testing.assert_array_equal(np.asarray(restored["params"]["blocks"][0]["w"]),
                                np.asarray(state["params"]["blocks"][0]["w"]))
