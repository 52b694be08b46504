"""Recomputation in the backward pass that a compiler cannot move back into the forward pass.

`recompute_in_backward(fn)` gives `fn` the same values and gradients, but its forward pass keeps only
`fn`'s inputs for the backward pass (not its intermediates): the backward pass runs `fn` again and
differentiates that. `jax.checkpoint` recomputes too, but its recomputation depends on forward values
only, so a scheduler is free to run it early, holding everything it was meant to free; XLA's CPU
scheduler does exactly that, and drops `optimization_barrier`s before scheduling. Here the recomputation
reads its activations through a select on the incoming cotangent (`_after`), a data dependency no
scheduler can reorder and no simplifier can fold, so it runs once the backward pass has reached it.

Used by the layer loop (transformer.run_layers) for the cheap, wide parts of a layer (norms, the q/k/v
projection and rotary, the gated activation), whose outputs are `[Q, 3D]` or `[Q, 2F]` and whose input is
the `[Q, D]` residual stream, kept anyway (DESIGN.md section 9).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _after(activations: Any, cotangents: Any) -> Any:
  """`activations` unchanged, but computed from the cotangents' first element: x if it is a number, else 0.

  A NaN cotangent makes the gradient NaN whatever the activations, so the substitution never shows.
  """
  first = jax.tree.leaves(cotangents)[0].reshape(-1)[0]
  is_nan = first != first
  return jax.tree.map(lambda x: jnp.where(is_nan, jnp.zeros_like(x), x), activations)


def recompute_in_backward(fn: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
  """`fn(params, activations, constants)` -> float outputs, with its intermediates recomputed in backward.

  params: a pytree of float arrays (gradients flow to them); activations: a pytree of float arrays
  (gradients flow; the backward pass's recomputation waits for the cotangent through them); constants:
  arrays that get no gradient (integer positions) or None. Values and gradients equal `fn`'s.
  """

  @jax.custom_vjp
  def wrapped(params, activations, constants):
    return fn(params, activations, constants)

  def forward(params, activations, constants):
    return fn(params, activations, constants), (params, activations, constants)

  def backward(residuals, cotangents):
    params, activations, constants = residuals
    activations = _after(activations, cotangents)
    _, vjp = jax.vjp(lambda p, a: fn(p, a, constants), params, activations)
    d_params, d_activations = vjp(cotangents)
    return d_params, d_activations, jax.tree.map(lambda _: None, constants)

  wrapped.defvjp(forward, backward)
  return wrapped
