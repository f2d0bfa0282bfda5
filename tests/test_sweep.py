"""Sweep bookkeeping: cells as Hydra launches them, their status, relaunching only what is
missing or failed, the progress counts, and the staged write path with its idempotent merge."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from tpo_sweeps import db, merge, status
from tpo_sweeps import sweep as S

SMOKE3 = ["experiment=fig3_tabular_single", "scale=smoke"]  # 2 seeds × 20 steps per cell
SWEEP3 = "fig3_tabular_single"


def _cells(points: list[dict[str, str]]) -> list[S.Cell]:
    return [S.Cell([f"{k}={v}" for k, v in p.items()], None, None) for p in points]


def _expand_blocks(blocks: list[list[str]]) -> list[tuple]:
    out = []
    for block in blocks:
        axes = [
            [(k, v) for v in vals.split(",")] for k, _, vals in (o.partition("=") for o in block)
        ]
        out.extend(tuple(p) for p in itertools.product(*axes))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_relaunch_blocks_cover_exactly_the_given_cells(seed):
    import random

    rng = random.Random(seed)
    grid = [
        {"algorithm": a, "task.K": k, "seed": s}
        for a, k, s in itertools.product(["tpo", "pg", "dg"], ["10", "100"], ["0", "50"])
    ]
    todo = [p for p in grid if rng.random() < 0.5] or grid[:1]
    covered = _expand_blocks(S.relaunch_blocks(_cells(todo)))
    assert sorted(covered) == sorted(tuple(p.items()) for p in todo)  # exact, no repeats


def test_a_full_grid_relaunches_as_one_command():
    grid = [{"a": a, "b": b} for a, b in itertools.product("xyz", "uv")]
    assert S.relaunch_blocks(_cells(grid)) == [["a=x,y,z", "b=u,v"]]


def test_expand_matches_the_jobs_hydra_launches():
    smoke4 = ["experiment=fig4_tabular_multi", "scale=smoke"]
    sweep = S.expand(smoke4)
    assert [c.overrides[0] for c in sweep.cells] == [
        f"algorithm={a}" for a in ("tpo", "grpo", "dg", "pg", "ce")
    ]
    assert all(c.config.task.steps == 50 and c.ident.seeds == [0, 1] for c in sweep.cells)
    # the command line's own sweep replaces the preset's for the same key, and multiplies
    sweep = S.expand([*smoke4, "algorithm=tpo,pg", "seed=0,1"])
    assert len(sweep.cells) == 4
    assert sweep.swept_keys() == ["algorithm", "seed"]
    # the seed is not part of the cell: seed=0 and seed=1 of one algorithm ask for seeds
    # 0-1 and 1-2 of the same cell, and share the run of seed 1
    assert len({c.config_hash for c in sweep.cells}) == 2
    tpo = [c for c in sweep.cells if c.config.algorithm.name == "tpo"]
    assert [c.ident.seeds for c in tpo] == [[0, 1], [1, 2]]
    assert tpo[0].ident.run_key(1) == tpo[1].ident.run_key(1)
    assert [r["seed"] for r in tpo[1].rows()] == [1, 2]
    assert tpo[1].rows()[0]["run_key"] == tpo[0].rows()[1]["run_key"]


def test_seeds_stored_by_another_sweep_count_and_only_missing_seeds_are_pending(tmp_path):
    from tpo_sweeps import config as C
    from tpo_sweeps.campaign import record_pending
    from tpo_sweeps.run import run_job

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    # another sweep stored seeds 0 and 1 of the TPO cell
    quiet = ["db.heartbeat_s=0", "hardware.compilation_cache=''"]
    other = S.expand([*SMOKE3, "algorithm=tpo", "name=other", f"db.url={url}", *quiet])
    done = run_job(other.cells[0].config, [])
    assert done["status"] == "completed"
    sweep = S.expand([*SMOKE3, "algorithm=tpo,pg", "num_seeds=3", f"db.url={url}"])
    engine = db.connect(url)
    try:
        S.refresh(sweep, [engine])
        tpo, pg = sweep.cells
        assert tpo.seed_status == {0: "completed", 1: "completed", 2: "missing"}
        assert tpo.run_ids == done["run_ids"]
        assert tpo.status == "missing" and pg.status == "missing"
        # a partly stored cell is relaunched whole; its job then computes only seed 2
        (command,) = S.relaunch_commands(sweep)
        assert "algorithm=tpo,pg" in command

        # the multirun's start: links the stored seeds to this sweep, records the rest pending
        assert record_pending(engine, sweep) == 1 + 3
        S.refresh(sweep, [engine])
        assert tpo.seed_status == {0: "completed", 1: "completed", 2: "pending"}
        assert set(pg.seed_status.values()) == {"pending"}
        assert (tpo.status, pg.status) == ("pending", "pending")
        with engine.connect() as conn:
            links = set(conn.execute(select(db.SweepRun.sweep, db.SweepRun.run_id)).all())
        stored = set(done["run_ids"].values())
        assert {(s, i) for i in stored for s in ("other", SWEEP3)} <= links
        pending = {i for c in (tpo, pg) for s, i in c.run_ids.items() if i not in stored}
        assert {(SWEEP3, i) for i in pending} <= links and len(pending) == 4
        assert record_pending(engine, sweep) == 0  # idempotent
        assert isinstance(tpo.config, C.Config)
    finally:
        engine.dispose()


def _multirun(tmp_path, *args: str, sweep_dir: str = "mr") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tpo_sweeps",
            "-m",
            *args,
            f"hydra.sweep.dir={tmp_path}/{sweep_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )


def _status_json(args: list[str], capsys) -> list[dict]:
    status.main([*args, "--json"])
    return [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]


def _statuses(args: list[str], capsys) -> dict[str, str]:
    return {x["cell"]["algorithm"]: x["status"] for x in _status_json(args, capsys)}


def _seeds(args: list[str], capsys) -> dict[str, dict[str, str]]:
    return {x["cell"]["algorithm"]: x["seeds"] for x in _status_json(args, capsys)}


def test_status_lists_cells_and_relaunch_runs_only_the_failed_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relaunched multirun writes its sweep dir here
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep = [*SMOKE3, "algorithm=tpo,pg,dg", f"db.url={url}"]
    assert _statuses(sweep, capsys) == {"tpo": "missing", "pg": "missing", "dg": "missing"}

    first = _multirun(tmp_path, *sweep, "debug.fail_algorithms=[pg]")
    assert first.returncode != 0  # Hydra reports the failed job
    log = first.stdout + first.stderr
    assert "3 cells (6 new as pending)" in log  # the start callback saw the sweep: 3 × 2 seeds
    assert f"sweep {SWEEP3} done: 2/3 completed, failed 1" in log
    assert _statuses(sweep, capsys) == {"tpo": "completed", "pg": "failed", "dg": "completed"}
    assert _seeds(sweep, capsys)["pg"] == {"0": "failed", "1": "failed"}

    status.main([*sweep, "--relaunch"])
    (command,) = capsys.readouterr().out.strip().splitlines()[-1:]
    assert "algorithm=pg" in command and "algorithm=tpo" not in command
    assert status.main([*sweep, "--relaunch", "--run"]) == 0
    capsys.readouterr()
    assert _statuses(sweep, capsys) == {"tpo": "completed", "pg": "completed", "dg": "completed"}
    assert status.main(sweep) == 0
    engine = db.connect(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.Run)).scalar() == 3 * 2
        assert conn.execute(select(func.count()).select_from(db.Metric)).scalar() == 3 * 80
        statuses = conn.execute(select(db.Run.status)).scalars().all()
    engine.dispose()
    assert set(statuses) == {db.COMPLETED}


def test_staged_sweep_merges_into_the_main_database_idempotently(tmp_path):
    url = f"sqlite:///{tmp_path / 'main.sqlite'}"
    run = _multirun(
        tmp_path,
        *SMOKE3,
        "algorithm=tpo,pg",
        f"db.url={url}",
        "db.stage=true",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    stores = merge.find_stores([tmp_path / "mr"])
    assert len(stores) == 2  # one per job, in its own output directory
    assert "merged staged stores into" in run.stdout + run.stderr

    def counts():
        engine = db.connect(url)
        with engine.connect() as conn:
            out = (
                conn.execute(
                    select(func.count()).select_from(db.Run).where(db.Run.status == db.COMPLETED)
                ).scalar(),
                conn.execute(select(func.count()).select_from(db.Metric)).scalar(),
                conn.execute(select(func.count()).select_from(db.Summary)).scalar(),
            )
        engine.dispose()
        return out

    assert counts() == (2 * 2, 2 * 80, 2 * 4)  # one run per (cell, seed)
    again = merge.merge([tmp_path / "mr"], url)
    assert again == {"already completed": 2 * 2}
    assert counts() == (2 * 2, 2 * 80, 2 * 4)
    engine = db.connect(url)
    with engine.connect() as conn:
        links = conn.execute(select(db.SweepRun.sweep, db.SweepRun.run_id)).all()
    engine.dispose()
    assert len(links) == 4 and {s for s, _ in links} == {SWEEP3}
    # a later multirun of the same cells finds them completed in the main database and skips
    rerun = _multirun(
        tmp_path, *SMOKE3, "algorithm=tpo,pg", f"db.url={url}", "db.stage=true", sweep_dir="again"
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    log = rerun.stdout + rerun.stderr
    assert log.count("seed(s) of cell") == 2 and log.count("are stored") == 2, log
    assert counts() == (2 * 2, 2 * 80, 2 * 4)


@pytest.mark.parametrize("hardware", ["cpu", "local_submitit", "slurm_gpu"])
def test_hardware_options_compose_and_site_keys_reach_sbatch(hardware):
    from hydra import compose, initialize_config_dir

    from tpo_sweeps import config as C
    from tpo_sweeps.run import config_dir

    C.register_configs()
    site = ["hardware.partition=gpu", "hardware.account=proj"]
    overrides = [*SMOKE3, f"hardware={hardware}", *site]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
        assert C.to_config(compose("config", overrides=overrides)).hardware.name == hardware
    if hardware == "slurm_gpu":  # only the SLURM launcher has (and gets) the site keys
        assert (launcher.partition, launcher.account, launcher.qos) == ("gpu", "proj", None)
        assert launcher.gpus_per_node == 1
    else:
        assert "partition" not in launcher
