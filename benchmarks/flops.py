"""FLOPs of a JAX program, counted from its jaxpr, and this CPU's float32 GEMM rate.

``matmul_flops`` walks a jaxpr and sums ``2·batch·M·N·K`` over every ``dot_general`` (the
GEMMs carry all but a sliver of a transformer's arithmetic), multiplying the body of a
``scan`` by its length and entering every sub-jaxpr (jit, custom_vjp/custom_jvp, remat,
the larger branch of a ``cond``). XLA's own cost analysis counts a loop body once, so it
under-counts a scanned trainer by the number of episodes and epochs; the jaxpr does not.

``gemm_rate`` times large float32 matrix products in JAX on this device: the rate the
library kernels reach, the practical peak an XLA program can be held against.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def _sub_jaxprs(params: dict):
    for value in params.values():
        if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
            yield value.jaxpr
        elif hasattr(value, "eqns"):  # Jaxpr
            yield value


def matmul_flops(jaxpr) -> int:
    """``2·batch·M·N·K`` summed over the ``dot_general``s of ``jaxpr`` (a Jaxpr)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            contract = int(np.prod([lhs[d] for d in lc]))
            out = int(np.prod(eqn.outvars[0].aval.shape))
            total += 2 * out * contract
            del rhs, rc, lb
        elif name == "scan":
            total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(matmul_flops(b.jaxpr) for b in eqn.params["branches"])
        elif name == "while":
            raise ValueError("a while loop's trip count is unknown: count its body by hand")
        else:
            total += sum(matmul_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def program_flops(fn, *args) -> int:
    """Matmul FLOPs of one call of ``fn(*args)``."""
    return matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """Float32 FLOP/s of an ``n×n @ n×n`` product in JAX on the default device (best of
    ``repeats``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    jax.block_until_ready(mm(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
