"""Checkpoints: a run that dies mid-way resumes from its last checkpoint, not from zero, and
ends with exactly the numbers of a run that was never interrupted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from sqlalchemy import select

from tpo_sweeps import config as C
from tpo_sweeps import db, tasks
from tpo_sweeps import identity as I
from tpo_sweeps.checkpoint import Checkpointer
from tpo_sweeps.run import config_dir, run_job


def _cfg(tmp_path, *overrides: str) -> C.Config:
    C.register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        dcfg = compose(
            "config",
            overrides=[
                "experiment=fig4_tabular_multi",
                "scale=smoke",
                "algorithm=tpo",
                "task.steps=60",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
                "db.heartbeat_s=0",
                *overrides,
            ],
        )
    return C.to_config(dcfg)


def _metrics(url: str) -> list[tuple]:
    """(seed, name, step, value) of every stored metric row."""
    engine = db.connect(url, create=False)
    try:
        with engine.connect() as conn:
            m, r = db.Metric, db.Run
            return conn.execute(
                select(r.seed, m.name, m.step, m.value)
                .join(r, r.id == m.run_id)
                .order_by(r.seed, m.name, m.step)
            ).all()
    finally:
        engine.dispose()


def _statuses(url: str, ident: I.Identity) -> dict[int, str]:
    engine = db.connect(url, create=False)
    try:
        rows = db.runs_by_key(engine, [ident.run_key(s) for s in ident.seeds])
    finally:
        engine.dispose()
    return {s: rows[ident.run_key(s)].status for s in ident.seeds if ident.run_key(s) in rows}


def test_crashed_run_resumes_from_its_checkpoint(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    crashing = _cfg(tmp_path, f"db.url={url}", "checkpoint.every=10", "debug.crash_at=30")
    with pytest.raises(RuntimeError, match="crash injected at point 30"):
        run_job(crashing)
    ident = I.identify(crashing)
    assert _statuses(url, ident) == {0: db.FAILED, 1: db.FAILED}
    # one checkpoint per job: its cell, seeds and extras
    key = ident.job_key([0, 1])
    ckpt = Checkpointer(crashing.checkpoint.dir, key)
    program = tasks.build(crashing)
    saved = ckpt.load(program, np.arange(crashing.num_seeds))
    assert saved is not None and saved[0] == 30
    assert ident.job_key([1]) != key and ident.job_key([1, 0]) == key

    again = _cfg(tmp_path, f"db.url={url}", "checkpoint.every=10")
    assert I.identify(again).job_key([0, 1]) == key  # debug/checkpoint keys are not semantic
    out = run_job(again)
    assert out["status"] == "completed" and out["resumed_from"] == 30
    assert _statuses(url, ident) == {0: db.COMPLETED, 1: db.COMPLETED}
    assert not ckpt.dir.exists()  # removed once the run completed (checkpoint.keep=false)

    fresh_url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    assert run_job(_cfg(tmp_path, f"db.url={fresh_url}"))["resumed_from"] == 0
    resumed, fresh = _metrics(url), _metrics(fresh_url)
    assert len(resumed) == len(fresh) == 2 * 60 * 2
    assert resumed == fresh


def test_a_checkpoint_of_another_shape_is_ignored(tmp_path, caplog):
    cfg = _cfg(tmp_path, "checkpoint.every=10")
    program = tasks.build(cfg)
    from tpo_sweeps import train

    states = []
    train.run(program, np.arange(2), chunk=10, on_chunk=lambda d, s: states.append((d, s)))
    ckpt = Checkpointer(tmp_path / "ckpt", "h")
    ckpt.save(*states[1])
    assert ckpt.load(program, np.arange(2))[0] == 20
    with caplog.at_level(logging.WARNING, logger="tpo_sweeps"):
        assert ckpt.load(program, np.arange(3)) is None  # three seeds: different leaf shapes
    assert "ignoring checkpoint" in caplog.text
    assert Checkpointer(tmp_path / "ckpt", "other").load(program, np.arange(2)) is None


def test_auto_progress_points_per_report():
    from tpo_sweeps.supervise import auto_every

    assert auto_every(2000, 59.0) == 0  # under a minute: no chunks, no reports
    assert auto_every(2000, 120.0) == 20  # 100 reports
    # Fig 1b's TPO job (20 seeds, ~2.9 h on the reference CPU): a report every ~20 s
    assert auto_every(2000, 10_332.0) == 4
    assert auto_every(997, 600.0) == 10  # a prime: no divisor near, one extra chunk length


def test_a_long_run_reports_progress_unasked_with_the_same_numbers(tmp_path, caplog, monkeypatch):
    """progress.every=-1 (the default): a run the reference figures call long runs in
    chunks and logs its progress (no terminal here: log lines); its numbers equal an
    unchunked run's."""
    from tpo_sweeps import cost

    quiet_url = f"sqlite:///{tmp_path / 'quiet.sqlite'}"
    with caplog.at_level(logging.INFO, logger="tpo_sweeps"):
        run_job(_cfg(tmp_path, f"db.url={quiet_url}"))  # 60 points x 2 seeds: short
    assert "points (" not in caplog.text
    caplog.clear()
    # the same run, priced as a 2-minute one
    monkeypatch.setitem(cost.REFERENCE, "tabular_multi", (1.0, 1.0))
    long_url = f"sqlite:///{tmp_path / 'long.sqlite'}"
    with caplog.at_level(logging.INFO, logger="tpo_sweeps"):
        run_job(_cfg(tmp_path, f"db.url={long_url}"))
    # said at the start (a SLURM log is not silent until the first chunk), then per chunk
    start = "fig4_tabular_multi tpo/tabular_multi: 2 run(s) × 60 points, progress every "
    assert start in caplog.text
    assert caplog.text.index(start) < caplog.text.index("points (")
    assert "fig4_tabular_multi tpo/tabular_multi: 60/60 points (100%)" in caplog.text
    assert _metrics(long_url) == _metrics(quiet_url)
