"""Results under concurrency and failure, on SQLite and on a real PostgreSQL server.

* 32 writer processes start together on an empty database (so they also race to create the
  schema) and write 10 cells each plus one cell of a neighbour, through ``RunStore`` as jobs
  do: no row may be lost, none duplicated, every value must sit under its own (cell, seed)
  run, each cell completes exactly once, and its runs name the job that wrote them.
* A job killed with SIGKILL in the middle of its final write transaction leaves a database
  that opens and passes its integrity check, with its runs (one per seed) not completed and
  none of their rows; the status command sees them as dead and marks them failed; a rerun
  completes them, once, in the same rows.

PostgreSQL comes from tests/services/postgres.sh (``make services``); each test gets its own
database.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tpo_sweeps import db, status

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "concurrent_writer.py"
WRITERS, CELLS, STEPS, SEEDS = 32, 10, 100, 2


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    return request.getfixturevalue("pg_url")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_the_writer_identifies_its_cells_as_jobs_do():
    from concurrent_writer import cell_config, identity

    from tpo_sweeps.identity import identify

    assert identity(7, STEPS) == identify(cell_config(7, STEPS))
    assert identity(7, STEPS).cell != identity(8, STEPS).cell


def test_32_concurrent_writers_lose_and_duplicate_nothing(url, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                url,
                str(i),
                str(WRITERS),
                str(CELLS),
                str(STEPS),
                str(barrier),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(WRITERS)
    ]
    deadline = time.time() + 120
    while len(list(barrier.glob("ready-*"))) < WRITERS:
        assert time.time() < deadline, "writers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll()]
        time.sleep(0.05)
    t0 = time.perf_counter()
    (barrier / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    wall = time.perf_counter() - t0
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    cells = WRITERS * CELLS
    # exactly once: the two writers of a shared cell cannot both complete it
    assert sum(r["written"] for r in reports) == cells
    assert sum(r["written"] + r["skipped"] for r in reports) == cells + WRITERS
    writer_of = {int(c): job for r in reports for c, job in r["jobs"].items()}
    assert len(writer_of) == cells

    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                select(
                    db.Run.id,
                    db.Run.run_key,
                    db.Run.cell_hash,
                    db.Run.eta,
                    db.Run.seed,
                    db.Run.status,
                    db.Run.job_id,
                    db.Run.job_seeds,
                )
            ).all()
            metrics = conn.execute(select(db.Metric.run_id, db.Metric.step, db.Metric.value)).all()
            summaries = conn.execute(select(func.count()).select_from(db.Summary)).scalar()
            links = conn.execute(select(func.count()).select_from(db.SweepRun)).scalar()
            versions = conn.execute(select(db.SchemaInfo.version)).scalars().all()
    finally:
        engine.dispose()
    assert versions == [db.SCHEMA_VERSION]  # schema created once despite 32 racing creators
    assert len(runs) == cells * SEEDS  # one run per (cell, seed)
    assert len({r.run_key for r in runs}) == cells * SEEDS
    assert len({r.cell_hash for r in runs}) == cells
    assert {r.status for r in runs} == {db.COMPLETED}
    assert {r.job_seeds for r in runs} == {SEEDS}
    assert links == cells * SEEDS  # each run linked once to the one sweep that asked
    from concurrent_writer import cell_of_eta, value

    # each run names the job that wrote its numbers, even where a second job claimed it too
    wrong_job = [r for r in runs if r.job_id != writer_of[cell_of_eta(r.eta)]]
    assert not wrong_job, f"{len(wrong_job)} runs name a job that did not write them"
    assert len(metrics) == cells * SEEDS * STEPS
    assert len({(m.run_id, m.step) for m in metrics}) == len(metrics)
    assert summaries == cells * SEEDS
    where = {r.id: (cell_of_eta(r.eta), r.seed) for r in runs}
    wrong = [m for m in metrics if m.value != pytest.approx(value(*where[m.run_id], m.step))]
    assert not wrong, f"{len(wrong)} metric rows under the wrong run, e.g. {wrong[0]}"
    backend = make_url(url).get_backend_name()
    print(
        f"\n[{WRITERS} writers, {backend}] {len(runs)} runs, {len(metrics)} metric rows, "
        f"{summaries} summaries in {wall:.2f} s (slowest writer "
        f"{max(r['seconds'] for r in reports):.2f} s); 0 lost, 0 duplicated"
    )


def _job(url: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tpo_sweeps",
        "experiment=fig3_tabular_single",
        "scale=smoke",
        "algorithm=tpo",
        f"db.url={url}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_sigkill_during_the_write_leaves_a_usable_database(url, tmp_path):
    proc = subprocess.Popen(
        _job(url, tmp_path / "killed", "debug.pause_in_write_s=120", "db.heartbeat_s=0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    seen = []
    deadline = time.time() + 120
    for line in proc.stdout:  # the job logs this from inside the open write transaction
        seen.append(line)
        if "pausing" in line and "inside the write transaction" in line:
            break
        assert time.time() < deadline, "".join(seen)
    else:
        pytest.fail("the job ended before its write:\n" + "".join(seen))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()

    if url.startswith("sqlite"):
        path = make_url(url).database
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    engine = db.connect(url, create=False, migrate=False)  # opens, schema intact
    try:
        with engine.connect() as conn:
            killed = conn.execute(select(db.Run.id, db.Run.seed, db.Run.status)).all()
            metric_rows = conn.execute(select(func.count()).select_from(db.Metric)).scalar()
            summary_rows = conn.execute(select(func.count()).select_from(db.Summary)).scalar()
    finally:
        engine.dispose()
    assert sorted(r.seed for r in killed) == [0, 1]  # one run per seed of the job
    assert {r.status for r in killed} == {db.RUNNING}  # the transaction never committed
    assert metric_rows == 0 and summary_rows == 0

    # the job is gone: once its heartbeat is stale, the status command calls it dead and
    # --mark-dead stores it as failed
    time.sleep(1.5)
    sweep = ["experiment=fig3_tabular_single", "scale=smoke", "algorithm=tpo", f"db.url={url}"]
    assert status.main([*sweep, "--stale-after", "1", "--mark-dead"]) == 1
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(db.Run.status, db.Run.error)).all()
    finally:
        engine.dispose()
    assert len(rows) == 2
    assert all(r.status == db.FAILED and "no heartbeat" in r.error for r in rows)

    rerun = subprocess.run(
        _job(url, tmp_path / "rerun"), capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            runs = conn.execute(select(db.Run.id, db.Run.status)).all()
            metric_rows = conn.execute(select(func.count()).select_from(db.Metric)).scalar()
            dupes = conn.execute(
                select(db.Metric.run_id, db.Metric.name, db.Metric.step)
                .group_by(db.Metric.run_id, db.Metric.name, db.Metric.step)
                .having(func.count() > 1)
            ).all()
    finally:
        engine.dispose()
    assert {r.status for r in runs} == {db.COMPLETED}
    assert sorted(r.id for r in runs) == sorted(r.id for r in killed)  # the same rows
    assert metric_rows == 2 * 20 * 2  # 2 seeds x 20 steps x 2 metrics, once
    assert dupes == []
