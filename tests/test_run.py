"""The entry point end to end: ``python -m tpo_sweeps`` in a subprocess, into a real SQLite DB.

Independent invocations are started together when the module starts (``launched``) and each
test waits for the one it inspects: the jobs are single-threaded, so on a 2-core machine this
halves the wall time. The smoke sweep and its rerun run in the foreground meanwhile.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# 4 algorithms × 2 seeds × 20 steps: one job per algorithm, one run row per (cell, seed)
SMOKE3 = ["experiment=fig3_tabular_single", "scale=smoke"]
SWEEP3 = "fig3_tabular_single"
SMOKE3_CELLS, SMOKE3_SEEDS, SMOKE3_STEPS, METRICS = 4, 2, 20, 2
SMOKE3_RUNS = SMOKE3_CELLS * SMOKE3_SEEDS
UNREACHABLE = "sqlite:////proc/nope/x.sqlite"
GARBAGE = bytes(range(256)) * 64  # not an SQLite header


def _env(jax_cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env["JAX_PLATFORMS"] = "cpu"
    # JAX's persistent compilation cache: reruns of the suite skip XLA compiles
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Invocation:
    """``python -m tpo_sweeps args`` started in ``cwd`` (outputs/ and multirun/ land there)."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]):
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpo_sweeps", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._done: subprocess.CompletedProcess | None = None

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self._done is None:
            out, err = self.proc.communicate(timeout=timeout)
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self._done

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module")
def env(pytestconfig, tmp_path_factory) -> dict[str, str]:
    cache = getattr(pytestconfig, "cache", None)
    if cache is None:  # cache plugin off: a fresh folder
        return _env(str(tmp_path_factory.mktemp("jax_compilation_cache")))
    return _env(str(cache.mkdir("jax_compilation_cache")))


def tpo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return Invocation(cwd, list(args), env).result()


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory, env):
    """Start every independent invocation of this module at once; tests wait for theirs."""
    root = tmp_path_factory.mktemp("launched")

    def cwd(name: str) -> Path:
        (root / name).mkdir()
        return root / name

    def url(name: str) -> str:
        return _url(root / name / "res.sqlite")

    specs = {
        # a sweep of two cells that both fail on purpose
        "failed": ["-m", *SMOKE3, "debug.fail=true", "algorithm=tpo,pg"],
        "single": ["experiment=fig4_tabular_multi", "scale=smoke"],
        "unknown_algorithm": ["algorithm=nope"],
        "other_key": ["algorithm=grpo", "algorithm.eta=2"],
        "appended_key": ["algorithm=grpo", "+algorithm.eta=2"],
        "unreachable": ["task.steps=2", f"db.url={UNREACHABLE}"],
        "malformed": ["task.steps=2", "db.url=notaurl"],
        "corrupt": ["task.steps=2"],
    }
    procs = {}
    for name, args in specs.items():
        where = cwd(name)
        if name == "corrupt":
            (where / "res.sqlite").write_bytes(GARBAGE)
        has_url = any(a.startswith("db.url=") for a in args)
        full = args if has_url else [*args, f"db.url={url(name)}"]
        procs[name] = Invocation(where, full, env)
    yield procs
    for p in procs.values():
        p.kill()


def _url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _query(path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _runs(path: Path) -> dict[tuple[str, int], tuple]:
    """(algorithm, seed) -> (id, status, error, sweep, job_seeds): one row per seed."""
    rows = _query(path, "SELECT algorithm, seed, id, status, error, sweep, job_seeds FROM runs")
    return {r[:2]: r[2:] for r in rows}


def _sweeps_of(path: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for sweep, run_id in _query(path, "SELECT sweep, run_id FROM sweep_runs"):
        out.setdefault(run_id, set()).add(sweep)
    return out


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


def test_smoke_sweep_writes_all_cells_and_skips_them_on_rerun(tmp_path, env):
    dbfile = tmp_path / "res.sqlite"
    first = tpo(tmp_path, env, "-m", *SMOKE3, f"db.url={_url(dbfile)}")
    assert first.returncode == 0, _explain(first)
    runs = _runs(dbfile)
    assert set(runs) == {(a, s) for a in ("tpo", "grpo", "dg", "pg") for s in range(SMOKE3_SEEDS)}
    assert all(r[1] == "completed" for r in runs.values()), runs
    # each job ran its cell's two seeds in one program
    assert all(r[3] == SWEEP3 and r[4] == SMOKE3_SEEDS for r in runs.values()), runs
    assert _sweeps_of(dbfile) == {r[0]: {SWEEP3} for r in runs.values()}
    cells = _query(
        dbfile, "SELECT algorithm, COUNT(DISTINCT cell_hash), COUNT(*) FROM runs GROUP BY algorithm"
    )
    assert sorted(cells) == [(a, 1, SMOKE3_SEEDS) for a in ("dg", "grpo", "pg", "tpo")]
    rows = _metric_count(dbfile)
    assert rows == SMOKE3_RUNS * SMOKE3_STEPS * METRICS
    per_run = _query(
        dbfile,
        "SELECT run_id, name, COUNT(*), COUNT(DISTINCT step), MIN(step), MAX(step) "
        "FROM metrics GROUP BY run_id, name",
    )
    assert len(per_run) == SMOKE3_RUNS * METRICS
    assert all(r[2:] == (SMOKE3_STEPS, SMOKE3_STEPS, 0, SMOKE3_STEPS - 1) for r in per_run)
    # error starts at 1 - 1/K (uniform policy over K = 100, recorded before the first step)
    # and every algorithm improves on it within 20 steps
    start = _query(
        dbfile, "SELECT DISTINCT ROUND(value, 6) FROM metrics WHERE name='error' AND step=0"
    )
    assert start == [(0.99,)]
    finals = _query(
        dbfile,
        "SELECT r.algorithm, AVG(s.value) FROM summaries s JOIN runs r ON r.id = s.run_id "
        "WHERE s.name='final_error' GROUP BY r.algorithm",
    )
    assert len(finals) == SMOKE3_CELLS and all(v < 0.99 for _, v in finals), finals
    # the two seeds of a cell are two different runs
    per_seed = _query(
        dbfile,
        "SELECT r.algorithm, COUNT(DISTINCT s.value) FROM summaries s JOIN runs r "
        "ON r.id = s.run_id WHERE s.name='final_error' GROUP BY r.algorithm",
    )
    assert all(n == SMOKE3_SEEDS for _, n in per_seed), per_seed
    # Hydra's outputs went under the working directory
    assert (tmp_path / "multirun" / SWEEP3).is_dir()

    again = tpo(tmp_path, env, "-m", *SMOKE3, f"db.url={_url(dbfile)}")
    assert again.returncode == 0, _explain(again)
    assert _metric_count(dbfile) == rows
    assert _runs(dbfile) == runs
    log = again.stdout + again.stderr
    assert log.count("skip") >= SMOKE3_CELLS, _explain(again)


def test_failing_jobs_are_recorded_and_the_sweep_goes_on(launched):
    proc = launched["failed"].result()
    dbfile = launched["failed"].cwd / "res.sqlite"
    assert proc.returncode != 0, _explain(proc)
    runs = _runs(dbfile)
    # both cells were attempted: the sweep went on after the first failure
    assert set(runs) == {(a, s) for a in ("tpo", "pg") for s in range(SMOKE3_SEEDS)}, runs
    for key, (_, status, error, _, _) in runs.items():
        assert status == "failed", (key, status)
        assert error and "debug.fail" in error, error
    assert _metric_count(dbfile) == 0
    assert "debug.fail" in proc.stderr


def test_failed_cells_complete_on_a_later_run(launched, tmp_path, env):
    launched["failed"].result()
    dbfile = tmp_path / "res.sqlite"
    shutil.copy(launched["failed"].cwd / "res.sqlite", dbfile)
    failed_ids = {k: r[0] for k, r in _runs(dbfile).items()}
    assert {a for a, _ in failed_ids} == {"tpo", "pg"} and len(failed_ids) == 4
    proc = tpo(tmp_path, env, "-m", *SMOKE3, "algorithm=tpo,pg", f"db.url={_url(dbfile)}")
    assert proc.returncode == 0, _explain(proc)
    runs = _runs(dbfile)
    # the same rows were completed: same ids, no new run rows, no duplicated metrics
    assert {k: r[0] for k, r in runs.items()} == failed_ids, runs
    assert all(r[1] == "completed" and r[2] is None for r in runs.values()), runs
    assert _metric_count(dbfile) == 2 * SMOKE3_SEEDS * SMOKE3_STEPS * METRICS
    dupes = _query(
        dbfile,
        "SELECT run_id, name, step, COUNT(*) c FROM metrics GROUP BY run_id, name, step "
        "HAVING c > 1",
    )
    assert dupes == []


def test_single_run_without_multirun(launched):
    proc = launched["single"].result()
    where = launched["single"].cwd
    dbfile = where / "res.sqlite"
    assert proc.returncode == 0, _explain(proc)
    runs = _runs(dbfile)
    assert sorted(runs) == [("tpo", 0), ("tpo", 1)], runs
    assert {r[1:] for r in runs.values()} == {("completed", None, "fig4_tabular_multi", 2)}
    steps = _query(
        dbfile,
        "SELECT name, MIN(step), MAX(step), COUNT(*), COUNT(DISTINCT run_id) FROM metrics "
        "GROUP BY name",
    )
    # multi-context error is recorded after each step (1..T), misalignment at 0..T-1
    assert sorted(steps) == [("error", 1, 50, 100, 2), ("misalignment", 0, 49, 100, 2)]
    config = set(_query(dbfile, "SELECT task, K, epochs, optimizer FROM runs"))
    assert config == {("tabular_multi", 10, 1, "normalized_step")}
    assert (where / "outputs" / "fig4_tabular_multi").is_dir()
    assert not (where / "multirun").exists()


# --------------------------------------------------------------------------------------------
# Bad input: a short error on stderr, a non-zero exit, nothing written
# --------------------------------------------------------------------------------------------


def _short_failure(launched, name: str, *needles: str) -> subprocess.CompletedProcess:
    proc = launched[name].result()
    assert proc.returncode != 0, _explain(proc)
    assert "Traceback" not in proc.stderr, _explain(proc)
    for needle in needles:
        assert needle in proc.stderr, _explain(proc)
    return proc


def test_unknown_algorithm(launched):
    _short_failure(launched, "unknown_algorithm", "nope")
    assert not (launched["unknown_algorithm"].cwd / "res.sqlite").exists()


def test_key_of_another_algorithm(launched):
    _short_failure(launched, "other_key", "eta")
    assert not (launched["other_key"].cwd / "res.sqlite").exists()


def test_appended_key_of_another_algorithm(launched):
    proc = _short_failure(launched, "appended_key", "algorithm.eta")
    assert len(_error_lines(proc)) == 1, _explain(proc)
    assert not (launched["appended_key"].cwd / "res.sqlite").exists()


def test_unreachable_database(launched):
    proc = _short_failure(launched, "unreachable", UNREACHABLE)
    assert len(_error_lines(proc)) == 1, _explain(proc)
    assert UNREACHABLE in _error_lines(proc)[0]


def test_malformed_database_url(launched):
    proc = _short_failure(launched, "malformed", "notaurl")
    assert len(_error_lines(proc)) == 1, _explain(proc)
    assert "notaurl" in _error_lines(proc)[0]


def test_corrupt_database_file_is_left_untouched(launched):
    dbfile = launched["corrupt"].cwd / "res.sqlite"
    proc = _short_failure(launched, "corrupt", str(dbfile.resolve()))
    assert len(_error_lines(proc)) == 1, _explain(proc)
    assert dbfile.read_bytes() == GARBAGE
