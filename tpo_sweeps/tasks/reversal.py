"""Token reversal with a causal transformer (paper §3.4–3.7 and §4; protocols §3, §5).

Each episode draws B prompts of H tokens uniform over V (common random numbers: the prompts
and the initialisation depend only on the seed, so every algorithm sees the same ones). The
answer is scored against a target (copy, flip, reverse_copy, reverse_flip) with a per-token
reward (bag_of_tokens, sequential, terminal).

How the batch is laid out depends on the algorithm (``tpo_sweeps.algorithms``):

* ``sequence`` (TPO, TPO no-anchor, GRPO variants, Group PG): K full rollouts per prompt;
  rows = prompts, candidates = rollouts, log-score = summed token log-probs, score = mean
  token reward.
* ``token`` (``level: token``: tpo_token, grpo_token): one behaviour rollout per prompt and,
  at each of its H prefixes, K next-token candidates with the behaviour token as candidate 0;
  rows = the B·H prefix states. The update reads all H states from one causal pass over the
  behaviour sequence (the authors re-run the model once per state).
* ``single`` (PPO, DG, PG/REINFORCE, batch-std PG): one rollout per prompt; rows = rollouts,
  the candidate axis = the H tokens, advantage = per-token reward minus the batch mean at that
  position.

Interaction matching (``task.match``) is resolved into the batch and learning rate before
the program is built (``tpo_sweeps.identity.resolve``, called by ``tasks.build``).

Logged ``error`` is 1 - mean reward of the episode's rollouts *before* the update: over all
B·K·H candidate rewards for sequence methods, over the B·H behaviour rewards otherwise (§3.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import devices, optim
from tpo_sweeps import flax_models as F
from tpo_sweeps import models as M
from tpo_sweeps.sampling import categorical_rows
from tpo_sweeps.train import Program, fit_batch

Array = jax.Array

TARGETS = ("copy", "flip", "reverse_copy", "reverse_flip")
REWARDS = ("bag_of_tokens", "sequential", "terminal")
DIAGNOSTICS = (
    "grad_norm",
    "frac_success",
    "frac_all_fail",
    "frac_zero_var",
    "weight_winners",
    "weight_losers",
)


def make_targets(prompts: Array, target: str, V: int) -> Array:
    if target == "copy":
        return prompts
    if target == "flip":
        return (V - 1) - prompts
    if target == "reverse_copy":
        return prompts[..., ::-1]
    if target == "reverse_flip":
        return (V - 1) - prompts[..., ::-1]
    raise C.ConfigError(f"task.target='{target}' is not one of {', '.join(TARGETS)}")


def token_rewards(answers: Array, targets: Array, reward: str) -> Array:
    """Per-token rewards ``[..., H]`` (protocols §3.2)."""
    correct = (answers == targets).astype(jnp.float32)
    if reward == "bag_of_tokens":
        return correct
    if reward == "sequential":
        return jnp.cumprod(correct, axis=-1)
    if reward == "terminal":
        return jnp.broadcast_to(jnp.prod(correct, axis=-1, keepdims=True), correct.shape)
    raise C.ConfigError(f"task.reward='{reward}' is not one of {', '.join(REWARDS)}")


def episode_prompts(key: Array, t: Array, n: int, H: int, V: int) -> tuple[Array, Array]:
    """Prompts of episode ``t`` and the sampling key: a function of the seed's key only, so
    every algorithm sees the same prompts (common random numbers, protocols §3.9)."""
    pkey, skey = jax.random.split(jax.random.fold_in(key, t))
    return jax.random.randint(pkey, (n, H), 0, V), skey


def generate(params: dict, prompts: Array, key: Array, k: int, extra: int = 0, cached: bool = True):
    """Sample ``k`` answers per prompt with the KV cache; the prompt is encoded once.
    ``cached=False`` re-runs the full sequence at every step, as the authors' code does
    (same draws, same random numbers; for tests and comparisons).

    Returns tokens ``[N, k, H]`` and their log-probs ``[N, k, H]``; with ``extra > 0`` also
    ``extra`` additional next-token candidates at every prefix, ``[N, k, H, extra]`` with
    their log-probs (the token-level groups).
    """
    params = jax.lax.stop_gradient(params)
    N, H = prompts.shape
    if cached:
        cache, lp = M.prefill(params, prompts, k)
        lp = jnp.repeat(lp, k, axis=0)  # [N·k, V]
    else:
        # the authors' sampler: a zero-filled 2H buffer per candidate, re-run in full at
        # every generation step (kept as the reference the cached path is tested against)
        cache = jnp.concatenate([jnp.repeat(prompts, k, 0), jnp.zeros((N * k, H), int)], 1)
        lp = M.forward(params, cache)[:, H - 1]

    def draw(lp, t):
        kt = jax.random.fold_in(key, t)
        tok = categorical_rows(kt, lp)
        tok_lp = jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
        if not extra:
            return tok, tok_lp, None, None
        cand = categorical_rows(jax.random.fold_in(kt, 1), lp, extra)  # [N·k, extra]
        return tok, tok_lp, cand, jnp.take_along_axis(lp, cand, axis=-1)

    def body(carry, t):
        cache, lp = carry
        out = draw(lp, t)
        if cached:
            cache, lp = M.decode(params, cache, out[0], t)
        else:
            cache = cache.at[:, H + t].set(out[0])
            lp = M.forward(params, cache)[:, H + t]
        return (cache, lp), out

    # H-1 decode steps: the last sampled token is never fed back (it predicts nothing)
    (_, lp), outs = jax.lax.scan(body, (cache, lp), jnp.arange(H - 1))
    last = draw(lp, H - 1)
    outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]], 0), outs, last)
    tok, tok_lp, cand, cand_lp = (
        None if x is None else jnp.moveaxis(x, 0, 1).reshape((N, k, H) + x.shape[2:]) for x in outs
    )
    return tok, tok_lp, cand, cand_lp


def reversal(cfg: C.Config) -> Program:
    task: C.ReversalConfig = cfg.task
    hp = cfg.algorithm
    algo = A.get(hp)
    H, V, K = task.H, task.V, task.K
    if task.target not in TARGETS:
        raise C.ConfigError(f"task.target='{task.target}' is not one of {', '.join(TARGETS)}")
    if task.reward not in REWARDS:
        raise C.ConfigError(f"task.reward='{task.reward}' is not one of {', '.join(REWARDS)}")
    if task.match not in ("prompts", "interactions"):
        raise C.ConfigError(f"task.match='{task.match}' is not one of prompts, interactions")
    if H < 2:
        raise C.ConfigError(f"task.H must be >= 2, got {H}")
    mode = A.layout(hp)
    if mode == "token" and task.reward == "terminal":
        raise C.ConfigError(
            f"algorithm '{hp.name}' (token level) needs a dense reward; task.reward=terminal"
        )
    if task.match != "prompts":  # tasks.build runs the resolved config (tpo_sweeps.identity)
        raise C.ConfigError("reversal: build the program with tasks.build (match unresolved)")
    B = task.B
    opt = optim.build(cfg.optimizer)
    m = task.model
    shape = M.Shape(V, 2 * H, m.d_model, m.num_heads, m.num_layers, m.ffn_mult)
    # the update's log-probs: Flax's layers or the fused CPU kernels (the sampler serves both)
    kernels = cfg.hardware.model_kernels
    fns = F.KERNELS[devices.model_kernels(getattr(kernels, "value", kernels))]

    def init(key):
        params = M.init_params(key, shape)
        return params, opt.init(params), key

    def rollout(params, prompts, targets, key):
        """-> logp_of, batch, error, success [rows, cands] (diagnostics), rewards."""
        if mode == "sequence":
            toks, tok_lp, _, _ = generate(params, prompts, key, K, cached=task.cached_sampler)
            r = token_rewards(toks, targets[:, None], task.reward)  # [B, K, H]
            batch = A.make_batch(tok_lp.sum(-1), r.mean(-1))
            logp_of = lambda p: fns.answer_token_logp(p, prompts, toks).sum(-1)  # noqa: E731
            return logp_of, batch, 1.0 - r.mean(), jnp.all(toks == targets[:, None], -1)
        toks, tok_lp, cand, cand_lp = generate(
            params, prompts, key, 1, K - 1 if mode == "token" else 0, task.cached_sampler
        )
        toks, tok_lp = toks[:, 0], tok_lp[:, 0]  # [B, H]
        r = token_rewards(toks, targets, task.reward)
        error = 1.0 - r.mean()
        exact = jnp.all(toks == targets, -1)  # [B]
        if mode == "single":
            batch = A.make_batch(tok_lp, r)
            logp_of = lambda p: fns.answer_token_logp(p, prompts, toks[:, None])[:, 0]  # noqa: E731
            return logp_of, batch, error, jnp.broadcast_to(exact[:, None], r.shape)
        # token level: candidate 0 is the behaviour token, then K-1 fresh draws
        cands = jnp.concatenate([toks[..., None], cand[:, 0]], -1)  # [B, H, K]
        cands_lp = jnp.concatenate([tok_lp[..., None], cand_lp[:, 0]], -1)
        hit = (cands == targets[..., None]).astype(jnp.float32)
        if task.reward == "sequential":
            alive = jnp.concatenate([jnp.ones((B, 1)), r[:, :-1]], -1)  # behaviour alive
            hit = hit * alive[..., None]
        batch = A.make_batch(cands_lp.reshape(B * H, K), hit.reshape(B * H, K))

        def logp_of(p):
            lp = fns.answer_logprobs(p, prompts, toks[:, None])[:, 0]  # [B, H, V]
            return jnp.take_along_axis(lp, cands, -1).reshape(B * H, K)

        return logp_of, batch, error, hit.reshape(B * H, K) > 0

    def step(carry, t):
        params, opt_state, key = carry
        prompts, skey = episode_prompts(key, t, B, H, V)
        targets = make_targets(prompts, task.target, V)
        logp_of, batch, error, success = rollout(params, prompts, targets, skey)
        signal = algo.signal(batch, hp)
        params, opt_state, grads = fit_batch(algo, hp, params, opt_state, opt, logp_of, batch)
        out = {"error": error}
        if task.diagnostics:
            out.update(_diagnostics(algo, hp, task, mode, batch, signal, grads, success))
        return (params, opt_state, key), out

    names = ("error",) + (DIAGNOSTICS if task.diagnostics else ())
    steps = np.arange(task.steps)
    # not applicable to single-sample methods (no groups): NaN by design
    undefined = frozenset({"frac_zero_var", "frac_all_fail"})
    return Program(init, step, task.steps, {n: steps for n in names}, undefined)


def _diagnostics(algo, hp, task, mode, batch, signal, grads, success) -> dict[str, Array]:
    """§4 diagnostics of one episode (Figs 11, 12, 15); protocols §4.10."""
    leaves = jax.tree_util.tree_leaves(grads)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
    w = algo.candidate_weight(batch, signal, hp)
    win = success.astype(jnp.float32)
    if mode == "single":
        # per rollout: mean weight over its tokens; success = exact match of the rollout
        w, win = w.mean(-1), win[:, 0]
        frac_success = win.mean()
        zero_var = jnp.nan
    else:
        frac_success = jnp.mean(jnp.any(success, axis=-1))
        std = jnp.std(batch.scores, axis=-1)
        zero_var = jnp.mean(std < task.std_threshold)
    w_win = jnp.sum(w * win) / jnp.maximum(jnp.sum(win), 1.0)
    w_lose = jnp.sum(w * (1 - win)) / jnp.maximum(jnp.sum(1 - win), 1.0)
    return {
        "grad_norm": grad_norm,
        "frac_success": frac_success,
        "frac_all_fail": 1.0 - frac_success if mode != "single" else jnp.nan,
        "frac_zero_var": jnp.asarray(zero_var, jnp.float32),
        "weight_winners": w_win,
        "weight_losers": w_lose,
    }
