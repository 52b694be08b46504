"""The CYB objectives and their baselines, as pure functions of arrays (DESIGN.md sections 4, 5).

Everything here is a function of three numbers per (token, step), kept in `StepStats`, so the rollout
never has to hold all S steps' logits for a large vocabulary. Shape letters follow DESIGN.md section 2;
`...` stands for any leading token axes (usually B, N).

All maths is float32 in log space, whatever dtype the model ran in. Hyperparameters that are concrete
(Python numbers or concrete arrays) are validated when the function is traced, so a bad value fails with
a `ValueError` naming the argument before anything is compiled; traced values (for example the CYB-DP
dual variable carried in the train state) are used as given.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

OBJECTIVES = ("ce", "pause_ce", "cyb_ap", "cyb_va", "cyb_dp")


@flax.struct.dataclass
class StepStats:
  """What the objectives need from step j's logits z_j, each float32 `[..., S]`.

  target_logit: t_j = z_j[y], the logit of the target token.
  vocab_lse: u_j = logsumexp(z_j[0..V-1]), the log-normaliser over the real vocabulary.
  dk_logit: c_j = z_j[V], the `<dk>` logit.
  """

  target_logit: jax.Array
  vocab_lse: jax.Array
  dk_logit: jax.Array

  @property
  def num_steps(self) -> int:
    return self.target_logit.shape[-1]


@flax.struct.dataclass
class Halting:
  """Per-step halting quantities, float32 `[..., S]`, all as natural logs (DESIGN.md section 4).

  log_answer: log a_j, probability of the target given that the model answers at step j.
  log_continue: log d_j, probability of `<dk>` (pausing) at step j; -inf at the last step.
  log_stop: log(1 - d_j), probability of answering at step j given it got there; 0 at the last step.
  log_survival: log R_j, probability of reaching step j (exclusive cumulative sum of log d).
  log_halt: log h_j = log R_j + log(1 - d_j), the halting distribution; exp sums to 1 over j.
  """

  log_answer: jax.Array
  log_continue: jax.Array
  log_stop: jax.Array
  log_survival: jax.Array
  log_halt: jax.Array


@flax.struct.dataclass
class LossAux:
  """Diagnostics from `objective_loss`, averaged over unmasked tokens.

  mean_pauses: scalar, expected pauses per token under the model's own halting distribution
    (for `ce` 0 and for `pause_ce` K, the pauses those baselines are defined to take).
  nll_at_step: `[S]`, mean -log a_j: the loss if every token were forced to answer at step j.
  halt_distribution: `[S]`, mean h_j.
  num_tokens: scalar, number of unmasked tokens (float32).
  """

  mean_pauses: jax.Array
  nll_at_step: jax.Array
  halt_distribution: jax.Array
  num_tokens: jax.Array


# ----------------------------------------------------------------------------------------------------------
# Argument checking. A value we can read at trace time is checked; a traced value is trusted.


def _concrete(value: Any) -> Optional[np.ndarray]:
  """Returns `value` as a numpy array if it is known at trace time, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def _check_scalar(name: str, value: Any, *, low: float, high: float, low_open: bool,
                  high_open: bool) -> None:
  known = _concrete(value)
  if known is None:
    return
  if known.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {known.shape}")
  x = float(known)
  too_low = x <= low if low_open else x < low
  too_high = x >= high if high_open else x > high
  if not np.isfinite(x) or too_low or too_high:
    interval = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    raise ValueError(f"{name} must lie in {interval}, got {x!r}")


def _check_non_negative(name: str, value: Any) -> None:
  _check_scalar(name, value, low=0.0, high=np.inf, low_open=False, high_open=True)


def check_prior(prior: Any, num_steps: int) -> None:
  """Raises ValueError unless `prior` is a length-`num_steps` positive probability vector."""
  known = _concrete(prior)
  if known is None:
    return
  if known.shape != (num_steps,):
    raise ValueError(f"prior must have shape ({num_steps},) for S = {num_steps} steps, got {known.shape}")
  if not np.all(np.isfinite(known)) or np.any(known <= 0):
    # A zero entry makes KL(h || prior) infinite as soon as any mass halts there.
    raise ValueError(f"prior entries must be finite and positive, got {known.tolist()}")
  if abs(float(known.sum()) - 1.0) > 1e-4:
    raise ValueError(f"prior must sum to 1, got sum {float(known.sum())!r}")


# ----------------------------------------------------------------------------------------------------------
# From logits to the three numbers, and from them to the halting distribution.


def step_stats(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array] = None) -> StepStats:
  """Reduces logits `[..., S, V+1]` (`<dk>` last) and int targets `[...]` to `StepStats`.

  With a boolean `mask` `[...]`, masked tokens' logits and targets are replaced by zeros before any
  arithmetic, so whatever they hold (inf, NaN, a padding id out of range) their gradient is exactly zero.
  Targets are range-checked when they are known at trace time.
  """
  if logits.ndim < 2:
    raise ValueError(f"logits must have shape [..., S, V+1], got {logits.shape}")
  num_classes = logits.shape[-1]
  if num_classes < 2:
    raise ValueError(f"logits need at least 2 output classes (V >= 1 real tokens plus <dk>), "
                     f"got {num_classes}")
  if targets.shape != logits.shape[:-2]:
    raise ValueError(f"targets shape {targets.shape} does not match logits leading shape "
                     f"{logits.shape[:-2]} (logits are [..., S, V+1])")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
  if mask is not None and jnp.shape(mask) != targets.shape:
    raise ValueError(f"mask shape {jnp.shape(mask)} does not match targets shape {targets.shape}")
  vocab_size = num_classes - 1
  known_targets = _concrete(targets)
  if known_targets is not None:
    known_mask = None if mask is None else _concrete(mask)
    live = known_targets if known_mask is None else known_targets[np.asarray(known_mask, bool)]
    if live.size and (live.min() < 0 or live.max() >= vocab_size):
      raise ValueError(f"targets must lie in [0, {vocab_size}) (V = {vocab_size}), "
                       f"got values in [{live.min()}, {live.max()}]")

  return step_stats_parts(logits[..., :vocab_size], logits[..., vocab_size], targets, mask)


def step_stats_parts(real_logits: jax.Array, dk_logit: jax.Array, targets: jax.Array,
                     mask: Optional[jax.Array] = None) -> StepStats:
  """`step_stats` of logits given as their two parts: real-vocabulary logits `[..., S, V]` and the `<dk>`
  logit `[..., S]` (model.output_logit_parts), never joined into one `[..., S, V+1]` array. Joining them
  and slicing the vocabulary back out costs a copy of the logits each way (at SmolLM2-135M's 49152-token
  vocabulary, batch 4 x 256 on a CPU: 0.16 s of a 1.3 s output head and loss, forward and backward).
  Shapes are checked by `step_stats`, which calls this; a caller with parts is trusted with them."""
  real_logits = real_logits.astype(jnp.float32)
  dk_logit = dk_logit.astype(jnp.float32)
  if mask is not None:
    real_logits = jnp.where(mask[..., None, None], real_logits, 0.0)
    dk_logit = jnp.where(mask[..., None], dk_logit, 0.0)
    targets = jnp.where(mask, targets, 0)
  target_logit = jnp.take_along_axis(real_logits, targets[..., None, None], axis=-1)[..., 0]
  vocab_lse = jax.nn.logsumexp(real_logits, axis=-1)
  return StepStats(target_logit=target_logit, vocab_lse=vocab_lse, dk_logit=dk_logit)


def _as_float32(stats: StepStats) -> StepStats:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stats)


def halting(stats: StepStats) -> Halting:
  """The halting quantities of DESIGN.md section 4, from `StepStats` `[..., S]`."""
  stats = _as_float32(stats)
  t, u, c = stats.target_logit, stats.vocab_lse, stats.dk_logit
  log_answer = t - u
  log_norm = jnp.logaddexp(u, c)
  is_last = jnp.arange(stats.num_steps) == stats.num_steps - 1
  # The last step must answer: d_K = 0 exactly, not merely small.
  log_continue = jnp.where(is_last, -jnp.inf, c - log_norm)
  log_stop = jnp.where(is_last, 0.0, u - log_norm)
  log_survival = _exclusive_cumsum(log_continue)
  log_halt = log_survival + log_stop
  return Halting(log_answer=log_answer, log_continue=log_continue, log_stop=log_stop,
                 log_survival=log_survival, log_halt=log_halt)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  """sum_{k<j} x_k along the last axis. Never adds the last entry, so a -inf there is harmless."""
  zeros = jnp.zeros_like(x[..., :1])
  return jnp.concatenate([zeros, jnp.cumsum(x[..., :-1], axis=-1)], axis=-1)


def _per_step(vector: jax.Array, like: jax.Array) -> jax.Array:
  """A `[S]` vector shaped to broadcast against `like` `[..., S]` without implicit rank promotion."""
  return jnp.reshape(vector, (1,) * (like.ndim - 1) + (-1,))


def _halt_probs(log_halt: jax.Array) -> jax.Array:
  return jnp.exp(log_halt)


def _safe_xlogy(p: jax.Array, log_q: jax.Array) -> jax.Array:
  """p * log_q with the convention 0 * log 0 = 0, with finite gradients when p = 0 and log_q = -inf."""
  finite = jnp.isfinite(log_q)
  safe_log_q = jnp.where(finite, log_q, 0.0)
  return jnp.where(finite, p * safe_log_q, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Per-token objectives, each returning float32 `[...]`.


def ce(stats: StepStats) -> jax.Array:
  """No-pause cross-entropy: -log a_0."""
  return -halting(stats).log_answer[..., 0]


def pause_ce(stats: StepStats) -> jax.Array:
  """Fixed-pause baseline: always K pauses, cross-entropy at the last step only, -log a_K."""
  return -halting(stats).log_answer[..., -1]


def cyb_ap(stats: StepStats, *, gamma: float = 0.9, omega: float = 0.1) -> jax.Array:
  """Anytime prediction: -log sum_j gamma^j h^w_j a_j, with answers forced early at hazard omega."""
  _check_scalar("gamma", gamma, low=0.0, high=1.0, low_open=True, high_open=False)
  _check_scalar("omega", omega, low=0.0, high=1.0, low_open=False, high_open=True)
  h = halting(stats)
  num_steps = stats.num_steps
  gamma = jnp.asarray(gamma, jnp.float32)
  omega = jnp.asarray(omega, jnp.float32)
  # log(1 - omega) is finite because omega < 1; log(omega) is -inf for omega = 0, which logaddexp
  # handles (its gradient is not needed: omega is a constant).
  log_keep = jnp.log1p(-omega)
  log_forced_survival = _exclusive_cumsum(h.log_continue + log_keep)
  log_forced_stop = jnp.logaddexp(jnp.log(omega), log_keep + h.log_stop)
  # At the last step log_stop = 0, so log_forced_stop = log(omega + 1 - omega) = 0: h^w_K = R^w_K.
  log_forced_halt = log_forced_survival + log_forced_stop
  steps = jnp.arange(num_steps, dtype=jnp.float32)
  log_discount = _per_step(steps * jnp.log(gamma), log_forced_halt)
  return -jax.nn.logsumexp(log_discount + log_forced_halt + h.log_answer, axis=-1)


def geometric_prior(num_steps: int, p: float) -> np.ndarray:
  """Truncated geometric prior over stopping steps 0..S-1: prior_j proportional to p (1-p)^j.

  p is the probability of stopping at each step given the step is reached; p = 0.7 with S = 4 gives a mean
  of about 0.4 pauses.
  """
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  _check_scalar("p", p, low=0.0, high=1.0, low_open=True, high_open=False)
  weights = p * (1.0 - p) ** np.arange(num_steps, dtype=np.float64)
  return (weights / weights.sum()).astype(np.float32)


def _expected_nll(h: Halting) -> jax.Array:
  return -jnp.sum(_halt_probs(h.log_halt) * h.log_answer, axis=-1)


def cyb_va(stats: StepStats, *, prior: Any, beta: float = 0.1) -> jax.Array:
  """Variational: sum_j h_j (-log a_j) + beta KL(h || prior). `prior` is a length-S probability vector."""
  check_prior(prior, stats.num_steps)
  _check_non_negative("beta", beta)
  h = halting(stats)
  halt = _halt_probs(h.log_halt)
  log_prior = _per_step(jnp.log(jnp.asarray(prior, jnp.float32)), halt)
  kl = jnp.sum(_safe_xlogy(halt, h.log_halt) - halt * log_prior, axis=-1)
  return _expected_nll(h) + jnp.asarray(beta, jnp.float32) * kl


def expected_pauses(stats: StepStats) -> jax.Array:
  """E[tau] = sum_j j h_j, `[...]`."""
  halt = _halt_probs(halting(stats).log_halt)
  return jnp.sum(halt * _per_step(jnp.arange(stats.num_steps, dtype=jnp.float32), halt), axis=-1)


def cyb_dp(stats: StepStats, *, cost: Any = 0.0) -> jax.Array:
  """Compute budget: sum_j h_j (-log a_j) + cost E[tau]. `cost` may be a traced dual variable."""
  _check_non_negative("cost", cost)
  h = _expected_nll(halting(stats))
  return h + jnp.asarray(cost, jnp.float32) * expected_pauses(stats)


def anytime_term(stats: StepStats) -> jax.Array:
  """mean_j(-log a_j): scaled by `anytime_weight`, it trains every step to answer well."""
  return -jnp.mean(halting(stats).log_answer, axis=-1)


def dual_update(cost: jax.Array, mean_pauses: jax.Array, *, budget: float, lr: float) -> jax.Array:
  """One projected dual-ascent step for CYB-DP: max(0, cost + lr (mean E[tau] - budget))."""
  _check_non_negative("budget", budget)
  _check_non_negative("lr", lr)
  return jnp.maximum(0.0, cost + lr * (mean_pauses - budget))


# ----------------------------------------------------------------------------------------------------------
# The trainer's entry point.


def per_token_loss(objective: str, stats: StepStats, *, gamma: float = 0.9, omega: float = 0.1,
                   prior: Optional[Sequence[float]] = None, beta: float = 0.1, cost: Any = 0.0,
                   anytime_weight: float = 0.0) -> jax.Array:
  """The named objective per token, `[...]`, plus `anytime_weight` * `anytime_term` for CYB objectives.

  Hyperparameters an objective does not use are ignored (so one config block can serve all objectives).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  _check_non_negative("anytime_weight", anytime_weight)
  if objective == "ce":
    return ce(stats)
  if objective == "pause_ce":
    return pause_ce(stats)
  if objective == "cyb_ap":
    loss = cyb_ap(stats, gamma=gamma, omega=omega)
  elif objective == "cyb_va":
    if prior is None:
      raise ValueError("prior is required for objective 'cyb_va' (e.g. geometric_prior(S, 0.7))")
    loss = cyb_va(stats, prior=prior, beta=beta)
  else:
    loss = cyb_dp(stats, cost=cost)
  if isinstance(anytime_weight, (int, float)) and anytime_weight == 0:
    return loss
  return loss + jnp.asarray(anytime_weight, jnp.float32) * anytime_term(stats)


def objective_loss(objective: str, stats: StepStats, mask: jax.Array, **hparams: Any
                   ) -> tuple[jax.Array, LossAux]:
  """Mean per-token loss over unmasked tokens, and `LossAux` diagnostics.

  stats: `StepStats` with fields `[..., S]`; mask: bool `[...]` (True = the token carries loss).
  hparams: keyword arguments of `per_token_loss` (gamma, omega, prior, beta, cost, anytime_weight).
  Masked tokens contribute exactly zero loss and zero gradient whatever their stats hold (inf and NaN
  included): their stats are replaced by zeros before any arithmetic.
  """
  mask = jnp.asarray(mask)
  if mask.shape != stats.target_logit.shape[:-1]:
    raise ValueError(f"mask shape {mask.shape} does not match the stats' token shape "
                     f"{stats.target_logit.shape[:-1]}")
  mask = mask.astype(bool)
  clean = jax.tree.map(lambda x: jnp.where(mask[..., None], jnp.asarray(x, jnp.float32), 0.0), stats)
  weight = mask.astype(jnp.float32)
  num_tokens = jnp.sum(weight)
  denominator = jnp.maximum(num_tokens, 1.0)

  def masked_mean(per_token: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, per_token, 0.0)) / denominator

  loss = masked_mean(per_token_loss(objective, clean, **hparams))
  h = halting(clean)
  halt = _halt_probs(h.log_halt)
  if objective == "ce":
    mean_pauses = jnp.zeros((), jnp.float32)
  elif objective == "pause_ce":
    mean_pauses = jnp.asarray(stats.num_steps - 1, jnp.float32)
  else:
    steps = _per_step(jnp.arange(stats.num_steps, dtype=jnp.float32), halt)
    mean_pauses = masked_mean(jnp.sum(halt * steps, -1))
  per_step_mean = jax.vmap(masked_mean, in_axes=-1)
  aux = LossAux(mean_pauses=jax.lax.stop_gradient(mean_pauses),
                nll_at_step=jax.lax.stop_gradient(per_step_mean(-h.log_answer)),
                halt_distribution=jax.lax.stop_gradient(per_step_mean(halt)),
                num_tokens=num_tokens)
  return loss, aux
