"""Tests of cyb_jax/training/train_state.py: learning-rate schedules against their formulas, weight decay."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cyb_jax.training import train_state


def optim(schedule: str, warmup: int = 10, peak: float = 2e-3) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"learning_rate": peak, "warmup_steps": warmup, "schedule": schedule})


@pytest.mark.parametrize("num_steps", [50, 5000])
def test_constant_schedule_is_warmup_then_flat_whatever_the_run_length(num_steps):
  schedule = train_state.learning_rate_schedule(optim("constant"), num_steps)
  for step in (0, 3, 9):
    assert float(schedule(step)) == pytest.approx(2e-3 * step / 10)
  for step in (10, 11, 49, 4999):
    assert float(schedule(step)) == pytest.approx(2e-3)


def test_constant_schedule_without_warmup_starts_at_the_peak():
  schedule = train_state.learning_rate_schedule(optim("constant", warmup=0), 100)
  assert float(schedule(0)) == pytest.approx(2e-3)
  assert float(schedule(77)) == pytest.approx(2e-3)


def test_cosine_schedule_decays_to_zero_at_the_last_step():
  schedule = train_state.learning_rate_schedule(optim("cosine"), 110)
  assert float(schedule(5)) == pytest.approx(1e-3)
  for step in (10, 35, 60, 110):
    progress = (step - 10) / 100
    assert float(schedule(step)) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * progress)), abs=1e-9)


def test_configs_without_the_schedule_key_keep_cosine():
  config = optim("cosine")
  del config["schedule"]
  schedule = train_state.learning_rate_schedule(config, 110)
  assert float(schedule(60)) == pytest.approx(1e-3)


def test_decay_vectors_off_decays_matrices_only():
  config = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=0, schedule="constant",
                                          weight_decay=0.5, clip_norm=1.0, b1=0.9, b2=0.98,
                                          decay_vectors=False))
  params = {"matrix": jnp.ones((2, 3)), "scale": jnp.ones((3,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  optimizer = train_state.make_optimizer(config, 10)
  updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
  # With zero gradients the only update is the decay: -lr * wd * w on matrices, nothing on vectors.
  np.testing.assert_allclose(updates["matrix"], -0.1 * 0.5 * np.ones((2, 3)), rtol=1e-6)
  np.testing.assert_array_equal(updates["scale"], np.zeros(3))
  config.decay_vectors = True
  optimizer = train_state.make_optimizer(config, 10)
  updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["scale"], -0.1 * 0.5 * np.ones(3), rtol=1e-6)
