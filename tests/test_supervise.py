"""A job's companions, without SLURM: the heartbeat thread, and how the SLURM signals that
submitit handles are classified (timeout vs preempted) while submitit still does its part."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
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
    from tpo_sweeps import config as C
    from tpo_sweeps import identity as I
    from tpo_sweeps.store import RunStore
    from tpo_sweeps.train import Result

    cfg = C.Config(
        algorithm=C.TPOConfig(name="tpo"),
        task=C.TabularSingleConfig(steps=1),
        optimizer=C.NormalizedStepConfig(),
        num_seeds=2,
    )
    ident = I.identify(cfg)
    store = RunStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    assert store.start(ident, [0, 1], [], {}) == [0, 1]
    keys = [ident.run_key(s) for s in (0, 1)]
    calls = []

    def beat(status):  # what run_job hands the thread: the store's heartbeat of its runs
        calls.append(status)
        store.heartbeat(status)

    def rows():
        return list(db.runs_by_key(store.engine, keys).values())

    first = max(r.heartbeat_at for r in rows())
    with Heartbeat(beat, every_s=0.1) as hb:
        time.sleep(0.5)
        assert min(r.heartbeat_at for r in rows()) > first  # both seeds' runs
        assert calls and set(calls) == {None}
        hb.status = db.PREEMPTED
        hb.poke()
        time.sleep(0.3)
        assert {r.status for r in rows()} == {db.PREEMPTED}
    n = len(calls)
    store.finish(Result(np.arange(2), {}, {}, {}))
    after = max(r.heartbeat_at for r in rows())
    time.sleep(0.3)
    assert len(calls) == n  # the thread stopped with the block
    assert max(r.heartbeat_at for r in rows()) == after
    assert {r.status for r in rows()} == {db.COMPLETED}
    store.close()


def test_a_failing_beat_does_not_stop_the_heartbeat(caplog):
    calls = []

    def beat(status):
        calls.append(status)
        if len(calls) == 1:
            raise RuntimeError("database is locked")

    with caplog.at_level("WARNING", logger="tpo_sweeps"), Heartbeat(beat, every_s=0.05):
        time.sleep(0.4)
    assert len(calls) >= 3
    assert "heartbeat failed: database is locked" in caplog.text


def test_heartbeat_off_starts_no_thread():
    calls = []
    with Heartbeat(calls.append, every_s=0) as hb:
        hb.poke()
        time.sleep(0.2)
    assert calls == [] and not hb._thread.is_alive()
