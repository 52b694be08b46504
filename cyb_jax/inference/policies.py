"""Inference policies: when to pause and where to stop (DESIGN.md section 6).

A policy looks at one step's logits and decides "pause" or "answer now". Policies with state (only
`cumulative`, which needs the survival probability R_j) get it from the caller. All functions work on a
batch of independent decisions, so each sequence in a batch pauses on its own.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

POLICIES = ("threshold", "sample", "cumulative", "never", "always")
DETERMINISTIC_POLICIES = ("threshold", "cumulative", "never", "always")


def check_policy(policy: str, *, tau: float = 0.5, q: float = 0.5) -> None:
  """Raises ValueError for an unknown policy or a parameter outside its range."""
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
  if policy == "threshold" and isinstance(tau, numbers.Real) and not 0.0 <= tau <= 1.0:
    raise ValueError(f"tau must lie in [0, 1], got {tau!r}")
  if policy == "cumulative" and isinstance(q, numbers.Real) and not 0.0 < q <= 1.0:
    raise ValueError(f"q must lie in (0, 1], got {q!r}")


def log_dk(logits: jax.Array) -> jax.Array:
  """log d: log-probability of `<dk>` under the full V+1 softmax, `[...]` from logits `[..., V+1]`."""
  logits = logits.astype(jnp.float32)
  return logits[..., -1] - jax.nn.logsumexp(logits, axis=-1)


def wants_pause(policy: str, logits: jax.Array, step: jax.Array, num_pauses: int, *, tau: jax.Array,
                q: jax.Array, log_survival: jax.Array, rng: jax.Array) -> jax.Array:
  """Whether to pause after a step, bool `[...]`.

  logits: `[..., V+1]` of the current step; step: the current step j, int `[...]`.
  log_survival: log R_j, the probability of having reached step j (for `cumulative`).
  The last step (j = num_pauses) never pauses, whatever the policy.
  """
  return pause_decision(policy, log_dk(logits), step, num_pauses, tau=tau, q=q,
                        log_survival=log_survival, rng=rng)


def pause_decision(policy: str, log_d: jax.Array, step: jax.Array, num_pauses: int, *, tau: jax.Array,
                   q: jax.Array, log_survival: jax.Array, rng: jax.Array) -> jax.Array:
  """`wants_pause` from log d_j `[...]` (the `<dk>` log-probability) instead of the logits."""
  can_pause = step < num_pauses
  if policy == "threshold":
    pause = log_d > jnp.log(tau)
  elif policy == "sample":
    pause = jax.random.uniform(rng, log_d.shape) < jnp.exp(log_d)
  elif policy == "cumulative":
    # Halted mass after step j is 1 - R_j d_j; stop once it reaches q, so pause while R_j d_j > 1 - q.
    pause = log_survival + log_d > jnp.log1p(-q)
  elif policy == "never":
    pause = jnp.zeros(log_d.shape, bool)
  elif policy == "always":
    pause = jnp.ones(log_d.shape, bool)
  else:
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
  return pause & can_pause


def stop_steps(policy: str, logits: jax.Array, *, tau: float = 0.5, q: float = 0.5,
               rng: jax.Array | None = None) -> jax.Array:
  """Where a policy stops for each token, int `[...]`, from all steps' logits `[..., S, V+1]`.

  This replays the decisions `wants_pause` makes during generation, on a rollout's logits.
  """
  return stop_steps_from_log_dk(policy, log_dk(logits), tau=tau, q=q, rng=rng)


def stop_steps_from_log_dk(policy: str, log_d: jax.Array, *, tau: float = 0.5, q: float = 0.5,
                           rng: jax.Array | None = None) -> jax.Array:
  """`stop_steps` from each step's `<dk>` log-probability, `log_d` `[..., S]`."""
  check_policy(policy, tau=tau, q=q)
  num_steps = log_d.shape[-1]
  if rng is None:
    rng = jax.random.PRNGKey(0)
  batch_shape = log_d.shape[:-1]
  stopped = jnp.zeros(batch_shape, bool)
  stop_at = jnp.full(batch_shape, num_steps - 1, jnp.int32)
  log_survival = jnp.zeros(batch_shape, jnp.float32)
  for step in range(num_steps):
    pause = pause_decision(policy, log_d[..., step], jnp.full(batch_shape, step), num_steps - 1,
                           tau=jnp.asarray(tau, jnp.float32), q=jnp.asarray(q, jnp.float32),
                           log_survival=log_survival, rng=jax.random.fold_in(rng, step))
    stop_at = jnp.where(~stopped & ~pause, step, stop_at)
    stopped = stopped | ~pause
    log_survival = log_survival + log_d[..., step]
  return stop_at
