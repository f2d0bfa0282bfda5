"""The results database against real SQLite files: schema, round trip, reruns, bad URLs, locks."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tpo_sweeps import config as C
from tpo_sweeps import db


def _url(path) -> str:
    return f"sqlite:///{path}"


def _fields(chash: str = "h" * 64, **kw) -> dict:
    base = {
        "config_hash": chash,
        "sweep": "unit",
        "algorithm": "tpo",
        "task": "tabular_single",
        "optimizer": "normalized_step",
        "seed": 0,
        "num_seeds": 2,
        "steps": 3,
        "epochs": 1,
        "K": 10,
        "eta": 1.0,
        "overrides": ["algorithm=tpo"],
        "config": {"algorithm": {"name": "tpo", "eta": 1.0}},
    }
    base.update(kw)
    return base


def _result(seeds=(0, 1), T: int = 3, offset: float = 0.0):
    seeds = np.asarray(seeds)
    S = len(seeds)
    err = np.arange(S * T, dtype=np.float32).reshape(S, T) / 10.0 + offset
    mis = 1.0 - err
    metrics = {"error": err, "misalignment": mis}
    steps = {"error": np.arange(1, T + 1), "misalignment": np.arange(T)}
    summary = {"final_error": err[:, -1], "final_misalignment": mis[:, -1]}
    return seeds, metrics, steps, summary


def _count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar()


@pytest.fixture
def engine(tmp_path):
    eng = db.connect(_url(tmp_path / "results.sqlite"))
    yield eng
    eng.dispose()


# --------------------------------------------------------------------------------------------
# Schema and round trip
# --------------------------------------------------------------------------------------------


def test_connect_creates_schema_and_version(tmp_path):
    path = tmp_path / "sub" / "dir" / "results.sqlite"  # parent directories are created
    eng = db.connect(_url(path))
    assert path.is_file()
    assert set(inspect(eng).get_table_names()) >= {"runs", "metrics", "summaries", "schema_info"}
    with eng.connect() as conn:
        versions = conn.execute(select(db.SchemaInfo.version)).scalars().all()
    assert versions == [db.SCHEMA_VERSION]
    eng.dispose()
    # reconnecting checks the schema and adds nothing
    eng = db.connect(_url(path))
    assert _count(eng, db.SchemaInfo) == 1
    eng.dispose()
    # create=False on an empty file refuses instead of creating
    with pytest.raises(db.DatabaseUnavailable):
        db.connect(_url(tmp_path / "empty.sqlite"), create=False)


def test_round_trip_metrics_and_summaries(engine):
    run_id = db.start_run(engine, _fields())
    assert db.find_run(engine, "h" * 64) == (run_id, db.RUNNING)
    seeds, metrics, steps, summary = _result(seeds=(5, 6), T=4)
    n = db.finish_run(
        engine, run_id, seeds, metrics, steps, summary, extra={"compile_s": 1.5, "run_s": 0.25}
    )
    assert n == 2 * 4 * 2  # seeds × steps × metric names
    assert _count(engine, db.Metric) == n
    assert _count(engine, db.Summary) == 2 * 2
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.Metric.seed, db.Metric.name, db.Metric.step, db.Metric.value).where(
                db.Metric.run_id == run_id
            )
        ).all()
        sums = conn.execute(
            select(db.Summary.seed, db.Summary.name, db.Summary.value).where(
                db.Summary.run_id == run_id
            )
        ).all()
    with Session(engine) as session:
        run = session.get(db.Run, run_id)
        session.expunge(run)
    got = {(r.seed, r.name, r.step): r.value for r in rows}
    for name, values in metrics.items():
        for i, seed in enumerate((5, 6)):
            for j, step in enumerate(steps[name]):
                assert got[(seed, name, int(step))] == pytest.approx(float(values[i, j]), abs=0)
    got_sum = {(r.seed, r.name): r.value for r in sums}
    assert got_sum[(6, "final_error")] == pytest.approx(float(metrics["error"][1, -1]), abs=0)
    assert got_sum[(5, "final_misalignment")] == pytest.approx(
        float(metrics["misalignment"][0, -1]), abs=0
    )
    assert run.status == db.COMPLETED
    assert run.finished_at is not None and run.started_at <= run.finished_at
    assert (run.compile_s, run.run_s) == (1.5, 0.25)
    assert run.config == {"algorithm": {"name": "tpo", "eta": 1.0}}
    assert run.overrides == ["algorithm=tpo"]
    assert (run.algorithm, run.K, run.eta, run.error) == ("tpo", 10, 1.0, None)
    assert db.find_run(engine, "h" * 64) == (run_id, db.COMPLETED)
    assert db.find_run(engine, "x" * 64) is None


def test_non_finite_values_are_stored_as_null(engine):
    run_id = db.start_run(engine, _fields())
    seeds, metrics, steps, summary = _result(T=3)
    metrics["error"][0, 1] = np.nan
    metrics["error"][1, 2] = np.inf
    db.finish_run(engine, run_id, seeds, metrics, steps, summary)
    with engine.connect() as conn:
        nulls = conn.execute(
            select(db.Metric.seed, db.Metric.step).where(db.Metric.value.is_(None))
        ).all()
    assert sorted(nulls) == [(0, 2), (1, 3)]  # error steps are 1..T


def test_config_hash_is_canonical():
    a = {"algorithm": {"name": "tpo", "eta": 1.0}, "task": {"name": "t", "steps": 5}, "seed": 0}
    b = {"seed": 0, "task": {"steps": 5, "name": "t"}, "algorithm": {"eta": 1.0, "name": "tpo"}}
    assert db.config_hash(a) == db.config_hash(b)
    assert len(db.config_hash(a)) == 64
    # where results go and what runs them is not part of the identity of a run
    c = {**a, "db": {"url": "sqlite:///elsewhere.sqlite"}, "hardware": {"name": "slurm_gpu"}}
    assert db.config_hash(c) == db.config_hash(a)
    assert db.config_hash({**a, "skip_completed": False}) == db.config_hash(a)
    # ... but every semantic value is
    assert db.config_hash({**a, "seed": 1}) != db.config_hash(a)
    d = {**a, "algorithm": {"name": "tpo", "eta": 2.0}}
    assert db.config_hash(d) != db.config_hash(a)


def test_config_hash_of_typed_configs():
    base = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(),
        optimizer=C.NormalizedStepConfig(),
    )
    moved = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(),
        optimizer=C.NormalizedStepConfig(),
        db=C.DBConfig(url="sqlite:////tmp/other.sqlite", busy_timeout_s=1.0),
        hardware=C.HardwareConfig(name="slurm_gpu", platform=""),
    )
    assert db.config_hash(C.as_dict(base)) == db.config_hash(C.as_dict(moved))
    hot = C.Config(
        algorithm=C.TPOConfig(name="tpo", eta=2.0),
        task=C.TabularSingleConfig(),
        optimizer=C.NormalizedStepConfig(),
    )
    assert db.config_hash(C.as_dict(hot)) != db.config_hash(C.as_dict(base))


def test_config_hash_ignores_the_debug_switch():
    # debug.fail only injects a failure; the rerun without it is the same run (same id)
    plain = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(),
        optimizer=C.NormalizedStepConfig(),
    )
    failing = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(),
        optimizer=C.NormalizedStepConfig(),
        debug=C.DebugConfig(fail=True),
    )
    assert db.config_hash(C.as_dict(failing)) == db.config_hash(C.as_dict(plain))


def test_rerun_of_failed_run_reuses_id_and_replaces_rows(engine):
    run_id = db.start_run(engine, _fields())
    db.fail_run(engine, run_id, "RuntimeError: boom")
    assert db.find_run(engine, "h" * 64) == (run_id, db.FAILED)
    with engine.connect() as conn:
        error = conn.execute(select(db.Run.error).where(db.Run.id == run_id)).scalar()
    assert error == "RuntimeError: boom"
    # the rerun: same config hash -> same row, reset to running, error cleared
    again = db.start_run(engine, _fields(overrides=["algorithm=tpo", "seed=0"]))
    assert again == run_id
    assert _count(engine, db.Run) == 1
    with engine.connect() as conn:
        row = conn.execute(select(db.Run.status, db.Run.error, db.Run.overrides)).one()
    assert (row.status, row.error) == (db.RUNNING, None)
    assert row.overrides == ["algorithm=tpo", "seed=0"]
    assert db.finish_run(engine, run_id, *_result()) == 12
    assert db.find_run(engine, "h" * 64) == (run_id, db.COMPLETED)
    # an explicit rerun of the completed cell writes over its rows instead of adding to them
    assert db.start_run(engine, _fields(), rerun_completed=True) == run_id
    assert db.finish_run(engine, run_id, *_result(offset=5.0)) == 12
    assert _count(engine, db.Run) == 1
    assert _count(engine, db.Metric) == 2 * 3 * 2
    assert _count(engine, db.Summary) == 2 * 2
    with engine.connect() as conn:
        values = conn.execute(select(db.Metric.value).where(db.Metric.name == "error")).scalars()
        assert min(values) >= 5.0  # only the second write's values remain


def test_completed_run_is_written_once(engine):
    run_id = db.start_run(engine, _fields())
    db.finish_run(engine, run_id, *_result())
    # a second job of the same cell neither restarts it nor overwrites its results
    assert db.start_run(engine, _fields()) is None
    assert db.finish_run(engine, run_id, *_result(offset=5.0)) is None
    db.fail_run(engine, run_id, "late failure")
    assert db.find_run(engine, "h" * 64) == (run_id, db.COMPLETED)
    with engine.connect() as conn:
        values = conn.execute(select(db.Metric.value).where(db.Metric.name == "error")).scalars()
        assert max(values) < 5.0


def test_runs_are_kept_apart(engine):
    a = db.start_run(engine, _fields("a" * 64))
    b = db.start_run(engine, _fields("b" * 64, algorithm="pg"))
    assert a != b
    db.finish_run(engine, a, *_result())
    db.finish_run(engine, b, *_result(offset=1.0))
    # rewriting b leaves a's rows alone
    db.finish_run(engine, b, *_result(offset=2.0))
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(select(db.Metric.run_id, func.count()).group_by(db.Metric.run_id)).all()
        )
    assert per_run == {a: 12, b: 12}


# --------------------------------------------------------------------------------------------
# URLs that are not results databases
# --------------------------------------------------------------------------------------------


def _assert_unavailable(url: str, *, match: str | None = None) -> str:
    with pytest.raises(db.DatabaseUnavailable) as info:
        db.connect(url, busy_timeout_s=0.5)
    msg = str(info.value)
    assert url in msg, msg
    assert "\n" not in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def test_wrong_schema_version_is_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE schema_info (version INTEGER PRIMARY KEY)")
    con.execute("INSERT INTO schema_info VALUES (?)", (db.SCHEMA_VERSION + 98,))
    con.commit()
    con.close()
    _assert_unavailable(_url(path), match=str(db.SCHEMA_VERSION + 98))


def test_foreign_database_with_a_runs_table_is_refused(tmp_path):
    path = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (x TEXT)")
    con.execute("INSERT INTO runs VALUES ('theirs')")
    con.commit()
    con.close()
    _assert_unavailable(_url(path), match="not a tpo-sweeps results database")
    # and it is left as it was: no tables added
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"runs"}
    assert con.execute("SELECT x FROM runs").fetchall() == [("theirs",)]
    con.close()


def test_plain_text_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    text = b"these are my notes, not a database\n" * 50
    path.write_bytes(text)
    _assert_unavailable(_url(path))
    assert path.read_bytes() == text


@pytest.mark.parametrize("where", ["proc", "under_file"])
def test_unreachable_location_is_refused(tmp_path, where):
    if where == "proc":
        url = "sqlite:////proc/nope/x.sqlite"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        url = _url(blocker / "sub" / "x.sqlite")
    _assert_unavailable(url)


@pytest.mark.parametrize("url", ["notaurl", "nosuchdialect://host/db", "sqlite+nodriver:///x.db"])
def test_malformed_url_is_refused(url):
    _assert_unavailable(url)


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------


def _hold_write_lock(path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=0.1, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    return con


def test_locked_database_raises_and_loses_nothing(tmp_path):
    path = tmp_path / "locked.sqlite"
    eng = db.connect(_url(path), busy_timeout_s=0.2)
    run_id = db.start_run(eng, _fields())
    db.finish_run(eng, run_id, *_result())
    pending = db.start_run(eng, _fields("p" * 64))  # a job still running when the lock comes

    holder = _hold_write_lock(path)
    try:
        # opening it while another writer holds the lock fails after the busy timeout ...
        t0 = time.perf_counter()
        with pytest.raises(db.DatabaseUnavailable, match="locked"):
            db.connect(_url(path), busy_timeout_s=0.2)
        assert time.perf_counter() - t0 < 5.0
        # ... and so do writes from an engine opened before the lock was taken
        with pytest.raises(OperationalError, match="locked"):
            db.start_run(eng, _fields("z" * 64))
        with pytest.raises(OperationalError, match="locked"):
            db.start_run(eng, _fields(), rerun_completed=True)
        with pytest.raises(OperationalError, match="locked"):
            db.finish_run(eng, pending, *_result(offset=9.0))
    finally:
        holder.rollback()
        holder.close()
    # nothing stored was lost or half-replaced, and the file is a sound database
    assert _count(eng, db.Metric) == 12
    assert _count(eng, db.Run) == 2
    assert db.find_run(eng, "h" * 64) == (run_id, db.COMPLETED)
    assert db.find_run(eng, "p" * 64) == (pending, db.RUNNING)  # no half-written result
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    # once the lock is gone the same writes go through
    assert db.finish_run(eng, pending, *_result(offset=9.0)) == 12
    assert db.start_run(eng, _fields("z" * 64)) is not None
    eng.dispose()


def test_writer_waits_for_a_short_lock(tmp_path):
    path = tmp_path / "busy.sqlite"
    eng = db.connect(_url(path), busy_timeout_s=10.0)
    run_id = db.start_run(eng, _fields())
    holder = _hold_write_lock(path)
    release = threading.Timer(0.3, lambda: (holder.rollback(), holder.close()))
    release.start()
    try:
        # within the busy timeout the write waits for the lock instead of failing
        assert db.finish_run(eng, run_id, *_result()) == 12
    finally:
        release.join()
    assert db.find_run(eng, "h" * 64) == (run_id, db.COMPLETED)
    eng.dispose()
