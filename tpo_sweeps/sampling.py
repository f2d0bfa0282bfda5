"""Sampling helpers shared by the tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def categorical(key: Array, logits: Array, shape: tuple[int, ...]) -> Array:
    """Draw ``shape`` iid samples from ``softmax(logits)`` (last axis) by inverse CDF.

    Same distribution as ``jax.random.categorical`` but one uniform per sample instead of one
    Gumbel per (sample, class): ~70× faster for the 100-action bandit on CPU, where random
    bit generation dominates. ``logits`` is one distribution ``[K]``; vmap for batches.
    """
    cdf = jnp.cumsum(jax.nn.softmax(logits))
    u = jax.random.uniform(key, shape, dtype=cdf.dtype) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), logits.shape[-1] - 1)


def categorical_rows(key: Array, logp: Array, num: int | None = None) -> Array:
    """One sample per row of ``logp [..., V]`` (or ``num`` per row, trailing axis), by
    inverse CDF. ``logp`` must be normalised log-probabilities."""
    cdf = jnp.cumsum(jnp.exp(logp), axis=-1)  # [..., V]
    shape = logp.shape[:-1] + ((num,) if num is not None else ())
    u = jax.random.uniform(key, shape, dtype=cdf.dtype) * cdf[..., -1:].reshape(
        logp.shape[:-1] + ((1,) if num is not None else ())
    )
    c = cdf[..., None, :] if num is not None else cdf
    idx = jnp.sum(u[..., None] >= c, axis=-1)
    return jnp.minimum(idx, logp.shape[-1] - 1)
