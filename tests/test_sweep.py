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


def _cells(points: list[dict[str, str]]) -> list[S.Cell]:
    return [S.Cell([f"{k}={v}" for k, v in p.items()], None, "") for p in points]


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
    sweep = S.expand(["experiment=fig4_tabular_multi_smoke"])
    assert [c.overrides[0] for c in sweep.cells] == [
        f"algorithm={a}" for a in ("tpo", "grpo", "dg", "pg", "ce")
    ]
    # the command line's own sweep replaces the preset's for the same key, and multiplies
    sweep = S.expand(["experiment=fig4_tabular_multi_smoke", "algorithm=tpo,pg", "seed=0,1"])
    assert len(sweep.cells) == 4 and len({c.config_hash for c in sweep.cells}) == 4
    assert sweep.swept_keys() == ["algorithm", "seed"]


def _multirun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tpo_sweeps", "-m", *args, f"hydra.sweep.dir={tmp_path}/mr"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )


def _statuses(args: list[str], capsys) -> dict[str, str]:
    status.main([*args, "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    return {json.loads(x)["cell"]["algorithm"]: json.loads(x)["status"] for x in lines}


def test_status_lists_cells_and_relaunch_runs_only_the_failed_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relaunched multirun writes its sweep dir here
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep = ["experiment=fig3_tabular_single_smoke", "algorithm=tpo,pg,dg", f"db.url={url}"]
    assert _statuses(sweep, capsys) == {"tpo": "missing", "pg": "missing", "dg": "missing"}

    first = _multirun(tmp_path, *sweep, "debug.fail_algorithms=[pg]")
    assert first.returncode != 0  # Hydra reports the failed job
    log = first.stdout + first.stderr
    assert "3 cells (3 new as pending)" in log  # the start callback saw the sweep
    assert "sweep fig3_tabular_single_smoke done: 2/3 completed, failed 1" in log
    assert _statuses(sweep, capsys) == {"tpo": "completed", "pg": "failed", "dg": "completed"}

    status.main([*sweep, "--relaunch"])
    (command,) = capsys.readouterr().out.strip().splitlines()[-1:]
    assert "algorithm=pg" in command and "algorithm=tpo" not in command
    assert status.main([*sweep, "--relaunch", "--run"]) == 0
    capsys.readouterr()
    assert _statuses(sweep, capsys) == {"tpo": "completed", "pg": "completed", "dg": "completed"}
    assert status.main(sweep) == 0
    engine = db.connect(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.Run)).scalar() == 3
        assert conn.execute(select(func.count()).select_from(db.Metric)).scalar() == 3 * 80
    engine.dispose()


def test_staged_sweep_merges_into_the_main_database_idempotently(tmp_path):
    url = f"sqlite:///{tmp_path / 'main.sqlite'}"
    run = _multirun(
        tmp_path,
        "experiment=fig3_tabular_single_smoke",
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

    assert counts() == (2, 2 * 80, 2 * 4)
    again = merge.merge([tmp_path / "mr"], url)
    assert again == {"already completed": 2}
    assert counts() == (2, 2 * 80, 2 * 4)
    # a later multirun of the same cells finds them completed in the main database and skips
    rerun = _multirun(
        tmp_path,
        "experiment=fig3_tabular_single_smoke",
        "algorithm=tpo,pg",
        f"db.url={url}",
        "db.stage=true",
        "hydra.sweep.subdir=again${hydra.job.num}",
    )
    assert rerun.returncode == 0
    assert (rerun.stdout + rerun.stderr).count("is already completed") == 2


@pytest.mark.parametrize("hardware", ["cpu", "local_submitit", "slurm_gpu"])
def test_hardware_options_compose_and_site_keys_reach_sbatch(hardware):
    from hydra import compose, initialize_config_dir

    from tpo_sweeps import config as C
    from tpo_sweeps.run import _config_dir

    C.register_configs()
    site = ["hardware.partition=gpu", "hardware.account=proj"]
    overrides = ["experiment=fig3_tabular_single_smoke", f"hardware={hardware}", *site]
    with initialize_config_dir(config_dir=_config_dir(), version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
        assert C.to_config(compose("config", overrides=overrides)).hardware.name == hardware
    if hardware == "slurm_gpu":  # only the SLURM launcher has (and gets) the site keys
        assert (launcher.partition, launcher.account, launcher.qos) == ("gpu", "proj", None)
        assert launcher.gpus_per_node == 1
    else:
        assert "partition" not in launcher
