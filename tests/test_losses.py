"""Tests for cyb_jax/losses.py against independent float64 references (DESIGN.md sections 4 and 5).

The reference below never calls the code under test. It takes the softmax over all V+1 classes of every
step, reads d_j (the `<dk>` probability) and a_j (the target probability renormalised over the real
tokens) off it, and enumerates every way a token's rollout can end, as a tree of events: at each step
before the last, the world may force an answer (hazard omega), else the model answers or pauses; the last
step always answers. Every expected value is a sum over those paths in plain Python floats (float64).
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cyb_jax import losses

S, V = 3, 5          # steps per token (K = 2 pauses) and real vocabulary
B, N = 3, 7          # tokens are laid out [B, N]
HP = dict(gamma=0.8, omega=0.15, prior=(0.5, 0.3, 0.2), beta=0.3, cost=0.2)
PRIORS = {1: (1.0,), 2: (0.6, 0.4), 3: (0.5, 0.3, 0.2), 4: (0.4, 0.3, 0.2, 0.1)}
TOL = dict(rtol=1e-5, atol=2e-5)  # float32 maths on O(1..10) values


# ----------------------------------------------------------------------------------------------------------
# Independent reference.


def _logsumexp(xs):
  top = max(xs)
  if top == -math.inf:
    return top
  return top + math.log(sum(math.exp(x - top) for x in xs))


def _softmax(row):
  top = max(row)
  weights = [math.exp(x - top) for x in row]
  total = sum(weights)
  return [w / total for w in weights]


def _token_from_logits(z, y):
  """(log a, d, stop) of one token, z [S, V+1] with <dk> last, from the V+1-way softmax.

  a_j = p(y) / (1 - d_j) is the softmax renormalised over the real tokens, kept as a log so that logits
  of 1e4 do not underflow it. stop_j = 1 - d_j is summed over the real classes rather than subtracted,
  so it stays exact when d_j is within 1e-35 of 1. The last step cannot pause: d_K = 0, stop_K = 1.
  """
  num_steps, num_classes = z.shape
  vocab = num_classes - 1
  log_a, d, stop = [], [], []
  for j in range(num_steps):
    row = [float(x) for x in z[j]]
    full = _softmax(row)
    log_a.append(row[y] - _logsumexp(row[:vocab]))
    last = j == num_steps - 1
    d.append(0.0 if last else full[vocab])
    stop.append(1.0 if last else sum(full[:vocab]))
  return log_a, d, stop


def _token_from_stats(t, u, c):
  """(log a, d, stop) from the three numbers t_j, u_j, c_j, by their definitions in DESIGN.md section 4."""
  num_steps = len(t)
  log_a = [float(t[j]) - float(u[j]) for j in range(num_steps)]
  d = [1.0 / (1.0 + math.exp(float(u[j]) - float(c[j]))) for j in range(num_steps - 1)] + [0.0]
  stop = [1.0 / (1.0 + math.exp(float(c[j]) - float(u[j]))) for j in range(num_steps - 1)] + [1.0]
  return log_a, d, stop


def _path_ends(d, stop, omega=0.0):
  """Every path through the rollout as (stopping step, probability); the probabilities sum to 1."""
  last = len(d) - 1
  ends = []

  def walk(j, prob):
    if j == last:
      ends.append((j, prob))
      return
    ends.append((j, prob * omega))                   # the world demands an answer now
    ends.append((j, prob * (1 - omega) * stop[j]))   # the model answers
    walk(j + 1, prob * (1 - omega) * d[j])           # the model pauses

  walk(0, 1.0)
  return ends


def _halt(d, stop):
  h = [0.0] * len(d)
  for j, prob in _path_ends(d, stop):
    h[j] += prob
  return h


def _log(x):
  return math.log(x) if x > 0 else -math.inf


def _token_reference(log_a, d, stop, *, gamma, omega, prior, beta, cost):
  h = _halt(d, stop)
  nll = [-x for x in log_a]
  expected_nll = sum(hj * n for hj, n in zip(h, nll))
  tau = sum(j * hj for j, hj in enumerate(h))
  kl = sum(hj * math.log(hj / pj) for hj, pj in zip(h, prior) if hj > 0)
  # log sum over paths of P(path) gamma^j a_j, summed in log space because a_j may be e^-20000.
  log_reward = _logsumexp([math.log(prob) + j * math.log(gamma) + log_a[j]
                           for j, prob in _path_ends(d, stop, omega) if prob > 0])
  survival, r = [], 1.0
  for dj in d:
    survival.append(r)
    r *= dj
  return dict(
      ce=nll[0], pause_ce=nll[-1], cyb_ap=-log_reward, cyb_va=expected_nll + beta * kl,
      cyb_dp=expected_nll + cost * tau, anytime=sum(nll) / len(nll), tau=tau, h=h, nll=nll,
      log_answer=list(log_a), log_continue=[_log(x) for x in d],
      log_stop=[_log(x) for x in stop], log_survival=[_log(x) for x in survival],
      log_halt=[_log(x) for x in h])


def reference(logits, targets, **hp):
  """The reference for every token of logits [..., S, V+1]; per-step entries come back as [..., S]."""
  logits = np.asarray(logits, np.float64)
  targets = np.asarray(targets)
  hp = {**HP, "prior": PRIORS[logits.shape[-2]], **hp}
  rows = {}
  for index in np.ndindex(targets.shape):
    log_a, d, stop = _token_from_logits(logits[index], int(targets[index]))
    for key, value in _token_reference(log_a, d, stop, **hp).items():
      rows.setdefault(key, []).append(value)
  return {k: np.asarray(v, np.float64).reshape(targets.shape + np.shape(v[0])) for k, v in rows.items()}


def masked_mean(values, mask):
  """Mean over unmasked tokens of [...] or [..., S] values, in float64."""
  return np.asarray(values)[np.asarray(mask, bool)].mean(axis=0)


def random_problem(seed, lead=(B, N), num_steps=S, vocab=V, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=lead + (num_steps, vocab + 1))).astype(np.float32)
  targets = rng.integers(0, vocab, size=lead).astype(np.int32)
  return logits, targets


def some_masked(seed, lead=(B, N)):
  mask = np.random.default_rng(seed).random(lead) < 0.6
  mask.flat[0], mask.flat[-1] = True, False  # at least one of each
  return mask


# ----------------------------------------------------------------------------------------------------------
# Jitted pipelines shared by several tests (one compile per input shape and dtype).


def _pipeline(objective, logits, targets, mask, **hp):
  return losses.objective_loss(objective, losses.step_stats(logits, targets, mask), mask, **hp)


@jax.jit
def _all_objectives(logits, targets, mask, cost):
  """(loss, aux) of every objective; the DP cost is traced, as the dual variable in a train state is."""
  hp = {**HP, "cost": cost, "anytime_weight": 0.5}
  return {name: _pipeline(name, logits, targets, mask, **hp) for name in losses.OBJECTIVES}


@jax.jit
def _values_and_grads(logits, targets, mask):
  out = {}
  for name in losses.OBJECTIVES:
    out[name] = jax.value_and_grad(lambda x, name=name: _pipeline(name, x, targets, mask, **HP)[0])(logits)
  # omega = 0 takes the log(0) branch inside cyb_ap.
  out["cyb_ap_omega0"] = jax.value_and_grad(
      lambda x: _pipeline("cyb_ap", x, targets, mask, gamma=0.9, omega=0.0)[0])(logits)
  return out


def _per_token_all(logits, targets):
  stats = losses.step_stats(logits, targets)
  return {name: losses.per_token_loss(name, stats, **HP) for name in losses.OBJECTIVES}


# ----------------------------------------------------------------------------------------------------------
# 1. Values against the brute-force reference.


def test_step_stats_match_numpy():
  logits, targets = random_problem(0)
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  z = logits.astype(np.float64)
  top = z[..., :V].max(-1)
  expected_lse = top + np.log(np.exp(z[..., :V] - top[..., None]).sum(-1))
  expected_target = np.take_along_axis(z, np.broadcast_to(targets[..., None, None], (B, N, S, 1)), -1)[..., 0]
  for field in (stats.target_logit, stats.vocab_lse, stats.dk_logit):
    chex.assert_shape(field, (B, N, S))
    assert field.dtype == jnp.float32
  np.testing.assert_allclose(stats.target_logit, expected_target, **TOL)
  np.testing.assert_allclose(stats.vocab_lse, expected_lse, **TOL)
  np.testing.assert_allclose(stats.dk_logit, z[..., V], **TOL)
  assert stats.num_steps == S


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_step_stats_gradient_matches_plain_autodiff(dtype):
  """step_stats (through step_stats_parts, the <dk> column kept apart) against jax's own gradient of the
  plain formulas on the joined logits: a masked copy, a gather, a log-sum-exp over the real vocabulary,
  the <dk> column. Every output gets its own random cotangent; masked tokens hold NaN and inf and must get
  gradient 0."""
  logits, targets = random_problem(3)
  rs = np.random.RandomState(4)
  mask = rs.rand(B, N) < 0.7
  logits[~mask] = np.nan
  logits[~mask, 0, 0] = np.inf
  weights = [jnp.asarray(rs.randn(B, N, S), jnp.float32) for _ in range(3)]

  def plain(x):
    x = jnp.where(jnp.asarray(mask)[..., None, None], x.astype(jnp.float32), 0.0)
    safe_targets = jnp.where(mask, targets, 0)
    target = jnp.take_along_axis(x, jnp.asarray(safe_targets)[..., None, None], axis=-1)[..., 0]
    return target, jax.nn.logsumexp(x[..., :V], axis=-1), x[..., V]

  def fused(x):
    stats = losses.step_stats(x, jnp.asarray(targets), jnp.asarray(mask))
    return stats.target_logit, stats.vocab_lse, stats.dk_logit

  def weighted(fn):
    return lambda x: sum(jnp.sum(w * out) for w, out in zip(weights, fn(x)))

  x = jnp.asarray(logits, dtype)
  for got, want in zip(fused(x), plain(x)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  got, want = jax.grad(weighted(fused))(x), jax.grad(weighted(plain))(x)
  assert got.dtype == want.dtype == dtype
  tol = dict(rtol=1e-2, atol=1e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
  assert np.all(np.asarray(got, np.float32)[~mask] == 0.0)


@pytest.mark.parametrize("num_steps,vocab", [(3, 5), (4, 2), (2, 1)])
def test_halting_matches_enumeration(num_steps, vocab):
  logits, targets = random_problem(1, lead=(7,), num_steps=num_steps, vocab=vocab)
  ref = reference(logits, targets)
  h = losses.halting(losses.step_stats(jnp.asarray(logits), jnp.asarray(targets)))
  for field in ("log_answer", "log_continue", "log_stop", "log_survival", "log_halt"):
    # assert_allclose also requires the -inf at the last step's log_continue in the same places.
    np.testing.assert_allclose(getattr(h, field), ref[field], err_msg=field, **TOL)
  np.testing.assert_allclose(np.exp(np.asarray(h.log_halt, np.float64)).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("num_steps,vocab", [(3, 5), (4, 2), (2, 1)])
def test_objectives_match_enumeration(num_steps, vocab):
  logits, targets = random_problem(2, lead=(7,), num_steps=num_steps, vocab=vocab)
  hp = dict(gamma=0.7, omega=0.25, prior=PRIORS[num_steps], beta=0.4, cost=0.3)
  ref = reference(logits, targets, **hp)
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(losses.ce(stats), ref["ce"], **TOL)
  np.testing.assert_allclose(losses.pause_ce(stats), ref["pause_ce"], **TOL)
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=0.7, omega=0.25), ref["cyb_ap"], **TOL)
  np.testing.assert_allclose(losses.cyb_va(stats, prior=hp["prior"], beta=0.4), ref["cyb_va"], **TOL)
  np.testing.assert_allclose(losses.cyb_dp(stats, cost=0.3), ref["cyb_dp"], **TOL)
  np.testing.assert_allclose(losses.expected_pauses(stats), ref["tau"], **TOL)
  np.testing.assert_allclose(losses.anytime_term(stats), ref["anytime"], **TOL)
  for name in losses.OBJECTIVES:
    # The anytime term is added to the CYB objectives only.
    extra = 1.5 * ref["anytime"] if name.startswith("cyb") else 0.0
    np.testing.assert_allclose(losses.per_token_loss(name, stats, anytime_weight=1.5, **hp),
                               ref[name] + extra, err_msg=name, **TOL)


def test_geometric_prior_by_hand():
  # p (1-p)^j = 1/2, 1/4, 1/8, normalised by 7/8.
  np.testing.assert_allclose(losses.geometric_prior(3, 0.5), [4 / 7, 2 / 7, 1 / 7], rtol=1e-6)
  np.testing.assert_allclose(losses.geometric_prior(1, 0.3), [1.0], rtol=1e-6)
  # DESIGN.md's default: p = 0.7, S = 4, weights 0.7, 0.21, 0.063, 0.0189 (sum 0.9919),
  # mean (0.21 + 2 * 0.063 + 3 * 0.0189) / 0.9919 = 0.3927 / 0.9919, "about 0.4 pauses".
  prior = losses.geometric_prior(4, 0.7)
  np.testing.assert_allclose(prior, np.array([0.7, 0.21, 0.063, 0.0189]) / 0.9919, rtol=1e-6)
  np.testing.assert_allclose((prior * np.arange(4)).sum(), 0.3927 / 0.9919, rtol=1e-6)
  for p in (0.0, -0.2, 1.5):
    with pytest.raises(ValueError, match="p"):
      losses.geometric_prior(3, p)
  with pytest.raises(ValueError, match="num_steps"):
    losses.geometric_prior(0, 0.5)


def test_dual_update_by_hand():
  # Exact binary fractions: 0.25 + 0.5 * (0.75 - 0.5) = 0.375.
  np.testing.assert_allclose(losses.dual_update(0.25, 0.75, budget=0.5, lr=0.5), 0.375, rtol=0, atol=1e-7)
  # Below budget the cost shrinks: 1.0 + 0.5 * (0.25 - 0.5) = 0.875.
  np.testing.assert_allclose(losses.dual_update(jnp.float32(1.0), jnp.float32(0.25), budget=0.5, lr=0.5),
                             0.875, rtol=0, atol=1e-7)
  # Projected to zero rather than going negative: 0.125 + 1 * (0 - 0.5) < 0.
  assert float(losses.dual_update(0.125, 0.0, budget=0.5, lr=1.0)) == 0.0
  # Traced cost and mean, concrete budget and lr, as in the train step.
  step = jax.jit(functools.partial(losses.dual_update, budget=1.0, lr=0.25))
  np.testing.assert_allclose(step(jnp.float32(0.5), jnp.float32(3.0)), 1.0, rtol=0, atol=1e-7)
  with pytest.raises(ValueError, match="budget"):
    losses.dual_update(0.1, 0.2, budget=-0.5, lr=0.1)
  with pytest.raises(ValueError, match="lr"):
    losses.dual_update(0.1, 0.2, budget=0.5, lr=-0.1)


# ----------------------------------------------------------------------------------------------------------
# 2. Closed-form optima of DESIGN.md section 5, reached by training the <dk> logits alone.


def _optimise_dk(objective, answer_probs, num_iters, schedule, **hp):
  """Trains only the <dk> logits [T, S] of tokens whose a_j are `answer_probs` [T, S]; returns h [T, S].

  Real-vocab logits are log a_j for the target (id 0) and log((1 - a_j) / 3) for three other tokens,
  so their log-normaliser is 0 and d_j = sigmoid(dk_j) exactly.
  """
  a = np.asarray(answer_probs, np.float64)
  tokens, num_steps = a.shape
  real = np.concatenate([np.log(a)[..., None], np.repeat(np.log((1 - a) / 3)[..., None], 3, -1)], -1)
  real = jnp.asarray(real, jnp.float32)
  targets = jnp.zeros((tokens,), jnp.int32)
  mask = jnp.ones((tokens,), bool)

  def loss_fn(dk):
    logits = jnp.concatenate([real, dk[..., None]], axis=-1)
    return _pipeline(objective, logits, targets, mask, **hp)[0]

  optimiser = optax.adam(schedule)

  @jax.jit
  def train(dk):
    def step(carry, _):
      dk, state = carry
      updates, state = optimiser.update(jax.grad(loss_fn)(dk), state, dk)
      return (optax.apply_updates(dk, updates), state), None
    (dk, _), _ = jax.lax.scan(step, (dk, optimiser.init(dk)), None, length=num_iters)
    return dk

  dk = np.asarray(train(jnp.zeros((tokens, num_steps), jnp.float32)), np.float64)
  halts = []
  for row in dk:
    d = [1 / (1 + math.exp(-c)) for c in row[:-1]] + [0.0]
    stop = [1 / (1 + math.exp(c)) for c in row[:-1]] + [1.0]
    halts.append(_halt(d, stop))
  return np.asarray(halts)


# Each row has a different best step. For AP (gamma 0.9) on ANSWER_PROBS gamma^j a_j is [.2, .63, .567],
# [.6, .45, .729], [.8, .765, .729]; for DP (cost 0.3) on DP_ANSWER_PROBS -log a_j + 0.3 j is [1.61, .66, .96],
# [1.20, .99, .65], [.51, .66, .82].
ANSWER_PROBS = [[0.2, 0.7, 0.7], [0.6, 0.5, 0.9], [0.8, 0.85, 0.9]]
DP_ANSWER_PROBS = [[0.2, 0.7, 0.7], [0.3, 0.5, 0.95], [0.6, 0.7, 0.8]]


def test_ap_optimum_halts_at_best_discounted_answer():
  a = np.asarray(ANSWER_PROBS)
  best = np.argmax(0.9 ** np.arange(S) * a, axis=-1)
  np.testing.assert_array_equal(best, [1, 2, 0])
  h = _optimise_dk("cyb_ap", a, 500, 0.1, gamma=0.9, omega=0.0)
  assert np.all(h[np.arange(3), best] > 0.99), h


def test_dp_optimum_halts_at_cheapest_step():
  a = np.asarray(DP_ANSWER_PROBS)
  best = np.argmin(-np.log(a) + 0.3 * np.arange(S), axis=-1)
  np.testing.assert_array_equal(best, [1, 2, 0])
  h = _optimise_dk("cyb_dp", a, 500, 0.1, cost=0.3)
  assert np.all(h[np.arange(3), best] > 0.99), h


def test_va_optimum_is_prior_times_tempered_answers():
  a = np.asarray(ANSWER_PROBS)
  prior, beta = np.array([0.5, 0.3, 0.2]), 0.5
  # Minimising sum_j h_j (-log a_j) + beta KL(h || prior) over the simplex: h_j ~ prior_j a_j^(1/beta).
  target = prior * a ** (1 / beta)
  target /= target.sum(-1, keepdims=True)
  h = _optimise_dk("cyb_va", a, 2000, optax.cosine_decay_schedule(0.1, 2000), prior=tuple(prior), beta=beta)
  np.testing.assert_allclose(h, target, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# 3. Reductions.


def test_single_step_reduces_to_ce():
  logits, targets = random_problem(3, lead=(7,), num_steps=1)
  expected = reference(logits, targets)["ce"]
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(losses.ce(stats), expected, **TOL)
  np.testing.assert_allclose(losses.pause_ce(stats), expected, **TOL)
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=0.5, omega=0.3), expected, **TOL)
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=1.0, omega=0.0), expected, **TOL)
  np.testing.assert_allclose(losses.cyb_va(stats, prior=(1.0,), beta=0.7), expected, **TOL)
  np.testing.assert_allclose(losses.cyb_dp(stats, cost=2.0), expected, **TOL)
  np.testing.assert_allclose(losses.expected_pauses(stats), 0.0, atol=1e-7)


def test_forced_answers_reduce_to_ce():
  logits, targets = random_problem(4, lead=(7,))
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  expected = reference(logits, targets)["ce"]
  # The path sum differs from -log a_0 by O(1 - omega); the tolerance is for that, not float error.
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=0.6, omega=1 - 1e-6), expected, rtol=0, atol=1e-4)
  with pytest.raises(ValueError, match="omega"):
    losses.cyb_ap(stats, gamma=0.6, omega=1.0)


def test_undiscounted_unforced_ap_is_marginal_likelihood():
  logits, targets = random_problem(5, lead=(7,))
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  expected = []
  for z, y in zip(logits.astype(np.float64), targets):
    log_a, d, stop = _token_from_logits(z, int(y))
    expected.append(-math.log(sum(hj * math.exp(la) for hj, la in zip(_halt(d, stop), log_a))))
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=1.0, omega=0.0), expected, **TOL)


# ----------------------------------------------------------------------------------------------------------
# 4. Stability.


def _dk_logits(seed, dk_value):
  logits, targets = random_problem(seed)
  logits[..., V] = dk_value
  return logits, targets


# -inf is a <dk> probability of exactly 0 (pausing forbidden), so h_j = 0 and log h_j = -inf for j > 0.
@pytest.mark.parametrize("dk_value", [-np.inf, -1e4, -80.0, 80.0, 1e4])
def test_extreme_dk_probabilities_are_finite_and_right(dk_value):
  logits, targets = _dk_logits(6, dk_value)
  mask = np.ones((B, N), bool)
  out = _values_and_grads(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  # The reference takes d_j = 1 or 0 exactly at +-1e4 (the float64 softmax saturates), the true limit.
  ref = reference(logits, targets)
  ref_omega0 = reference(logits, targets, gamma=0.9, omega=0.0)
  for name, (value, grad) in out.items():
    chex.assert_tree_all_finite((value, grad))
    expected = ref_omega0["cyb_ap"] if name == "cyb_ap_omega0" else ref[name]
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-5, atol=1e-4, err_msg=name)


def test_huge_logits_are_finite_and_right():
  rng = np.random.default_rng(7)
  logits = (1e4 * rng.choice([-1.0, 1.0], size=(B, N, S, V + 1))).astype(np.float32)
  targets = rng.integers(0, V, size=(B, N)).astype(np.int32)
  out = _values_and_grads(jnp.asarray(logits), jnp.asarray(targets), jnp.ones((B, N), bool))
  ref = reference(logits, targets)
  ref_omega0 = reference(logits, targets, gamma=0.9, omega=0.0)
  for name, (value, grad) in out.items():
    chex.assert_tree_all_finite((value, grad))
    expected = ref_omega0["cyb_ap"] if name == "cyb_ap_omega0" else ref[name]
    # float32 spacing at 1e4 is 1e-3, so log-normalisers such as 1e4 + log 2, and with them the halting
    # probabilities, carry ~1e-3 relative error, which the 2e4-sized -log a_j then multiply.
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-3, err_msg=name)


def test_bfloat16_logits():
  logits, targets = random_problem(8)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  out = _values_and_grads(logits_bf16, jnp.asarray(targets), jnp.ones((B, N), bool))
  # The maths runs in float32 on the bfloat16 values, so the reference sees the rounded logits.
  ref = reference(np.asarray(logits_bf16.astype(jnp.float32)), targets)
  ref_omega0 = reference(np.asarray(logits_bf16.astype(jnp.float32)), targets, gamma=0.9, omega=0.0)
  for name, (value, grad) in out.items():
    chex.assert_tree_all_finite((value, grad))
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16, name
    expected = ref_omega0["cyb_ap"] if name == "cyb_ap_omega0" else ref[name]
    np.testing.assert_allclose(value, expected.mean(), **TOL, err_msg=name)


# ----------------------------------------------------------------------------------------------------------
# 5. Masking.


def _poisoned(seed):
  """Logits and targets whose masked tokens hold NaN, +-inf and out-of-range ids."""
  logits, targets = random_problem(seed)
  mask = some_masked(seed)
  poison = np.array([np.nan, np.inf, -np.inf], np.float32)
  hidden = ~mask
  logits[hidden] = np.random.default_rng(seed).choice(poison, size=(hidden.sum(), S, V + 1))
  targets[hidden] = np.resize(np.array([-1, V, 99], np.int32), hidden.sum())
  return logits, targets, mask


def test_masked_tokens_contribute_nothing():
  logits, targets, mask = _poisoned(9)
  clean_logits = np.where(mask[..., None, None], logits, 0.0)
  clean_targets = np.where(mask, targets, 0)
  ref = reference(clean_logits, clean_targets)
  ref_omega0 = reference(clean_logits, clean_targets, gamma=0.9, omega=0.0)
  out = _values_and_grads(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  for name, (value, grad) in out.items():
    expected = ref_omega0["cyb_ap"] if name == "cyb_ap_omega0" else ref[name]
    np.testing.assert_allclose(value, masked_mean(expected, mask), **TOL, err_msg=name)
    grad = np.asarray(grad)
    assert np.all(grad[~mask] == 0.0), name
    assert np.all(np.isfinite(grad[mask])), name
    assert np.any(grad[mask] != 0.0), name


def test_masked_targets_out_of_range_are_accepted_when_concrete():
  logits, targets, mask = _poisoned(10)
  # Concrete targets and mask: step_stats range-checks only the unmasked targets.
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  chex.assert_tree_all_finite(stats)
  z = logits.astype(np.float64)
  for index in zip(*np.nonzero(mask)):
    np.testing.assert_allclose(stats.target_logit[index], z[index][:, targets[index]], **TOL)
  bound = jax.jit(functools.partial(_pipeline, "cyb_va", targets=targets, mask=mask, **HP))
  loss, _ = bound(jnp.asarray(logits))
  ref = reference(np.where(mask[..., None, None], logits, 0.0), np.where(mask, targets, 0))
  np.testing.assert_allclose(loss, masked_mean(ref["cyb_va"], mask), **TOL)


def test_masked_stats_have_zero_gradient():
  rng = np.random.default_rng(11)
  stats = np.stack([rng.normal(size=(B, N, S)), rng.normal(size=(B, N, S)) + 1.0,
                    rng.normal(size=(B, N, S))]).astype(np.float32)
  mask = some_masked(11)
  poison = np.array([np.nan, np.inf, -np.inf], np.float32)
  clean = stats.copy()
  stats[:, ~mask] = rng.choice(poison, size=stats[:, ~mask].shape)

  expected = {}
  for index in zip(*np.nonzero(mask)):
    log_a, d, stop = _token_from_stats(*clean[(slice(None),) + index])
    for key, value in _token_reference(log_a, d, stop, **HP).items():
      expected.setdefault(key, []).append(value)

  @jax.jit
  def grads(stats_3BNS, mask):
    as_stats = lambda x: losses.StepStats(target_logit=x[0], vocab_lse=x[1], dk_logit=x[2])
    return {name: jax.value_and_grad(lambda x, name=name: losses.objective_loss(
        name, as_stats(x), mask, **HP)[0])(stats_3BNS) for name in losses.OBJECTIVES}

  for name, (value, grad) in grads(jnp.asarray(stats), jnp.asarray(mask)).items():
    np.testing.assert_allclose(value, np.mean(expected[name]), **TOL, err_msg=name)
    grad = np.asarray(grad)
    assert np.all(grad[:, ~mask] == 0.0), name
    assert np.all(np.isfinite(grad[:, mask])), name


def test_all_tokens_masked():
  logits, targets = random_problem(12)
  mask = np.zeros((B, N), bool)
  out = _all_objectives(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.float32(0.2))
  for name, (loss, aux) in out.items():
    assert float(loss) == 0.0, name
    assert float(aux.num_tokens) == 0.0, name
    chex.assert_tree_all_finite(aux)


# ----------------------------------------------------------------------------------------------------------
# 6. Transformations.


def test_jit_with_traced_cost_matches_reference():
  logits, targets = random_problem(13)
  mask = some_masked(13)
  cost = 0.35
  ref = reference(logits, targets, cost=cost)
  out = _all_objectives(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.float32(cost))
  for name, (loss, _) in out.items():
    extra = 0.5 * ref["anytime"] if name.startswith("cyb") else 0.0
    np.testing.assert_allclose(loss, masked_mean(ref[name] + extra, mask), **TOL, err_msg=name)


def test_vmap_matches_reference():
  logits, targets = random_problem(14)
  mask = some_masked(14)
  ref = reference(logits, targets)
  per_token = jax.vmap(_per_token_all)(jnp.asarray(logits), jnp.asarray(targets))
  per_sequence = jax.vmap(functools.partial(_pipeline, "cyb_ap", **HP))(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  for name in losses.OBJECTIVES:
    chex.assert_shape(per_token[name], (B, N))
    np.testing.assert_allclose(per_token[name], ref[name], **TOL, err_msg=name)
  loss_B, aux_B = per_sequence
  for b in range(B):
    np.testing.assert_allclose(loss_B[b], masked_mean(ref["cyb_ap"][b], mask[b]), **TOL)
    np.testing.assert_allclose(aux_B.num_tokens[b], mask[b].sum())


def _sharded_step(logits, targets, mask):
  per_token = _per_token_all(logits, targets)
  totals = {name: _pipeline(name, logits, targets, mask, **HP)[0] for name in losses.OBJECTIVES}
  return per_token, totals


def test_one_and_eight_devices_match_reference():
  assert jax.device_count() == 8, "conftest.py must ask for 8 fake CPU devices"
  logits, targets = random_problem(15, lead=(8, 3))
  mask = some_masked(15, lead=(8, 3))
  ref = reference(logits, targets)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  sharded = jax.jit(_sharded_step, in_shardings=(batch, batch, batch), out_shardings=(batch, replicated))
  inputs = [jax.device_put(x, batch) for x in (logits, targets, mask)]
  single = jax.jit(_sharded_step)(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  for per_token, totals in (single, sharded(*inputs)):
    for name in losses.OBJECTIVES:
      np.testing.assert_allclose(per_token[name], ref[name], **TOL, err_msg=name)
      np.testing.assert_allclose(totals[name], masked_mean(ref[name], mask), **TOL, err_msg=name)
  per_token, _ = sharded(*inputs)
  assert len({s.device for s in per_token["cyb_va"].addressable_shards}) == 8


def test_shard_map_matches_reference():
  logits, targets = random_problem(16, lead=(8, 3))
  ref = reference(logits, targets)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  per_token = jax.jit(jax.shard_map(_per_token_all, mesh=mesh, in_specs=(P("data"), P("data")),
                                    out_specs=P("data")))(jnp.asarray(logits), jnp.asarray(targets))
  for name in losses.OBJECTIVES:
    np.testing.assert_allclose(per_token[name], ref[name], **TOL, err_msg=name)


def test_pmap_matches_reference():
  logits, targets = random_problem(17, lead=(8, 3))
  ref = reference(logits, targets)

  def per_device(logits, targets):
    stats = losses.step_stats(logits, targets)
    return dict(_per_token_all(logits, targets), tau=losses.expected_pauses(stats),
                anytime=losses.anytime_term(stats))

  out = jax.pmap(per_device)(jnp.asarray(logits), jnp.asarray(targets))
  for name, value in out.items():
    np.testing.assert_allclose(value, ref[name], **TOL, err_msg=name)


# ----------------------------------------------------------------------------------------------------------
# 7. Bad arguments fail at trace time, naming the argument.


BAD_HPARAMS = [
    ("cyb_va", dict(prior=(0.5, 0.5)), "prior"),
    ("cyb_va", dict(prior=(0.5, 0.3, 0.1)), "prior"),
    ("cyb_va", dict(prior=(1.2, -0.2, 0.0)), "prior"),
    ("cyb_va", dict(prior=(1.0, 0.0, 0.0)), "prior"),
    ("cyb_va", dict(), "prior"),
    ("cyb_va", dict(prior=(0.5, 0.3, 0.2), beta=-0.1), "beta"),
    ("cyb_ap", dict(gamma=0.0), "gamma"),
    ("cyb_ap", dict(gamma=-0.1), "gamma"),
    ("cyb_ap", dict(gamma=1.5), "gamma"),
    ("cyb_ap", dict(omega=-0.1), "omega"),
    ("cyb_ap", dict(omega=1.0), "omega"),
    ("cyb_dp", dict(cost=-0.1), "cost"),
    ("cyb_dp", dict(anytime_weight=-1.0), "anytime_weight"),
    ("cyb_xx", dict(), "objective"),
]


@pytest.mark.parametrize("objective,hp,name", BAD_HPARAMS)
def test_bad_hyperparameters_raise(objective, hp, name):
  logits, targets = random_problem(18, lead=(7,))
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  mask = jnp.ones((7,), bool)
  with pytest.raises(ValueError, match=name):
    losses.objective_loss(objective, stats, mask, **hp)
  # lower() traces without compiling: the error must come from tracing.
  with pytest.raises(ValueError, match=name):
    jax.jit(functools.partial(losses.objective_loss, objective, **hp)).lower(stats, mask)
  direct = {"cyb_ap": losses.cyb_ap, "cyb_va": losses.cyb_va, "cyb_dp": losses.cyb_dp}.get(objective)
  if direct is not None and name != "anytime_weight" and hp:
    with pytest.raises(ValueError, match=name):
      jax.jit(functools.partial(direct, **hp)).lower(stats)


def test_boundary_hyperparameters_are_accepted():
  logits, targets = random_problem(19, lead=(7,))
  stats = losses.step_stats(jnp.asarray(logits), jnp.asarray(targets))
  ref = reference(logits, targets, gamma=1.0, omega=0.0, beta=0.0, cost=0.0)
  np.testing.assert_allclose(losses.cyb_ap(stats, gamma=1.0, omega=0.0), ref["cyb_ap"], **TOL)
  np.testing.assert_allclose(losses.cyb_va(stats, prior=PRIORS[S], beta=0.0), ref["cyb_va"], **TOL)
  np.testing.assert_allclose(losses.cyb_dp(stats, cost=0.0), ref["cyb_dp"], **TOL)


def test_bad_logits_targets_and_mask_raise():
  logits, targets = random_problem(20, lead=(7,))
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  with pytest.raises(ValueError, match="classes"):
    losses.step_stats(jnp.zeros((7, S, 1)), targets)
  for bad in (V, -1):
    bad_targets = targets.at[3].set(bad)
    with pytest.raises(ValueError, match="targets"):
      losses.step_stats(logits, bad_targets)
    with pytest.raises(ValueError, match="targets"):
      jax.jit(functools.partial(losses.step_stats, targets=bad_targets)).lower(logits)
    # Unmasked, so still out of range.
    mask = jnp.ones((7,), bool).at[0].set(False)
    with pytest.raises(ValueError, match="targets"):
      losses.step_stats(logits, bad_targets, mask)
  stats = losses.step_stats(logits, targets)
  for bad_mask in (jnp.ones((6,), bool), jnp.ones((7, 1), bool), jnp.ones((), bool)):
    with pytest.raises(ValueError, match="mask"):
      losses.objective_loss("ce", stats, bad_mask)
    with pytest.raises(ValueError, match="mask"):
      jax.jit(functools.partial(losses.objective_loss, "cyb_dp", mask=bad_mask, cost=0.1)).lower(stats)
    with pytest.raises(ValueError, match="mask"):
      losses.step_stats(logits, targets, bad_mask)


# ----------------------------------------------------------------------------------------------------------
# 8. Diagnostics.


def test_objective_loss_aux():
  logits, targets = random_problem(21)
  mask = some_masked(21)
  ref = reference(logits, targets)
  out = _all_objectives(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.float32(0.2))
  expected_pauses = {"ce": 0.0, "pause_ce": float(S - 1)}
  for name, (_, aux) in out.items():
    chex.assert_shape((aux.mean_pauses, aux.nll_at_step, aux.halt_distribution, aux.num_tokens),
                      ((), (S,), (S,), ()))
    np.testing.assert_allclose(aux.mean_pauses, expected_pauses.get(name, masked_mean(ref["tau"], mask)),
                               **TOL, err_msg=name)
    np.testing.assert_allclose(aux.nll_at_step, masked_mean(ref["nll"], mask), **TOL, err_msg=name)
    np.testing.assert_allclose(aux.halt_distribution, masked_mean(ref["h"], mask), **TOL, err_msg=name)
    assert float(aux.num_tokens) == mask.sum(), name


@pytest.mark.parametrize("num_steps, p", [(float("nan"), 0.5), (2.5, 0.5), (3, float("nan"))])
def test_geometric_prior_rejects_nan_and_fractional_arguments(num_steps, p):
  with pytest.raises(ValueError, match="num_steps|p must lie"):
    losses.geometric_prior(num_steps, p)
