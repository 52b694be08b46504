"""Test-wide set-up: 8 fake CPU devices and strict rank promotion, before jax is first used."""

import os

# Must happen before the first jax operation anywhere in the test process.
# The suite is dominated by compiling tiny models. LLVM optimisation level 0 makes that about twice as
# fast, and XLA CPU's older loop emitters (instead of its MLIR fusion emitters) about twice again; what is
# computed is the same (tolerances cover the different rounding of reductions, and bitwise comparisons
# are between runs under these same flags, subprocesses included).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0"
                           " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402  (import after the environment is set, on purpose)

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the whole run, shared by the xdist workers and the processes
  tests start: a train step, eval step or rollout compiled by one test (or by a resumed run) is read back,
  not compiled again, by the next that needs the same one. (JAX writes an entry in place; a worker that
  reads one half-written fails to decompress it and compiles instead, with a warning.)"""
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's directory
  cache_dir = shared / "jax_session_cache"
  cache_dir.mkdir(exist_ok=True)
  cache_dir = str(cache_dir)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield cache_dir


# The longest files first: xdist (--dist loadfile) hands files to workers in collection order, so the
# workers then finish close together instead of one running a long file alone at the end.
_LONGEST_FIRST = ("test_multiprocess.py", "test_trainer.py", "test_generate.py", "test_model.py",
                  "test_attention.py", "test_finetune_hf.py", "test_sampling.py", "test_eval.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: index for index, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order is kept
