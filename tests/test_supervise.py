"""A job's companions, without SLURM: the heartbeat thread, and how the SLURM signals that
submitit handles are classified (timeout vs preempted) while submitit still does its part."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tpo_sweeps import db
from tpo_sweeps.supervise import Heartbeat, SlurmSignals


class FakeSubmititHandler:
    """Stands in for submitit's SignalHandler: USR2 requeues and exits, SIGTERM is ignored."""

    def __init__(self, timed_out: bool):
        self.timed_out, self.calls = timed_out, []

    def has_timed_out(self) -> bool:
        return self.timed_out

    def checkpoint_and_try_requeue(self, signum, frame=None):
        self.calls.append("usr2")
        raise SystemExit(-1)

    def bypass(self, signum, frame=None):
        self.calls.append("term")


@pytest.fixture
def submitit_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}

    def install(timed_out: bool) -> FakeSubmititHandler:
        h = FakeSubmititHandler(timed_out)
        signal.signal(signal.SIGUSR2, h.checkpoint_and_try_requeue)
        signal.signal(signal.SIGTERM, h.bypass)
        return h

    yield install
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("timed_out,expected", [(True, db.TIMEOUT), (False, db.PREEMPTED)])
def test_usr2_is_classified_and_submitit_still_requeues(submitit_handlers, timed_out, expected):
    handler = submitit_handlers(timed_out)
    assert SlurmSignals.active()
    with SlurmSignals() as sig, pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(1)  # the handler runs at the next bytecode
    assert sig.status == expected
    assert handler.calls == ["usr2"]
    assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue  # restored


def test_sigterm_is_noted_and_the_job_carries_on(submitit_handlers):
    handler = submitit_handlers(False)
    noted = []
    with SlurmSignals(on_term=lambda: noted.append(1)) as sig:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert sig.status == db.PREEMPTED and noted == [1] and handler.calls == ["term"]


def test_outside_submitit_nothing_is_touched():
    before = signal.getsignal(signal.SIGTERM)
    with SlurmSignals() as sig:
        assert signal.getsignal(signal.SIGTERM) == before
    assert sig.status is None


def test_heartbeat_refreshes_and_reports_status(tmp_path):
    engine = db.connect(f"sqlite:///{tmp_path / 'r.sqlite'}")
    run_id = db.start_run(
        engine,
        {
            "config_hash": "h",
            "sweep": "s",
            "algorithm": "tpo",
            "task": "t",
            "optimizer": "o",
            "seed": 0,
            "num_seeds": 1,
            "steps": 1,
            "epochs": 1,
            "overrides": [],
            "config": {},
        },
    )

    def row():
        return db.runs_by_hash(engine, ["h"])["h"]

    first = row().heartbeat_at
    with Heartbeat(engine, run_id, every_s=0.1) as beat:
        time.sleep(0.5)
        assert row().heartbeat_at > first
        beat.status = db.PREEMPTED
        beat.poke()
        time.sleep(0.3)
        assert row().status == db.PREEMPTED
    db.finish_run(engine, run_id, [0], {}, {}, {})
    after = row().heartbeat_at
    time.sleep(0.3)
    assert row().heartbeat_at == after and row().status == db.COMPLETED  # the thread stopped
    engine.dispose()
