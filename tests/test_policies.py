"""Tests for cyb_jax/policies.py: pause decisions and stopping steps (DESIGN.md sections 4 and 6).

Every expected value comes from `<dk>` probabilities chosen by hand: with V real logits all 0 and a
`<dk>` logit of log(V d / (1 - d)), the V+1 softmax gives `<dk>` probability exactly d. The halting
distribution and the stopping rules are then recomputed here in float64 numpy, never by the code under test.
"""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from cyb_jax.inference import policies

V = 4  # real vocabulary of the hand-built logits


def logits_from_d(d):
  """Logits `[..., S, V+1]` (float32) whose `<dk>` probability at each step is d `[..., S]`."""
  d = np.asarray(d, np.float64)
  real = np.zeros(d.shape + (V,))
  dk = np.log(V * d / (1.0 - d))
  return jnp.asarray(np.concatenate([real, dk[..., None]], axis=-1), jnp.float32)


def halting(d):
  """h `[..., S]` by hand: h_j = prod_{k<j} d_k (1 - d_j) for j < K, h_K = prod_{k<K} d_k."""
  d = np.asarray(d, np.float64)
  num_steps = d.shape[-1]
  h = np.zeros_like(d)
  survival = np.ones(d.shape[:-1])
  for j in range(num_steps):
    h[..., j] = survival * (1.0 - d[..., j]) if j < num_steps - 1 else survival
    survival = survival * d[..., j]
  return h


# Jitted once per (policy, shape): eager dispatch of the unrolled step loop costs about a second per test.
# tau and q are traced, so their range checks are exercised separately, on the unjitted function.
stop_steps = jax.jit(policies.stop_steps, static_argnames="policy")
wants_pause = jax.jit(policies.wants_pause, static_argnames=("policy", "num_pauses"))


def first_true_or_last(condition):
  """Index of the first True along the last axis of `[..., K]`, or K when there is none."""
  num = condition.shape[-1]
  return np.where(condition.any(-1), np.argmax(condition, axis=-1), num)


def random_d(rng, shape, avoid, margin):
  """d in (0.02, 0.98), redrawn where it lies within `margin` of any value in `avoid` (no float ties)."""
  d = rng.uniform(0.02, 0.98, shape)
  for value in avoid:
    while True:
      close = np.abs(d - value) < margin
      if not close.any():
        break
      d[close] = rng.uniform(0.02, 0.98, close.sum())
  return d


def call_wants_pause(policy, logits, step, num_pauses, *, tau=0.5, q=0.5, log_survival=None,
                     rng=None, jit=True):
  batch_shape = logits.shape[:-1]
  return np.asarray((wants_pause if jit else policies.wants_pause)(
      policy, logits, jnp.broadcast_to(jnp.asarray(step, jnp.int32), batch_shape), num_pauses,
      tau=jnp.float32(tau), q=jnp.float32(q),
      log_survival=(jnp.zeros(batch_shape, jnp.float32) if log_survival is None
                    else jnp.broadcast_to(jnp.asarray(log_survival, jnp.float32), batch_shape)),
      rng=jax.random.PRNGKey(0) if rng is None else rng))


# ----------------------------------------------------------------------------------------------------------
# log_dk


def test_log_dk_of_hand_built_logits_is_log_d():
  d = np.array([0.01, 0.2, 0.5, 0.77, 0.999])
  got = np.asarray(policies.log_dk(logits_from_d(d)))
  np.testing.assert_allclose(got, np.log(d), rtol=1e-5, atol=1e-6)


def test_log_dk_matches_float64_log_softmax_and_survives_extremes():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 5, (7, 3, V + 1))
  expected = logits[..., -1] - np.log(np.exp(logits).sum(-1))
  got = np.asarray(policies.log_dk(jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  # Large logits must not overflow; a plain LM's <dk> logit is -inf, so log d is -inf, never NaN.
  extreme = jnp.array([[1e4, 0, 0, 0, 1e4 - 2.0], [0, 0, 0, 0, -jnp.inf]], jnp.float32)
  got = np.asarray(policies.log_dk(extreme))
  # float32 spacing near 1e4 is 1e-3, so that is the accuracy to expect.
  np.testing.assert_allclose(got[0], -2.0 - np.log1p(np.exp(-2.0)), atol=2e-3)
  assert got[1] == -np.inf


# ----------------------------------------------------------------------------------------------------------
# stop_steps on hand-built d's


@pytest.mark.parametrize("tau", [0.1, 0.35, 0.5, 0.8])
def test_threshold_stops_at_first_d_not_above_tau(tau):
  rng = np.random.default_rng(1)
  num_steps = 4
  d = random_d(rng, (300, num_steps), avoid=[tau], margin=1e-3)
  # The last step's d is ignored: that step must answer.
  expected = first_true_or_last(d[:, :-1] <= tau)
  got = np.asarray(stop_steps("threshold", logits_from_d(d), tau=tau))
  np.testing.assert_array_equal(got, expected)
  assert len(np.unique(expected)) == num_steps  # every stopping step occurs, so the check is not lopsided


def test_threshold_hand_cases():
  d = np.array([[0.9, 0.2, 0.9, 0.9],    # first d <= 0.5 at step 1
                [0.3, 0.9, 0.9, 0.9],    # answers at once
                [0.9, 0.9, 0.9, 0.99],   # never below tau: forced to answer at the last step
                [0.9, 0.9, 0.6, 0.01]])  # below tau only at the last step, which answers anyway
  got = np.asarray(stop_steps("threshold", logits_from_d(d), tau=0.5))
  np.testing.assert_array_equal(got, [1, 0, 3, 3])
  # tau = 1: d <= 1 always, so nothing pauses; tau = 0: every d > 0 pauses until the last step.
  np.testing.assert_array_equal(stop_steps("threshold", logits_from_d(d), tau=1.0), 0)
  np.testing.assert_array_equal(stop_steps("threshold", logits_from_d(d), tau=0.0), 3)


def test_cumulative_hand_case():
  # d = 0.5 at every step: h = [1/2, 1/4, 1/8, 1/8], cumulative [0.5, 0.75, 0.875, 1].
  d = np.full((1, 4), 0.5)
  for q, stop in [(0.4, 0), (0.6, 1), (0.8, 2), (0.9, 3), (1.0, 3)]:
    got = np.asarray(stop_steps("cumulative", logits_from_d(d), q=q))
    np.testing.assert_array_equal(got, [stop], err_msg=f"q={q}")


@pytest.mark.parametrize("q", [0.2, 0.5, 0.75, 0.95])
def test_cumulative_stops_where_halting_mass_reaches_q(q):
  rng = np.random.default_rng(2)
  num_steps = 4
  d = rng.uniform(0.02, 0.98, (400, num_steps))
  cumulative = np.cumsum(halting(d), axis=-1)
  # Keep only rows whose decisions are not within float error of q.
  d = d[(np.abs(cumulative[:, :-1] - q) > 1e-3).all(-1)]
  cumulative = np.cumsum(halting(d), axis=-1)
  expected = first_true_or_last(cumulative[:, :-1] >= q)
  got = np.asarray(stop_steps("cumulative", logits_from_d(d), q=q))
  np.testing.assert_array_equal(got, expected)
  assert len(d) > 100 and len(np.unique(expected)) >= 3


def test_never_and_always():
  rng = np.random.default_rng(3)
  d = rng.uniform(0.02, 0.98, (5, 6, 4))
  np.testing.assert_array_equal(stop_steps("never", logits_from_d(d)), np.zeros((5, 6)))
  np.testing.assert_array_equal(stop_steps("always", logits_from_d(d)), np.full((5, 6), 3))


@pytest.mark.parametrize("policy", policies.POLICIES)
def test_single_step_means_no_pause(policy):
  # S = 1 (K = 0): step 0 is also the last step, so every policy answers there, even at d near 1.
  logits = logits_from_d(np.full((8, 1), 0.999))
  np.testing.assert_array_equal(stop_steps(policy, logits, tau=0.0, q=1.0), np.zeros(8))


# ----------------------------------------------------------------------------------------------------------
# wants_pause


@pytest.mark.parametrize("policy", policies.POLICIES)
def test_last_step_never_pauses(policy):
  # d = 0.999 makes every policy that can pause want to; at step == num_pauses it must still answer.
  num_pauses = 3
  logits = logits_from_d(np.full((64,), 0.999))
  at_last = call_wants_pause(policy, logits, num_pauses, num_pauses, tau=0.0, q=1.0)
  assert not at_last.any()
  before_last = call_wants_pause(policy, logits, num_pauses - 1, num_pauses, tau=0.0, q=1.0)
  if policy != "never":
    assert before_last.mean() > 0.9  # sample pauses with probability 0.999 per draw
  else:
    assert not before_last.any()


def test_wants_pause_is_elementwise_over_steps():
  logits = logits_from_d(np.full((4,), 0.9))
  np.testing.assert_array_equal(call_wants_pause("always", logits, jnp.arange(4), 3),
                                [True, True, True, False])
  np.testing.assert_array_equal(call_wants_pause("threshold", logits, jnp.arange(4), 3, tau=0.5),
                                [True, True, True, False])


def test_threshold_is_a_strict_comparison_on_d():
  d = np.array([0.2, 0.45, 0.55, 0.9])
  np.testing.assert_array_equal(call_wants_pause("threshold", logits_from_d(d), 0, 3, tau=0.5),
                                d > 0.5)


def test_cumulative_uses_the_given_survival():
  # Reached step j with R_j = 0.5 and d_j = 0.5: the mass still running after j is R_j d_j = 0.25,
  # so halted mass is 0.75. Stop iff 0.75 >= q.
  logits = logits_from_d(np.array([0.5]))
  for q, pause in [(0.7, False), (0.8, True)]:
    got = call_wants_pause("cumulative", logits, 1, 3, q=q, log_survival=np.log(0.5))
    np.testing.assert_array_equal(got, [pause], err_msg=f"q={q}")


def test_model_without_dk_never_pauses():
  # A max_pauses = 0 model emits a -inf <dk> logit: d = 0, so even tau = 0 or q = 1 must not pause.
  logits = jnp.array([[0.3, -1.0, 2.0, 0.0, -jnp.inf]], jnp.float32)
  assert not call_wants_pause("threshold", logits, 0, 3, tau=0.0).any()
  assert not call_wants_pause("cumulative", logits, 0, 3, q=1.0).any()
  assert not call_wants_pause("sample", logits, 0, 3).any()


def test_sample_pause_frequency_at_step_zero_is_d0():
  d0 = 0.3
  logits = logits_from_d(np.array(d0))  # one decision [V+1]
  num_draws = 4000
  keys = jax.random.split(jax.random.PRNGKey(7), num_draws)
  draws = jax.vmap(lambda key: wants_pause(
      "sample", logits, jnp.int32(0), 3, tau=jnp.float32(0.5), q=jnp.float32(0.5),
      log_survival=jnp.float32(0.0), rng=key))(keys)
  frequency = float(np.asarray(draws).mean())
  sigma = np.sqrt(d0 * (1 - d0) / num_draws)
  assert abs(frequency - d0) < 5 * sigma, (frequency, d0)


def test_sample_stopping_distribution_is_the_halting_distribution():
  # Identical tokens in a batch draw independently, so the stopping steps are samples from h.
  d = np.array([0.3, 0.6, 0.5, 0.9])
  expected = halting(d)  # [0.7, 0.12, 0.09, 0.09]
  num_rows = 20000
  logits = logits_from_d(np.broadcast_to(d, (num_rows, 4)))
  stops = np.asarray(stop_steps("sample", logits, rng=jax.random.PRNGKey(11)))
  frequencies = np.bincount(stops, minlength=4) / num_rows
  sigma = np.sqrt(expected * (1 - expected) / num_rows)
  assert (np.abs(frequencies - expected) < 5 * sigma).all(), (frequencies, expected)


# ----------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_policy_is_rejected_by_name():
  logits = logits_from_d(np.full((2, 3), 0.5))
  with pytest.raises(ValueError, match="policy.*'bogus'"):
    policies.check_policy("bogus")
  with pytest.raises(ValueError, match="policy.*'bogus'"):
    policies.stop_steps("bogus", logits)
  with pytest.raises(ValueError, match="policy.*'bogus'"):
    call_wants_pause("bogus", logits[:, 0], 0, 2, jit=False)


@pytest.mark.parametrize("tau", [-0.1, 1.5])
def test_bad_tau_is_rejected_by_name(tau):
  with pytest.raises(ValueError, match=f"tau.*{tau}"):
    policies.check_policy("threshold", tau=tau)
  with pytest.raises(ValueError, match=f"tau.*{tau}"):
    policies.stop_steps("threshold", logits_from_d(np.full((2, 3), 0.5)), tau=tau)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
def test_bad_q_is_rejected_by_name(q):
  with pytest.raises(ValueError, match=f"q .*{q}"):
    policies.check_policy("cumulative", q=q)
  with pytest.raises(ValueError, match=f"q .*{q}"):
    policies.stop_steps("cumulative", logits_from_d(np.full((2, 3), 0.5)), q=q)


def test_boundary_parameters_are_accepted():
  # tau may be 0 or 1 and q may be 1 (the ranges are [0, 1] and (0, 1]); nothing should raise.
  for tau in (0.0, 1.0):
    policies.check_policy("threshold", tau=tau)
  policies.check_policy("cumulative", q=1.0)
