"""The results database against real SQLite files: schema, the per-seed round trip, exactly-once
completion, reruns, sweep membership, pending rows, heartbeats, the job's ``RunStore``, bad
URLs and locks."""

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
from tpo_sweeps import db, store
from tpo_sweeps import identity as I
from tpo_sweeps.store import RunStore
from tpo_sweeps.train import Result


def _url(path) -> str:
    return f"sqlite:///{path}"


def _ident(eta: float = 1.0, num_seeds: int = 2, name: str = "unit", **kw) -> I.Identity:
    """The identity of a small, real tabular cell (TPO at temperature ``eta``)."""
    cfg = C.Config(
        algorithm=C.TPOConfig(name="tpo", eta=eta),
        task=C.TabularSingleConfig(steps=3),
        optimizer=C.NormalizedStepConfig(),
        name=name,
        num_seeds=num_seeds,
        **kw,
    )
    return I.identify(cfg)


def _rows(ident: I.Identity, seeds, overrides=("algorithm=tpo",)) -> list[dict]:
    return [store.run_row(ident, s, list(overrides)) for s in seeds]


def _claim(engine, ident, seeds, sweep: str = "unit", **kw) -> dict[int, int]:
    return db.claim_runs(engine, _rows(ident, seeds), sweep, **kw)


def value(seed: int, t: int, offset: float = 0.0) -> float:
    """Metric values encode (seed, point) so that a row under the wrong run shows."""
    return seed * 10.0 + t / 10.0 + offset


def _arrays(seeds, T: int = 3, offset: float = 0.0):
    seeds = np.asarray(seeds)
    err = np.array([[value(s, t, offset) for t in range(T)] for s in seeds], dtype=np.float32)
    mis = 1.0 - err
    metrics = {"error": err, "misalignment": mis}
    steps = {"error": np.arange(1, T + 1), "misalignment": np.arange(T)}
    summary = {"final_error": err[:, -1], "final_misalignment": mis[:, -1]}
    return metrics, steps, summary, seeds


def _finish(engine, run_ids, seeds=(0, 1), T: int = 3, offset: float = 0.0, **kw):
    metrics, steps, summary, seeds = _arrays(seeds, T, offset)
    return db.finish_runs(engine, run_ids, metrics, steps, summary, seeds, **kw)


def _count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar()


def _status(engine, run_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(select(db.Run.status).where(db.Run.id == run_id)).scalar()


def _metric_values(engine, run_id: int, name: str = "error") -> dict[int, float]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.Metric.step, db.Metric.value).where(
                db.Metric.run_id == run_id, db.Metric.name == name
            )
        ).all()
    return dict(rows)


def _sweeps(engine) -> set[tuple[str, int]]:
    with engine.connect() as conn:
        return set(conn.execute(select(db.SweepRun.sweep, db.SweepRun.run_id)).all())


@pytest.fixture
def engine(tmp_path):
    eng = db.connect(_url(tmp_path / "results.sqlite"))
    yield eng
    eng.dispose()


# --------------------------------------------------------------------------------------------
# Schema and round trip
# --------------------------------------------------------------------------------------------


def test_connect_creates_schema_and_version(tmp_path):
    path = tmp_path / "sub" / "dir" / "results.sqlite"
    # a folder that does not exist is an error, not made (a typo must not make a tree)
    with pytest.raises(db.DatabaseUnavailable, match="does not exist"):
        db.connect(_url(path))
    assert not (tmp_path / "sub").exists()
    path.parent.mkdir(parents=True)
    eng = db.connect(_url(path))
    assert path.is_file()
    tables = set(inspect(eng).get_table_names())
    assert tables >= {"runs", "sweep_runs", "metrics", "summaries", "schema_info"}
    # schema v2: per-seed runs, so metrics and summaries carry no seed of their own
    assert "seed" not in {c["name"] for c in inspect(eng).get_columns("metrics")}
    assert "seed" not in {c["name"] for c in inspect(eng).get_columns("summaries")}
    assert {"run_key", "cell_hash", "seed"} <= {c["name"] for c in inspect(eng).get_columns("runs")}
    with eng.connect() as conn:
        versions = conn.execute(select(db.SchemaInfo.version)).scalars().all()
    assert versions == [db.SCHEMA_VERSION] == [3]
    eng.dispose()
    # reconnecting checks the schema and adds nothing
    eng = db.connect(_url(path))
    assert _count(eng, db.SchemaInfo) == 1
    eng.dispose()
    # create=False on an empty file refuses instead of creating
    with pytest.raises(db.DatabaseUnavailable):
        db.connect(_url(tmp_path / "empty.sqlite"), create=False)


def test_round_trip_one_run_per_seed(engine):
    ident = _ident()
    ids = _claim(engine, ident, [5, 6])
    assert set(ids) == {5, 6} and ids[5] != ids[6]
    keys = {s: ident.run_key(s) for s in (5, 6)}
    rows = db.runs_by_key(engine, [*keys.values(), "x" * 64])
    assert set(rows) == set(keys.values())  # an unknown key is simply absent
    assert {rows[keys[s]].id: rows[keys[s]].status for s in (5, 6)} == {
        ids[5]: db.RUNNING,
        ids[6]: db.RUNNING,
    }
    # the job's arrays list seed 6 first: row i of every array is seeds[i], whatever the order
    metrics, steps, summary, seeds = _arrays((6, 5), T=4)
    n = db.finish_runs(
        engine,
        ids,
        metrics,
        steps,
        summary,
        seeds,
        extra={"compile_s": 1.5, "run_s": 0.25, "job_seeds": 2},
    )
    assert n == 2 * 4 * 2  # seeds × points × metric names
    assert _count(engine, db.Metric) == n
    assert _count(engine, db.Summary) == 2 * 2
    for s in (5, 6):
        assert _metric_values(engine, ids[s]) == {
            t + 1: pytest.approx(np.float32(value(s, t))) for t in range(4)
        }
        mis = _metric_values(engine, ids[s], "misalignment")
        assert mis == {t: pytest.approx(1.0 - np.float32(value(s, t))) for t in range(4)}
        with engine.connect() as conn:
            sums = dict(
                conn.execute(
                    select(db.Summary.name, db.Summary.value).where(db.Summary.run_id == ids[s])
                ).all()
            )
        assert sums["final_error"] == pytest.approx(np.float32(value(s, 3)))
    with Session(engine) as session:
        run = session.get(db.Run, ids[6])
        session.expunge(run)
    assert (run.seed, run.run_key, run.cell_hash) == (6, keys[6], ident.cell)
    assert run.status == db.COMPLETED and run.error is None
    assert run.finished_at is not None and run.started_at <= run.finished_at
    assert (run.compile_s, run.run_s, run.job_seeds) == (1.5, 0.25, 2)
    assert run.config == store.stored_config(ident) and "db" not in run.config
    assert run.overrides == ["algorithm=tpo"]
    assert (run.algorithm, run.task, run.K, run.eta, run.steps) == (
        "tpo",
        "tabular_single",
        100,
        1.0,
        3,
    )
    assert (run.diagnostics, run.mechanism, run.log_every) == (False, False, 1)
    statuses = {r.id: r.status for r in db.runs_by_key(engine, list(keys.values())).values()}
    assert statuses == {ids[5]: db.COMPLETED, ids[6]: db.COMPLETED}


def test_non_finite_values_are_stored_as_null(engine):
    ids = _claim(engine, _ident(), [0, 1])
    metrics, steps, summary, seeds = _arrays((0, 1), T=3)
    metrics["error"][0, 1] = np.nan
    metrics["error"][1, 2] = np.inf
    db.finish_runs(engine, ids, metrics, steps, summary, seeds)
    with engine.connect() as conn:
        nulls = conn.execute(
            select(db.Metric.run_id, db.Metric.step).where(db.Metric.value.is_(None))
        ).all()
    assert sorted(nulls) == sorted([(ids[0], 2), (ids[1], 3)])  # error steps are 1..T


# --------------------------------------------------------------------------------------------
# Reruns and exactly-once completion
# --------------------------------------------------------------------------------------------


def test_rerun_of_failed_runs_reuses_ids_and_replaces_rows(engine):
    ident = _ident()
    ids = _claim(engine, ident, [0, 1])
    db.fail_runs(engine, list(ids.values()), "RuntimeError: boom")
    with engine.connect() as conn:
        rows = conn.execute(select(db.Run.id, db.Run.status, db.Run.error)).all()
    assert {r.id: (r.status, r.error) for r in rows} == {
        i: (db.FAILED, "RuntimeError: boom") for i in ids.values()
    }
    # the rerun: same run keys -> same rows, reset to running, error cleared
    again = db.claim_runs(engine, _rows(ident, [0, 1], ["algorithm=tpo", "seed=0"]), "unit")
    assert again == ids
    assert _count(engine, db.Run) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(db.Run.status, db.Run.error, db.Run.overrides)).all()
    assert {(r.status, r.error, tuple(r.overrides)) for r in rows} == {
        (db.RUNNING, None, ("algorithm=tpo", "seed=0"))
    }
    assert _finish(engine, ids) == 12
    assert {_status(engine, i) for i in ids.values()} == {db.COMPLETED}
    # an explicit rerun of the completed runs writes over their rows instead of adding to them
    assert _claim(engine, ident, [0, 1], rerun_completed=True) == ids
    assert _finish(engine, ids, offset=5.0) == 12
    assert _count(engine, db.Run) == 2
    assert _count(engine, db.Metric) == 2 * 3 * 2
    assert _count(engine, db.Summary) == 2 * 2
    for s, i in ids.items():  # only the second write's values remain
        assert _metric_values(engine, i) == {
            t + 1: pytest.approx(np.float32(value(s, t, 5.0))) for t in range(3)
        }


def test_completed_runs_are_written_once(engine):
    ident = _ident()
    ids = _claim(engine, ident, [0, 1])
    _finish(engine, ids)
    # a second job of the same cell neither restarts it nor overwrites its results
    assert _claim(engine, ident, [0, 1]) == {}
    assert _finish(engine, ids, offset=5.0) is None
    db.fail_runs(engine, list(ids.values()), "late failure")
    db.heartbeat(engine, list(ids.values()), db.PREEMPTED)
    assert db.mark_dead(engine, list(ids.values()), "no heartbeat") == 0
    for s, i in ids.items():
        assert _status(engine, i) == db.COMPLETED
        assert _metric_values(engine, i)[1] == pytest.approx(np.float32(value(s, 0)))
    with engine.connect() as conn:
        assert conn.execute(select(db.Run.error)).scalars().all() == [None, None]


def test_a_claim_leaves_out_only_the_seeds_already_completed(engine):
    ident = _ident(num_seeds=4)
    first = _claim(engine, ident, [0, 1])
    _finish(engine, first)
    rest = _claim(engine, ident, [0, 1, 2, 3])
    assert set(rest) == {2, 3} and not set(rest.values()) & set(first.values())
    assert _count(engine, db.Run) == 4
    # finishing the job writes its own two seeds; seeds 0 and 1 keep the first job's rows
    assert _finish(engine, rest, seeds=(2, 3), offset=7.0) == 2 * 3 * 2
    assert _metric_values(engine, first[0])[1] == pytest.approx(np.float32(value(0, 0)))
    assert _metric_values(engine, rest[3])[1] == pytest.approx(np.float32(value(3, 0, 7.0)))
    # a result that lists more seeds than the job claimed writes only the claimed ones
    other = _ident(eta=3.0)
    one = _claim(engine, other, [1])
    assert _finish(engine, one, seeds=(0, 1)) == 1 * 3 * 2
    assert _metric_values(engine, one[1]) == {
        t + 1: pytest.approx(np.float32(value(1, t))) for t in range(3)
    }


def test_runs_of_different_cells_are_kept_apart(engine):
    a = _claim(engine, _ident(eta=1.0), [0, 1])
    b = _claim(engine, _ident(eta=2.0), [0, 1])
    assert not set(a.values()) & set(b.values())
    _finish(engine, a)
    _finish(engine, b, offset=1.0)
    # rewriting b leaves a's rows alone
    assert _claim(engine, _ident(eta=2.0), [0, 1], rerun_completed=True) == b
    _finish(engine, b, offset=2.0)
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(select(db.Metric.run_id, func.count()).group_by(db.Metric.run_id)).all()
        )
    assert per_run == {i: 6 for i in (*a.values(), *b.values())}
    assert _metric_values(engine, a[1])[1] == pytest.approx(np.float32(value(1, 0)))
    assert _metric_values(engine, b[1])[1] == pytest.approx(np.float32(value(1, 0, 2.0)))


# --------------------------------------------------------------------------------------------
# Sweep membership, pending rows, heartbeats
# --------------------------------------------------------------------------------------------


def test_a_run_belongs_to_every_sweep_that_asked_for_it(engine):
    ident = _ident()
    ids = _claim(engine, ident, [0, 1], sweep="fig1b")
    assert _sweeps(engine) == {("fig1b", i) for i in ids.values()}
    db.fail_runs(engine, list(ids.values()), "boom")
    assert _claim(engine, ident, [0, 1], sweep="table3") == ids  # the rerun, by another sweep
    _finish(engine, ids)
    # a third sweep asks once they are completed: nothing to run, but they are its runs too
    assert _claim(engine, ident, [0, 1], sweep="fig9") == {}
    want = {(s, i) for s in ("fig1b", "table3", "fig9") for i in ids.values()}
    assert _sweeps(engine) == want
    with engine.begin() as conn:
        db.link(conn, "fig9", [ids[0], ids[0]])  # idempotent, duplicates collapse
        db.link(conn, "fig9", list(ids.values()))
        db.link(conn, "fig9", [])
        db.link(conn, "other", [ids[1]])
    assert _sweeps(engine) == want | {("other", ids[1])}
    assert _count(engine, db.Run) == 2


def test_pending_rows_keep_existing_runs_and_link_every_sweep(engine):
    ident = _ident(num_seeds=3)
    done = _claim(engine, ident, [0])
    _finish(engine, done, seeds=(0,))
    rows = _rows(ident, [0, 1, 2])
    assert db.add_pending(engine, [("campaign", rows), ("fig1b", rows)]) == 2
    by_key = db.runs_by_key(engine, [r["run_key"] for r in rows])
    status = {r["seed"]: by_key[r["run_key"]].status for r in rows}
    assert status == {0: db.COMPLETED, 1: db.PENDING, 2: db.PENDING}
    ids = {r["seed"]: by_key[r["run_key"]].id for r in rows}
    assert ids[0] == done[0]
    assert _sweeps(engine) >= {(s, i) for s in ("campaign", "fig1b") for i in ids.values()}
    # recording them again adds nothing; a job then claims the pending rows themselves
    assert db.add_pending(engine, [("campaign", rows)]) == 0
    assert _claim(engine, ident, [0, 1, 2]) == {1: ids[1], 2: ids[2]}
    assert _count(engine, db.Run) == 3


def test_heartbeat_touches_live_runs_only(engine):
    ident = _ident(num_seeds=3)
    ids = _claim(engine, ident, [0, 1, 2])
    _finish(engine, {0: ids[0]}, seeds=(0,))
    db.fail_runs(engine, [ids[2]], "boom")

    def beats():
        with engine.connect() as conn:
            rows = conn.execute(select(db.Run.id, db.Run.status, db.Run.heartbeat_at)).all()
        return {r.id: (r.status, r.heartbeat_at) for r in rows}

    before = beats()
    time.sleep(0.01)
    db.heartbeat(engine, list(ids.values()))
    mid = beats()
    assert mid[ids[1]][0] == db.RUNNING and mid[ids[1]][1] > before[ids[1]][1]
    assert mid[ids[0]] == before[ids[0]] and mid[ids[2]] == before[ids[2]]
    db.heartbeat(engine, list(ids.values()), db.PREEMPTED)
    after = beats()
    assert after[ids[1]][0] == db.PREEMPTED
    assert (after[ids[0]][0], after[ids[2]][0]) == (db.COMPLETED, db.FAILED)
    # a dead job's live runs become failed; completed and failed ones are left alone
    assert db.mark_dead(engine, list(ids.values()), "no heartbeat: gone") == 1
    with engine.connect() as conn:
        row = conn.execute(select(db.Run.status, db.Run.error).where(db.Run.id == ids[1])).one()
    assert (row.status, row.error) == (db.FAILED, "no heartbeat: gone")
    assert db.mark_dead(engine, [], "x") == 0


def test_a_job_holds_no_idle_postgresql_connection_between_writes(pg_url):
    """Each job opens its own engine; between its writes it must hold no connection, or a
    500-task array would hold 500 idle ones on the server (max_connections is ~100)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(pg_url).database
    watcher = create_engine(pg_url, poolclass=db.NullPool)

    def open_connections() -> int:
        with watcher.connect() as conn:
            return conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar()

    engines = [db.connect(pg_url) for _ in range(3)]  # three jobs
    for engine in engines:
        ids = _claim(engine, _ident(), [0, 1])
        db.heartbeat(engine, list(ids.values()))
    assert open_connections() == 0
    for engine in engines:
        engine.dispose()
    watcher.dispose()


# --------------------------------------------------------------------------------------------
# RunStore: what a job talks to
# --------------------------------------------------------------------------------------------


def _job_result(seeds, T: int = 3, offset: float = 0.0) -> Result:
    metrics, steps, summary, seeds = _arrays(seeds, T, offset)
    return Result(seeds, metrics, steps, summary, compile_s=0.5, run_s=0.125)


def test_run_store_skips_stored_seeds_claims_the_rest_and_records_the_job(tmp_path):
    url = _url(tmp_path / "r.sqlite")
    provenance = {"host": "test-host", "git_commit": "abc"}
    first = _ident(num_seeds=3, name="sweep_a")
    with RunStore(url) as st:
        assert st.stored(first) == {}
        assert st.start(first, [0, 1, 2], ["seed=0"], provenance) == [0, 1, 2]
        st.heartbeat()
        assert st.finish(_job_result([0, 1, 2])) == 3 * 3 * 2
        a_ids, a_job = dict(st.run_ids), st.job_id
    # another job of the same cell asks for seeds 0..4 under another sweep
    second = _ident(num_seeds=5, name="sweep_b")
    assert second.cell == first.cell
    with RunStore(url) as st:
        stored = st.stored(second)
        assert stored == a_ids
        st.link("sweep_b", list(stored.values()))
        assert st.start(second, [3, 4], ["seed=0", "num_seeds=5"], provenance) == [3, 4]
        st.fail("RuntimeError: injected")
        b_ids, b_job = dict(st.run_ids), st.job_id
    assert a_job != b_job
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    db.Run.id,
                    db.Run.seed,
                    db.Run.status,
                    db.Run.job_id,
                    db.Run.job_seeds,
                    db.Run.host,
                    db.Run.sweep,
                    db.Run.error,
                ).order_by(db.Run.seed)
            ).all()
        assert [(r.seed, r.status, r.job_id, r.job_seeds) for r in rows] == [
            (0, db.COMPLETED, a_job, 3),
            (1, db.COMPLETED, a_job, 3),
            (2, db.COMPLETED, a_job, 3),
            (3, db.FAILED, b_job, 2),
            (4, db.FAILED, b_job, 2),
        ]
        assert {r.host for r in rows} == {"test-host"}
        assert all("injected" in r.error for r in rows[3:])
        assert _sweeps(engine) == {("sweep_a", i) for i in a_ids.values()} | {
            ("sweep_b", i) for i in (*a_ids.values(), *b_ids.values())
        }
        # a store whose ``stored`` asks for other seeds only finds those
        assert store.stored_seeds(engine, second, [1, 4]) == {1: a_ids[1]}
    finally:
        engine.dispose()


def test_a_run_names_the_job_that_wrote_it_when_another_claimed_it_meanwhile(tmp_path):
    """A relaunch can claim a run a live job is still computing; the first to finish writes
    it, and the row then names that job and its provenance, not the later claimant's."""
    url = _url(tmp_path / "r.sqlite")
    ident = _ident()
    with RunStore(url) as first, RunStore(url) as second:
        assert first.start(ident, [0, 1], ["by=first"], {"host": "host-1"}) == [0, 1]
        assert second.start(ident, [0, 1], ["by=second"], {"host": "host-2"}) == [0, 1]
        assert second.run_ids == first.run_ids  # the same rows, claimed twice
        assert first.finish(_job_result([0, 1])) == 12
        assert second.finish(_job_result([0, 1], offset=5.0)) is None
        job = first.job_id
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(db.Run.id, db.Run.seed, db.Run.job_id, db.Run.host)).all()
        assert {(r.job_id, r.host) for r in rows} == {(job, "host-1")}
        for r in rows:
            assert _metric_values(engine, r.id)[1] == pytest.approx(np.float32(value(r.seed, 0)))
    finally:
        engine.dispose()


def test_staged_run_store_reads_the_main_database_and_writes_its_own(tmp_path):
    main = _url(tmp_path / "main.sqlite")
    ident = _ident(num_seeds=2)
    with RunStore(main) as st:
        st.start(ident, [0], [], {})
        st.finish(_job_result([0]))
    staged = store.staged_url(tmp_path / "job0")
    with RunStore(staged, read_url=main) as st:
        assert st.staged
        assert set(st.stored(ident)) == {0}
        assert st.start(ident, [1], [], {}) == [1]
        st.finish(_job_result([1]))
    for url, seeds in ((main, [0]), (staged, [1])):
        engine = db.connect(url, create=False)
        with engine.connect() as conn:
            assert conn.execute(select(db.Run.seed)).scalars().all() == seeds
        engine.dispose()
    # with no main database yet, a staged job reads nothing and runs everything
    nowhere = _url(tmp_path / "no.sqlite")
    with RunStore(store.staged_url(tmp_path / "job1"), read_url=nowhere) as st:
        assert st.reader is None and st.stored(ident) == {}


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
    ident = _ident()
    done = _claim(eng, ident, [0, 1])
    _finish(eng, done)
    pending = _claim(eng, _ident(eta=5.0), [0, 1])  # a job still running when the lock comes

    holder = _hold_write_lock(path)
    try:
        # opening it while another writer holds the lock fails after the busy timeout ...
        t0 = time.perf_counter()
        with pytest.raises(db.DatabaseUnavailable, match="locked"):
            db.connect(_url(path), busy_timeout_s=0.2)
        assert time.perf_counter() - t0 < 5.0
        # ... and so do writes from an engine opened before the lock was taken
        with pytest.raises(OperationalError, match="locked"):
            _claim(eng, _ident(eta=9.0), [0])
        with pytest.raises(OperationalError, match="locked"):
            _claim(eng, ident, [0, 1], rerun_completed=True)
        with pytest.raises(OperationalError, match="locked"):
            _finish(eng, pending, offset=9.0)
    finally:
        holder.rollback()
        holder.close()
    # nothing stored was lost or half-replaced, and the file is a sound database
    assert _count(eng, db.Metric) == 12
    assert _count(eng, db.Run) == 4
    assert {_status(eng, i) for i in done.values()} == {db.COMPLETED}
    assert {_status(eng, i) for i in pending.values()} == {db.RUNNING}  # no half-written result
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    # once the lock is gone the same writes go through
    assert _finish(eng, pending, offset=9.0) == 12
    assert _claim(eng, _ident(eta=9.0), [0]) != {}
    eng.dispose()


def test_writer_waits_for_a_short_lock(tmp_path):
    path = tmp_path / "busy.sqlite"
    eng = db.connect(_url(path), busy_timeout_s=10.0)
    ids = _claim(eng, _ident(), [0, 1])
    holder = _hold_write_lock(path)
    release = threading.Timer(0.3, lambda: (holder.rollback(), holder.close()))
    release.start()
    try:
        # within the busy timeout the write waits for the lock instead of failing
        assert _finish(eng, ids) == 12
    finally:
        release.join()
    assert {_status(eng, i) for i in ids.values()} == {db.COMPLETED}
    eng.dispose()
