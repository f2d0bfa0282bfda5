"""The trainer pattern every task shares: one compiled program runs all seeds of a job.

A task builds a ``Program``: a pure ``train(key) -> {metric: [T]}`` plus the true training
step of every recorded point. ``run`` compiles ``jit(vmap(train))`` over the job's seed keys
once and returns host arrays shaped ``[seeds, T]``. Loops inside ``train`` are ``lax.scan``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpo_sweeps import algorithms as A

Array = jax.Array


@dataclass(frozen=True)
class Program:
    train: Callable[[Array], dict[str, Array]]  # key -> {metric: [T]}
    steps: dict[str, np.ndarray]  # metric -> true training step of each of its T points


@dataclass
class Result:
    seeds: np.ndarray  # [S] integer seeds
    metrics: dict[str, np.ndarray]  # name -> [S, T]
    steps: dict[str, np.ndarray]  # name -> [T]
    summary: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [S]
    compile_s: float = 0.0
    run_s: float = 0.0


def seed_keys(seeds: np.ndarray) -> Array:
    """One PRNG key per integer seed: PRNGKey(seed), independent of how seeds are split
    across jobs (seeds 0..99 in one job equal seeds 0..49 + 50..99 in two)."""
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, dtype=jnp.uint32))


def update_epochs(
    params,
    opt_state,
    loss_fn: Callable,
    opt: optax.GradientTransformation,
    epochs: int,
):
    """``epochs`` optimiser steps on one frozen batch; returns the first epoch's gradient.

    The first epoch runs outside the scan so its gradient (the one diagnostics and
    misalignment refer to: before any update on this batch) is returned without stacking
    all epochs' gradients.
    """

    def one(carry):
        p, s = carry
        grads = jax.grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), grads

    (params, opt_state), first_grads = one((params, opt_state))
    if epochs > 1:
        (params, opt_state), _ = jax.lax.scan(
            lambda c, _: (one(c)[0], None), (params, opt_state), None, length=epochs - 1
        )
    return params, opt_state, first_grads


def fit_batch(algo: A.Algorithm, hp, params, opt_state, opt, logp_of, batch: A.Batch):
    """Form the algorithm's signal once, then run its epochs on the batch."""
    signal = algo.signal(batch, hp)
    loss_fn = lambda p: A.batch_loss(algo, hp, logp_of(p), batch, signal)  # noqa: E731
    return update_epochs(params, opt_state, loss_fn, opt, hp.epochs)


def run(program: Program, seeds: np.ndarray, log_every: int = 1) -> Result:
    """Compile and run ``program`` for all ``seeds`` at once; subsample every ``log_every``."""
    keys = seed_keys(seeds)
    fn = jax.jit(jax.vmap(program.train))
    t0 = time.perf_counter()
    compiled = fn.lower(keys).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys))
    t2 = time.perf_counter()
    metrics, steps = {}, {}
    for name, values in out.items():
        values = np.asarray(values)
        idx = _logged_indices(values.shape[1], log_every)
        metrics[name] = values[:, idx]
        steps[name] = np.asarray(program.steps[name])[idx]
    summary = {f"final_{name}": np.asarray(v)[:, -1] for name, v in out.items()}
    return Result(np.asarray(seeds), metrics, steps, summary, t1 - t0, t2 - t1)


def _logged_indices(n: int, every: int) -> np.ndarray:
    idx = np.arange(0, n, every)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx
