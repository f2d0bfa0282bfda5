"""Pure JAX losses of every algorithm in the TPO paper, for groups shaped ``[B, K]``.

Conventions (shared by every task):

* A *row* is one group: the K candidates of one prompt/context (grouped methods), or the H
  tokens of one rollout (single-sample methods, whose loss sums over tokens), or one sample
  (``K = 1``).
* ``logp``  ``[B, K]``: the current policy's log-probability (log-score) of each candidate,
  differentiable.
* Rollout-time quantities (``logp_old``, targets ``q``, advantages ``adv``) are formed once per
  rollout batch, wrapped in ``stop_gradient`` where they are formed, and stay frozen across
  the epochs that reuse the batch.
* ``weight`` ``[B, K]``: multiplicity of each candidate in the row's sum (1 for sampled
  candidates; the sampling probability π(a) when a task takes an exact expectation over the
  action set, as the multi-context bandit does).
* Every loss returns the **unreduced** per-row loss ``[B]``; the trainer takes the mean over
  rows. Losses sum over K, as the authors' code does.

References: Kaddour et al., "Target Policy Optimization", arXiv 2604.06159 (equation numbers
below are the paper's); protocols in ``shared/reference/paper_protocols.md`` §1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

sg = jax.lax.stop_gradient


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


def weighted_moments(x: Array, weight: Array | None, axis: int = -1) -> tuple[Array, Array]:
    """Mean and population variance of ``x`` along ``axis`` (weights normalised if given)."""
    if weight is None:
        mean = jnp.mean(x, axis=axis, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
    else:
        # divide after summing: unit weights then give exactly the unweighted mean, so a
        # constant group centres to exact zeros (a normalised step would amplify any residue)
        total = jnp.sum(weight, axis=axis, keepdims=True)
        mean = jnp.sum(weight * x, axis=axis, keepdims=True) / total
        var = jnp.sum(weight * jnp.square(x - mean), axis=axis, keepdims=True) / total
    return mean, var


def standardize(
    x: Array,
    *,
    axis: int = -1,
    guard: str = "threshold",
    eps: float = 1e-6,
    weight: Array | None = None,
) -> Array:
    """Z-score along ``axis`` with the population std (ddof = 0).

    Three numerical guards, all used by the paper's code:

    * ``"threshold"`` (TPO's u, App. A; code ``tpo_skill``): ``(x - x̄)/σ`` if ``σ > eps``, else
      the centred scores ``x - x̄`` (exact zeros for identical scores), ``eps = 1e-6``.
    * ``"add"`` (GRPO's advantage): ``(x - x̄)/(σ + eps)``, ``eps = 1e-8``; a zero-variance group
      gets exactly 0.
    * ``"sqrt"`` (the tabular code's GRPO): ``(x - x̄)/sqrt(σ² + eps)``.

    ``weight`` makes mean and variance expectations under those weights (exact updates).
    """
    mean, var = weighted_moments(x, weight, axis)
    # A constant group must centre to exact zeros: XLA may reassociate the mean under
    # jit+vmap and leave a ~1e-8 residue, which a normalised step (or Adam, or Muon) would
    # blow up into a full-size update. Equality needs no arithmetic, so test it directly.
    constant = jnp.max(x, axis=axis, keepdims=True) == jnp.min(x, axis=axis, keepdims=True)
    centred = jnp.where(constant, 0.0, x - mean)
    if guard == "threshold":
        std = jnp.sqrt(var)
        return jnp.where(std > eps, centred / jnp.where(std > eps, std, 1.0), centred)
    if guard == "add":
        return centred / (jnp.sqrt(var) + eps)
    if guard == "sqrt":
        return centred / jnp.sqrt(var + eps)
    raise ValueError(f"unknown standardisation guard '{guard}' (threshold | add | sqrt)")


def tpo_target(
    logp_old: Array,
    scores: Array,
    *,
    eta: float = 1.0,
    anchor: bool = True,
    std_threshold: float = 1e-6,
) -> Array:
    """TPO target over a group, Eq. 2: ``q_i ∝ p_old,i · exp(u_i / η)``.

    ``p_old = softmax_K(logp_old)`` is the rollout policy renormalised over the K candidates
    and ``u = standardize(scores)`` (threshold guard). ``anchor=False`` drops ``p_old``
    ("TPO no-anchor": ``q = softmax(u/η)``). Since ``u`` is a z-score, q is invariant to affine
    maps ``s → a·s + b`` (a > 0) of the scores; a zero-variance group gives ``u = 0`` and so
    ``q = p_old``. Returned under ``stop_gradient``.

    Args:
      logp_old: ``[B, K]`` rollout-time log-scores of the candidates.
      scores: ``[B, K]`` candidate scores (rewards).
    Returns:
      ``[B, K]`` target distribution per row.
    """
    u = standardize(scores, guard="threshold", eps=std_threshold)
    logits = u / eta
    if anchor:
        logits = jax.nn.log_softmax(logp_old, axis=-1) + logits
    return sg(jax.nn.softmax(logits, axis=-1))


def baseline_advantage(
    rewards: Array, *, baseline: str, value: float = 0.0, expected: Array | None = None
) -> Array:
    """``A = r - b`` for single-sample methods, with the baselines the paper uses.

    * ``constant``: ``b = value`` (tabular single context: 0.5).
    * ``batch_mean``: ``b`` = mean over the batch axis 0, per column (transformer: per-token
      position mean over the B rollouts).
    * ``expected``: ``b`` given by the task (MNIST: ``Σ_a π(a)²``), broadcast against rewards.
    * ``none``: ``b = 0`` (multi-context exact PG).
    """
    if baseline == "constant":
        return rewards - value
    if baseline == "batch_mean":
        return rewards - jnp.mean(rewards, axis=0, keepdims=True)
    if baseline == "expected":
        if expected is None:
            raise ValueError("baseline 'expected' needs the task's expected baseline")
        return rewards - expected
    if baseline == "none":
        return rewards
    raise ValueError(f"unknown baseline '{baseline}' (constant | batch_mean | expected | none)")


def cosine_misalignment(g1, g2) -> Array:
    """``1 - cos(g1, g2)`` over flattened pytrees, norms ``sqrt(Σg² + 1e-12)`` (code core.py)."""
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(g1)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(g2)])
    na = jnp.sqrt(jnp.sum(a * a) + 1e-12)
    nb = jnp.sqrt(jnp.sum(b * b) + 1e-12)
    return 1.0 - jnp.sum(a * b) / (na * nb)


def _row_sum(x: Array, weight: Array | None) -> Array:
    return jnp.sum(x if weight is None else weight * x, axis=-1)


# --------------------------------------------------------------------------------------------
# Losses: per-row [B]
# --------------------------------------------------------------------------------------------


def target_cross_entropy(logp: Array, q: Array) -> Array:
    """TPO loss, Eq. 3: ``L = -Σ_K q_i · log softmax_K(logp)_i`` per row.

    The gradient w.r.t. the group logits ``logp`` is ``p_θ - q`` (Prop. 1), with
    ``p_θ = softmax_K(logp)``: it vanishes exactly when the policy matches the target.
    Candidates are not deduplicated. Used for TPO, TPO no-anchor and (with one-hot ``q``)
    the CE oracle.
    """
    return -jnp.sum(q * jax.nn.log_softmax(logp, axis=-1), axis=-1)


def reinforce_loss(logp: Array, adv: Array, weight: Array | None = None) -> Array:
    """REINFORCE / PG: ``L = -Σ_K w·sg(A)·logp`` per row (§1.5).

    With the batch-mean, constant, expected or zero baseline folded into ``A``; Group PG
    (``A = u/η``) and batch-standardised PG (``A`` z-scored over the batch) use it too.
    """
    return -_row_sum(sg(adv) * logp, weight)


def clipped_surrogate_loss(
    logp: Array,
    logp_old: Array,
    adv: Array,
    weight: Array | None = None,
    *,
    clip_eps: float = 0.2,
    kl_beta: float = 0.0,
    log_ratio_clamp: float | None = None,
) -> Array:
    """PPO / GRPO clipped surrogate with the k3 KL estimator (§1.3, §1.4; App. F).

    ``ρ = clip(logp - logp_old, ±c)`` (``c = log_ratio_clamp``; GRPO code 20, PPO none),
    ``r = exp(ρ)``, ``surr = min(r·A, clip(r, 1-ε, 1+ε)·A)``,
    ``kl = exp(-ρ) + ρ - 1`` (a KL estimate to the *rollout snapshot*),
    ``L = -Σ_K w·(surr - β·kl)`` per row.

    At the first epoch ``r = 1``: the KL term and its gradient vanish and the gradient equals
    REINFORCE's, ``-Σ A ∇logp``.

    With ``β = 0`` (PPO, GRPO no-KL) the KL term is exactly 0, also where it is undefined: a
    log-prob that drops by more than ~89 nats within an update (no clamp, float32) makes
    ``exp(-ρ)`` infinite and ``0·kl`` NaN, in the loss and its gradient. The KL is evaluated
    at ``ρ = 0`` there instead (a ``where`` on the input, so no NaN reaches the gradient
    either); for ``β ≠ 0`` nothing changes.
    """
    rho = logp - sg(logp_old)
    if log_ratio_clamp is not None:
        rho = jnp.clip(rho, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(rho)
    adv = sg(adv)
    surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    rho_kl = jnp.where(kl_beta == 0, 0.0, rho)
    kl = jnp.exp(-rho_kl) + rho_kl - 1.0
    return -_row_sum(surr - kl_beta * kl, weight)


def dg_loss(
    logp: Array,
    adv: Array,
    weight: Array | None = None,
    *,
    eta: float = 1.0,
    surprisal_clip: float | None = None,
) -> Array:
    """Delightful PG (§1.6): ``L = -Σ_K w·sg(σ(A·ℓ_s/η)·A)·logp`` per row.

    The surprisal ``ℓ_s = -logp`` is taken from the current log-probs (equal to the rollout
    value at the single epoch DG uses), optionally clipped to ``[-c, c]``. The gate favours
    surprising successes and forgives surprising failures.
    """
    surprisal = -sg(logp)
    if surprisal_clip is not None:
        surprisal = jnp.clip(surprisal, -surprisal_clip, surprisal_clip)
    adv = sg(adv)
    gate = jax.nn.sigmoid(adv * surprisal / eta)
    return -_row_sum(sg(gate * adv) * logp, weight)
