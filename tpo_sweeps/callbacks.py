"""Hydra callback of every multirun (``hydra.callbacks.sweep`` in conf/config.yaml).

In the launching process, before any job starts: create or migrate the results schema once,
and record every cell of the sweep as a pending run. While the jobs run (locally or on SLURM,
where the launcher blocks until the array is done): log the cells' counts every
``progress.sweep_every_s`` seconds. At the end: merge the staged per-job stores
(``db.stage=true``, or a job's results that found the database locked past ``db.retry_s``),
log the final counts and, when cells are left, the command that lists them. The end also
runs at interpreter exit, because Hydra skips ``on_multirun_end`` when a job failed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("tpo_sweeps.sweep")


class SweepCallback(Callback):
    def __init__(self) -> None:
        self._pid: int | None = None
        self._sweep = None
        self._url = ""
        self._stage = False
        self._sweep_dir: Path | None = None
        self._every_s = 30.0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._ended = False

    # submitit pickles the callbacks into every job: leave the launcher's machinery behind
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stop": None, "_thread": None, "_sweep": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tpo_sweeps import db
        from tpo_sweeps import sweep as S
        from tpo_sweeps.campaign import record_pending
        from tpo_sweeps.config import is_user_error

        # Hydra turns an exception here into a many-line warning and goes on: a bad cell or
        # database is left to the sweeper, which refuses it in one line before making anything
        engine = None
        try:
            self._pid = os.getpid()
            self._url = str(config.db.url)
            self._stage = bool(config.db.stage)
            self._sweep_dir = Path(str(config.hydra.sweep.dir))  # refuses an unsafe name
            self._every_s = float(config.progress.sweep_every_s)
            self._sweep = S.from_multirun_config(config)  # every cell composed and checked
            engine = db.connect(self._url, float(config.db.busy_timeout_s))  # create/migrate
            new = record_pending(engine, self._sweep)
        except Exception as e:  # bookkeeping only: the sweep itself must still run
            if not is_user_error(e):
                log.warning("sweep %s: no pending rows or progress counts (%s)", config.name, e)
            self._sweep = None
            return
        finally:
            if engine is not None:
                engine.dispose()
        n = len(self._sweep.cells)
        where = db.display_url(self._url)
        log.info("sweep %s: %d cells (%d new as pending) -> %s", config.name, n, new, where)
        atexit.register(self._end)
        if self._every_s > 0:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, name="tpo-sweep", daemon=True)
            self._thread.start()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if os.getpid() == self._pid and self._sweep is not None:  # in-process launcher
            self._report()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end()

    def _report(self, final: bool = False) -> None:
        from tpo_sweeps import sweep as S

        engines = []
        try:
            staged = [self._sweep_dir] if self._stage and self._sweep_dir is not None else []
            engines = S.open_databases(self._url, staged)
            S.refresh(self._sweep, engines)
        except Exception as e:  # progress is a courtesy: never break the sweep for it
            log.warning("sweep progress unavailable: %s", e)
            return
        finally:
            for e in engines:
                e.dispose()
        counts = self._sweep.counts()
        n = len(self._sweep.cells)
        parts = [f"{counts.get('completed', 0)}/{n} completed"] + [
            f"{k} {v}" for k, v in sorted(counts.items()) if k != "completed"
        ]
        log.info("sweep %s%s: %s", self._sweep.name, " done" if final else "", ", ".join(parts))

    def _poll(self) -> None:
        while self._stop is not None and not self._stop.wait(self._every_s):
            self._report()

    def _end(self) -> None:
        if self._ended or os.getpid() != self._pid or self._sweep is None:
            return
        self._ended = True
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        from tpo_sweeps import db
        from tpo_sweeps.merge import find_stores, merge

        where = db.display_url(self._url)
        if self._sweep_dir is not None and self._sweep_dir.is_dir():
            # staged by db.stage=true, or by a job that found db.url locked for too long
            if self._stage or find_stores([self._sweep_dir]):
                try:
                    counts = merge([self._sweep_dir], self._url)
                    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                    log.info("merged staged stores into %s: %s", where, detail)
                except Exception as e:
                    log.error(
                        "merging %s failed (%s); rerun: python -m tpo_sweeps merge %s --db %s",
                        self._sweep_dir,
                        e,
                        self._sweep_dir,
                        where,
                    )
        self._report(final=True)
        counts = self._sweep.counts()
        if counts.get("completed", 0) < len(self._sweep.cells):
            log.info(
                "list or relaunch the unfinished cells with: "
                "python -m tpo_sweeps status --relaunch <the same overrides>"
            )
