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
