"""Direct tests of the building blocks in cyb_jax/model/layers.py on inputs where a wrong formula shows
(a zero vector, a vector much smaller than sqrt(epsilon)), against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax.model import layers


def norm(x, epsilon=1e-6, offset=False, scale=None):
  module = layers.RMSNorm(epsilon=epsilon, offset=offset)
  params = module.init(jax.random.PRNGKey(0), x)
  if scale is not None:
    params = {"params": {"scale": jnp.asarray(scale, jnp.float32)}}
  return np.asarray(module.apply(params, x))


def test_rms_norm_takes_epsilon_inside_the_square_root():
  # x = 1e-4 everywhere, epsilon = 1e-6: x / sqrt(x^2 + eps) = 1e-4 / sqrt(1.01e-6) = 0.0995037...
  # (epsilon outside the root, x / (|x| + eps), would give 0.990; without epsilon, 1.0).
  x = jnp.full((1, 4), 1e-4, jnp.float32)
  np.testing.assert_allclose(norm(x), np.full((1, 4), 1e-4 / np.sqrt(1e-8 + 1e-6)), rtol=1e-5)


def test_rms_norm_of_a_zero_vector_is_zero_not_nan():
  out = norm(jnp.zeros((2, 3), jnp.float32))
  assert np.array_equal(out, np.zeros((2, 3)))


def test_rms_norm_hand_case_with_scale_and_offset():
  x = jnp.asarray([[3.0, 4.0]], jnp.float32)          # mean square 12.5
  rms = np.sqrt(12.5 + 1e-6)
  np.testing.assert_allclose(norm(x, scale=[2.0, 0.5]), [[6.0 / rms, 2.0 / rms]], rtol=1e-6)
  # Gemma's flavour stores w and multiplies by (1 + w).
  np.testing.assert_allclose(norm(x, offset=True, scale=[1.0, -0.5]), [[6.0 / rms, 2.0 / rms]], rtol=1e-6)


def test_softcap_hand_values():
  x = jnp.asarray([0.0, 1.0, -30.0, 1e6], jnp.float32)
  np.testing.assert_allclose(layers.softcap(x, 30.0), 30.0 * np.tanh(np.asarray([0.0, 1.0, -30.0, 1e6]) / 30.0),
                             rtol=1e-6)
  assert float(layers.softcap(x, 30.0)[-1]) == pytest.approx(30.0)
  np.testing.assert_array_equal(layers.softcap(x, 0.0), x)   # 0 = off


def test_rotary_rotates_pairs_by_position_times_frequency():
  # One head of 4 features: pairs (0, 2) and (1, 3) rotate by p * f_k, f = [1, 0.01] (base 10000, Dh 4).
  x = jnp.asarray([[[[1.0, 2.0, 3.0, 4.0]]]], jnp.float32)   # [B=1, Q=1, H=1, 4]
  position = 5
  inv_freq = jnp.asarray([1.0, 0.01], jnp.float32)
  out = np.asarray(layers.rotary(x, jnp.asarray([[position]]), inv_freq))[0, 0, 0]
  angle = position * np.asarray([1.0, 0.01])
  first, second = np.asarray([1.0, 2.0]), np.asarray([3.0, 4.0])
  expected = np.concatenate([first * np.cos(angle) - second * np.sin(angle),
                             second * np.cos(angle) + first * np.sin(angle)])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Position 0 is the identity.
  np.testing.assert_allclose(np.asarray(layers.rotary(x, jnp.asarray([[0]]), inv_freq)), np.asarray(x))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation_and_its_gradient(activation):
  # Values by hand: silu(g) = g / (1 + e^-g), gelu_tanh(g) = g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)));
  # gradients against JAX's own differentiation of the two slices (the form `gated` replaces).
  rs = np.random.RandomState(3)
  gate_up = jnp.asarray(rs.randn(3, 5, 2, 7), jnp.float32)
  g, u = np.asarray(gate_up[..., 0, :], np.float64), np.asarray(gate_up[..., 1, :], np.float64)
  if activation == "silu":
    act = g / (1 + np.exp(-g))
  else:
    act = g / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
  np.testing.assert_allclose(layers.gated(gate_up, activation), act * u, rtol=1e-5, atol=1e-6)
  weights = jnp.asarray(rs.randn(3, 5, 7), jnp.float32)

  def plain(x):
    return jnp.sum(weights * layers.ACTIVATIONS[activation](x[..., 0, :]) * x[..., 1, :])

  got = jax.grad(lambda x: jnp.sum(weights * layers.gated(x, activation)))(gate_up)
  np.testing.assert_allclose(got, jax.grad(plain)(gate_up), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(got)).min() < np.abs(np.asarray(got)).max()
