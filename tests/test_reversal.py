"""Token reversal: model equivalences, task definitions, learning probes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import models as M
from tpo_sweeps import tasks
from tpo_sweeps.tasks import reversal as R
from tpo_sweeps.train import run, seed_keys

H, V, B, K = 5, 3, 4, 3


@pytest.fixture(scope="module")
def params():
    return M.init_params(jax.random.PRNGKey(0), M.Shape(V, 2 * H))


@pytest.fixture(scope="module")
def data():
    prompts = jax.random.randint(jax.random.PRNGKey(1), (B, H), 0, V)
    answers = jax.random.randint(jax.random.PRNGKey(2), (B, K, H), 0, V)
    return prompts, answers


def _full(params, prompts, answers):
    seq = jnp.concatenate([jnp.repeat(prompts[:, None], answers.shape[1], 1), answers], -1)
    return M.forward(params, seq)[..., H - 1 : 2 * H - 1, :]


def test_param_shapes_follow_flax(params):
    blk = params["block_0"]
    assert blk["q"]["kernel"].shape == (64, 2, 32)  # 3-D: AdamW branch of Muon
    assert blk["q"]["bias"].shape == (2, 32)  # 2-D: Muon branch
    assert blk["out"]["kernel"].shape == (2, 32, 64)
    assert params["tok_emb"].shape == (V, 64) and params["pos_emb"].shape == (2 * H, 64)


def _plain_ln_dense(ln, x, w, b):
    """The authors' layers as autodiff sees them: Flax LayerNorm, then Dense."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    h = (x - mean) / jnp.sqrt(var + M.LN_EPS) * ln["scale"] + ln["bias"]
    return h @ w + b


@pytest.mark.parametrize("din,dout", [(64, 192), (256, 64)])  # both weight-grad branches
def test_folded_layernorm_dense_matches_plain_layers(din, dout):
    """_ln_dense (LN affine folded into the GEMM, custom backward passes) is the same
    function, with the same gradients, as LayerNorm followed by Dense."""
    ks = jax.random.split(jax.random.PRNGKey(3), 5)
    x = 2.0 * jax.random.normal(ks[0], (3, 7, din)) + 0.5
    ln = {
        "scale": 1 + 0.3 * jax.random.normal(ks[1], (din,)),
        "bias": jax.random.normal(ks[2], (din,)),
    }
    w = jax.random.normal(ks[3], (din, dout)) / 8
    b = jax.random.normal(ks[4], (dout,))
    ct = jax.random.normal(jax.random.PRNGKey(4), (3, 7, dout))
    ours = lambda *a: jnp.sum(M._ln_dense(*a) * ct)  # noqa: E731
    plain = lambda *a: jnp.sum(_plain_ln_dense(*a) * ct)  # noqa: E731
    np.testing.assert_allclose(M._ln_dense(ln, x, w, b), _plain_ln_dense(ln, x, w, b), atol=2e-5)
    g1 = jax.grad(ours, argnums=(0, 1, 2, 3))(ln, x, w, b)
    g2 = jax.grad(plain, argnums=(0, 1, 2, 3))(ln, x, w, b)
    for a, e in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4)


def test_grouped_teacher_forcing_equals_full_forward(params, data):
    prompts, answers = data
    np.testing.assert_allclose(
        M.answer_logprobs(params, prompts, answers), _full(params, prompts, answers), atol=1e-5
    )


def test_grouped_gradient_equals_full_forward_gradient(params, data):
    prompts, answers = data
    oh = jax.nn.one_hot(answers, V)
    g1 = jax.grad(lambda p: jnp.sum(M.answer_logprobs(p, prompts, answers) * oh))(params)
    g2 = jax.grad(lambda p: jnp.sum(_full(p, prompts, answers) * oh))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)


def test_cached_sampler_logprobs_equal_full_forward(params, data):
    prompts, _ = data
    toks, tok_lp, cand, cand_lp = R.generate(params, prompts, jax.random.PRNGKey(5), K, extra=2)
    assert toks.shape == (B, K, H) and cand.shape == (B, K, H, 2)
    full = _full(params, prompts, toks)  # [B, K, H, V]
    np.testing.assert_allclose(
        tok_lp, jnp.take_along_axis(full, toks[..., None], -1)[..., 0], atol=1e-5
    )
    np.testing.assert_allclose(cand_lp, jnp.take_along_axis(full, cand, -1), atol=1e-5)


def test_sampler_draws_from_the_policy(params):
    # one prompt, many rollouts: empirical first-token frequencies match the model's probs
    prompt = jnp.zeros((1, H), jnp.int32)
    toks, _, _, _ = R.generate(params, prompt, jax.random.PRNGKey(9), 4000)
    probs = jnp.exp(M.prefill(params, prompt)[1][0])
    freq = jnp.bincount(toks[0, :, 0], length=V) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)


@pytest.mark.parametrize(
    "target,expect",
    [
        ("copy", [[0, 1, 2]]),
        ("flip", [[2, 1, 0]]),
        ("reverse_copy", [[2, 1, 0]]),
        ("reverse_flip", [[0, 1, 2]]),
    ],
)
def test_targets(target, expect):
    np.testing.assert_array_equal(R.make_targets(jnp.array([[0, 1, 2]]), target, 3), expect)


def test_rewards():
    ans, tgt = jnp.array([[1, 0, 1, 1]]), jnp.array([[1, 1, 1, 1]])
    np.testing.assert_array_equal(R.token_rewards(ans, tgt, "bag_of_tokens"), [[1, 0, 1, 1]])
    np.testing.assert_array_equal(R.token_rewards(ans, tgt, "sequential"), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(R.token_rewards(ans, tgt, "terminal"), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(R.token_rewards(tgt, tgt, "terminal"), [[1, 1, 1, 1]])


def _cfg(hp, **task):
    base = dict(steps=3, H=3, V=2, B=8, K=4, reward="bag_of_tokens")
    base.update(task)
    return C.Config(algorithm=hp, task=C.ReversalConfig(**base), optimizer=C.MuonConfig())


def test_token_level_rejects_terminal_reward():
    with pytest.raises(C.ConfigError, match="dense reward"):
        tasks.build(_cfg(C.TPOConfig(name="tpo_token", level="token"), reward="terminal"))


def test_interaction_matching_scales_single_sample_methods_only():
    from tpo_sweeps.identity import interaction_scaling

    assert interaction_scaling("single", 100, 8, "interactions") == (800, pytest.approx(8**0.5))
    assert interaction_scaling("token", 100, 8, "interactions") == (800, pytest.approx(8**0.5))
    assert interaction_scaling("sequence", 100, 8, "interactions") == (100, 1.0)
    assert interaction_scaling("single", 100, 8, "prompts") == (100, 1.0)
    assert A.layout(C.PPOConfig(name="ppo")) == A.layout(C.DGConfig(name="dg")) == "single"
    assert A.layout(C.TPOConfig(name="tpo_token", level="token")) == "token"
    assert A.layout(C.TPOConfig(name="tpo")) == A.layout(C.GRPOConfig(name="grpo")) == "sequence"
    # the program really uses B·K rollouts: PPO's error is a mean over B·K·H = 24 token
    # rewards, so it takes values k/24 that B·H = 6 rewards could not produce
    prog = tasks.build(_cfg(C.PPOConfig(name="ppo"), match="interactions", B=2, K=4, H=3, steps=10))
    errs = np.asarray(prog.train(jax.random.PRNGKey(0))["error"])
    np.testing.assert_allclose(errs * 24, np.round(errs * 24), atol=1e-4)
    assert not np.allclose(errs * 6, np.round(errs * 6), atol=1e-4)


# each algorithm once, the rewards spread over them (a compile costs seconds on CI's CPU)
CASES = [
    (C.TPOConfig(name="tpo", epochs=2), "terminal"),
    (C.TPOConfig(name="tpo_token", epochs=2, level="token"), "sequential"),
    (C.GRPOConfig(name="grpo", epochs=2, kl_beta=0.04, log_ratio_clamp=20.0), "terminal"),
    (C.GRPOConfig(name="grpo_token", epochs=2, level="token"), "bag_of_tokens"),
    (C.GRPOConfig(name="grpo_masked", epochs=2, mask_zero_variance=True), "sequential"),
    (C.TPOConfig(name="tpo_no_anchor", anchor=False), "bag_of_tokens"),
    (C.GroupPGConfig(name="group_pg", epochs=2), "sequential"),
    (C.PPOConfig(name="ppo", epochs=2), "terminal"),
    (C.DGConfig(name="dg"), "sequential"),
    (C.PGConfig(name="pg"), "bag_of_tokens"),
]


@pytest.mark.parametrize("hp,reward", CASES, ids=lambda x: getattr(x, "name", x))
def test_every_algorithm_runs_with_diagnostics(hp, reward):
    res = run(tasks.build(_cfg(hp, reward=reward, diagnostics=True)), np.arange(2))
    err = res.metrics["error"]
    assert err.shape == (2, 3) and np.all((err >= 0) & (err <= 1))
    gn = res.metrics["grad_norm"]
    assert np.all(np.isfinite(gn)) and np.all(gn >= 0) and np.any(gn > 0)
    for name in ("frac_success", "weight_winners", "weight_losers"):
        assert np.all(np.isfinite(res.metrics[name])) and np.all(res.metrics[name] >= 0)
    fs = res.metrics["frac_success"]
    assert np.all(fs <= 1)
    if A.layout(hp) == "single":
        assert np.all(np.isnan(res.metrics["frac_zero_var"]))
    else:
        np.testing.assert_allclose(res.metrics["frac_all_fail"], 1 - fs, atol=1e-6)


def test_common_random_numbers_same_prompts_and_init():
    # for a seed, every algorithm starts from the same parameters ...
    a = tasks.build(_cfg(C.PPOConfig(name="ppo")))
    b = tasks.build(_cfg(C.TPOConfig(name="tpo")))
    pa, pb = a.init(jax.random.PRNGKey(3))[0], b.init(jax.random.PRNGKey(3))[0]
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)
    # ... and episode prompts depend on the seed and episode only
    p1, _ = R.episode_prompts(jax.random.PRNGKey(3), 7, 8, 4, 2)
    p2, _ = R.episode_prompts(jax.random.PRNGKey(3), 7, 8, 4, 2)
    p3, _ = R.episode_prompts(jax.random.PRNGKey(3), 8, 8, 4, 2)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


def test_vmap_over_seeds_equals_loop():
    prog = tasks.build(_cfg(C.TPOConfig(name="tpo", epochs=2), reward="terminal"))
    together = jax.jit(jax.vmap(prog.train))(seed_keys(np.arange(2)))["error"]
    alone = [jax.jit(prog.train)(jax.random.PRNGKey(s))["error"] for s in range(2)]
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-6)


@pytest.mark.slow
def test_tpo_solves_reverse_copy_terminal_v2_h4():
    """TPO learns exact-match reverse copy (V=2, H=4) within a few hundred episodes."""
    cfg = C.Config(
        algorithm=C.TPOConfig(name="tpo", epochs=4),
        task=C.ReversalConfig(steps=300, H=4, V=2, B=64, K=8, reward="terminal"),
        optimizer=C.MuonConfig(),
    )
    err = run(tasks.build(cfg), np.arange(2)).metrics["error"]
    assert err[:, :10].mean() > 0.8  # 1 - 2^-4 at init
    assert err[:, -20:].mean() < 0.1


@pytest.mark.slow
def test_tpo_token_beats_grpo_token_on_bag_of_tokens():
    """Table 1's V=2 ordering: tpo_token drives bag-of-tokens error below 1% well before
    grpo_token (paper: 58 vs 904 episodes)."""

    def steps_to_1pct(hp):
        cfg = C.Config(
            algorithm=hp,
            task=C.ReversalConfig(steps=250, H=10, V=2, B=100, K=8),
            optimizer=C.MuonConfig(),
        )
        curve = run(tasks.build(cfg), np.arange(2)).metrics["error"].mean(0)
        below = np.nonzero(curve < 0.01)[0]
        return int(below[0]) if below.size else 10**9

    tpo = steps_to_1pct(C.TPOConfig(name="tpo_token", epochs=4, level="token"))
    grpo = steps_to_1pct(
        C.GRPOConfig(name="grpo_token", epochs=4, kl_beta=0.04, log_ratio_clamp=20.0, level="token")
    )
    assert tpo < 150
    assert grpo > 2 * tpo


def test_uncached_sampler_draws_the_same_tokens(params, data):
    prompts, _ = data
    a = R.generate(params, prompts, jax.random.PRNGKey(4), K, extra=2, cached=True)
    b = R.generate(params, prompts, jax.random.PRNGKey(4), K, extra=2, cached=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


@pytest.mark.slow
def test_cached_and_uncached_training_curves_agree():
    """Same seeds, same random numbers: the two samplers give statistically the same run."""
    curves = {}
    for cached in (True, False):
        cfg = C.Config(
            algorithm=C.TPOConfig(name="tpo", epochs=4),
            task=C.ReversalConfig(
                steps=60, H=4, V=2, B=32, K=8, reward="terminal", cached_sampler=cached
            ),
            optimizer=C.MuonConfig(),
        )
        curves[cached] = run(tasks.build(cfg), np.arange(4)).metrics["error"]
    a, b = curves[True], curves[False]
    # per-episode seed means within 3 pooled standard errors, and the same learning
    se = np.sqrt((a.var(0) + b.var(0)) / a.shape[0]) + 1e-3
    assert np.mean(np.abs(a.mean(0) - b.mean(0)) < 3 * se) > 0.9
    assert abs(a[:, -10:].mean() - b[:, -10:].mean()) < 0.1
