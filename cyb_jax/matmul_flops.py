"""Matmul FLOPs of a traced program, loops counted by their trip counts.

XLA's `compiled.cost_analysis()` counts a while loop's body once whatever its trip count, so for a step
whose layers are a `lax.scan` (model.scan_layers) it reports about one layer's share. This walks the
step's jaxpr instead: every `dot_general` costs 2 x (output elements) x (contracted elements), the body of
a `scan` counts `length` times, a Pallas kernel's body once per grid cell, a `cond` / `switch` (including
`lax.platform_dependent`) its most expensive branch, and calls (`jit`, `custom_jvp`, `custom_vjp`,
`checkpoint`, `shard_map`) their inner program. A `shard_map` body sees one device's shapes, so it counts
once per device of its mesh. Elementwise work, reductions and the kernels' skipped blocks are not
discounted or added: the count is the matmul work of the program as written (a causal kernel's
fully masked key blocks count as computed), the usual "model FLOPs" basis of utilisation figures.

  matmul_flops(jax.make_jaxpr(step)(*args))   # or a jax.stages.Traced's .jaxpr

Raises ValueError for a `while` loop whose trip count is not static (only `fori_loop` over a `scan` is).
"""

from __future__ import annotations

import math
from typing import Any

from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
  (contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def _inner(value: Any):
  """The open jaxpr of a closed or open jaxpr parameter."""
  return value.jaxpr if hasattr(value, "jaxpr") and not hasattr(value, "eqns") else value


def matmul_flops(jaxpr) -> int:
  """Matmul FLOPs of `jaxpr` (a ClosedJaxpr or Jaxpr), as the module docstring counts them."""
  jaxpr = _inner(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    params = eqn.params
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += int(params["length"]) * matmul_flops(params["jaxpr"])
    elif name == "while":
      if matmul_flops(params["body_jaxpr"]) or matmul_flops(params["cond_jaxpr"]):
        raise ValueError("a while loop with matmuls and no static trip count: its FLOPs are unknown")
    elif name == "cond":
      total += max(matmul_flops(branch) for branch in params["branches"])
    elif name == "pallas_call":
      grid = params["grid_mapping"].grid
      total += math.prod(int(g) for g in grid) * matmul_flops(params["jaxpr"])
    elif name == "shard_map":
      total += int(params["mesh"].size) * matmul_flops(params["jaxpr"])
    else:
      for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = params.get(key)
        if isinstance(inner, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
          total += matmul_flops(inner)
          break
  return total
