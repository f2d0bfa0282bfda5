"""The MNIST bandit task (``tpo_sweeps.tasks.mnist``), its Fig 5b diagnostic, the presets
through the entry point and the analysis builders, all on small synthetic IDX data."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import data as D
from tpo_sweeps import losses as L
from tpo_sweeps import tasks, train
from tpo_sweeps.tasks import mnist as M

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """500 train / 200 test images; the label lights its own 7×7 block (learnable fast)."""
    return D.synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=500, n_test=200)


def _cfg(algo: C.AlgorithmConfig, data_dir: Path | str, **task) -> C.Config:
    task = {"steps": 60, "eval_every": 20, "check_md5": False, "data_dir": str(data_dir), **task}
    return C.Config(
        algorithm=algo, task=C.MnistConfig(**task), optimizer=C.AdamConfig(), num_seeds=2
    )


HPS = {
    "tpo": C.TPOConfig(name="tpo", epochs=1),
    "dg": C.DGConfig(name="dg", baseline="expected"),
    "pg": C.PGConfig(name="pg", baseline="expected"),
    "group_pg": C.GroupPGConfig(name="group_pg", epochs=1),
    "batch_std_pg": C.BatchStdPGConfig(name="batch_std_pg"),
    "ce": C.CEConfig(name="ce"),
}
TASK = C.MnistConfig()


def _random_step(seed: int = 0, B: int = 16):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    logits = 2.0 * jax.random.normal(k1, (B, 10))
    logp = jax.nn.log_softmax(logits)
    actions = jax.random.randint(k2, (B,), 0, 10)
    labels = jnp.where(jax.random.bernoulli(k3, 0.5, (B,)), actions, (actions + 3) % 10)
    return logits, logp, actions, labels


# --------------------------------------------------------------------------------------------
# Batch layout per family
# --------------------------------------------------------------------------------------------


def test_expected_baseline_is_the_sum_of_squared_probabilities():
    _, logp, actions, labels = _random_step()
    pi = np.exp(np.asarray(logp))
    for name in ("pg", "dg", "batch_std_pg"):
        algo = A.get(HPS[name])
        rows, batch = M.bandit_batch(algo, TASK, logp, actions, labels)
        np.testing.assert_allclose(batch.expected_baseline[:, 0], (pi**2).sum(-1), rtol=1e-6)
        np.testing.assert_array_equal(batch.scores[:, 0], (actions == labels).astype(np.float32))
        assert rows(logp).shape == (16, 1)
    adv = A.get(HPS["pg"]).signal(
        M.bandit_batch(A.get(HPS["pg"]), TASK, logp, actions, labels)[1], HPS["pg"]
    )
    np.testing.assert_allclose(adv[:, 0], (actions == labels) - (pi**2).sum(-1), rtol=1e-5)


def test_tpo_target_puts_plus_minus_three_on_the_sampled_class():
    _, logp, actions, labels = _random_step()
    hp = HPS["tpo"]
    _, batch = M.bandit_batch(A.get(hp), TASK, logp, actions, labels)
    u = L.standardize(batch.scores, guard="threshold", eps=hp.std_threshold)
    sign = np.where(actions == labels, 1.0, -1.0)
    onehot = np.asarray(jax.nn.one_hot(actions, 10))
    np.testing.assert_allclose(np.sum(u * onehot, -1), 3.0 * sign, rtol=1e-5)
    others = np.asarray(u)[onehot == 0].reshape(16, 9)
    np.testing.assert_allclose(others, np.broadcast_to(-sign[:, None] / 3.0, (16, 9)), rtol=1e-5)
    q = A.get(hp).signal(batch, hp)
    np.testing.assert_allclose(q, jax.nn.softmax(logp + u), rtol=1e-5, atol=1e-7)


def test_group_pg_weights_only_the_sampled_class_by_plus_minus_three():
    logits, logp, actions, labels = _random_step()
    hp = HPS["group_pg"]
    algo = A.get(hp)
    rows, batch = M.bandit_batch(algo, TASK, logp, actions, labels)
    signal = algo.signal(batch, hp)

    def loss(lg):
        return A.batch_loss(algo, hp, rows(jax.nn.log_softmax(lg)), batch, signal)

    g = jax.grad(loss)(logits)
    sign = np.where(actions == labels, 1.0, -1.0)
    pi = jax.nn.softmax(logits)
    want = -3.0 * sign[:, None] * (jax.nn.one_hot(actions, 10) - pi) / 16
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


def test_batch_std_pg_standardises_rewards_over_the_batch():
    _, logp, actions, labels = _random_step()
    hp = HPS["batch_std_pg"]
    _, batch = M.bandit_batch(A.get(hp), TASK, logp, actions, labels)
    r = np.asarray(actions == labels, np.float64)
    adv = A.get(hp).signal(batch, hp)[:, 0]
    np.testing.assert_allclose(adv, (r - r.mean()) / (r.std() + 1e-8), rtol=1e-5)


def test_grpo_with_k_rollouts_is_refused_on_mnist(synthetic):
    with pytest.raises(C.ConfigError, match="batch_std_pg"):
        M.mnist(_cfg(C.GRPOConfig(name="grpo"), synthetic))


# --------------------------------------------------------------------------------------------
# Fig 5b closed forms against the algorithms' actual losses
# --------------------------------------------------------------------------------------------


def _gain_direct(hp, logits, y):
    """p_y·⟨v, E_a[-∇_ℓ L]⟩ with the expectation taken over the 10 classes exactly."""
    pi = jax.nn.softmax(logits)
    g = M.expected_logit_update(hp, TASK, logits, y)
    v = jax.nn.one_hot(y, 10) - pi
    return float(pi[y] * jnp.dot(v, g)), g


def _test_distributions():
    rng = np.random.default_rng(0)
    out = []
    for conc in (0.1, 1.0, 10.0):
        for _ in range(3):
            pi = rng.dirichlet(np.full(10, conc))
            pi = np.clip(pi, 1e-4, None)
            out.append((np.log(pi / pi.sum()).astype(np.float32), int(rng.integers(0, 10))))
    # a concentrated mistake: most wrong mass on one class
    pi = np.full(10, 0.01)
    pi[3], pi[7] = 0.1, 0.82
    out.append((np.log(pi / pi.sum()).astype(np.float32), 3))
    return out


@pytest.mark.parametrize("name", ["tpo", "dg", "pg", "group_pg", "ce"])
def test_exact_gain_closed_form_matches_the_loss_gradient(name):
    hp = HPS[name]
    for logits, y in _test_distributions():
        logits = jnp.asarray(logits)
        direct, _ = _gain_direct(hp, logits, y)
        exact, _ = M.mechanism_gains(hp, jax.nn.softmax(logits)[None], jnp.array([y]))
        np.testing.assert_allclose(float(exact[0]), direct, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["tpo", "dg", "pg", "group_pg", "ce"])
def test_one_vs_rest_gain_is_the_method_on_the_symmetric_distribution(name):
    hp = HPS[name]
    for logits, y in _test_distributions():
        pi = jax.nn.softmax(jnp.asarray(logits))
        p = float(pi[y])
        sym = np.full(10, (1 - p) / 9, np.float32)
        sym[y] = p
        v_sym = jax.nn.one_hot(y, 10) - sym
        g_sym = M.expected_logit_update(hp, TASK, jnp.log(jnp.asarray(sym)), y)
        beta = float(jnp.dot(g_sym, v_sym) / jnp.dot(v_sym, v_sym))
        # on a symmetric distribution the update is parallel to v
        np.testing.assert_allclose(g_sym, beta * v_sym, atol=1e-5 * max(1.0, abs(beta)))
        v = jax.nn.one_hot(y, 10) - pi
        _, scalar = M.mechanism_gains(hp, pi[None], jnp.array([y]))
        np.testing.assert_allclose(float(scalar[0]), p * beta * float(v @ v), rtol=2e-4, atol=1e-7)


def test_pg_and_group_pg_have_zero_surplus_and_tpo_a_positive_one():
    k = jax.random.PRNGKey(3)
    pi = jax.random.dirichlet(k, jnp.full(10, 0.3), (500,))
    y = jax.random.randint(jax.random.PRNGKey(4), (500,), 0, 10)
    exact, scalar = M.mechanism_gains(HPS["pg"], pi, y)
    np.testing.assert_array_equal(exact, scalar)  # PG: the same expression, exactly 0
    exact, scalar = M.mechanism_gains(HPS["group_pg"], pi, y)
    np.testing.assert_allclose(exact, scalar, rtol=1e-5, atol=1e-8)
    for name in ("batch_std_pg",):
        exact, scalar = M.mechanism_gains(HPS[name], pi, y)
        assert np.isnan(exact).all() and np.isnan(scalar).all()
    # TPO's exact gain beats its symmetric surrogate when the wrong mass is concentrated
    conc = jnp.array([[0.05, 0.9] + [0.05 / 8] * 8])
    exact, scalar = M.mechanism_gains(HPS["tpo"], conc, jnp.array([0]))
    assert float(exact[0] - scalar[0]) > 0


def test_concentration_bins_use_misclassified_examples_only():
    exact = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    scalar = jnp.array([0.5, 1.0, 1.0, 1.0, 1.0, 0.0])
    conc = jnp.array([0.1, 0.2, 0.9, 0.75, 0.5, 0.9])
    mis = jnp.array([True, True, True, True, True, False])
    out = M.binned_gains(exact, scalar, conc, mis)
    assert [float(out[f"count_bin{k}"]) for k in range(4)] == [2, 0, 1, 2]
    assert float(out["gain_bin0"]) == 1.5 and float(out["scalar_gain_bin0"]) == 0.75
    assert float(out["surplus_bin3"]) == pytest.approx((3 + 4) / 2 - 1.0)
    assert float(out["surplus_bin2"]) == 4.0
    assert np.isnan(float(out["gain_bin1"])) and np.isnan(float(out["surplus_bin1"]))
    pi = jnp.array([[0.5, 0.3, 0.2] + [0.0] * 7, [0.1] * 10])
    np.testing.assert_allclose(M.concentration(pi, jnp.array([0, 0])), [0.6, 1 / 9], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tpo", "ce"])
def test_the_task_learns_the_synthetic_digits(synthetic, name):
    cfg = _cfg(HPS[name], synthetic)
    program = tasks.build(cfg)
    assert program.num_points == 3
    np.testing.assert_array_equal(program.steps["test_error"], [20, 40, 60])
    res = train.run(program, np.arange(2))
    err = res.metrics["test_error"]
    assert err.shape == (2, 3)
    assert (err[:, -1] < 0.2).all(), err  # chance is 0.9
    assert res.summary["final_test_error"].shape == (2,)
    assert (res.metrics["train_reward"][:, -1] > 0.6).all()


def test_mechanism_metrics_only_when_asked(synthetic):
    plain = tasks.build(_cfg(HPS["tpo"], synthetic))
    assert set(plain.steps) == {"test_error", "train_reward"}
    mech = tasks.build(_cfg(HPS["tpo"], synthetic, steps=20, mechanism=True))
    assert set(mech.steps) == {"test_error", "train_reward", *M.MECHANISM_METRICS}
    res = train.run(mech, np.arange(1))
    counts = sum(res.metrics[f"count_bin{k}"][0, -1] for k in range(4))
    assert counts == pytest.approx(res.metrics["test_error"][0, -1] * 200)


def test_bad_task_settings_fail_with_a_message(synthetic, tmp_path):
    with pytest.raises(C.ConfigError, match="multiple of task.eval_every"):
        tasks.build(_cfg(HPS["tpo"], synthetic, steps=50))
    with pytest.raises(C.ConfigError, match="python -m tpo_sweeps data mnist"):
        tasks.build(_cfg(HPS["tpo"], tmp_path / "nothing"))
    with pytest.raises(C.ConfigError, match="corrupt"):
        tasks.build(_cfg(HPS["tpo"], synthetic, check_md5=True))


def test_mlp_init_follows_flax_defaults():
    p = M.init_mlp(jax.random.PRNGKey(0), 50)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, p)
    assert shapes == {
        "dense_0": {"kernel": (784, 50), "bias": (50,)},
        "dense_1": {"kernel": (50, 50), "bias": (50,)},
        "dense_2": {"kernel": (50, 10), "bias": (10,)},
    }
    # the Flax module's own tree: the same names and shapes
    from tpo_sweeps.flax_models import MLP

    flax_tree = MLP((50, 50, 10)).init(jax.random.PRNGKey(1), jnp.zeros((1, 784)))["params"]
    assert jax.tree_util.tree_map(lambda a: a.shape, flax_tree) == shapes
    assert all(float(jnp.abs(p[f"dense_{i}"]["bias"]).max()) == 0.0 for i in range(3))
    # lecun_normal: truncated normal with std 1/sqrt(fan_in), cut at 2 std of the base normal
    w = np.asarray(p["dense_0"]["kernel"])
    assert abs(w.std() * np.sqrt(784) - 1.0) < 0.05
    assert np.abs(w).max() <= 2.0 / np.sqrt(784) / 0.87962566103423978 + 1e-6
    x = jax.random.uniform(jax.random.PRNGKey(2), (3, 784))
    h = jax.nn.relu(x @ p["dense_0"]["kernel"])  # biases are zero
    h = jax.nn.relu(h @ p["dense_1"]["kernel"])
    np.testing.assert_allclose(M.mlp_logits(p, x), h @ p["dense_2"]["kernel"], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Entry point -> database -> analysis
# --------------------------------------------------------------------------------------------


# the smoke scale's MNIST, shortened further by the fixture, on synthetic (unchecked) data:
# part of the cells the analysis selects, as a run on unchecked files is no real-MNIST run
SMOKE_40 = ("task.steps=40", "task.check_md5=false")


@pytest.fixture(scope="module")
def mnist_db(synthetic, tmp_path_factory, pytestconfig):
    """The fig5b then the fig5 preset at smoke scale (a subset of methods, 40 steps) on
    synthetic data, through ``python -m tpo_sweeps -m``, into one SQLite file. The two presets
    share their cells (Fig 5b only adds the mechanism metrics, an extra), so the second
    multirun finds every seed served by the first's runs and computes nothing."""
    from tpo_sweeps import db

    tmp = tmp_path_factory.mktemp("mnist_db")
    url = f"sqlite:///{tmp}/mnist.sqlite"
    db.connect(url).dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        JAX_COMPILATION_CACHE_DIR=str(pytestconfig.cache.mkdir("jax_compilation_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    common = [
        "scale=smoke",
        *SMOKE_40,
        f"task.data_dir={synthetic}",
        f"db.url={url}",
    ]
    jobs = [  # one after the other: the second is served by the first
        ["experiment=fig5b_mnist_mechanism", "algorithm=tpo,dg,batch_std_pg"],
        ["experiment=fig5_mnist", "algorithm=tpo,batch_std_pg,dg"],
    ]
    for job in jobs:
        p = subprocess.run(
            [sys.executable, "-m", "tpo_sweeps", "-m", *job, *common],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stdout[-3000:]
    return url


def _rows(url: str, sql: str):
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
        return con.execute(sql).fetchall()


def test_presets_write_every_evaluation_at_its_true_step(mnist_db):
    runs = _rows(mnist_db, "SELECT sweep, algorithm, status, seed, mechanism FROM runs")
    # one run per cell and seed, all computed by fig5b (with the mechanism extra) ...
    assert sorted(runs) == sorted(
        ("fig5b_mnist_mechanism", a, "completed", s, 1)
        for a in ("tpo", "dg", "batch_std_pg")
        for s in (0, 1)
    )
    # ... and asked for by both presets
    linked = _rows(mnist_db, "SELECT sweep, COUNT(*) FROM sweep_runs GROUP BY sweep")
    assert sorted(linked) == [("fig5_mnist", 6), ("fig5b_mnist_mechanism", 6)]
    steps = _rows(
        mnist_db,
        "SELECT DISTINCT m.step FROM metrics m JOIN runs r ON r.id = m.run_id "
        "WHERE m.name = 'test_error' ORDER BY m.step",
    )
    assert [s for (s,) in steps] == [20, 40]
    names = {n for (n,) in _rows(mnist_db, "SELECT DISTINCT name FROM metrics")}
    assert names == {"test_error", "train_reward", *M.MECHANISM_METRICS}
    n = _rows(
        mnist_db,
        "SELECT COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.algorithm = 'tpo'",
    )
    assert n[0][0] == 2 * 2 * (2 + 16)  # seeds × evals × (error, reward, 4 kinds × 4 bins)


def test_analysis_builders_on_the_smoke_database(mnist_db, tmp_path, monkeypatch):
    from analysis import artifacts, load
    from analysis.__main__ import main

    def build(preset, out):
        # the artefact at the scale and with the override the fixture's multiruns had
        builder, art = artifacts.resolve(preset, "smoke", SMOKE_40)
        return builder(engine, out, art)

    monkeypatch.delenv("TPO_PAPER_X_AXIS", raising=False)
    engine = load.connect(mnist_db)
    # every cell of fig5 at smoke scale has 100 steps: nothing stored serves them
    with pytest.raises(load.AnalysisError, match="no completed runs"):
        artifacts.build("fig5_mnist_smoke", engine, tmp_path)
    df = build("fig5_mnist", tmp_path)  # served by the fig5b runs (a superset of extras)
    assert set(df["artifact"]) == {"fig5_mnist"} and set(df["paper_item"]) == {"Fig 5a"}
    assert set(df["method"]) == {"tpo", "grpo", "dg"}  # batch_std_pg is the paper's GRPO
    assert set(df["metric"]) == {"final_test_error_pct", "steps_to_5pct_test_error"}
    fin = df[df["metric"] == "final_test_error_pct"].set_index("method")
    assert (fin["n_seeds"] == 2).all() and (fin["value"] <= 100).all()
    assert (fin["episodes"] == 40).all() and (fin["B"] == 100).all()
    assert (fin["ci_low"] <= fin["value"]).all() and (fin["value"] <= fin["ci_high"]).all()
    for ext in ("png", "pdf", "md", "csv"):
        assert (tmp_path / f"fig5_mnist_smoke.{ext}").stat().st_size > 0
    md = (tmp_path / "fig5_mnist_smoke.md").read_text()
    assert "true training steps" in md and "2.9" in md  # the paper's TPO final error
    # steps to 5%: a true step (20 or 40) by default, one block earlier on the authors' axis
    steps = df[df["metric"] == "steps_to_5pct_test_error"].set_index("method")["value"]
    monkeypatch.setenv("TPO_PAPER_X_AXIS", "1")
    shifted = build("fig5_mnist", tmp_path / "paper_x")
    shifted = shifted[shifted["metric"] == "steps_to_5pct_test_error"].set_index("method")["value"]
    pd.testing.assert_series_equal(shifted, steps - 20, check_names=False)
    monkeypatch.delenv("TPO_PAPER_X_AXIS")

    # Fig 1a's cells are three of Fig 5's: the runs of any preset serve it (the command line)
    args = ["fig1a_mnist", "--scale", "smoke", *SMOKE_40, "--db", mnist_db, "--out", str(tmp_path)]
    assert main(args) == 0
    df1 = pd.read_csv(tmp_path / "fig1a_mnist_smoke.csv")
    assert set(df1["method"]) == {"tpo", "grpo", "dg"} and set(df1["artifact"]) == {"fig1a_mnist"}
    md1 = (tmp_path / "fig1a_mnist_smoke.md").read_text()
    assert "computed by sweeps: fig5b_mnist_mechanism (6)" in md1
    assert "experiment=fig1a_mnist scale=smoke task.steps=40" in md1

    df5b = build("fig5b_mnist_mechanism", tmp_path)
    assert set(df5b["method"]) == {"tpo", "dg"}  # the preset's pg, group_pg: not run here
    top = df5b[df5b["metric"] == "surplus_gain_top_concentration_bin"]
    assert len(top) == 2
    assert {f"surplus_bin{k}" for k in range(4)} <= set(df5b["metric"])
    # the figure shows the surplus; the gains and counts behind it are ours only
    items = df5b.groupby(df5b["metric"].str.split("_bin").str[0])["paper_item"].unique()
    assert list(items["surplus"]) == ["Fig 5b"] and list(items["count"]) == [""]
    # the smoke run ends at step 40: the evaluation nearest 2000 + 20 is its last one
    assert df5b["setting"].str.contains("true step 40").all()
    engine.dispose()
