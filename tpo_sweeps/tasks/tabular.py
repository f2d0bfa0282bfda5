"""Tabular bandits (paper §3.1–3.2, Figs 3–4; protocols §4.1–4.2).

The policy is a table of logits; every method's update is the gradient of its loss (from
``tpo_sweeps.algorithms``) w.r.t. the logits, so the only thing that differs between
methods is how the task lays out the batch for the algorithm's family.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import losses as L
from tpo_sweeps import optim, sampling
from tpo_sweeps.train import Program, fit_batch

CORRECT = 0  # y*: the correct action, index 0 without loss of generality


def single_context(cfg: C.Config) -> Program:
    """One context, K actions, B sampled actions per step, reward 1{a = y*}.

    Layout by family (protocols §4.1):
      single  — rows = the B samples, ``A = r - b`` (b = 0.5 constant);
      group   — one row holding the B samples as candidates (GRPO z-scores them);
      target  — one row over the whole action simplex with scores
                ``S = (1/B) Σ_b (r_b - b)·e_{a_b}`` (TPO's group is the simplex, D4);
      supervised — one row, one-hot label.
    Error ``1 - π(y*)`` is recorded *before* the step (D5); misalignment is to the exact PG
    oracle ``∇π(y*) = π(y*)(e_{y*} - π)``.
    """
    task: C.TabularSingleConfig = cfg.task
    hp = cfg.algorithm
    algo = A.get(hp)
    opt = optim.build(cfg.optimizer)
    K, B = task.num_actions, task.batch_size
    onehot_y = jax.nn.one_hot(CORRECT, K)

    def layout(logits, actions):
        r = (actions == CORRECT).astype(jnp.float32)
        if algo.family == "single":
            return lambda l: jax.nn.log_softmax(l)[actions][:, None], r[:, None]
        if algo.family == "group":
            return lambda l: jax.nn.log_softmax(l)[actions][None, :], r[None, :]
        if algo.family == "target":
            scores = jnp.zeros(K).at[actions].add(r - task.baseline_value) / B
            return lambda l: jax.nn.log_softmax(l)[None, :], scores[None, :]
        return lambda l: jax.nn.log_softmax(l)[None, :], onehot_y[None, :]

    def init(key):
        params = jnp.zeros(K)
        return params, opt.init(params), key

    def step(carry, t):
        logits, opt_state, key = carry
        pi = jax.nn.softmax(logits)
        error = 1.0 - pi[CORRECT]
        oracle = pi[CORRECT] * (onehot_y - pi)
        actions = sampling.categorical(jax.random.fold_in(key, t), logits, (B,))
        logp_of, scores = layout(logits, actions)
        batch = A.make_batch(logp_of(logits), scores)
        logits, opt_state, grads = fit_batch(algo, hp, logits, opt_state, opt, logp_of, batch)
        return (logits, opt_state, key), {
            "error": error,
            "misalignment": L.cosine_misalignment(-grads, oracle),
        }

    steps = np.arange(task.steps)
    return Program(init, step, task.steps, {"error": steps, "misalignment": steps})


def multi_context(cfg: C.Config) -> Program:
    """N independent contexts × A actions, exact population updates (protocols §4.2).

    Rows are the N contexts and the candidates all A actions with one-hot reward e_y.
    Single-sample and group methods take the exact expectation over actions (candidate
    weight = π(a), baseline 0): PG gives ``p·v``, DG ``p·σ(-log p/η)·v``, GRPO
    ``sqrt(p/(1-p))·v`` with ``v = e_y - π``. TPO's group is the 10-action simplex
    (u = +3 / -1/3), CE is the one-hot label. The logit step is normalised over all N×A
    logits. Error ``1 - mean_n π_n(y)`` is recorded *after* the step (D5), so its step
    index is t + 1; misalignment is to the CE direction ``v``.
    """
    task: C.TabularMultiConfig = cfg.task
    hp = cfg.algorithm
    algo = A.get(hp)
    opt = optim.build(cfg.optimizer)
    N, K = task.num_contexts, task.num_actions
    labels = jnp.broadcast_to(jax.nn.one_hot(CORRECT, K), (N, K))

    def logp_of(logits):
        return jax.nn.log_softmax(logits, axis=-1)

    def init(key):
        params = task.init_std * jax.random.normal(key, (N, K))
        return params, opt.init(params)

    def step(carry, t):
        logits, opt_state = carry
        pi = jax.nn.softmax(logits, axis=-1)
        exact = algo.family in ("single", "group")
        batch = A.make_batch(logp_of(logits), labels, weight=pi if exact else None)
        logits, opt_state, grads = fit_batch(algo, hp, logits, opt_state, opt, logp_of, batch)
        error = 1.0 - jnp.mean(jax.nn.softmax(logits, axis=-1)[:, CORRECT])
        return (logits, opt_state), {
            "error": error,
            # ×N undoes the trainer's mean over rows: the code sums per-context updates,
            # and the 1e-12 guard of the cosine is not scale-free
            "misalignment": L.cosine_misalignment(-N * grads, labels - pi),
        }

    steps = np.arange(task.steps)
    return Program(init, step, task.steps, {"error": steps + 1, "misalignment": steps})


def update_coefficient(hp: C.AlgorithmConfig, p: float, num_actions: int = 10) -> float:
    """β(p) of Appendix B: the multi-context update of ``hp`` is ``β(p)·(e_y - π)``.

    Runs the same code path as ``multi_context`` (the algorithm's loss and its exact
    expectation layout) on one context whose wrong actions share ``1 - p`` equally, and reads
    the coefficient off the update: ``β = g_y / (1 - p)``.
    """
    algo = A.get(hp)
    K = num_actions
    pi = jnp.concatenate([jnp.array([p]), jnp.full(K - 1, (1.0 - p) / (K - 1))])
    logits = jnp.log(pi)[None, :]
    labels = jax.nn.one_hot(CORRECT, K)[None, :]
    exact = algo.family in ("single", "group")
    logp_of = lambda l: jax.nn.log_softmax(l, axis=-1)  # noqa: E731
    batch = A.make_batch(logp_of(logits), labels, weight=jnp.asarray(pi)[None] if exact else None)
    signal = algo.signal(batch, hp)
    grads = jax.grad(lambda l: A.batch_loss(algo, hp, logp_of(l), batch, signal))(logits)
    return float(-grads[0, CORRECT] / (1.0 - p))
