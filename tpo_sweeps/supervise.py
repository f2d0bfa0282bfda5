"""What a job does beside training: heartbeat, SLURM signals, progress of a long run.

* ``Heartbeat``: a daemon thread refreshes ``runs.heartbeat_at`` every ``db.heartbeat_s``
  seconds while the compiled program runs (JAX releases the GIL, so it costs the loop nothing).
  A run that is still "running" with an old heartbeat belongs to a dead job.
* ``SlurmSignals``: under submitit, SLURM announces the end of a job with SIGUSR2 (time limit
  near, or preemption on clusters that send it) and SIGTERM (``scontrol requeue``, preemption,
  ``scancel``). submitit requeues on SIGUSR2 (the hydra-submitit launcher object is
  checkpointable: its ``checkpoint`` resubmits the same job, then submitit exits the process
  with SystemExit) and ignores SIGTERM, leaving the job to SLURM's SIGKILL after KillWait.
  The wrappers here only note which signal came; the job stores the run as timeout or
  preempted and saves a checkpoint at the next chunk boundary, and the requeued job resumes
  from that checkpoint.
* ``Progress``: a rich bar on a terminal, else a log line at most every 10 s; updated between
  chunks only, never inside the compiled loop.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tpo_sweeps import db

log = logging.getLogger("tpo_sweeps")


class Heartbeat:
    """Call ``beat(status)`` (``RunStore.heartbeat``: refresh the job's runs'
    ``heartbeat_at``) from a background thread every ``every_s``; ``poke`` beats at once."""

    def __init__(self, beat: Callable[[str | None], None], every_s: float):
        self.beat, self.every_s = beat, every_s
        self.status: str | None = None  # written with the next beat (preempted after SIGTERM)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tpo-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat(self.status)
            except Exception as e:  # a missed beat is not worth stopping the run for
                log.warning("heartbeat failed: %s", e)


class SlurmSignals:
    """Note SLURM's end-of-job signals around submitit's own handlers (a no-op elsewhere).

    ``status`` becomes ``timeout`` or ``preempted`` once a signal arrived. ``on_term`` is
    called (from the signal handler: keep it to flag-setting) when SIGTERM arrives.
    """

    def __init__(self, on_term=None):
        self.status: str | None = None
        self._on_term = on_term
        self._saved: dict[int, Any] = {}

    @staticmethod
    def active() -> bool:
        """True when submitit installed its handlers in this process (a submitit job)."""
        handler = signal.getsignal(signal.SIGUSR2)
        return hasattr(getattr(handler, "__self__", None), "checkpoint_and_try_requeue")

    def __enter__(self) -> SlurmSignals:
        if not self.active() or threading.current_thread() is not threading.main_thread():
            return self
        usr2, term = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
        self._saved = {signal.SIGUSR2: usr2, signal.SIGTERM: term}

        def on_usr2(signum, frame):
            timed_out = getattr(usr2.__self__, "has_timed_out", lambda: False)()
            self.status = db.TIMEOUT if timed_out else db.PREEMPTED
            usr2(signum, frame)  # submitit: checkpoint, requeue, then SystemExit

        def on_term(signum, frame):
            self.status = self.status or db.PREEMPTED
            if self._on_term is not None:
                self._on_term()
            if callable(term):
                term(signum, frame)  # submitit: log and carry on until SIGKILL

        signal.signal(signal.SIGUSR2, on_usr2)
        signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved = {}


AUTO_AFTER_S = 60.0  # a run expected to take longer reports progress unasked
AUTO_REPORTS = 100  # ... at least this many times
AUTO_REPORT_S = 20.0  # ... and at least this often (expected seconds between reports)


def auto_every(total: int, expected_s: float) -> int:
    """Points per progress report (``progress.every=-1``) for a run of ``total`` points
    expected to take ``expected_s`` seconds: 0 (none) under ``AUTO_AFTER_S``; else at least
    ``AUTO_REPORTS`` reports and one every ``AUTO_REPORT_S`` seconds, rounded up to a
    divisor of ``total`` where one is near (each distinct chunk length compiles once more).
    A chunk boundary costs one dispatch and a copy of the chunk's metrics to the host,
    milliseconds (``benchmarks/progress_overhead.py``) beside the ~20 s of a chunk."""
    if expected_s < AUTO_AFTER_S or total < 2:
        return 0
    reports = max(AUTO_REPORTS, math.ceil(expected_s / AUTO_REPORT_S))
    want = max(1, math.ceil(total / reports))
    for n in range(want, min(2 * want, total) + 1):
        if total % n == 0:
            return n
    return want


class Progress:
    """Progress of one run in points: a rich bar on a terminal, else throttled log lines."""

    def __init__(self, total: int, label: str, start: int = 0, bar: bool | None = None):
        self.total, self.label, self.t0 = total, label, time.perf_counter()
        self.start, self._last_log = start, 0.0
        self._bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total, completed=start)
            self._bar.start()

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        now = time.perf_counter()
        if now - self._last_log >= 10.0 or done >= self.total:
            self._last_log = now
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            log.info(
                "%s: %d/%d points (%.0f%%), %.1f s elapsed, ~%.0f s left",
                self.label,
                done,
                self.total,
                100.0 * done / self.total,
                now - self.t0,
                eta,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
