"""The train state: everything that changes from one step to the next, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar, steps taken. params: model parameters. opt_state: optax state.
  dp_cost: float32 scalar, the CYB-DP price per pause (the dual variable when a budget is set; unused by
  other objectives but kept so every objective has one state layout)."""

  step: jax.Array
  params: Any
  opt_state: Any
  dp_cost: jax.Array


SCHEDULES = ("cosine", "constant")


def schedule_name(optim_config) -> str:
  """`optim.schedule`, or "cosine" for configs written before the option existed."""
  return optim_config.get("schedule", "cosine")


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to 0 at `num_steps` or (schedule "constant") a flat peak.

  "constant" makes a run's first n steps identical to a shorter run's, whatever `num_steps` is: the
  data-efficiency experiment relies on it to read a longer baseline run at any token budget.
  """
  peak, warmup = optim_config.learning_rate, optim_config.warmup_steps
  if schedule_name(optim_config) == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
      end_value=0.0)


def decays_vectors(optim_config) -> bool:
  """`optim.decay_vectors`, or True (decay every parameter) for configs written before the option."""
  return bool(optim_config.get("decay_vectors", True))


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
  """AdamW on `learning_rate_schedule`, after global-norm clipping.

  With `optim.decay_vectors` False, weight decay applies to matrices only, not to norm scales, biases
  and other vectors: a pretrained model's norm scales (Gemma's 1 + w offsets most of all) are not
  weights that should shrink towards 0.
  """
  schedule = learning_rate_schedule(optim_config, num_steps)
  mask = None if decays_vectors(optim_config) else (
      lambda params: jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params))
  return optax.chain(
      optax.clip_by_global_norm(optim_config.clip_norm),
      optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                  weight_decay=optim_config.weight_decay, mask=mask))


def create(params: Any, optimizer: optax.GradientTransformation, initial_cost: float) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    dp_cost=jnp.asarray(initial_cost, jnp.float32))
