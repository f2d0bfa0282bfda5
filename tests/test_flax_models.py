"""The fused CPU kernels (``tpo_sweeps.models``) against the plain Flax path
(``tpo_sweeps.flax_models``): the whole model, every layout of the update, every parameter.

Weights are perturbed away from their initialisation (non-zero biases, LayerNorm scales and
biases away from 1 and 0), so that a kernel whose backward pass drops a term cannot hide
behind zeros. Tolerances are float32 rounding: the two paths order their sums differently.

The attention key bias has an exactly zero true gradient (it adds the same ``q·b`` to every
score of a query, which the softmax cancels); both paths give rounding noise there, which
Muon's orthogonalisation would blow up to a full-size step in a random direction. The
gradient check asserts that noise is tiny in both; the Muon check compares every other
parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import flax_models as F
from tpo_sweeps import models as M
from tpo_sweeps import optim
from tpo_sweeps.tasks.reversal import make_targets, token_rewards
from tpo_sweeps.train import fit_batch

B, K, H, V = 3, 4, 5, 4
SHAPE = M.Shape(V, 2 * H)
SEEDS = 2
ALGORITHMS = {  # layout -> algorithm config
    "sequence": C.TPOConfig(name="tpo", epochs=4),
    "token": C.TPOConfig(name="tpo_token", epochs=4, level="token"),
    "single": C.PPOConfig(name="ppo", epochs=4),
}
CASES = [
    ("sequence", "terminal"),
    ("sequence", "bag_of_tokens"),
    ("token", "bag_of_tokens"),  # token-level groups need a dense reward
    ("single", "bag_of_tokens"),
    ("single", "terminal"),
]


def _perturbed(key) -> dict:
    params = M.init_params(key, SHAPE)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    noisy = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, noisy)


def _episode(key, layout: str, reward: str):
    """Prompts, sampled answers and the batch of one episode (sampler as in the task)."""
    kp, ka, kc = jax.random.split(key, 3)
    prompts = jax.random.randint(kp, (B, H), 0, V)
    targets = make_targets(prompts, "reverse_copy", V)
    k = K if layout == "sequence" else 1
    toks = jax.random.randint(ka, (B, k, H), 0, V)
    toks = toks.at[0, 0].set(targets[0])  # one exact match: terminal rewards are not all 0
    r = token_rewards(toks, targets[:, None], reward)
    lp_old = -jax.random.uniform(kc, r.shape, minval=0.5, maxval=2.0)
    if layout == "sequence":
        return prompts, toks, None, A.make_batch(lp_old.sum(-1), r.mean(-1))
    if layout == "single":
        return prompts, toks[:, 0], None, A.make_batch(lp_old[:, 0], r[:, 0])
    cands = jax.random.randint(kc, (B, H, K), 0, V).at[..., 0].set(toks[:, 0])
    hit = (cands == targets[..., None]).astype(jnp.float32)
    lp_cands = -jax.random.uniform(kp, (B * H, K), minval=0.5, maxval=2.0)
    return prompts, toks[:, 0], cands, A.make_batch(lp_cands, hit.reshape(B * H, K))


def _logp_of(fns: F.ModelFunctions, layout, prompts, toks, cands):
    if layout == "sequence":
        return lambda p: fns.answer_token_logp(p, prompts, toks).sum(-1)
    if layout == "single":
        return lambda p: fns.answer_token_logp(p, prompts, toks[:, None])[:, 0]
    return lambda p: jnp.take_along_axis(
        fns.answer_logprobs(p, prompts, toks[:, None])[:, 0], cands, -1
    ).reshape(B * H, K)


def _loss_and_grads(fns, layout, reward, params, key):
    hp = ALGORITHMS[layout]
    algo = A.get(hp)
    prompts, toks, cands, batch = _episode(key, layout, reward)
    logp_of = _logp_of(fns, layout, prompts, toks, cands)
    signal = algo.signal(batch, hp)
    return jax.value_and_grad(lambda p: A.batch_loss(algo, hp, logp_of(p), batch, signal))(params)


def _seeds():
    keys = jax.random.split(jax.random.PRNGKey(0), SEEDS)
    return keys, jax.vmap(_perturbed)(keys)


def _is_key_bias(path) -> bool:
    names = [getattr(p, "key", None) for p in path]
    return names[-2:] == ["k", "bias"]


def test_full_pass_equals_the_flax_module():
    params = _perturbed(jax.random.PRNGKey(3))
    tokens = jax.random.randint(jax.random.PRNGKey(4), (B, 2 * H), 0, V)
    np.testing.assert_allclose(M.forward(params, tokens), F.forward(params, tokens), atol=2e-5)
    # the module's own parameter tree is models.init_params' tree, leaf for leaf
    own = F.transformer_of(params).init(jax.random.PRNGKey(0), tokens)["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, own)
    assert shapes == jax.tree_util.tree_map(jnp.shape, params)


@pytest.mark.parametrize("layout,reward", CASES)
def test_loss_and_every_gradient_equal_the_flax_path(layout, reward):
    keys, params = _seeds()

    def both(p, key):
        return tuple(
            _loss_and_grads(F.KERNELS[k], layout, reward, p, key) for k in ("cpu_fused", "flax")
        )

    (loss_fast, g_fast), (loss_ref, g_ref) = jax.jit(jax.vmap(both))(params, keys)
    np.testing.assert_allclose(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(loss_ref).max()) > 1e-3  # a real loss, not zeros on both sides
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g_ref))
    flat_fast = jax.tree_util.tree_flatten_with_path(g_fast)[0]
    flat_ref = jax.tree_util.tree_leaves(g_ref)
    for (path, fast), ref in zip(flat_fast, flat_ref, strict=True):
        name = jax.tree_util.keystr(path)
        if _is_key_bias(path):  # true gradient exactly 0: rounding noise on both sides
            assert float(jnp.abs(fast).max()) < 1e-5 * scale, name
            assert float(jnp.abs(ref).max()) < 1e-5 * scale, name
            continue
        np.testing.assert_allclose(fast, ref, atol=2e-5 * scale, rtol=1e-4, err_msg=name)


# dense gradients: with a terminal reward and one success among B single rollouts, many
# gradient entries are ~0, and the optimiser's normalisation (Muon's orthogonalisation, the
# 3-D kernels' Adam ratio m/sqrt(v)) lifts their rounding noise to full-size steps (as for
# the key bias) differently in either path; measured: 2 of 8192 entries off by 2.4e-4
@pytest.mark.parametrize("layout,reward", [CASES[0], CASES[2], CASES[3]])
def test_four_muon_epochs_give_the_same_parameters(layout, reward):
    keys, params = _seeds()
    hp = ALGORITHMS[layout]
    algo = A.get(hp)
    opt = optim.build(C.MuonConfig())

    def epochs(p, key, kernels):
        prompts, toks, cands, batch = _episode(key, layout, reward)
        logp_of = _logp_of(F.KERNELS[kernels], layout, prompts, toks, cands)
        new, _, _ = fit_batch(algo, hp, p, opt.init(p), opt, logp_of, batch)
        return new

    run = jax.jit(jax.vmap(epochs, in_axes=(0, 0, None)), static_argnums=2)
    fast, ref = run(params, keys, "cpu_fused"), run(params, keys, "flax")
    moved = 0.0
    flat_fast = jax.tree_util.tree_flatten_with_path(fast)[0]
    for (path, a), b, p0 in zip(
        flat_fast, jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(params), strict=True
    ):
        if _is_key_bias(path):
            continue
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=jax.tree_util.keystr(path))
        moved = max(moved, float(jnp.abs(b - p0).max()))
    assert moved > 1e-3  # the epochs moved the parameters
