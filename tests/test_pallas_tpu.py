"""The Pallas attention kernels compiled for a TPU by the real TPU compiler (Mosaic), on this CPU.

`pallas_attention.flash_attention_for_platform` picks the kernels' lowering from the platform a program is
compiled for, so a TPU program compiled on a CPU host (compile_check) gets the Mosaic kernels, and the
same program run on the CPU gets Pallas's interpreter (whose values and gradients
tests/test_pallas_attention.py checks against a dense softmax and the blockwise form). Here every mask
(causal, sliding window, segments, soft-cap, pause queries at repeated positions, Q != T, grouped heads),
the model's pause-chain attention and a whole pallas train step compile for a v5e chip through Mosaic:
the compiled program must hold the three kernels as TPU custom calls (forward, d_q, d_k/d_v) and fit the
compiler's VMEM (N = 8192 with segments did not before the d_k/d_v kernel went keys-major).

Needs libtpu (`pip install -e '.[tpu]'`); `.ci/run` installs it in its own step and runs this file with
`JAX_PLATFORMS=cpu`. Without libtpu only the CPU half of the dispatch test runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import compile_check
from cyb_jax.model import attention
from cyb_jax.model import pallas_attention
from cyb_jax.model.config import AttentionSpec
from helpers import tiny

needs_libtpu = pytest.mark.skipif(not compile_check.libtpu_available(),
                                  reason="needs libtpu (pip install -e '.[tpu]'); .ci/run installs it")
KERNELS = ("flash_attention_forward", "flash_attention_dq", "flash_attention_dkv")


@pytest.fixture(scope="module")
def tpu_device():
  return compile_check.topology_devices(compile_check.parse_topology("v5e:2x2"))[0]


def _loss(window: int, softcap: float, block: int):
  """sum(out) + sum(lse) of the kernels (gradients flow in through both), as a function of q, k, v."""

  def loss(q32, k, v, q_positions, k_positions, q_segments, k_segments):
    out, lse = pallas_attention.flash_attention_for_platform(q32, k, v, q_positions, k_positions, q_segments,
                                                             k_segments, window, softcap, block)
    return jnp.sum(out) + jnp.sum(jnp.where(lse > pallas_attention.NEG / 2, lse, 0.0))

  return jax.value_and_grad(loss, argnums=(0, 1, 2))


def _specs(device, batch, queries, keys, kv_heads, group, head_size, segments, kv_dtype=jnp.bfloat16):
  sharding = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # noqa: E731
  args = [spec((batch, queries, kv_heads, group, head_size), jnp.float32),
          spec((batch, keys, kv_heads, head_size), kv_dtype), spec((batch, keys, kv_heads, head_size), kv_dtype),
          spec((batch, queries), jnp.int32), spec((batch, keys), jnp.int32)]
  args += [spec((batch, queries), jnp.int32), spec((batch, keys), jnp.int32)] if segments else [None, None]
  return args


def _kernel_calls(compiled_text: str) -> list:
  """The Pallas kernels a compiled TPU program calls, by name, in order of appearance."""
  return [name for line in compiled_text.splitlines() if 'custom_call_target="tpu_custom_call"' in line
          for name in KERNELS if name in line]


# name: batch, queries, keys, KV heads, query heads per KV head, head size, window, soft-cap, segments, block
CASES = {
    "causal_smollm2_heads": (1, 2048, 2048, 3, 3, 64, 0, 0.0, False, 256),
    "sliding_window": (2, 1024, 1024, 1, 4, 256, 512, 0.0, False, 256),       # Gemma 3's local layers
    "segments_softcap": (2, 768, 768, 2, 2, 128, 0, 50.0, True, 256),
    "pause_queries_q_ne_t": (2, 300, 1000, 2, 4, 64, 0, 0.0, True, 128),       # partial blocks, padded Dh
    "short_single_block": (1, 37, 37, 1, 2, 48, 0, 0.0, False, 256),           # one 64-row block per axis
    "long_segments_8192": (1, 8192, 8192, 3, 3, 64, 0, 0.0, True, 256),        # VMEM-bound before
}


@needs_libtpu
@pytest.mark.parametrize("name", list(CASES))
def test_kernels_compile_for_tpu_through_mosaic(name, tpu_device):
  batch, queries, keys, kv_heads, group, head_size, window, softcap, segments, block = CASES[name]
  args = _specs(tpu_device, batch, queries, keys, kv_heads, group, head_size, segments)
  compiled = jax.jit(_loss(window, softcap, block)).lower(*args).compile()
  calls = _kernel_calls(compiled.as_text())
  assert sorted(set(calls)) == sorted(KERNELS), calls
  memory = compiled.memory_analysis()
  # Nothing of size [Q, T] outside the kernels: the program's temporaries stay well under one f32 score
  # matrix of one head.
  assert memory.temp_size_in_bytes < queries * keys * 4


def test_cpu_gets_the_interpreter_and_tpu_gets_mosaic():
  """The same function lowered for the host CPU has no Mosaic call (the kernels are interpreted: plain
  XLA ops); lowered for a TPU (where libtpu is installed) it has the three."""
  args = _specs(jax.devices("cpu")[0], 1, 40, 40, 1, 2, 16, False, jnp.float32)
  cpu_text = jax.jit(_loss(0, 0.0, 16)).lower(*args).as_text()
  assert "tpu_custom_call" not in cpu_text and "__gpu$xla.gpu.triton" not in cpu_text
  if compile_check.libtpu_available():
    tpu = compile_check.topology_devices(compile_check.parse_topology("v5e:2x2"))[0]
    tpu_text = jax.jit(_loss(0, 0.0, 16)).lower(*_specs(tpu, 1, 40, 40, 1, 2, 16, False)).as_text()
    assert tpu_text.count("tpu_custom_call") == 3


@needs_libtpu
@pytest.mark.parametrize("softcap", [0.0, 30.0])
def test_pause_chain_attention_compiles_for_tpu(softcap, tpu_device):
  """`attention.attend` with pause-chain keys (merged into the kernels' softmax through their
  log-sum-exp), the form every pause step uses, forward and gradient."""
  batch, length, kv_heads, group, head_size, slots = 2, 512, 3, 3, 64, 2
  sharding = jax.sharding.SingleDeviceSharding(tpu_device)
  spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # noqa: E731
  attention_spec = AttentionSpec(window=0, softcap=softcap, scale=head_size ** -0.5, implementation="pallas",
                                 block=256)

  def loss(q, k, v, chain_k, chain_v):
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    chain = attention.ChainKeys(chain_k, chain_v, jnp.ones((batch, length, slots), bool))
    out = attention.attend(q, positions, attention.RealKeys(k, v, positions), attention_spec, chain)
    return jnp.sum(out.astype(jnp.float32))

  args = (spec((batch, length, kv_heads * group, head_size)), spec((batch, length, kv_heads, head_size)),
          spec((batch, length, kv_heads, head_size)), spec((batch, length, slots, kv_heads, head_size)),
          spec((batch, length, slots, kv_heads, head_size)))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*args).compile()
  assert sorted(set(_kernel_calls(compiled.as_text()))) == sorted(KERNELS)


@needs_libtpu
def test_a_pallas_train_step_compiles_for_tpu():
  """The trainer's own K = 1 train and eval steps with `model.attention = "pallas"`, for v5e:2x2 (the
  compile check's path): every layer's attention is the Mosaic kernels."""
  config = tiny()
  config.model.attention = "pallas"
  config.model.attention_block = 128
  config.data.seq_len = 256
  config.num_pauses = 1
  report = compile_check.check(config, compile_check.parse_topology("v5e:2x2"), keep_compiled=True)
  assert report.all_fit
  train_calls = _kernel_calls(report.compiled["train"].as_text())
  assert sorted(set(train_calls)) == sorted(KERNELS)
  eval_calls = _kernel_calls(report.compiled["eval"].as_text())
  assert set(eval_calls) == {"flash_attention_forward"}  # no gradient in eval


def test_vmem_estimate_by_hand():
  """(8 x 128)-element tiles (16 rows for bf16), double-buffered, plus 4 MiB for the kernel's own tiles."""
  mib = 2 ** 20
  assert pallas_attention._vmem_bytes([]) == 4 * mib
  # f32 [256, 64]: 256 rows x 128 lanes x 4 bytes, twice.
  assert pallas_attention._vmem_bytes([((None, 256, 64), jnp.float32)]) == 2 * 256 * 128 * 4 + 4 * mib
  # bf16 [1, 8192] (a lane row): 16 rows x 8192 lanes x 2 bytes, twice; a leading axis of 3 multiplies.
  assert pallas_attention._vmem_bytes([((None, 3, 1, 8192), jnp.bfloat16)]) == 2 * 3 * 16 * 8192 * 2 + 4 * mib
  # An int32 column [300, 1]: 304 rows x 128 lanes x 4 bytes, twice.
  assert pallas_attention._vmem_bytes([((300, 1), np.int32)]) == 2 * 304 * 128 * 4 + 4 * mib
