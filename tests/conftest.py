"""Test-wide set-up: 8 fake CPU devices and strict rank promotion, before jax is first used."""

import os

# Must happen before the first jax operation anywhere in the test process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (import after the environment is set, on purpose)

jax.config.update("jax_numpy_rank_promotion", "raise")
