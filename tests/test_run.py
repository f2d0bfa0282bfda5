"""The entry point end to end: ``python -m tpo_sweeps`` in a subprocess, into a real SQLite DB."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE3 = "experiment=fig3_tabular_single_smoke"  # 4 algorithms × 2 seeds × 20 steps
SMOKE3_RUNS, SMOKE3_SEEDS, SMOKE3_STEPS, METRICS = 4, 2, 20, 2


def tpo(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m tpo_sweeps args`` with outputs/ and multirun/ under ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "tpo_sweeps", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _query(path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _runs(path: Path) -> dict[str, tuple]:
    rows = _query(path, "SELECT algorithm, id, status, error, sweep, num_seeds FROM runs")
    return {r[0]: r[1:] for r in rows}


def _metric_count(path: Path) -> int:
    return _query(path, "SELECT COUNT(*) FROM metrics")[0][0]


def _explain(proc: subprocess.CompletedProcess) -> str:
    out, err = proc.stdout[-3000:], proc.stderr[-3000:]
    return f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------
# Multirun sweeps
# --------------------------------------------------------------------------------------------


def test_smoke_sweep_writes_all_cells_and_skips_them_on_rerun(tmp_path):
    dbfile = tmp_path / "res.sqlite"
    first = tpo(tmp_path, "-m", SMOKE3, f"db.url={_url(dbfile)}")
    assert first.returncode == 0, _explain(first)
    runs = _runs(dbfile)
    assert set(runs) == {"tpo", "grpo", "dg", "pg"}
    assert all(r[1] == "completed" for r in runs.values()), runs
    assert all(r[3] == "fig3_tabular_single_smoke" and r[4] == SMOKE3_SEEDS for r in runs.values())
    rows = _metric_count(dbfile)
    assert rows == SMOKE3_RUNS * SMOKE3_SEEDS * SMOKE3_STEPS * METRICS
    per_run = _query(
        dbfile,
        "SELECT run_id, name, COUNT(DISTINCT seed), COUNT(DISTINCT step), MIN(step), MAX(step) "
        "FROM metrics GROUP BY run_id, name",
    )
    assert len(per_run) == SMOKE3_RUNS * METRICS
    assert all(r[2:] == (SMOKE3_SEEDS, SMOKE3_STEPS, 0, SMOKE3_STEPS - 1) for r in per_run)
    # error starts at 1 - 1/K (uniform policy, recorded before the first step) and every
    # algorithm improves on it within 20 steps
    start = _query(
        dbfile, "SELECT DISTINCT ROUND(value, 6) FROM metrics WHERE name='error' AND step=0"
    )
    assert start == [(0.99,)]
    finals = _query(
        dbfile,
        "SELECT run_id, AVG(value) FROM summaries WHERE name='final_error' GROUP BY run_id",
    )
    assert len(finals) == SMOKE3_RUNS and all(v < 0.99 for _, v in finals)
    # the outputs went under the working directory
    assert (tmp_path / "multirun" / "fig3_tabular_single_smoke").is_dir()

    again = tpo(tmp_path, "-m", SMOKE3, f"db.url={_url(dbfile)}")
    assert again.returncode == 0, _explain(again)
    assert _metric_count(dbfile) == rows
    assert _runs(dbfile) == runs
    log = again.stdout + again.stderr
    assert log.count("skip") >= SMOKE3_RUNS, _explain(again)


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory):
    """A sweep of two cells that both fail on purpose (debug.fail=true)."""
    tmp = tmp_path_factory.mktemp("failed")
    dbfile = tmp / "res.sqlite"
    proc = tpo(tmp, "-m", SMOKE3, "debug.fail=true", "algorithm=tpo,pg", f"db.url={_url(dbfile)}")
    return tmp, dbfile, proc


def test_failing_jobs_are_recorded_and_the_sweep_goes_on(failed_sweep):
    _, dbfile, proc = failed_sweep
    assert proc.returncode != 0, _explain(proc)
    runs = _runs(dbfile)
    # both cells were attempted: the sweep went on after the first failure
    assert set(runs) == {"tpo", "pg"}, runs
    for algorithm, (_, status, error, _, _) in runs.items():
        assert status == "failed", (algorithm, status)
        assert error and "debug.fail" in error, error
    assert _metric_count(dbfile) == 0
    assert "debug.fail" in proc.stderr


def test_failed_cells_complete_on_a_later_run(failed_sweep, tmp_path):
    _, failed_db, _ = failed_sweep
    dbfile = tmp_path / "res.sqlite"
    shutil.copy(failed_db, dbfile)
    failed_ids = {a: r[0] for a, r in _runs(dbfile).items()}
    proc = tpo(tmp_path, "-m", SMOKE3, "algorithm=tpo,pg", f"db.url={_url(dbfile)}")
    assert proc.returncode == 0, _explain(proc)
    runs = _runs(dbfile)
    # the same rows were completed: same ids, no new run rows, no duplicated metrics
    assert {a: r[0] for a, r in runs.items()} == failed_ids, runs
    assert all(r[1] == "completed" and r[2] is None for r in runs.values()), runs
    assert _metric_count(dbfile) == 2 * SMOKE3_SEEDS * SMOKE3_STEPS * METRICS
    dupes = _query(
        dbfile,
        "SELECT run_id, seed, name, step, COUNT(*) c FROM metrics "
        "GROUP BY run_id, seed, name, step HAVING c > 1",
    )
    assert dupes == []


def test_single_run_without_multirun(tmp_path):
    dbfile = tmp_path / "single.sqlite"
    proc = tpo(tmp_path, "experiment=fig4_tabular_multi_smoke", f"db.url={_url(dbfile)}")
    assert proc.returncode == 0, _explain(proc)
    runs = _runs(dbfile)
    assert list(runs) == ["tpo"], runs
    _, status, _, sweep, seeds = runs["tpo"]
    assert (status, sweep, seeds) == ("completed", "fig4_tabular_multi_smoke", 2)
    steps = _query(dbfile, "SELECT name, MIN(step), MAX(step), COUNT(*) FROM metrics GROUP BY name")
    # multi-context error is recorded after each step (1..T), misalignment at 0..T-1
    assert sorted(steps) == [("error", 1, 50, 100), ("misalignment", 0, 49, 100)]
    config = _query(dbfile, "SELECT task, K, epochs, optimizer FROM runs")[0]
    assert config == ("tabular_multi", 10, 1, "normalized_step")
    assert (tmp_path / "outputs" / "fig4_tabular_multi_smoke").is_dir()


# --------------------------------------------------------------------------------------------
# Bad input: a short error, a non-zero exit, nothing written
# --------------------------------------------------------------------------------------------


def _assert_short_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, _explain(proc)
    assert "Traceback" not in proc.stderr, _explain(proc)
    for needle in needles:
        assert needle in proc.stderr, _explain(proc)


def test_unknown_algorithm(tmp_path):
    dbfile = tmp_path / "x.sqlite"
    proc = tpo(tmp_path, "algorithm=nope", f"db.url={_url(dbfile)}")
    _assert_short_failure(proc, "nope")
    assert not dbfile.exists()


def test_key_of_another_algorithm(tmp_path):
    dbfile = tmp_path / "x.sqlite"
    proc = tpo(tmp_path, "algorithm=grpo", "algorithm.eta=2", f"db.url={_url(dbfile)}")
    _assert_short_failure(proc, "eta")
    appended = tpo(tmp_path, "algorithm=grpo", "+algorithm.eta=2", f"db.url={_url(dbfile)}")
    _assert_short_failure(appended, "algorithm.eta")
    assert len(_error_lines(appended)) == 1, _explain(appended)
    assert not dbfile.exists()


def test_unreachable_database(tmp_path):
    url = "sqlite:////proc/nope/x.sqlite"
    proc = tpo(tmp_path, "task.steps=2", f"db.url={url}")
    _assert_short_failure(proc, url)
    assert len(_error_lines(proc)) == 1, _explain(proc)


def test_malformed_database_url(tmp_path):
    proc = tpo(tmp_path, "task.steps=2", "db.url=notaurl")
    _assert_short_failure(proc, "notaurl")
    assert len(_error_lines(proc)) == 1, _explain(proc)


def test_corrupt_database_file_is_left_untouched(tmp_path):
    dbfile = tmp_path / "corrupt.sqlite"
    garbage = bytes(range(256)) * 64
    dbfile.write_bytes(garbage)
    proc = tpo(tmp_path, "task.steps=2", f"db.url={_url(dbfile)}")
    _assert_short_failure(proc, str(dbfile.resolve()))
    assert len(_error_lines(proc)) == 1, _explain(proc)
    assert dbfile.read_bytes() == garbage
