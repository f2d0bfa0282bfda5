"""The FLOP counter behind ``benchmarks/reversal_speed.py --flops``: closed-form counts."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import matmul_flops, program_flops  # noqa: E402


def _scanned(w, x):
    def body(c, _):
        return jnp.tanh(c @ w), None

    y, _ = jax.lax.scan(body, x, None, length=3)
    return y.sum()


def test_a_scan_body_counts_once_per_step_and_a_gradient_adds_two_gemms():
    w, x = jnp.ones((4, 4)), jnp.ones((2, 4))
    gemm = 2 * 2 * 4 * 4  # [2,4] @ [4,4]
    assert program_flops(_scanned, w, x) == 3 * gemm
    # the backward pass: dL/dc and dL/dw per step, each a GEMM of the same size
    assert program_flops(jax.grad(_scanned), w, x) == 3 * 3 * gemm


def test_batched_dots_jit_and_cond_are_entered():
    a, b = jnp.ones((3, 2, 5)), jnp.ones((3, 5, 7))
    batched = jax.jit(lambda a, b: jnp.einsum("bij,bjk->bik", a, b))
    assert program_flops(batched, a, b) == 2 * 3 * 2 * 7 * 5

    def branchy(p, a, b):
        return jax.lax.cond(p, lambda: (a @ b).sum(), lambda: (a @ b @ b.T @ b).sum())

    a2, b2 = jnp.ones((2, 5)), jnp.ones((5, 5))
    assert program_flops(branchy, True, a2, b2) == 3 * 2 * 2 * 5 * 5  # the larger branch


def test_a_while_loop_is_refused():
    def loop(x):
        return jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ jnp.eye(2), x)

    with pytest.raises(ValueError, match="while loop"):
        matmul_flops(jax.make_jaxpr(loop)(jnp.ones((2, 2))).jaxpr)
