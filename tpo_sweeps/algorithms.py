"""Algorithm registry: the only place an algorithm name is turned into code.

An algorithm is (family, signal, loss):

* ``family`` tells a task how to lay out the rows of a batch:
  ``single``  — independent samples with their own advantage (PG, DG, PPO, batch-std PG);
  ``group``   — groups of K scored candidates with a scalar weight each (GRPO, Group PG);
  ``target``  — a target distribution over a group (TPO, TPO no-anchor);
  ``supervised`` — the label is known (CE oracle).
* ``signal(batch, hp)`` forms the rollout-time quantity (advantage ``A`` or target ``q``)
  once per batch, under ``stop_gradient``.
* ``loss(logp, batch, signal, hp)`` is the per-row loss ``[B]`` evaluated at every epoch.

``hp`` is the option's typed config (``tpo_sweeps.config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tpo_sweeps import config as C
from tpo_sweeps import losses as L

Array = jax.Array


class Batch(NamedTuple):
    """A rollout batch laid out as rows of candidates, all ``[B, K]`` unless noted."""

    logp_old: Array  # rollout-time log-probs / log-scores (stop-gradient)
    scores: Array  # rewards or scores; for `supervised`, the one-hot label
    weight: Array  # candidate multiplicity (1, or π(a) for exact expectations)
    expected_baseline: Array  # [B, 1] task-provided baseline (zeros if the task has none)


@dataclass(frozen=True)
class Algorithm:
    family: str
    schema: type
    signal: Callable[[Batch, Any], Array]
    loss: Callable[[Array, Batch, Array, Any], Array]
    # per-candidate weight the update puts on each candidate (diagnostics, §4.1): q for
    # target methods, |A| for scalar-weighted ones, |σ(A·ℓ_s/η)·A| for DG
    candidate_weight: Callable[[Batch, Array, Any], Array] = lambda b, signal, hp: jnp.abs(signal)


def _single_adv(batch: Batch, hp) -> Array:
    return L.sg(
        L.baseline_advantage(
            batch.scores,
            baseline=hp.baseline,
            value=hp.baseline_value,
            expected=batch.expected_baseline,
        )
    )


def _group_adv(batch: Batch, hp: C.GRPOConfig) -> Array:
    """GRPO's group z-score. A constant group (every candidate scored alike) gets an
    advantage of exactly 0 (``standardize``'s equality test). The authors' code computes
    ``(s - mean)/(std + 1e-8)`` directly: under ``jit`` XLA may leave the centred scores a
    rounding residue of ~1e-8, which ``/(0 + 1e-8)`` turns into advantages of ±0.4-0.9 in a
    group that carries no signal; with dense rewards (bag of tokens, sequential) constant
    groups are common, so their GRPO curves can differ from ours there. Terminal rewards
    and the bandits are unaffected (their constant groups are all-0 or all-1 exactly)."""
    eps = hp.std_eps
    return L.sg(L.standardize(batch.scores, guard=hp.std_eps_mode, eps=eps, weight=batch.weight))


def _clipped(logp: Array, batch: Batch, adv: Array, hp: C.ClippedConfig) -> Array:
    """PPO and (unmasked) GRPO: the clipped surrogate with the option's ε, β and clamp."""
    return L.clipped_surrogate_loss(
        logp,
        batch.logp_old,
        adv,
        batch.weight,
        clip_eps=hp.clip_eps,
        kl_beta=hp.kl_beta,
        log_ratio_clamp=hp.log_ratio_clamp,
    )


def _grpo_loss(logp: Array, batch: Batch, adv: Array, hp: C.GRPOConfig) -> Array:
    per_row = _clipped(logp, batch, adv, hp)
    if not hp.mask_zero_variance:
        return per_row
    # zv-masked GRPO (§4.2): drop rows whose scores have no spread, and average over the
    # informative rows only. Rescaling by B/n keeps the trainer's plain mean over rows.
    _, var = L.weighted_moments(batch.scores, batch.weight)
    informative = (jnp.sqrt(var[..., 0]) > hp.std_threshold).astype(per_row.dtype)
    n = jnp.maximum(jnp.sum(informative), 1.0)
    return per_row * informative * (per_row.shape[0] / n)


def _tpo_signal(batch: Batch, hp: C.TPOConfig) -> Array:
    return L.tpo_target(
        batch.logp_old,
        batch.scores,
        eta=hp.eta,
        anchor=hp.anchor,
        std_threshold=hp.std_threshold,
    )


def _group_pg_signal(batch: Batch, hp: C.GroupPGConfig) -> Array:
    return L.sg(L.standardize(batch.scores, guard="threshold", eps=hp.std_threshold) / hp.eta)


def _batch_std_signal(batch: Batch, hp: C.BatchStdPGConfig) -> Array:
    return L.sg(L.standardize(batch.scores, axis=0, guard="add", eps=hp.std_eps))


def _reinforce(logp, batch, adv, hp):
    return L.reinforce_loss(logp, adv, batch.weight)


def _dg(logp, batch, adv, hp: C.DGConfig):
    return L.dg_loss(logp, adv, batch.weight, eta=hp.eta, surprisal_clip=hp.surprisal_clip)


def _dg_weight(batch: Batch, adv: Array, hp: C.DGConfig) -> Array:
    return jnp.abs(jax.nn.sigmoid(adv * -batch.logp_old / hp.eta) * adv)


def _target_ce(logp, batch, q, hp):
    return L.target_cross_entropy(logp, q)


def _labels(batch: Batch, hp) -> Array:
    return batch.scores


_TPO = Algorithm("target", C.TPOConfig, _tpo_signal, _target_ce, lambda b, q, hp: q)
_GRPO = Algorithm("group", C.GRPOConfig, _group_adv, _grpo_loss)
_DG = Algorithm("single", C.DGConfig, _single_adv, _dg, _dg_weight)
_PG = Algorithm("single", C.PGConfig, _single_adv, _reinforce)

ALGORITHMS: dict[str, Algorithm] = {
    "tpo": _TPO,
    "tpo_no_anchor": _TPO,
    "tpo_token": _TPO,
    "tpo_1ep": _TPO,
    "grpo": _GRPO,
    "grpo_no_kl": _GRPO,
    "grpo_masked": _GRPO,
    "grpo_token": _GRPO,
    "grpo_token_no_kl": _GRPO,
    "group_pg": Algorithm("group", C.GroupPGConfig, _group_pg_signal, _reinforce),
    "ppo": Algorithm("single", C.PPOConfig, _single_adv, _clipped),
    "pg": _PG,
    "reinforce": _PG,
    "dg": _DG,
    "dg_4ep": _DG,
    "batch_std_pg": Algorithm("single", C.BatchStdPGConfig, _batch_std_signal, _reinforce),
    "ce": Algorithm("supervised", C.CEConfig, _labels, _target_ce),
}


def get(hp: C.AlgorithmConfig) -> Algorithm:
    """The registered algorithm for a typed algorithm config."""
    try:
        algo = ALGORITHMS[hp.name]
    except KeyError:
        raise C.ConfigError(
            f"unknown algorithm '{hp.name}' (known: {', '.join(sorted(ALGORITHMS))})"
        ) from None
    if not isinstance(hp, algo.schema):
        raise C.ConfigError(
            f"algorithm '{hp.name}' needs a {algo.schema.__name__} config, got {type(hp).__name__}"
        )
    return algo


def canonical_name(name: str) -> str:
    """The first registered name of ``name``'s algorithm: aliases that differ from it only in
    config fields (``tpo_1ep``, ``tpo_token``, ``dg_4ep``, ``reinforce``, ...) map to the
    name the run identity stores (``tpo_sweeps.identity``, rule 2)."""
    try:
        algo = ALGORITHMS[name]
    except KeyError:
        raise C.ConfigError(
            f"unknown algorithm '{name}' (known: {', '.join(sorted(ALGORITHMS))})"
        ) from None
    return next(n for n, a in ALGORITHMS.items() if a is algo)


def layout(hp: C.AlgorithmConfig) -> str:
    """sequence | token | single: how a sequence task (token reversal) lays out this
    algorithm's batch: K full rollouts per prompt, K next-token candidates at each prefix of
    one rollout, or one rollout per prompt."""
    algo = get(hp)
    if algo.family == "supervised":
        raise C.ConfigError(f"algorithm '{hp.name}' needs labels; it has no sequence layout")
    if getattr(hp, "level", "sequence") == "token":
        return "token"
    return "sequence" if algo.family in ("target", "group") else "single"


def make_batch(
    logp_old: Array,
    scores: Array,
    weight: Array | None = None,
    expected_baseline: Array | None = None,
) -> Batch:
    """Build a ``Batch``, filling unit weights and a zero task baseline."""
    logp_old = L.sg(logp_old)
    if weight is None:
        weight = jnp.ones_like(scores)
    if expected_baseline is None:
        expected_baseline = jnp.zeros(scores.shape[:1] + (1,), scores.dtype)
    return Batch(logp_old, scores, L.sg(weight), L.sg(expected_baseline))


def batch_loss(algo: Algorithm, hp, logp: Array, batch: Batch, signal: Array) -> Array:
    """Scalar loss: mean over rows of the per-row loss."""
    return jnp.mean(algo.loss(logp, batch, signal, hp))
