"""The trainer pattern every task shares: one compiled program runs all seeds of a job.

A task builds a ``Program``: a pure ``train(key) -> {metric: [T]}`` plus the true training
step of every recorded point. ``run`` compiles ``jit(vmap(train))`` over the job's seed keys
once and returns host arrays shaped ``[seeds, T]``. Loops inside ``train`` are ``lax.scan``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpo_sweeps import algorithms as A

Array = jax.Array


@dataclass(frozen=True)
class Program:
    """A task's training run for one seed, as ``init`` and a scanned ``step``.

    ``step(carry, t)`` advances from logged point ``t`` to ``t + 1`` (one training step, or
    a block of them for tasks that evaluate every n steps) and returns the metrics of that
    point. Splitting the run this way lets ``run`` execute it in chunks (for checkpoints and
    progress) while the whole chunk stays one compiled ``lax.scan``.
    """

    init: Callable[[Array], Any]  # key -> carry (params, optimiser state, key, ...)
    step: Callable[[Any, Array], tuple[Any, dict[str, Array]]]  # (carry, t) -> carry, metrics
    num_points: int  # T, logged points per run
    steps: dict[str, np.ndarray]  # metric -> true training step of each of its T points
    # metrics that are NaN by design where undefined (a diagnostic that does not apply, a
    # bin with no examples): not a sign of divergence
    may_be_nan: frozenset[str] = frozenset()

    def train(self, key: Array) -> dict[str, Array]:
        """The whole run for one seed: ``{metric: [T]}`` (pure; jit/vmap it)."""
        _, out = jax.lax.scan(self.step, self.init(key), jnp.arange(self.num_points))
        return out


@dataclass
class Result:
    seeds: np.ndarray  # [S] integer seeds
    metrics: dict[str, np.ndarray]  # name -> [S, T]
    steps: dict[str, np.ndarray]  # name -> [T]
    summary: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [S]
    compile_s: float = 0.0
    run_s: float = 0.0
    # seed -> (first step at which a metric was non-finite, or None; what was): the seeds
    # whose run diverged (``divergence``)
    diverged: dict[int, tuple[int | None, str]] = field(default_factory=dict)
    # runs in the program that produced this result (lanes × seeds; 0 = len(seeds)): what
    # compile_s and run_s were spent on, for per-seed costs (tpo_sweeps.plan)
    runs: int = 0


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

    All epochs share one compiled body; the first epoch's gradient (the one diagnostics and
    misalignment refer to: before any update on this batch) is kept in the carry rather than
    stacking every epoch's gradient.
    """

    def one(carry, i):
        p, s, first = carry
        grads = jax.grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        first = jax.tree_util.tree_map(lambda f, g: jnp.where(i == 0, g, f), first, grads)
        return (optax.apply_updates(p, updates), s, first), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    if epochs == 1:  # no scan: keeps the common single-step case free of loop overhead
        (params, opt_state, first), _ = one((params, opt_state, zeros), 0)
        return params, opt_state, first
    (params, opt_state, first), _ = jax.lax.scan(
        one, (params, opt_state, zeros), jnp.arange(epochs)
    )
    return params, opt_state, first


def fit_batch(algo: A.Algorithm, hp, params, opt_state, opt, logp_of, batch: A.Batch):
    """Form the algorithm's signal once, then run its epochs on the batch."""
    signal = algo.signal(batch, hp)
    loss_fn = lambda p: A.batch_loss(algo, hp, logp_of(p), batch, signal)  # noqa: E731
    return update_epochs(params, opt_state, loss_fn, opt, hp.epochs)


def run(
    program: Program,
    seeds: np.ndarray,
    log_every: int = 1,
    chunk: int | None = None,
    on_chunk: Callable[[int, Any], None] | None = None,
    start: tuple[int, Any] | None = None,
    seed_batch: int = 0,
    seed_streams: int = 1,
    compiler_options: dict[str, str] | None = None,
    inputs: Any = None,
) -> Result:
    """Run ``program`` for all ``seeds`` in one compiled program; subsample every ``log_every``.

    With ``chunk``, the scan runs ``chunk`` points at a time (one compilation per distinct
    chunk length) and ``on_chunk(points_done, state)`` is called between chunks with the
    host-side state ``(carry, metrics so far)``: the hook for checkpoints and progress.
    ``start = (points_done, state)`` resumes from such a state. ``seed_batch`` > 0 runs
    the seeds in lockstep groups of that size, one group after another, in the same program;
    ``seed_streams`` > 1 runs that many such groups side by side as independent computations
    (XLA overlaps them on the cores, which small ops leave idle). ``compiler_options`` are
    XLA debug options for this program's compilation (``hardware.xla_options``).
    ``inputs`` is what ``program.init`` receives per run, stacked on a leading axis of
    ``len(seeds)`` (default: ``seed_keys(seeds)``; hyperparameter lanes pass keys and lane
    values, ``tpo_sweeps.lanes``).
    """
    seeds = np.asarray(seeds)
    keys = seed_keys(seeds) if inputs is None else inputs
    T = program.num_points
    chunk = T if not chunk or chunk >= T else chunk

    def segment(carry, ts):
        if (not seed_batch or seed_batch >= len(seeds)) and seed_streams <= 1:
            return jax.lax.scan(jax.vmap(program.step, in_axes=(0, None)), carry, ts)
        carry, out = map_seeds(
            lambda c: jax.lax.scan(program.step, c, ts), carry, seed_batch, seed_streams
        )
        return carry, jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), out)

    seg = jax.jit(segment)
    t0 = time.perf_counter()
    init = jax.jit(jax.vmap(program.init))
    if start is None:
        done, carry, parts = 0, init(keys), []
    else:
        done, (carry, parts) = start
        parts = list(parts)
    compile_s, compiled = 0.0, {}
    while done < T:
        n = min(chunk, T - done)
        if n not in compiled:
            c0 = time.perf_counter()
            lowered = seg.lower(carry, jnp.arange(done, done + n))
            compiled[n] = lowered.compile(compiler_options=compiler_options or None)
            compile_s += time.perf_counter() - c0
        carry, out = compiled[n](carry, jnp.arange(done, done + n))
        parts.append(jax.tree_util.tree_map(np.asarray, out))
        done += n
        if on_chunk is not None and done < T:
            on_chunk(done, (carry, list(parts)))  # a snapshot, not the live list
    jax.block_until_ready(carry)
    run_s = time.perf_counter() - t0 - compile_s
    # scan stacks points first: [T, S] -> [S, T]
    full = {k: np.concatenate([p[k] for p in parts], axis=0).T for k in parts[0]}
    metrics, steps = {}, {}
    for name, values in full.items():
        idx = _logged_indices(values.shape[1], log_every)
        metrics[name] = values[:, idx]
        steps[name] = np.asarray(program.steps[name])[idx]
    summary = {f"final_{name}": v[:, -1] for name, v in full.items()}
    diverged = divergence(program, full, carry, seeds)
    return Result(seeds, metrics, steps, summary, compile_s, run_s, diverged)


def divergence(
    program: Program, full: dict[str, np.ndarray], carry, seeds: np.ndarray
) -> dict[int, tuple[int | None, str]]:
    """The seeds whose run diverged: ``seed -> (step, what)``, the first step at which one of
    its metrics (every point, before ``log_every`` thins them; not ``may_be_nan``) is NaN or
    infinite, or ``(None, "training state")`` when only its final parameters or optimiser
    state are (between logged points, or hidden by a metric such as an argmax error, which
    stays finite on NaN logits). Read from what the program returns; nothing is recomputed."""
    out: dict[int, tuple[int | None, str]] = {}
    for name in sorted(full):
        if name in program.may_be_nan:
            continue
        bad = ~np.isfinite(np.asarray(full[name], dtype=np.float64))  # [S, T]
        for i in np.flatnonzero(bad.any(axis=1)):
            step = int(np.asarray(program.steps[name])[int(np.argmax(bad[i]))])
            seed = int(seeds[i])
            if seed not in out or step < out[seed][0]:
                out[seed] = (step, name)
    finite = np.ones(len(seeds), dtype=bool)
    for leaf in jax.tree_util.tree_leaves(carry):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):  # PRNG keys, step counters
            continue
        values = np.asarray(leaf).reshape(len(seeds), -1)
        finite &= np.isfinite(values).all(axis=1)
    for i in np.flatnonzero(~finite):
        out.setdefault(int(seeds[i]), (None, "training state"))
    return out


def map_seeds(fn: Callable, xs, seed_batch: int = 1, streams: int = 1):
    """``fn`` (one seed's computation) over the leading seed axis of ``xs``.

    Seeds go in lockstep groups of ``seed_batch`` (a vmap; 0 = all seeds), ``streams``
    groups side by side as separate, independent computations in one program, and the
    blocks of ``streams`` groups one after another (``lax.map``). Seeds left over after
    the last whole block run group by group. The results equal ``vmap(fn)(xs)``.
    """
    tree = jax.tree_util
    n = tree.tree_leaves(xs)[0].shape[0]
    group = min(seed_batch or n, n)
    streams = max(1, min(streams, n // group))
    block = group * streams
    full = (n // block) * block
    take = lambda a, i, j: tree.tree_map(lambda x: x[i:j], a)  # noqa: E731

    def lockstep(c):  # one group; a group of one runs unbatched (no size-1 vmap axis)
        if group > 1:
            return jax.vmap(fn)(c)
        return tree.tree_map(lambda x: x[None], fn(tree.tree_map(lambda x: x[0], c)))

    def one_block(c):
        parts = [lockstep(take(c, i * group, (i + 1) * group)) for i in range(streams)]
        return tree.tree_map(lambda *p: jnp.concatenate(p, axis=0), *parts)

    blocks = tree.tree_map(lambda x: x[:full].reshape((-1, block) + x.shape[1:]), xs)
    out = tree.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), jax.lax.map(one_block, blocks))
    if full == n:
        return out
    # batch_size=1 would vmap a size-1 axis (the slow path the unbatched groups avoid)
    rest = jax.lax.map(fn, take(xs, full, n), batch_size=group if group > 1 else None)
    return tree.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), out, rest)


def _logged_indices(n: int, every: int) -> np.ndarray:
    idx = np.arange(0, n, every)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx
