"""Optimisers as optax gradient transformations, chosen by the ``optimizer`` config group."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tpo_sweeps import config as C


def normalized_step(alpha: float, eps: float = 1e-30) -> optax.GradientTransformation:
    """``θ ← θ - α·g/‖g‖`` with one L2 norm over the whole parameter pytree.

    The tabular bandits' update (protocols §4.1–4.2): only the direction of the gradient
    matters, so algorithms are compared by where they point, not by their scale.
    ``‖g‖ = sqrt(Σ g² + eps)`` keeps a zero gradient at a zero step.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(updates))
        scale = -alpha / jnp.sqrt(sq + eps)
        return jax.tree_util.tree_map(lambda g: scale * g, updates), state

    return optax.GradientTransformation(init, update)


def build(cfg: C.OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation of an optimizer config."""
    if isinstance(cfg, C.NormalizedStepConfig):
        return normalized_step(cfg.alpha, cfg.eps)
    if isinstance(cfg, C.AdamConfig):
        return optax.adam(cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if isinstance(cfg, C.MuonConfig):
        # optax's own partition: ndim == 2 → Muon, everything else → (N)AdamW (protocols §2.3).
        return optax.contrib.muon(
            learning_rate=cfg.effective_lr,
            beta=cfg.beta,
            ns_steps=cfg.ns_steps,
            adam_b1=cfg.adam_b1,
            adam_b2=cfg.adam_b2,
            weight_decay=cfg.weight_decay,
        )
    raise C.ConfigError(f"unknown optimizer '{cfg.name}' (normalized_step | adam | muon)")
