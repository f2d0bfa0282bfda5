"""What happens around a run when something goes wrong (issue 10), beside the bad-input table
of ``test_safety.py``: divergence is a status, a locked database loses no result, a planted
password is in no file or table, an unreadable checkpoint is moved aside, PPO's KL term is
finite, and the v3 schema (``diverged_step``) migrates both ways.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from tests.helpers import compose_config
from tpo_sweeps import bundle, db, identity, losses, merge, migrations, train, transfer
from tpo_sweeps import job as J
from tpo_sweeps import run as R
from tpo_sweeps.checkpoint import Checkpointer
from tpo_sweeps.store import mask_override

REPO = Path(__file__).resolve().parent.parent
TINY = ["task.steps=4", "task.num_actions=6", "task.batch_size=8", "hardware.compilation_cache="]
DIVERGES = "optimizer.alpha=3e38"  # a normalised step of 3e38 in logit space: inf - inf = NaN


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _tpo_sweeps(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tpo_sweeps", *args],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )


# --------------------------------------------------------------------------------------------
# Divergence is a status
# --------------------------------------------------------------------------------------------


def test_a_nan_run_is_stored_diverged_the_sweep_goes_on_and_exits_non_zero(tmp_path):
    path = tmp_path / "d.sqlite"
    sweep = [*TINY, f"{DIVERGES},0.1", "algorithm=tpo,pg", f"db.url=sqlite:///{path}"]
    done = _tpo_sweeps(tmp_path, "-m", *sweep, f"hydra.sweep.dir={tmp_path}/mr")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep default: 2 job(s) diverged"), done.stderr[-2000:]
    assert "error non-finite at step 1" in last
    runs = _rows(path, "SELECT id, algorithm, status, diverged_step, error FROM runs ORDER BY id")
    statuses = sorted((r[1], r[2], r[3]) for r in runs)
    assert statuses == [
        ("pg", "completed", None),
        ("pg", "diverged", 1),
        ("tpo", "completed", None),
        ("tpo", "diverged", 1),
    ]
    diverged = [r for r in runs if r[2] == "diverged"]
    assert all(r[4] == "diverged: error non-finite at step 1" for r in diverged)
    # its values are stored: finite ones as they are, the rest as NULL
    values = _rows(
        path,
        f"SELECT step, value FROM metrics WHERE run_id = {diverged[0][0]} "
        "AND name = 'error' ORDER BY step",
    )
    assert values[0][1] is not None and [v for _, v in values[1:]] == [None] * 3

    status = _tpo_sweeps(tmp_path, "status", *sweep)
    assert status.returncode == 1
    assert status.stdout.count("diverged") == 4  # two cells: status and error columns
    assert "2 diverged, 2 completed" in status.stderr

    # a rerun computes nothing again (the same cell and seed diverge again) and says so
    again = _tpo_sweeps(tmp_path, *TINY, DIVERGES, "algorithm=tpo", f"db.url=sqlite:///{path}")
    assert again.returncode == 1 and "are stored" in again.stdout + again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        "error: 1 of 1 seed(s) of tpo/tabular_single diverged (seed 0: error non-finite at "
        "step 1); stored with status diverged"
    )
    assert len(_rows(path, "SELECT id FROM runs")) == 4


def _program(names, steps, may_be_nan=()):
    return train.Program(
        None, None, len(steps), {n: np.asarray(steps) for n in names}, frozenset(may_be_nan)
    )


def test_divergence_is_the_first_non_finite_step_of_any_metric():
    nan, inf = float("nan"), float("inf")
    program = _program(["error", "grad_norm", "frac_zero_var"], [10, 20, 30, 40], ["frac_zero_var"])
    full = {
        "error": np.array([[0.5, 0.4, nan, nan], [0.5, 0.4, 0.3, 0.2], [0.5] * 4]),
        "grad_norm": np.array([[1.0, inf, 1.0, 1.0], [1.0] * 4, [1.0] * 4]),
        "frac_zero_var": np.full((3, 4), nan),  # undefined by design: not divergence
    }
    carry = (
        jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, jnp.nan]]),  # seed 9's state went NaN
        jax.random.split(jax.random.key(0), 3),  # keys are never "non-finite"
        jnp.zeros((3,), jnp.int32),
    )
    out = train.divergence(program, full, carry, np.array([7, 8, 9]))
    assert out == {7: (20, "grad_norm"), 9: (None, "training state")}
    assert train.divergence(program, {"error": full["error"][1:2]}, (), np.array([8])) == {}


# --------------------------------------------------------------------------------------------
# No finished result is lost to a locked database
# --------------------------------------------------------------------------------------------


def _lock_after_training(monkeypatch, path: Path, hold_s: float) -> threading.Thread:
    """Once the job has trained, another connection holds ``path``'s write lock ``hold_s``."""
    locked = threading.Event()

    def hold():
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        threading.Event().wait(hold_s)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold, daemon=True)
    trained = J._train

    def train_then_lock(*args, **kwargs):
        out = trained(*args, **kwargs)
        holder.start()
        assert locked.wait(10)
        return out

    monkeypatch.setattr(J, "_train", train_then_lock)
    return holder


def test_a_lock_held_past_the_busy_timeout_loses_nothing(tmp_path, monkeypatch, caplog):
    path = tmp_path / "r.sqlite"
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(
        [
            *TINY,
            f"db.url=sqlite:///{path}",
            "db.busy_timeout_s=0.2",
            "db.retry_s=30",
            "db.heartbeat_s=0",
            "num_seeds=2",
        ]
    )
    holder = _lock_after_training(monkeypatch, path, hold_s=1.5)  # ~7 busy timeouts
    with caplog.at_level(logging.WARNING, logger="tpo_sweeps"):
        out = R.run_job(cfg, [])
    holder.join()
    assert out["status"] == "completed" and "retry 1 in" in caplog.text
    assert _rows(path, "SELECT status, count(*) FROM runs GROUP BY status") == [("completed", 2)]
    assert _rows(path, "SELECT count(*) FROM metrics") == [(2 * 4 * 2,)]
    assert not (tmp_path / "results.sqlite").exists()


def test_a_lock_held_past_the_retries_stages_the_results_and_merge_brings_them(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "r.sqlite"
    monkeypatch.chdir(tmp_path)  # the job's output folder, outside Hydra
    cfg = compose_config(
        [
            *TINY,
            f"db.url=sqlite:///{path}",
            "db.busy_timeout_s=0.2",
            "db.retry_s=0.5",
            "db.heartbeat_s=0",
            "num_seeds=2",
        ]
    )
    holder = _lock_after_training(monkeypatch, path, hold_s=3.0)
    with caplog.at_level(logging.WARNING, logger="tpo_sweeps"):
        out = R.run_job(cfg, [])
    staged = tmp_path / "results.sqlite"
    assert out["status"] == "staged" and out["staged_to"] == str(staged)
    assert f"python -m tpo_sweeps merge {staged}" in caplog.text  # the log line says where
    assert _rows(staged, "SELECT status, count(*) FROM runs GROUP BY status") == [("completed", 2)]
    assert _rows(staged, "SELECT count(*) FROM metrics") == [(2 * 4 * 2,)]
    holder.join()
    assert _rows(path, "SELECT status FROM runs") == [("running",), ("running",)]
    assert merge.main([str(staged), "--db", f"sqlite:///{path}"]) == 0
    assert _rows(path, "SELECT status, count(*) FROM runs GROUP BY status") == [("completed", 2)]
    assert _rows(path, "SELECT count(*) FROM metrics") == [(2 * 4 * 2,)]


# --------------------------------------------------------------------------------------------
# No secrets at rest
# --------------------------------------------------------------------------------------------

PLANTED = "Pl4nted-s3cret"


def test_a_planted_password_is_in_no_file_table_or_output(tmp_path, pg_url):
    # a password in db.url, as the README advises against (PGPASSWORD, ~/.pgpass); the test
    # server trusts localhost, so it connects whatever the password
    url = make_url(pg_url).set(password=PLANTED).render_as_string(hide_password=False)
    outputs = [
        _tpo_sweeps(tmp_path, *TINY, f"db.url={url}", "num_seeds=2"),
        _tpo_sweeps(
            tmp_path,
            "-m",
            *TINY,
            "algorithm=tpo,pg,dg",
            f"db.url={url}",
            "db.stage=true",
            "debug.fail_algorithms=[dg]",
            f"hydra.sweep.dir={tmp_path}/mr",
        ),
        _tpo_sweeps(tmp_path, "status", *TINY, "algorithm=tpo,pg,dg", f"db.url={url}"),
        _tpo_sweeps(tmp_path, "export", "--db", url, "--out", str(tmp_path / "bundles")),
        _tpo_sweeps(tmp_path, "merge", str(tmp_path / "mr"), "--db", url),
        _tpo_sweeps(tmp_path, *TINY, "db.url=" + url.replace("/tpo_t", "/nowhere_t")),
    ]
    codes = [o.returncode for o in outputs]
    assert codes == [0, 1, 1, 0, 0, 1], [o.stderr[-800:] for o in outputs]
    for o in outputs:
        assert PLANTED not in o.stdout + o.stderr
    assert ":***@" in outputs[0].stdout + outputs[0].stderr  # the URL is shown, masked
    assert ":***@" in outputs[-1].stderr  # and in the error of a database that is not there
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"overrides.yaml", "config.yaml", "hydra.yaml", "multirun.yaml"} <= names
    assert any(p.suffix == ".log" for p in files) and any(p.suffix == ".parquet" for p in files)
    assert "results.sqlite" in names  # the staged stores hold runs and overrides too
    for p in files:
        assert PLANTED.encode() not in p.read_bytes(), p
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        dump = "\n".join(
            repr(row)
            for table in ("runs", "sweep_runs", "metrics", "summaries", "schema_info")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    engine.dispose()
    assert ":***@" in dump and PLANTED not in dump
    assert "debug.fail" in dump  # the failed job's traceback is there, without the password


def test_passwords_are_masked_in_messages_logs_and_overrides(caplog):
    url = f"postgresql+psycopg://user:{PLANTED}@127.0.0.1:1/tpo"
    assert db.redact(f"x {url} y") == "x postgresql+psycopg://user:***@127.0.0.1:1/tpo y"
    assert db.redact(f"db.url={url.replace(':', chr(92) + ':')}").count(PLANTED) == 0
    assert (
        db.redact("sqlite:///a/b.sqlite http://host:80/x")
        == "sqlite:///a/b.sqlite http://host:80/x"
    )
    assert PLANTED not in mask_override(f"db.url={url}")
    with pytest.raises(db.DatabaseUnavailable) as info:  # the connection error names the URL
        db.connect(url)
    assert PLANTED not in str(info.value) and "user:***@127.0.0.1:1" in str(info.value)
    R.redact_logs()
    with caplog.at_level(logging.INFO, logger="hydra"):
        logging.getLogger("hydra").info("\t#0 : %s", f"db.url={url}")
    assert PLANTED not in caplog.text and "user:***@" in caplog.text


# --------------------------------------------------------------------------------------------
# Paths: an unreadable checkpoint is moved aside
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["garbage", "npz without the state"])
def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_starts_over(content, tmp_path, caplog):
    cfg = compose_config(
        [
            *TINY,
            f"db.url=sqlite:///{tmp_path}/r.sqlite",
            "checkpoint.every=2",
            f"checkpoint.dir={tmp_path}/ckpt",
        ]
    )
    ident = identity.identify(cfg)
    ckpt = Checkpointer(cfg.checkpoint.dir, ident.job_key(ident.seeds))
    ckpt.dir.mkdir(parents=True)
    if content == "garbage":
        ckpt.path.write_bytes(bytes(range(256)) * 4)
    else:
        with open(ckpt.path, "wb") as f:
            np.savez(f, header=np.asarray(json.dumps({"points_done": 2})))
    with caplog.at_level(logging.WARNING, logger="tpo_sweeps"):
        out = R.run_job(cfg, [])  # twice before: a traceback on every rerun
    assert out["status"] == "completed" and out["resumed_from"] == 0
    assert "moved to" in caplog.text and "starting from zero" in caplog.text
    aside = list((tmp_path / "ckpt").glob(f"{ckpt.config_hash}.unusable-*.npz"))
    assert len(aside) == 1 and not ckpt.path.exists()


# --------------------------------------------------------------------------------------------
# Maths edge case: PPO's KL term where a log-prob drops by ~100 nats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("traced", [False, True])
def test_ppo_is_finite_where_a_log_prob_drops_by_100_nats(traced):
    logp_old = jnp.zeros((2, 3))
    adv = jnp.array([[1.0, -1.0, 0.5], [0.0, 1.0, -1.0]])

    def loss(logp, beta):
        return jnp.mean(
            losses.clipped_surrogate_loss(logp, logp_old, adv, clip_eps=0.2, kl_beta=beta)
        )

    logp = jnp.array([[-100.0, 0.1, -0.2], [0.3, -95.0, 0.0]])
    f = jax.jit(jax.value_and_grad(loss)) if traced else jax.value_and_grad(loss)
    value, grad = f(logp, 0.0)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # elsewhere the term is what it was: 0 at β = 0, the k3 estimator at β > 0
    near = jnp.array([[-0.1, 0.1, -0.2], [0.3, -0.05, 0.0]])
    rho = near - logp_old
    kl = jnp.exp(-rho) + rho - 1.0
    ratio = jnp.exp(rho)
    surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv)
    for beta in (0.0, 0.04):
        want = jnp.mean(-jnp.sum(surr - beta * kl, axis=-1))
        assert float(f(near, beta)[0]) == pytest.approx(float(want), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Schema v3 and bundles of v2
# --------------------------------------------------------------------------------------------


def test_revision_0003_adds_diverged_step_and_goes_back(tmp_path):
    path = tmp_path / "r.sqlite"
    cfg = compose_config([*TINY, f"db.url=sqlite:///{path}", DIVERGES, "num_seeds=2"])
    assert R.run_job(cfg, [])["status"] == "diverged"
    metrics = _rows(path, "SELECT count(*) FROM metrics")
    engine = db.connect(f"sqlite:///{path}")
    from alembic import command

    with engine.begin() as conn:  # foreign keys as db.connect has them: on
        command.downgrade(migrations.alembic_config(conn), "0002")
    engine.dispose()
    assert _rows(path, "SELECT version FROM schema_info") == [(2,)]
    assert _rows(path, "SELECT DISTINCT status FROM runs") == [("failed",)]
    assert _rows(path, "SELECT count(*) FROM metrics") == metrics  # nothing deleted
    engine = db.connect(f"sqlite:///{path}")  # migrates back up
    with engine.connect() as conn:
        assert db.schema_version(conn)[0] == db.SCHEMA_VERSION == 3
        assert migrations.differences(conn) == []
        assert conn.execute(select(db.Run.diverged_step)).scalars().all() == [None, None]
    engine.dispose()


def test_a_bundle_of_schema_2_imports(tmp_path):
    src = tmp_path / "a.sqlite"
    cfg = compose_config([*TINY, f"db.url=sqlite:///{src}"])
    assert R.run_job(cfg, [])["status"] == "completed"
    engine = db.connect(f"sqlite:///{src}", create=False)
    bundle.export(engine, tmp_path / "b")
    engine.dispose()
    (path,) = (tmp_path / "b").rglob("*.parquet")
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[bundle.META_KEY])
    meta["schema_version"] = 2
    del meta["run"]["diverged_step"]  # as tpo-sweeps of schema 2 wrote it
    bundle._write(table.replace_schema_metadata({bundle.META_KEY: json.dumps(meta)}), path)
    dst = f"sqlite:///{tmp_path / 'c.sqlite'}"
    assert transfer.import_main([str(tmp_path / "b"), "--db", dst]) == 0
    assert _rows(tmp_path / "c.sqlite", "SELECT status, diverged_step FROM runs") == [
        ("completed", None)
    ]
