"""The SLURM path for real: multiruns with ``hardware=slurm_gpu`` on the single-node cluster
that slurm/cluster.sh starts (CPU jobs; the "GPUs" are fake GRES devices).

* every cell of a sweep lands in the database, a cell made to fail is stored as failed with its
  error (SLURM accounting calls that job COMPLETED), and the status command relaunches just it;
* a job requeued mid-run, by ``scontrol requeue`` (SIGTERM, then SIGKILL after KillWait) or by
  a preemption signal that submitit handles (SIGUSR2: checkpoint and requeue), resumes from its
  last checkpoint and completes exactly once, with no duplicate rows.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services.require import service_or_skip
from sqlalchemy import func, select

from tpo_sweeps import db, status

pytestmark = pytest.mark.slurm

# small jobs on a small node: the preset asks for 8 CPUs and 32 GB
SLURM = [
    "hardware=slurm_gpu",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=15",
]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    up = False
    if shutil.which("sinfo"):
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10
        )
        up = any(s in ("idle", "mix", "alloc") for s in out.stdout.split())
    service_or_skip("SLURM", up, "start one with slurm/cluster.sh start (root, Debian)")


def _multirun(tmp_path: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tpo_sweeps", "-m", *args, *SLURM, f"hydra.sweep.dir={tmp_path}/mr"],
        stdout=open(tmp_path / "launcher.log", "w"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        **kw,
    )


def _runs(url: str) -> list:
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(
                    db.Run.id,
                    db.Run.algorithm,
                    db.Run.seed,
                    db.Run.status,
                    db.Run.error,
                    db.Run.slurm_job_id,
                ).order_by(db.Run.id)
            ).all()
    finally:
        engine.dispose()


def _count(url: str, table) -> int:
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar()
    finally:
        engine.dispose()


def test_sweep_on_slurm_stores_every_cell_and_the_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relaunched multirun writes its sweep dir here
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    sweep = [
        "experiment=fig3_tabular_single",
        "scale=smoke",
        "algorithm=tpo,grpo,pg",
        f"db.url={url}",
    ]
    proc = _multirun(tmp_path, *sweep, "debug.fail_algorithms=[pg]", "db.heartbeat_s=1")
    assert proc.wait(timeout=300) != 0  # Hydra reports the failed job
    runs = {(r.algorithm, r.seed): r for r in _runs(url)}  # one run per (cell, seed)
    assert {k: r.status for k, r in runs.items()} == {
        (a, s): "failed" if a == "pg" else "completed"
        for a in ("tpo", "grpo", "pg")
        for s in (0, 1)
    }
    assert all("failure injected on purpose" in runs["pg", s].error for s in (0, 1))
    # each ran as a SLURM array task, stored as <array>_<task>: the name of its log folder
    assert all(re.fullmatch(r"\d+_\d+", r.slurm_job_id) for r in runs.values())
    assert all((tmp_path / "mr" / ".submitit" / r.slurm_job_id).is_dir() for r in runs.values())
    names = subprocess.run(
        ["sacct", "-n", "-X", "-o", "JobName%40", "-j", runs["tpo", 0].slurm_job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert names == ["tpo-fig3_tabular_single"]  # the sweep's name, not Hydra's 'run'
    # a job's seeds ran in one SLURM job; the three cells in three
    assert all(runs[a, 0].slurm_job_id == runs[a, 1].slurm_job_id for a in ("tpo", "grpo", "pg"))
    assert len({r.slurm_job_id for r in runs.values()}) == 3

    # relaunch only the failed cell, on SLURM again, without the injected failure
    assert status.main([*sweep, *SLURM, "--relaunch", "--run"]) == 0
    (command,) = [x for x in capsys.readouterr().out.splitlines() if "-m tpo_sweeps -m" in x]
    assert "algorithm=pg" in command and "algorithm=tpo" not in command
    assert "hardware=slurm_gpu" in command
    after = _runs(url)
    assert [r.status for r in after] == ["completed"] * 6
    assert {(r.algorithm, r.seed): r.id for r in after} == {k: r.id for k, r in runs.items()}
    assert _count(url, db.Metric) == 3 * 80  # 2 seeds x 20 steps x 2 metrics per cell, once


def test_a_traced_grid_is_one_slurm_job_storing_each_cell(tmp_path):
    """Hyperparameter lanes through submitit: the η grid is one array task (one job, one
    compiled program), each η stored as its own cell with that task's id."""
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    grid = ["experiment=fig3_tabular_single", "scale=smoke", "algorithm=tpo"]
    proc = _multirun(tmp_path, *grid, "algorithm.eta=0.5,1.0,2.0", f"db.url={url}")
    rc = proc.wait(timeout=300)
    out = (tmp_path / "launcher.log").read_text()
    assert rc == 0, out[-3000:]
    assert "3 cells as lanes of 1" in out
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(db.Run.eta, db.Run.status, db.Run.slurm_job_id)).all()
    finally:
        engine.dispose()
    assert sorted((r.eta, r.status) for r in rows) == [
        (eta, "completed") for eta in (0.5, 0.5, 1.0, 1.0, 2.0, 2.0)
    ]
    (task,) = {r.slurm_job_id for r in rows}
    assert re.fullmatch(r"\d+(_0)?", task)  # a launch of one job is not an array


EVERY, LOG_EVERY, SEEDS = 20_000, 1000, 4


# scontrol requeue: the job must still be running when SIGKILL comes KillWait (10 s) after
# the SIGTERM, so that it really dies mid-run: ~30 s of training here, ~12k points/s.
# The preemption signal ends the job at once, so a shorter run does.
@pytest.mark.parametrize(
    "how,steps", [("scontrol_requeue", 400_000), ("preemption_signal", 200_000)]
)
def test_requeued_job_resumes_from_its_checkpoint_and_completes_once(tmp_path, how, steps):
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    ckpt = tmp_path / "ckpt"
    t0 = time.monotonic()
    proc = _multirun(
        tmp_path,
        "experiment=fig4_tabular_multi",
        "algorithm=tpo",
        f"num_seeds={SEEDS}",
        f"task.steps={steps}",
        f"log_every={LOG_EVERY}",
        f"checkpoint.every={EVERY}",
        f"checkpoint.dir={ckpt}",
        f"db.url={url}",
        "db.heartbeat_s=1",
        "progress.sweep_every_s=5",
    )
    try:
        deadline = time.monotonic() + 240
        while not list(ckpt.glob("*/state.npz")):  # the first checkpoint is on disk
            assert proc.poll() is None, (tmp_path / "launcher.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        runs = _runs(url)
        assert sorted(r.seed for r in runs) == list(range(SEEDS))  # one run per seed
        assert {r.status for r in runs} == {db.RUNNING}
        (job,) = {r.slurm_job_id for r in runs}  # the seeds share one program, one SLURM job
        if how == "scontrol_requeue":  # SIGTERM now, SIGKILL after KillWait, then requeue
            subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
        else:  # what submitit does for a preemption test: SIGTERM, then SIGUSR2
            for sig in ("SIGTERM", "USR2"):
                subprocess.run(["scancel", "--signal", sig, job], check=True)
        seen = []
        while proc.poll() is None:
            # the job's runs change status together (one UPDATE, one write transaction)
            (status,) = {r.status for r in _runs(url)}
            if not seen or seen[-1] != status:
                seen.append(status)
            assert time.monotonic() - t0 < 480, seen
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - t0
    log = (tmp_path / "launcher.log").read_text()
    assert proc.returncode == 0, log
    job_logs = "".join(p.read_text() for p in sorted((tmp_path / "mr").rglob("*_log.*")))

    # the interruption was recorded, the run went back to running and then completed
    assert db.PREEMPTED in seen and seen[-1] == db.COMPLETED, seen
    assert seen.index(db.PREEMPTED) < len(seen) - 1
    # it resumed from a checkpoint rather than from zero
    resumed = [int(m) for m in re.findall(r"resumes from its checkpoint at point (\d+)", job_logs)]
    assert len(resumed) == 1 and resumed[0] >= EVERY, job_logs[-3000:]
    # ... and completed exactly once, into one row, with every metric row once
    assert job_logs.count("metric rows ->") == 1
    final = _runs(url)
    assert [r.id for r in final] == [r.id for r in runs]
    assert {r.status for r in final} == {db.COMPLETED}
    points = len(range(0, steps, LOG_EVERY)) + (1 if (steps - 1) % LOG_EVERY else 0)
    assert _count(url, db.Metric) == SEEDS * 2 * points
    assert not list(ckpt.glob("*/state.npz"))  # removed once completed
    print(f"\n[requeue by {how}] resumed at point {resumed[0]}, statuses {seen}, {elapsed:.0f} s")
