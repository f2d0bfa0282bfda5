"""The trainer (jit/vmap/scan, epochs, optimiser) and learning on the tabular probe tasks."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hydra import compose, initialize_config_dir

from tpo_sweeps import config as C
from tpo_sweeps import optim, tasks, train

CONF = Path(__file__).resolve().parent.parent / "conf"
ALGORITHM_OPTIONS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))


def _compose(overrides: list[str]) -> C.Config:
    C.register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return C.to_config(compose("config", overrides=overrides))


def _single(steps: int = 5, K: int = 6, B: int = 8) -> C.TabularSingleConfig:
    return C.TabularSingleConfig(steps=steps, num_actions=K, batch_size=B)


def _multi(steps: int = 5, N: int = 3, K: int = 4) -> C.TabularMultiConfig:
    return C.TabularMultiConfig(steps=steps, num_contexts=N, num_actions=K)


def _hp(name: str, task: C.TaskConfig, **kw) -> C.AlgorithmConfig:
    """An algorithm config with the task protocol's baseline and GRPO guard (as conf/ does)."""
    base = {"epochs": 1}
    if name in ("tpo", "tpo_no_anchor"):
        return C.TPOConfig(name=name, anchor=name == "tpo", **{**base, **kw})
    if name == "grpo":
        extra = {"std_eps_mode": task.grpo_std_eps_mode, "kl_beta": 0.04, "log_ratio_clamp": 20.0}
        return C.GRPOConfig(name=name, **{**base, **extra, **kw})
    if name in ("pg", "dg"):
        schema = C.PGConfig if name == "pg" else C.DGConfig
        extra = {"baseline": task.baseline, "baseline_value": task.baseline_value}
        return schema(name=name, **{**base, **extra, **kw})
    if name == "ce":
        return C.CEConfig(name=name, **{**base, **kw})
    raise AssertionError(name)


def _program(hp: C.AlgorithmConfig, task: C.TaskConfig, alpha: float = 0.1) -> train.Program:
    cfg = C.Config(algorithm=hp, task=task, optimizer=C.NormalizedStepConfig(alpha=alpha))
    return tasks.build(cfg)


def _close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=atol, err_msg=k)


# --------------------------------------------------------------------------------------------
# jit == eager, vmap == loop, seed splitting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,name",
    [
        pytest.param(_single(steps=4), "tpo", id="single-tpo"),
        pytest.param(_multi(steps=4), "grpo", id="multi-grpo", marks=pytest.mark.slow),
    ],
)
def test_jit_equals_eager(task, name):
    # two epochs: the second runs the scanned epoch loop (and for GRPO a ratio != 1)
    prog = _program(_hp(name, task, epochs=2), task)
    key = jax.random.PRNGKey(7)
    compiled = jax.jit(prog.train)(key)
    with jax.disable_jit():
        eager = prog.train(key)
    assert set(compiled) == {"error", "misalignment"}
    for v in compiled.values():
        assert np.asarray(v).shape == (task.steps,)
    _close(compiled, eager)
    # not vacuous: the policy moved during the run
    assert np.ptp(np.asarray(compiled["error"])) > 1e-3


@pytest.mark.parametrize(
    "task",
    [
        pytest.param(_single(), id="single"),
        pytest.param(_multi(), id="multi", marks=pytest.mark.slow),
    ],
)
def test_vmap_over_seeds_equals_loop_over_seeds_and_jobs_split_seeds(task):
    prog = _program(_hp("dg", task), task)
    together = train.run(prog, np.array([2, 3, 4, 5]))
    np.testing.assert_array_equal(together.seeds, [2, 3, 4, 5])
    # a Python loop over seeds, one seed at a time: key = PRNGKey(seed)
    one = jax.jit(prog.train)
    looped = [one(jax.random.PRNGKey(s)) for s in (2, 3, 4, 5)]
    # the same seeds split across two jobs
    second_job = train.run(prog, np.array([4, 5]))
    for name, values in together.metrics.items():
        assert values.shape == (4, task.steps)
        stacked = np.stack([np.asarray(r[name]) for r in looped])
        np.testing.assert_allclose(values, stacked, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(values[2:], second_job.metrics[name], atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(together.steps[name], second_job.steps[name])
    # seeds are really different runs (else the comparisons above would be vacuous)
    assert not np.allclose(together.metrics["error"][0], together.metrics["error"][1])
    # summaries are the last point of each seed
    np.testing.assert_array_equal(together.summary["final_error"], together.metrics["error"][:, -1])


def test_chunked_run_and_resume_equal_one_run():
    task = _multi(steps=6)
    prog = _program(_hp("pg", task, epochs=2), task)
    whole = train.run(prog, np.arange(2))
    states = {}

    def checkpoint(done, state):  # what a checkpoint writer keeps: a copy of the state
        carry, parts = state
        states[done] = (carry, list(parts))

    chunked = train.run(prog, np.arange(2), chunk=2, on_chunk=checkpoint)
    assert sorted(states) == [2, 4]
    resumed = train.run(prog, np.arange(2), chunk=2, start=(4, states[4]))
    for name in whole.metrics:
        np.testing.assert_allclose(chunked.metrics[name], whole.metrics[name], atol=1e-6)
        np.testing.assert_allclose(resumed.metrics[name], whole.metrics[name], atol=1e-6)
    np.testing.assert_allclose(
        resumed.summary["final_error"], whole.summary["final_error"], atol=1e-6
    )


def test_on_chunk_state_is_a_snapshot():
    # the state handed to on_chunk is "the metrics so far": later chunks must not grow it
    task = _multi(steps=4)
    prog = _program(_hp("ce", task), task)
    seen = {}
    train.run(prog, np.arange(1), chunk=2, on_chunk=lambda done, st: seen.update({done: st}))
    _, parts = seen[2]
    points = sum(np.asarray(p["error"]).shape[0] for p in parts)
    assert points == 2, f"state for 2 points done holds {points} points: it aliases run's list"


def test_seed_keys_are_prngkey_of_each_seed():
    keys = train.seed_keys(np.array([0, 5, 123]))
    for i, s in enumerate((0, 5, 123)):
        np.testing.assert_array_equal(keys[i], jax.random.PRNGKey(s))


def test_log_every_subsamples_and_keeps_the_last_step():
    task = _multi(steps=7)
    prog = _program(_hp("ce", task), task)
    full = {k: np.asarray(v) for k, v in jax.jit(prog.train)(jax.random.PRNGKey(0)).items()}
    sub = train.run(prog, np.array([0]), log_every=3)
    # multi-context error is recorded after the step (step index t + 1)
    np.testing.assert_array_equal(sub.steps["error"], [1, 4, 7])
    np.testing.assert_array_equal(sub.steps["misalignment"], [0, 3, 6])
    for name in full:
        np.testing.assert_allclose(sub.metrics[name][0], full[name][[0, 3, 6]], atol=1e-6)
        # the summary is the last step's value whatever is logged
        np.testing.assert_allclose(sub.summary[f"final_{name}"], full[name][-1:], atol=1e-6)
    np.testing.assert_array_equal(train._logged_indices(7, 4), [0, 4, 6])
    np.testing.assert_array_equal(train._logged_indices(7, 1), np.arange(7))
    np.testing.assert_array_equal(train._logged_indices(1, 5), [0])


# --------------------------------------------------------------------------------------------
# Optimiser and epochs
# --------------------------------------------------------------------------------------------


def test_normalized_step_has_length_alpha():
    opt = optim.normalized_step(0.1)
    apply = jax.jit(lambda g: opt.update(g, opt.init(g))[0])
    rng = np.random.default_rng(0)
    for scale in (1e-6, 1e-2, 1.0, 1e4):
        grads = {
            "w": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(scale * rng.normal(size=(4,)), jnp.float32),
        }
        upd = apply(grads)
        flat_u = np.concatenate([np.ravel(upd["w"]), np.ravel(upd["b"])])
        flat_g = np.concatenate([np.ravel(grads["w"]), np.ravel(grads["b"])])
        np.testing.assert_allclose(np.linalg.norm(flat_u), 0.1, rtol=1e-5)
        # a descent step along -g (one global norm, not per leaf)
        np.testing.assert_allclose(flat_u, -0.1 * flat_g / np.linalg.norm(flat_g), rtol=1e-4)
    zero = apply({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)})
    assert all(np.all(np.asarray(v) == 0.0) for v in zero.values())


def test_optimizer_build_dispatch():
    assert isinstance(optim.build(C.AdamConfig()), optax.GradientTransformation)
    muon = C.MuonConfig()
    assert muon.effective_lr == pytest.approx(1e-3)
    opt = optim.build(muon)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    upd = jax.jit(lambda p: opt.update(p, opt.init(p), p)[0])(params)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(upd))
    assert all(np.abs(np.asarray(v)).max() > 0 for v in jax.tree_util.tree_leaves(upd))
    with pytest.raises(C.ConfigError, match="nope"):
        optim.build(C.OptimizerConfig(name="nope"))


@pytest.mark.parametrize("epochs", [1, 3])
def test_update_epochs_applies_one_update_per_epoch(epochs):
    c = jnp.array([1.0, -2.0, 0.5])
    theta0 = jnp.array([3.0, 0.0, 0.0])
    lr = 0.25
    loss = lambda th: 0.5 * jnp.sum(jnp.square(th - c))  # noqa: E731  (∇ = θ - c)
    opt = optax.sgd(lr)
    fn = jax.jit(lambda th: train.update_epochs(th, opt.init(th), loss, opt, epochs))
    theta, _, first = fn(theta0)
    # n plain SGD steps on the quadratic: θ_n - c = (1 - lr)^n (θ_0 - c)
    np.testing.assert_allclose(theta, c + (1 - lr) ** epochs * (theta0 - c), rtol=1e-6)
    # the returned gradient is the first epoch's, taken before any update
    np.testing.assert_allclose(first, theta0 - c, rtol=1e-6)
    # the optimiser state advanced once per epoch
    adam = optax.adam(0.1)
    _, state, _ = jax.jit(lambda th: train.update_epochs(th, adam.init(th), loss, adam, epochs))(
        theta0
    )
    assert int(state[0].count) == epochs


# --------------------------------------------------------------------------------------------
# Learning on the probe tasks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_context_runs() -> dict[str, train.Result]:
    """K = 10 actions, B = 32 samples, 60 normalised steps, 8 seeds, per algorithm."""
    task = _single(steps=60, K=10, B=32)
    return {n: train.run(_program(_hp(n, task), task), np.arange(8)) for n in ("tpo", "dg", "pg")}


@pytest.mark.parametrize("name", ["tpo", "dg", "pg"])
def test_single_context_learns(name, single_context_runs):
    result = single_context_runs[name]
    err = result.metrics["error"]
    assert err.shape == (8, 60)
    # uniform init: error 1 - 1/K, recorded before the first step
    np.testing.assert_allclose(err[:, 0], 0.9, rtol=1e-6)
    assert err[:, -1].mean() < 0.1, err[:, -1]
    assert err[:, -1].max() < 0.2
    assert np.all(np.isfinite(result.metrics["misalignment"]))


def test_single_context_tpo_is_best_aligned(single_context_runs):
    # paper Fig 3: TPO's update stays closest to the exact PG direction, PG's the furthest
    mis = {n: r.metrics["misalignment"].mean() for n, r in single_context_runs.items()}
    assert mis["tpo"] < mis["dg"] < mis["pg"], mis


@pytest.mark.parametrize("name", ["ce", "tpo"])
def test_multi_context_learns(name):
    task = _multi(steps=100, N=10, K=5)
    result = train.run(_program(_hp(name, task), task), np.arange(4))
    err = result.metrics["error"]
    mis = result.metrics["misalignment"]
    assert err[:, -1].mean() < 0.25, err[:, -1]
    assert np.all(err[:, -1] < err[:, 0] - 0.3)
    if name == "ce":
        # CE's update is its own reference direction
        np.testing.assert_allclose(mis, 0.0, atol=1e-5)
    else:
        # App. B: TPO's update is a positive multiple of e_y - π per context, so it stays
        # close to CE's (exactly aligned only when all contexts share the same p)
        assert mis.mean() < 0.1
        assert mis.max() < 1.0


# --------------------------------------------------------------------------------------------
# Every algorithm option runs on both tabular tasks
# --------------------------------------------------------------------------------------------

TINY = {
    "tabular_single": ["task.steps=3", "task.num_actions=4", "task.batch_size=8"],
    "tabular_multi": ["task.steps=3", "task.num_contexts=3", "task.num_actions=4"],
}


@pytest.fixture
def fast_compile():
    """XLA without most optimisations: these runs only check that every option is sound,
    and compile time dominates them."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


# Options that only change hyperparameter values of another option's code path (epochs, β,
# level; level matters to the transformer tasks only): they run under `-m slow`.
VALUE_VARIANTS = {"tpo_1ep", "tpo_token", "grpo_no_kl", "grpo_token", "grpo_token_no_kl"}
VALUE_VARIANTS |= {"dg_4ep", "reinforce"}


def _option_task_pairs() -> list:
    """Every (option, tabular task) pair. By default each option that is not a value variant
    runs on one task (alternating, so both tasks see about half of them); the rest of the
    product runs under ``-m slow``."""
    pairs = []
    tasks_ = sorted(TINY)
    for i, option in enumerate(ALGORITHM_OPTIONS):
        for j, task in enumerate(tasks_):
            fast = (i + j) % 2 == 0 and option not in VALUE_VARIANTS
            marks = () if fast else (pytest.mark.slow,)
            pairs.append(pytest.param(option, task, marks=marks, id=f"{option}-{task}"))
    return pairs


@pytest.mark.parametrize("algorithm,task", _option_task_pairs())
def test_every_algorithm_option_runs_on_tabular_tasks(algorithm, task, fast_compile):
    cfg = _compose([f"algorithm={algorithm}", f"task={task}", *TINY[task]])
    assert cfg.algorithm.name == algorithm
    # one compiled program for both seeds (train.run would compile init and step apart)
    prog = tasks.build(cfg)
    out = jax.jit(jax.vmap(prog.train))(train.seed_keys(np.arange(2)))
    metrics = {k: np.asarray(v) for k, v in out.items()}
    for name, values in metrics.items():
        assert values.shape == (2, 3), name
        assert np.all(np.isfinite(values)), (name, values)
    assert np.all((metrics["error"] >= 0.0) & (metrics["error"] <= 1.0))
    mis = metrics["misalignment"]
    assert np.all((mis >= -1e-5) & (mis <= 2.0 + 1e-5))
    if (algorithm, task) == ("batch_std_pg", "tabular_multi"):
        # z-scores over the batch axis, i.e. across contexts whose rewards are all e_y: every
        # advantage is 0 and the policy never moves (the method is MNIST's, not the bandit's)
        assert np.all(np.ptp(metrics["error"], axis=1) == 0.0)
    else:
        # every other option actually updates the policy
        assert np.ptp(metrics["error"], axis=1).min() > 0.0


def test_algorithm_options_cover_the_registry():
    from tpo_sweeps.algorithms import ALGORITHMS

    # the sweep above is not vacuous, and every option is a registered algorithm
    assert len(ALGORITHM_OPTIONS) >= 12
    assert set(ALGORITHM_OPTIONS) <= set(ALGORITHMS)


def test_seed_batches_equal_one_vmap():
    """hardware.seed_batch/seed_streams: seeds in lockstep groups (lax.map), groups side by
    side, give the vmap's numbers, seed for seed."""
    cfg = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(steps=15, num_actions=10, batch_size=16),
        optimizer=C.NormalizedStepConfig(),
    )
    program = tasks.build(cfg)
    together = train.run(program, np.arange(5))
    # groups of 2; 1 seed per stream, 2 streams (+1 left over); 2 streams of 2 (+1 left over)
    for batch, streams in [(2, 1), (1, 2), (2, 2)]:
        grouped = train.run(program, np.arange(5), seed_batch=batch, seed_streams=streams)
        for name in together.metrics:
            np.testing.assert_allclose(grouped.metrics[name], together.metrics[name], atol=1e-6)
