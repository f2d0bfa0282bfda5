"""Closed forms and identities of the pure losses (paper §2, App. A-B; protocols §1)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import losses as L
from tpo_sweeps.tasks.tabular import update_coefficient

GUARDS = ("threshold", "add", "sqrt")
LAMBDA = float(np.exp(10.0 / 3.0))  # App. B: λ = exp(A/sqrt(A-1)) for A = 10 actions


# Every function under test is called through jit: eager jnp dispatch compiles each primitive
# for every new shape, which costs more than compiling the whole function once.
standardize = jax.jit(L.standardize, static_argnames=("axis", "guard", "eps"))
tpo_target = jax.jit(L.tpo_target, static_argnames=("anchor",))
weighted_moments = jax.jit(L.weighted_moments)
misalignment = jax.jit(L.cosine_misalignment)
clipped = jax.jit(L.clipped_surrogate_loss, static_argnames=("log_ratio_clamp",))


@jax.jit
def tce_grad(logp, q):
    return jax.grad(lambda lp: jnp.sum(L.target_cross_entropy(lp, q)))(logp)


@jax.jit
def pg_grad(logp, adv, weight):
    return jax.grad(lambda lp: jnp.mean(L.reinforce_loss(lp, adv, weight)))(logp)


@functools.partial(jax.jit, static_argnames=("clip_eps", "kl_beta", "log_ratio_clamp"))
def clipped_grad(logp, logp_old, adv, weight, clip_eps=0.2, kl_beta=0.0, log_ratio_clamp=None):
    def loss(lp):
        per_row = L.clipped_surrogate_loss(
            lp,
            logp_old,
            adv,
            weight,
            clip_eps=clip_eps,
            kl_beta=kl_beta,
            log_ratio_clamp=log_ratio_clamp,
        )
        return jnp.mean(per_row)

    return jax.grad(loss)(logp)


@functools.partial(jax.jit, static_argnames=("eta", "surprisal_clip"))
def dg_grad(logp, adv, eta=1.0, surprisal_clip=None):
    return jax.grad(lambda lp: jnp.sum(L.dg_loss(lp, adv, eta=eta, surprisal_clip=surprisal_clip)))(
        logp
    )


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, dtype=np.float32))


def _softmax_np(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# standardize
# --------------------------------------------------------------------------------------------


def test_standardize_uses_population_std():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, population variance 1.25 (the sample variance would be 5/3)
    expected = (x - 2.5) / np.sqrt(1.25)
    got = np.asarray(standardize(_f32(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, (x - 2.5) / np.std(x, ddof=1), rtol=1e-3)
    np.testing.assert_allclose(np.mean(got), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.mean(got**2), 1.0, rtol=1e-6)


def test_standardize_is_along_the_last_axis_by_default_and_honours_axis():
    x = _rng(1).normal(size=(3, 5)).astype(np.float32)
    rows = np.asarray(standardize(_f32(x)))
    cols = np.asarray(standardize(_f32(x), axis=0))
    ref_rows = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    ref_cols = (x - x.mean(0, keepdims=True)) / x.std(0, keepdims=True)
    np.testing.assert_allclose(rows, ref_rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cols, ref_cols, rtol=1e-5, atol=1e-6)


def test_standardize_guards_closed_forms():
    # x = (0, 1): centred (-0.5, 0.5), population σ = 0.5, σ² = 0.25
    x = _f32([0.0, 1.0])
    # threshold: σ > eps → centred/σ; σ <= eps → the centred scores themselves
    np.testing.assert_allclose(standardize(x, guard="threshold", eps=0.4), [-1.0, 1.0])
    np.testing.assert_allclose(standardize(x, guard="threshold", eps=0.6), [-0.5, 0.5])
    # add: centred/(σ + eps) = ±0.5/1.0
    np.testing.assert_allclose(standardize(x, guard="add", eps=0.5), [-0.5, 0.5])
    # sqrt: centred/sqrt(σ² + eps) = ±0.5/sqrt(0.25 + 0.75)
    np.testing.assert_allclose(standardize(x, guard="sqrt", eps=0.75), [-0.5, 0.5])
    np.testing.assert_allclose(
        standardize(x, guard="sqrt", eps=0.01), np.array([-0.5, 0.5]) / np.sqrt(0.26), rtol=1e-6
    )


def test_standardize_threshold_keeps_tiny_spread_centred_not_zero():
    # σ = 5e-8 < 1e-6: the code's tpo_skill returns the centred scores, not zeros and not ±1
    x = _f32([0.0, 1e-7])
    got = np.asarray(standardize(x, guard="threshold", eps=1e-6))
    np.testing.assert_allclose(got, [-5e-8, 5e-8], rtol=1e-3)


def test_standardize_unknown_guard_raises():
    with pytest.raises(ValueError, match="bogus"):
        standardize(_f32([0.0, 1.0]), guard="bogus")


def _constant_rows(K: int, n: int = 16, seed: int = 0) -> jax.Array:
    # values that are not representable sums: the naive x - mean(x) leaves a ~1e-7 residue
    vals = _rng(seed).uniform(-5.0, 5.0, size=(n, 1)).astype(np.float32)
    return jnp.asarray(np.broadcast_to(vals, (n, K)).copy())


@jax.jit
def _all_guards(x, w):
    """Every guard, unweighted and weighted, under jit(vmap) over rows: [6, n, K]."""
    outs = []
    for guard in GUARDS:
        outs.append(jax.vmap(lambda r, g=guard: L.standardize(r, guard=g))(x))
        outs.append(jax.vmap(lambda r, p, g=guard: L.standardize(r, guard=g, weight=p))(x, w))
    return jnp.stack(outs)


@pytest.mark.parametrize("K", [5, 100])
def test_standardize_constant_rows_are_exact_zeros(K):
    x = _constant_rows(K)
    w = jnp.asarray(_rng(K).dirichlet(np.ones(K), size=x.shape[0]).astype(np.float32))
    got = np.asarray(_all_guards(x, w))
    assert got.shape == (2 * len(GUARDS),) + x.shape
    assert np.all(got == 0.0), f"max residue {np.abs(got).max()}"
    # a row with spread next to them is still standardised
    mixed = x.at[0, 0].add(1.0)
    spread = np.asarray(_all_guards(mixed, w))
    assert np.all(np.abs(spread[:, 0]).max(axis=-1) > 0.1)
    assert np.all(spread[:, 1:] == 0.0)


@pytest.mark.parametrize("guard", GUARDS)
def test_standardize_constant_rows_are_exact_zeros_eagerly(guard):
    x = _constant_rows(10)
    got = np.asarray(L.standardize(x, guard=guard))
    assert np.all(got == 0.0), f"max residue {np.abs(got).max()}"


def test_standardize_unit_weights_equal_unweighted():
    x = _f32(_rng(2).normal(size=(4, 9)))
    got = np.asarray(_all_guards(x, jnp.ones_like(x)))  # [unweighted, weighted] per guard
    for i in range(len(GUARDS)):
        np.testing.assert_allclose(got[2 * i + 1], got[2 * i], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[0], standardize(x), rtol=1e-6, atol=1e-7)


def test_standardize_probability_weights_are_expectations():
    rng = _rng(3)
    x = rng.normal(size=(5, 6))
    p = rng.dirichlet(np.ones(6), size=5)
    mean = np.sum(p * x, -1, keepdims=True)
    var = np.sum(p * (x - mean) ** 2, -1, keepdims=True)
    expected = (x - mean) / np.sqrt(var)
    got = standardize(_f32(x), weight=_f32(p))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # weights are normalised: a scaled weight vector is the same expectation
    np.testing.assert_allclose(standardize(_f32(x), weight=_f32(7 * p)), got, rtol=1e-5, atol=1e-6)
    # and the "sqrt" guard is (x - E x)/sqrt(Var x + eps)
    got_sqrt = standardize(_f32(x), guard="sqrt", eps=0.1, weight=_f32(p))
    np.testing.assert_allclose(got_sqrt, (x - mean) / np.sqrt(var + 0.1), rtol=1e-4, atol=1e-5)


def test_weighted_moments_match_numpy():
    rng = _rng(4)
    x = rng.normal(size=(3, 8))
    p = rng.dirichlet(np.ones(8), size=3)
    mean, var = weighted_moments(_f32(x), _f32(p))
    np.testing.assert_allclose(mean[:, 0], np.sum(p * x, -1), rtol=1e-5, atol=1e-6)
    m = np.sum(p * x, -1, keepdims=True)
    np.testing.assert_allclose(var[:, 0], np.sum(p * (x - m) ** 2, -1), rtol=1e-5, atol=1e-6)
    mean_u, var_u = weighted_moments(_f32(x), None)
    np.testing.assert_allclose(mean_u[:, 0], x.mean(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var_u[:, 0], x.var(-1), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# tpo_target (Eq. 2)
# --------------------------------------------------------------------------------------------


def test_tpo_target_is_normalised():
    rng = _rng(5)
    logp_old = _f32(rng.normal(size=(6, 8)) * 3)
    scores = _f32(rng.normal(size=(6, 8)))
    for anchor in (True, False):
        q = np.asarray(tpo_target(logp_old, scores, anchor=anchor, eta=0.7))
        assert np.all(q > 0)
        np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)


def test_tpo_target_affine_invariance():
    logp_old = jnp.log(_f32([[0.5, 0.3, 0.2]]))
    q1 = tpo_target(logp_old, _f32([[1.0, 0.0, -1.0]]))
    q2 = tpo_target(logp_old, _f32([[100.0, 0.0, -100.0]]))
    q3 = tpo_target(logp_old, _f32([[3.0, 2.0, 1.0]]))
    np.testing.assert_allclose(q1, q2, rtol=1e-6)
    np.testing.assert_allclose(q1, q3, rtol=1e-6)
    # a negative scale reverses the ranking: not the same target
    q4 = tpo_target(logp_old, _f32([[-1.0, 0.0, 1.0]]))
    assert not np.allclose(q1, q4, atol=1e-2)


def test_tpo_target_permutation_equivariance():
    rng = _rng(6)
    logp_old = _f32(rng.normal(size=(3, 7)))
    scores = _f32(rng.normal(size=(3, 7)))
    perm = rng.permutation(7)
    q = np.asarray(tpo_target(logp_old, scores))
    q_perm = np.asarray(tpo_target(logp_old[:, perm], scores[:, perm]))
    np.testing.assert_allclose(q_perm, q[:, perm], rtol=1e-6, atol=1e-7)


def test_tpo_target_zero_variance_group_is_p_old():
    logp_old = _f32(_rng(7).normal(size=(4, 5)))
    p_old = np.asarray(jax.nn.softmax(logp_old, axis=-1))
    per_row = jax.jit(jax.vmap(lambda lo, s: L.tpo_target(lo, s)))
    for c in (0.0, 0.3, -17.25):
        scores = jnp.full((4, 5), c, jnp.float32)
        np.testing.assert_allclose(tpo_target(logp_old, scores), p_old, rtol=1e-6, atol=0)
        np.testing.assert_allclose(per_row(logp_old, scores), p_old, rtol=1e-6, atol=0)
    # no-anchor and zero variance: uniform
    q = tpo_target(logp_old, jnp.zeros((4, 5)), anchor=False)
    np.testing.assert_allclose(q, np.full((4, 5), 0.2), rtol=1e-6)


def test_tpo_target_anchor_matters():
    p_old = np.array([[0.7, 0.2, 0.1]])
    scores = _f32([[1.0, 0.0, -1.0]])
    anchored = np.asarray(tpo_target(jnp.log(_f32(p_old)), scores, anchor=True))
    free = np.asarray(tpo_target(jnp.log(_f32(p_old)), scores, anchor=False))
    assert anchored[0, 0] > free[0, 0] + 0.1
    u = np.array([1.0, 0.0, -1.0]) / np.sqrt(2.0 / 3.0)
    np.testing.assert_allclose(free[0], _softmax_np(u), rtol=1e-5)
    np.testing.assert_allclose(anchored[0], _softmax_np(np.log(p_old[0]) + u), rtol=1e-5)
    # ... and the anchored target does not depend on the normalisation of logp_old
    shifted = tpo_target(jnp.log(_f32(p_old)) + 4.0, scores)
    np.testing.assert_allclose(shifted, anchored, rtol=1e-6)


def test_tpo_target_closed_form_by_hand():
    # q_i ∝ p_i·exp(u_i/η), u = population z-score of the scores
    p = np.array([0.1, 0.2, 0.3, 0.4])
    s = np.array([2.0, 0.0, 1.0, 1.0])
    eta = 0.5
    u = (s - s.mean()) / s.std()  # mean 1, σ = sqrt(0.5)
    unnorm = p * np.exp(u / eta)
    q_hand = unnorm / unnorm.sum()
    q = tpo_target(jnp.log(_f32(p))[None], _f32(s)[None], eta=eta)
    np.testing.assert_allclose(q[0], q_hand, rtol=1e-5)
    # temperature: η → ∞ gives back p_old, small η concentrates on the best candidate
    np.testing.assert_allclose(
        tpo_target(jnp.log(_f32(p))[None], _f32(s)[None], eta=1e6)[0], p, rtol=1e-4
    )
    q_cold = tpo_target(jnp.log(_f32(p))[None], _f32(s)[None], eta=0.01)[0]
    assert q_cold[0] > 0.999


def test_tpo_target_is_stop_gradient():
    logp_old = _f32([[0.1, -0.3, 0.5]])
    scores = _f32([[1.0, 0.0, 2.0]])
    g = jax.grad(lambda lo: jnp.sum(tpo_target(lo, scores) * jnp.arange(3.0)))(logp_old)
    np.testing.assert_array_equal(g, np.zeros((1, 3)))


# --------------------------------------------------------------------------------------------
# Gradients: Prop. 1 and zero-variance groups
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2), (4, 7), (3, 16), (2, 3, 5)])
def test_prop1_gradient_is_p_minus_q(shape):
    rng = _rng(sum(shape))
    logp = _f32(rng.normal(size=shape) * 2.0)
    q = _f32(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]))
    grad = np.asarray(tce_grad(logp, q))
    p = np.exp(np.asarray(logp, np.float64))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, p - np.asarray(q), atol=3e-7)
    # the logits' normalisation is irrelevant: log-probs or raw log-scores give the same
    np.testing.assert_allclose(tce_grad(logp - 3.0, q), grad, atol=3e-7)


def test_target_cross_entropy_value():
    logp = jnp.log(_f32([[0.5, 0.25, 0.25]]))
    q = _f32([[0.2, 0.3, 0.5]])
    expected = -(0.2 * np.log(0.5) + 0.3 * np.log(0.25) + 0.5 * np.log(0.25))
    np.testing.assert_allclose(jax.jit(L.target_cross_entropy)(logp, q), [expected], rtol=1e-6)


def _tpo_hp(**kw) -> C.TPOConfig:
    return C.TPOConfig(name="tpo", **kw)


def _grpo_hp(**kw) -> C.GRPOConfig:
    base = dict(name="grpo", kl_beta=0.04, log_ratio_clamp=20.0)
    base.update(kw)
    return C.GRPOConfig(**base)


def _grad_through_registry(hp, logp_old, scores):
    """The algorithm's rollout signal and its first-epoch gradient at logp = logp_old."""
    algo = A.get(hp)

    @jax.jit
    def fn(logp_old, scores):
        batch = A.make_batch(logp_old, scores)
        signal = algo.signal(batch, hp)
        grad = jax.grad(lambda lp: A.batch_loss(algo, hp, lp, batch, signal))(logp_old)
        return signal, grad

    signal, grad = fn(logp_old, scores)
    return np.asarray(signal), np.asarray(grad)


def test_zero_variance_group_gives_zero_tpo_gradient():
    logp_old = _f32(_rng(8).normal(size=(3, 6)))
    scores = jnp.full((3, 6), 0.25, jnp.float32)
    q, grad = _grad_through_registry(_tpo_hp(), logp_old, scores)
    np.testing.assert_allclose(q, jax.nn.softmax(logp_old, axis=-1), rtol=1e-6)
    # p_θ = p_old = q: Prop. 1's p - q vanishes (up to the rounding of two softmaxes)
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)
    # the informative row of a mixed batch still gets its gradient, the others none
    mixed = scores.at[0, 0].set(1.0)
    _, grad_mixed = _grad_through_registry(_tpo_hp(), logp_old, mixed)
    assert np.abs(grad_mixed[0]).max() > 1e-2
    np.testing.assert_allclose(grad_mixed[1:], 0.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["add", "sqrt"])
def test_zero_variance_group_gives_zero_grpo_advantage_and_gradient(mode):
    logp_old = _f32(_rng(9).normal(size=(3, 6)))
    scores = jnp.full((3, 6), 1.0 / 3.0, jnp.float32)
    adv, grad = _grad_through_registry(_grpo_hp(std_eps_mode=mode), logp_old, scores)
    assert np.all(adv == 0.0)
    assert np.all(grad == 0.0)
    # zv-masked GRPO also gives zero (and no NaN from an empty informative set)
    _, grad_m = _grad_through_registry(
        _grpo_hp(std_eps_mode=mode, mask_zero_variance=True), logp_old, scores
    )
    assert np.all(grad_m == 0.0)


def test_grpo_masked_averages_over_informative_rows_only():
    logp = _f32(_rng(10).normal(size=(4, 5)))
    scores = np.zeros((4, 5), np.float32)
    scores[0, 1] = 1.0  # the only informative row
    _, g_plain = _grad_through_registry(_grpo_hp(std_eps_mode="add"), logp, _f32(scores))
    _, g_mask = _grad_through_registry(
        _grpo_hp(std_eps_mode="add", mask_zero_variance=True), logp, _f32(scores)
    )
    assert np.abs(g_plain[0]).max() > 1e-2
    # the plain mean divides by B = 4 rows, the masked one by the single informative row
    np.testing.assert_allclose(g_mask, 4.0 * g_plain, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Clipped surrogate (PPO / GRPO), REINFORCE, DG
# --------------------------------------------------------------------------------------------

CLIPPED_SETTINGS = {
    "ppo": dict(clip_eps=0.2, kl_beta=0.0, log_ratio_clamp=None),
    "grpo": dict(clip_eps=0.2, kl_beta=0.04, log_ratio_clamp=20.0),
}


@pytest.mark.parametrize("setting", sorted(CLIPPED_SETTINGS))
@pytest.mark.parametrize("weighted", [False, True])
def test_clipped_surrogate_at_ratio_one_equals_reinforce(setting, weighted):
    rng = _rng(11)
    logp = _f32(rng.normal(size=(4, 6)) - 2.0)
    adv = _f32(rng.normal(size=(4, 6)))
    weight = _f32(rng.uniform(0.1, 1.0, size=(4, 6))) if weighted else jnp.ones((4, 6))
    kw = CLIPPED_SETTINGS[setting]
    g_clip = clipped_grad(logp, logp, adv, weight, **kw)
    g_pg = pg_grad(logp, adv, weight)
    np.testing.assert_allclose(g_clip, g_pg, rtol=1e-6, atol=1e-7)
    # REINFORCE's gradient is -w·A/B per element (mean over the B = 4 rows)
    w = np.asarray(weight)
    np.testing.assert_allclose(g_pg, -w * np.asarray(adv) / 4.0, rtol=1e-6)
    # value at ratio 1: -Σ w·A per row (the KL term is exactly zero)
    np.testing.assert_allclose(
        clipped(logp, logp, adv, weight, **kw),
        -np.sum(w * np.asarray(adv), axis=-1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_kl_term_closed_form():
    rho = np.array([-3.0, -0.5, 0.0, 0.1, 2.0, 50.0], np.float32)
    zeros = jnp.zeros(rho.size)
    # A = 0 and β = 1: the loss is Σ_K w·kl; a one-hot weight reads one element off
    for i, r in enumerate(rho):
        weight = zeros.at[i].set(1.0)
        val = float(clipped(_f32(rho), zeros, zeros, weight, kl_beta=1.0, log_ratio_clamp=20.0))
        rc = float(np.clip(r, -20.0, 20.0))
        np.testing.assert_allclose(val, np.exp(-rc) + rc - 1.0, rtol=1e-5)
        assert val >= 0.0
        if r == 0.0:
            assert val == 0.0
    # without the clamp ρ = 50 enters as is
    no_clamp = float(clipped(_f32(rho), zeros, zeros, zeros.at[5].set(1.0), kl_beta=1.0))
    np.testing.assert_allclose(no_clamp, 49.0, rtol=1e-6)
    # the KL gradient is zero at ρ = 0 (the first epoch): only the surrogate acts
    g = clipped_grad(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3), kl_beta=0.04)
    assert np.all(np.asarray(g) == 0.0)
    # ... and elsewhere it pulls ρ back to 0: d/dρ β(exp(-ρ) + ρ - 1) = β(1 - exp(-ρ))
    r = _f32([0.3, -0.3])
    g = clipped_grad(r, jnp.zeros(2), jnp.zeros(2), jnp.ones(2), kl_beta=0.5)
    # clipped_grad takes the mean over rows; 1-D input is a single row
    np.testing.assert_allclose(g, 0.5 * (1.0 - np.exp(-np.asarray(r))), rtol=1e-5)


def _clip_grad_1(delta: float, adv: float, eps: float = 0.2) -> float:
    g = clipped_grad(_f32([delta]), jnp.zeros(1), _f32([adv]), jnp.ones(1), clip_eps=eps)
    return float(g[0])


def test_clipping_zeroes_the_gradient_outside_the_trust_region():
    up = float(np.log(1.5))  # ratio 1.5 > 1 + ε
    down = float(np.log(0.5))  # ratio 0.5 < 1 - ε
    assert _clip_grad_1(up, 1.0) == 0.0  # A > 0 and r > 1+ε: clipped
    assert _clip_grad_1(down, -1.0) == 0.0  # A < 0 and r < 1-ε: clipped
    # the pessimistic side is not clipped: the gradient is -A·r
    np.testing.assert_allclose(_clip_grad_1(down, 1.0), -0.5, rtol=1e-6)
    np.testing.assert_allclose(_clip_grad_1(up, -1.0), 1.5, rtol=1e-6)
    # inside the trust region: -A·r
    np.testing.assert_allclose(_clip_grad_1(float(np.log(1.1)), 2.0), -2.2, rtol=1e-6)
    # a wider ε un-clips the same ratio
    np.testing.assert_allclose(_clip_grad_1(up, 1.0, eps=0.6), -1.5, rtol=1e-6)


def test_log_ratio_clamp_bounds_the_ratio():
    # A < 0: the surrogate is min(r·A, clip(r)·A) = r·A, unbounded in r without the clamp
    big, old, adv, w = _f32([30.0]), jnp.zeros(1), _f32([-1.0]), jnp.ones(1)
    np.testing.assert_allclose(float(clipped(big, old, adv, w)), np.exp(30.0), rtol=1e-5)
    np.testing.assert_allclose(
        float(clipped(big, old, adv, w, log_ratio_clamp=20.0)), np.exp(20.0), rtol=1e-5
    )


def test_dg_gate_closed_form():
    rng = _rng(12)
    logp = _f32(np.log(rng.uniform(0.01, 0.99, size=(5, 3))))
    adv = _f32(rng.normal(size=(5, 3)))
    a = np.asarray(adv, np.float64)
    surprisal = -np.asarray(logp, np.float64)
    for eta in (0.5, 1.0, 3.0):
        gate = 1.0 / (1.0 + np.exp(-a * surprisal / eta))
        np.testing.assert_allclose(dg_grad(logp, adv, eta=eta), -gate * a, rtol=1e-5, atol=1e-7)
    # η → ∞: the gate is 1/2 everywhere, DG = half of REINFORCE
    np.testing.assert_allclose(dg_grad(logp, adv, eta=1e7), -0.5 * a, rtol=1e-5)
    # a surprising success is amplified, a surprising failure forgiven (η = 1)
    rare = jnp.log(_f32([0.001, 0.001]))
    g = np.asarray(dg_grad(rare, _f32([1.0, -1.0])))
    assert -g[0] > 0.99 and abs(g[1]) < 0.01


def test_dg_surprisal_clip():
    g = dg_grad(jnp.log(_f32([1e-6])), _f32([-1.0]), surprisal_clip=2.0)
    # ℓ_s = 13.8 clipped to 2: w = σ(A·2/η) = σ(-2); gradient -w·A
    np.testing.assert_allclose(g, [1.0 / (1.0 + np.exp(2.0))], rtol=1e-5)


def test_baseline_advantage_options():
    r = _f32([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(L.baseline_advantage(r, baseline="constant", value=0.5), r - 0.5)
    np.testing.assert_allclose(
        L.baseline_advantage(r, baseline="batch_mean"), r - np.array([[2 / 3, 1 / 3]]), rtol=1e-6
    )
    np.testing.assert_allclose(L.baseline_advantage(r, baseline="none"), r)
    exp_b = _f32([[0.1], [0.2], [0.3]])
    np.testing.assert_allclose(
        L.baseline_advantage(r, baseline="expected", expected=exp_b), r - exp_b
    )
    with pytest.raises(ValueError):
        L.baseline_advantage(r, baseline="expected")
    with pytest.raises(ValueError, match="foo"):
        L.baseline_advantage(r, baseline="foo")


# --------------------------------------------------------------------------------------------
# Appendix B coefficients (multi-context exact updates)
# --------------------------------------------------------------------------------------------

COEFFICIENT_CASES = {
    "ce": (C.CEConfig(name="ce"), lambda p: 1.0),
    "dg": (C.DGConfig(name="dg", baseline="none"), lambda p: p / (1.0 + p)),
    "grpo": (
        C.GRPOConfig(name="grpo", std_eps_mode="sqrt", kl_beta=0.04, log_ratio_clamp=20.0),
        lambda p: np.sqrt(p / (1.0 - p)),
    ),
    "tpo": (C.TPOConfig(name="tpo"), lambda p: p * (LAMBDA - 1.0) / (1.0 - p + LAMBDA * p)),
    "pg": (C.PGConfig(name="pg", baseline="none"), lambda p: p),
}


def test_appendix_b_worked_example_at_p_0_1():
    paper = {"ce": 1.0, "dg": 0.0909, "grpo": 0.3333, "tpo": 0.7300, "pg": 0.1}
    for name, value in paper.items():
        hp, _ = COEFFICIENT_CASES[name]
        got = update_coefficient(hp, 0.1)
        assert abs(got - value) < 1e-4, (name, got, value)


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", sorted(COEFFICIENT_CASES))
def test_appendix_b_closed_forms(name, p):
    hp, beta = COEFFICIENT_CASES[name]
    np.testing.assert_allclose(update_coefficient(hp, p), beta(p), rtol=2e-5)


def test_appendix_b_ordering_at_low_confidence():
    # p = 0.1: TPO's step on the correct action is ~8× DG's and ~2× GRPO's (App. B)
    b = {n: update_coefficient(hp, 0.1) for n, (hp, _) in COEFFICIENT_CASES.items()}
    assert b["dg"] < b["pg"] < b["grpo"] < b["tpo"] < b["ce"]


# --------------------------------------------------------------------------------------------
# Misalignment
# --------------------------------------------------------------------------------------------


def test_cosine_misalignment():
    g = _f32(_rng(13).normal(size=(4, 3)))
    np.testing.assert_allclose(misalignment(g, 3.0 * g), 0.0, atol=1e-6)
    np.testing.assert_allclose(misalignment(g, -0.5 * g), 2.0, atol=1e-6)
    np.testing.assert_allclose(misalignment(_f32([1.0, 0.0]), _f32([0.0, 2.0])), 1.0)
    # pytrees are flattened and compared as one vector
    t1 = {"a": _f32([1.0, 0.0]), "b": _f32([[0.0]])}
    t2 = {"a": _f32([0.0, 0.0]), "b": _f32([[5.0]])}
    np.testing.assert_allclose(misalignment(t1, t2), 1.0)
    t3 = {"a": _f32([1.0, 1.0]), "b": _f32([[0.0]])}
    np.testing.assert_allclose(misalignment(t1, t3), 1.0 - 1.0 / np.sqrt(2.0), rtol=1e-6)
    # the 1e-12 guard: a zero vector is orthogonal to everything, not NaN
    np.testing.assert_allclose(misalignment(jnp.zeros(3), _f32([1.0, 2.0, 3.0])), 1.0)
