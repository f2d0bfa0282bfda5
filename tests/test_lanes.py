"""Hyperparameter lanes (``tpo_sweeps.lanes``): cells that differ only in traced
hyperparameters run as the lanes of one job and one compiled program, and each lane is stored
as exactly what the cell run alone stores: the same cell hash, seeds, overrides and numbers.

Every test runs real jobs (``run_job`` on a composed config, or the Hydra CLI in a
subprocess) into real SQLite files, then compares the laned database with the one the cells
wrote one at a time.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sqlalchemy import select

from tests.helpers import multirun
from tests.test_identity import MNIST, REV, TAB, job
from tpo_sweeps import config as C
from tpo_sweeps import data as D
from tpo_sweeps import db
from tpo_sweeps import lanes as LN
from tpo_sweeps.run import run_job


def _stored(url: str) -> dict[tuple[str, int], dict]:
    """``(cell hash, seed) -> {status, overrides, metrics {(name, step): value}}``."""
    engine = db.connect(url, create=False)
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                select(db.Run.id, db.Run.cell_hash, db.Run.seed, db.Run.status, db.Run.overrides)
            ).all()
            metrics = conn.execute(
                select(db.Metric.run_id, db.Metric.name, db.Metric.step, db.Metric.value)
            ).all()
    finally:
        engine.dispose()
    by_id = {
        r.id: {"key": (r.cell_hash, r.seed), "status": r.status, "overrides": r.overrides}
        for r in runs
    }
    out = {v["key"]: {**v, "metrics": {}} for v in by_id.values()}
    for m in metrics:
        out[by_id[m.run_id]["key"]]["metrics"][(m.name, m.step)] = m.value
    return out


def _lanes_override(lanes: list[str]) -> str:
    return "lanes=[" + ",".join(repr(lane) for lane in lanes) + "]"


def _run_laned_and_alone(tmp_path, base: list[str], lanes: list[str]):
    """The lanes as one job into one database, each lane alone into another; both stores."""
    laned, alone = (f"sqlite:///{tmp_path / n}.sqlite" for n in ("laned", "alone"))
    common = [*base, "num_seeds=2"]
    out = run_job(job(laned, *common, _lanes_override(lanes)), [*common, _lanes_override(lanes)])
    assert out["status"] == "completed", out
    assert [o["status"] for o in out["lanes"]] == ["completed"] * len(lanes)
    for lane in lanes:
        overrides = [*common, *lane.split()]
        assert run_job(job(alone, *overrides), overrides)["status"] == "completed"
    return _stored(laned), _stored(alone)


def _not_db(overrides: list[str]) -> list[str]:
    """The overrides but ``db.url``, in order (Hydra's sweeper puts a preset's grid first)."""
    return sorted(o for o in overrides if not o.startswith("db.url="))


def _assert_same_runs(laned: dict, alone: dict, n_cells: int, exact: bool = True) -> None:
    """``exact``: bit for bit. Otherwise to float32 rounding: a wider vmap (12 lanes × seeds
    against 2 seeds) may reorder a reduction, as grouping seeds differently does."""
    assert len({cell for cell, _ in alone}) == n_cells
    assert laned.keys() == alone.keys()  # the same cells (hashes) and seeds
    for key, run in alone.items():
        assert laned[key]["status"] == run["status"] == "completed"
        # as the cell alone spells them (but for where each database is)
        assert _not_db(laned[key]["overrides"]) == _not_db(run["overrides"])
        assert laned[key]["metrics"].keys() == run["metrics"].keys()
        got = np.array([laned[key]["metrics"][k] for k in sorted(run["metrics"])])
        want = np.array([run["metrics"][k] for k in sorted(run["metrics"])])
        where = f"cell {key[0][:12]} seed {key[1]}"
        if exact:
            np.testing.assert_array_equal(got, want, err_msg=where)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=where)


@pytest.mark.parametrize(
    "base, lanes",
    [
        # one traced field; the bandit's normalised step and TPO's temperature together
        ([*TAB, "algorithm=tpo"], ["algorithm.eta=0.5", "algorithm.eta=2.0"]),
        (
            ["task=tabular_multi", "task.steps=5", "algorithm=dg"],
            ["algorithm.eta=0.5 optimizer.alpha=0.1", "algorithm.eta=2.0 optimizer.alpha=0.3"],
        ),
        # the transformer: Muon's lr (scaled by its multiplier inside the program) and η
        (
            [*REV, "algorithm=tpo"],
            ["algorithm.eta=0.25 optimizer.lr=1e-4", "algorithm.eta=4.0 optimizer.lr=3e-4"],
        ),
        # GRPO's clip range and KL weight, including β = 0 (the loss tests β == 0 in-program)
        (
            [*REV, "algorithm=grpo"],
            [
                "algorithm.clip_eps=0.1 algorithm.kl_beta=0.0",
                "algorithm.clip_eps=0.3 algorithm.kl_beta=0.04",
            ],
        ),
    ],
    ids=["tabular_single-eta", "tabular_multi-eta-alpha", "reversal-tpo-eta-lr", "reversal-grpo"],
)
def test_each_lane_stores_what_its_cell_alone_stores(tmp_path, base, lanes):
    laned, alone = _run_laned_and_alone(tmp_path, base, lanes)
    _assert_same_runs(laned, alone, len(lanes))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return D.synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=300, n_test=100)


def test_mnist_adam_lr_lanes_equal_the_cells_alone(tmp_path, synthetic):
    base = [*MNIST, f"task.data_dir={synthetic}", "task.check_md5=false"]
    laned, alone = _run_laned_and_alone(tmp_path, base, ["optimizer.lr=1e-3", "optimizer.lr=3e-3"])
    _assert_same_runs(laned, alone, 2)


def test_a_field_a_task_uses_as_a_python_number_runs_lane_by_lane(tmp_path, synthetic, caplog):
    """MNIST's Fig 5b mechanism diagnostics put TPO's η in a closed form computed in Python
    (``math.exp``): the job says so and runs its lanes one program each, with the same
    results."""
    base = [*MNIST, f"task.data_dir={synthetic}", "task.check_md5=false", "task.mechanism=true"]
    base += ["algorithm=tpo"]
    with caplog.at_level(logging.WARNING, logger="tpo_sweeps"):
        laned, alone = _run_laned_and_alone(
            tmp_path, base, ["algorithm.eta=0.5", "algorithm.eta=2.0"]
        )
    assert "cannot take algorithm.eta as traced values" in caplog.text
    assert "running its 2 lanes one program each" in caplog.text
    _assert_same_runs(laned, alone, 2)


def test_lanes_skip_what_is_stored_and_compute_the_rest(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    common = [*TAB, "algorithm=tpo", "num_seeds=2"]
    first = run_job(job(url, *common, "algorithm.eta=0.5"), [*common, "algorithm.eta=0.5"])
    before = _stored(url)
    lanes = _lanes_override(["algorithm.eta=0.5", "algorithm.eta=2.0"])
    out = run_job(job(url, *common, lanes), [*common, lanes])
    assert [o["status"] for o in out["lanes"]] == ["skipped", "completed"]
    assert out["lanes"][0]["run_ids"] == first["run_ids"]  # served by the stored runs
    after = _stored(url)
    assert {k: after[k] for k in before} == before  # not recomputed, not rewritten
    assert len(after) == 4
    again = run_job(job(url, *common, lanes), [*common, lanes])
    assert again["status"] == "skipped" and _stored(url) == after


@pytest.mark.parametrize(
    "lane, message",
    [
        ("task.steps=3", "lanes: 'task.steps=3': 'task.steps' is not a traced field"),
        ("algorithm.eta=-1", "lanes: 'algorithm.eta=-1': algorithm.eta must be > 0"),
        ("algorithm.eta=abc", "lanes: 'algorithm.eta=abc': algorithm.eta='abc' is not a number"),
    ],
)
def test_a_bad_lane_fails_at_composition_in_one_line(lane, message):
    with pytest.raises(C.ConfigError) as e:
        job("sqlite://", *TAB, _lanes_override(["algorithm.eta=1.0", lane]))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_group_key_ignores_only_traced_fields():
    a = job("sqlite://", *TAB, "algorithm=tpo", "algorithm.eta=0.5", "optimizer.alpha=0.2")
    b = job("sqlite://", *TAB, "algorithm=tpo", "algorithm.eta=2.0")
    assert LN.group_key(a) == LN.group_key(b)
    for static in ("task.steps=6", "algorithm.epochs=2", "num_seeds=2", "algorithm.anchor=false"):
        c = job("sqlite://", *TAB, "algorithm=tpo", static)
        assert LN.group_key(c) != LN.group_key(a), static
    assert LN.lane_values([a, b]) == [
        {"algorithm.eta": 0.5, "optimizer.alpha": 0.2},
        {"algorithm.eta": 2.0, "optimizer.alpha": b.optimizer.alpha},
    ]


def test_the_sweeper_runs_a_traced_grid_as_one_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    grid = [*TAB, "algorithm.eta=0.5,1.0,2.0", "optimizer.alpha=0.1,0.2", "num_seeds=2"]
    out = multirun(tmp_path, *grid, "algorithm=tpo,dg", "name=grid", f"db.url={url}")
    # 12 cells: TPO's 6 and DG's 6 are two programs (the algorithm is static)
    assert "12 requested cells -> 12 distinct cells -> 2 jobs (12 cells as lanes of 2)" in out
    assert "Launching 2 jobs locally" in out
    assert out.count("lanes: 6 lanes × 2 seed(s) of") == 2
    laned = _stored(url)
    assert len(laned) == 24 and {r["status"] for r in laned.values()} == {"completed"}
    off = f"sqlite:///{tmp_path / 'off.sqlite'}"
    grid += ["algorithm=tpo,dg", "name=grid"]
    out = multirun(tmp_path, *grid, "hardware.lanes=false", f"db.url={off}")
    assert "12 requested cells -> 12 distinct cells -> 12 jobs (" in out
    alone = _stored(off)
    for run in alone.values():  # one override more: hardware.lanes=false
        run["overrides"] = [o for o in run["overrides"] if not o.startswith("hardware.lanes")]
    _assert_same_runs(laned, alone, 12, exact=False)


def test_table5_smoke_compiles_once_and_each_lane_is_its_cell(tmp_path):
    """The issue's acceptance run: Table 5's η grid at smoke scale is one job, one compiled
    program, five stored cells; the grid's ends equal the cells run one at a time."""
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    small = ["experiment=table5_eta", "scale=smoke", "task.steps=3", "hardware.compilation_cache="]
    out = multirun(tmp_path, *small, f"db.url={url}")
    assert "Launching 1 jobs locally" in out
    assert "lanes: 5 lanes × 2 seed(s) of tpo/reversal in one program (algorithm.eta)" in out
    laned = _stored(url)
    assert len({cell for cell, _ in laned}) == 5 and len(laned) == 10
    alone_url = f"sqlite:///{tmp_path / 'alone.sqlite'}"
    for eta in ("0.25", "4.0"):
        overrides = [*small, f"algorithm.eta={eta}"]
        assert run_job(job(alone_url, *overrides), overrides)["status"] == "completed"
    alone = _stored(alone_url)
    _assert_same_runs({k: laned[k] for k in alone}, alone, 2)


def test_a_laned_job_resumes_from_its_checkpoint_and_fails_every_lane(tmp_path):
    """A crash mid-run fails every lane's runs; the rerun resumes the laned program from its
    checkpoint (the lanes' values are in the saved state) and stores what an uninterrupted
    laned job stores."""
    url, fresh = (f"sqlite:///{tmp_path / n}.sqlite" for n in ("crash", "fresh"))
    lanes = _lanes_override(["algorithm.eta=0.5", "algorithm.eta=2.0"])
    common = [
        "task=tabular_multi",
        "task.steps=40",
        "algorithm=tpo",
        "num_seeds=2",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        lanes,
    ]
    with pytest.raises(RuntimeError, match="crash injected at point 20"):
        run_job(job(url, *common, "checkpoint.every=10", "debug.crash_at=20"), common)
    crashed = _stored(url)
    assert len(crashed) == 4 and {r["status"] for r in crashed.values()} == {db.FAILED}
    out = run_job(job(url, *common, "checkpoint.every=10"), common)
    assert out["status"] == "completed"
    assert [o["resumed_from"] for o in out["lanes"]] == [20, 20]
    assert not list((tmp_path / "ckpt").iterdir())  # removed once the job completed
    run_job(job(fresh, *common), common)
    _assert_same_runs(_stored(url), _stored(fresh), 2)


def test_plan_counts_a_traced_grid_as_one_job(tmp_path, capsys):
    from tpo_sweeps import plan

    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    assert plan.main(["experiment=table5_eta", "scale=smoke", f"db.url={url}"]) == 0
    assert "to compute in 1 jobs" in capsys.readouterr().out
    off = ["experiment=table5_eta", "scale=smoke", "hardware.lanes=false", f"db.url={url}"]
    assert plan.main(off) == 0
    assert "to compute in 5 jobs" in capsys.readouterr().out
