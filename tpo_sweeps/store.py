"""The one object a job talks to about what is stored: ``RunStore``.

A job asks for a cell (``tpo_sweeps.identity``) and seeds. The store answers which seeds are
already served by completed (or diverged) runs (``stored``), records the rest as running under
this job (``start``), keeps their heartbeat, and writes their results in one transaction
(``finish``) or their error (``fail``). With ``db.stage=true`` it reads the main database and
writes the job's own SQLite file (merged into the main database when the multirun ends).

A computed result is never dropped for want of the database: ``finish`` retries a write that
did not get the lock (or the connection) with backoff for ``db.retry_s``, well past SQLite's
``db.busy_timeout_s``, and then writes the job's runs to ``results.sqlite`` in its output
directory, the store ``db.stage=true`` uses, which ``tpo_sweeps merge`` (and the end of a
multirun) brings into ``db.url``; a log line says where.

``run_row`` is the shape of a run row, shared with the multirun's pending rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from tpo_sweeps import config as C
from tpo_sweeps import db
from tpo_sweeps import identity as I

log = logging.getLogger("tpo_sweeps")

STAGED_STORE = "results.sqlite"  # a job's own store under db.stage=true


def promoted(cfg: C.Config) -> dict[str, Any]:
    """The columns people filter on, as the request names them."""
    a, t = cfg.algorithm, cfg.task
    return {
        "sweep": cfg.name,
        "algorithm": a.name,
        "task": t.name,
        "optimizer": cfg.optimizer.name,
        "steps": t.steps,
        "epochs": a.epochs,
        "K": getattr(t, "K", None) or getattr(t, "num_actions", None),
        "eta": getattr(a, "eta", None),
        "H": getattr(t, "H", None),
        "V": getattr(t, "V", None),
        "match": getattr(t, "match", None),
    }


def stored_config(ident: I.Identity) -> dict[str, Any]:
    """The resolved config as stored in ``runs.config`` (without ``db``: a URL is where the
    results went, not what produced them, and may hold a password)."""
    out = C.as_dict(ident.resolved)
    out.pop("db", None)
    return out


def run_row(ident: I.Identity, seed: int, overrides: list[str]) -> dict[str, Any]:
    """A run row of ``ident`` at ``seed`` (without status, times and provenance)."""
    return {
        **promoted(ident.config),
        "run_key": ident.run_key(seed),
        "cell_hash": ident.cell,
        "seed": int(seed),
        **ident.extras,
        "overrides": [mask_override(o) for o in overrides],
        "config": stored_config(ident),
    }


def mask_override(override: str) -> str:
    """An override as stored: a database URL's password masked (it would sit in every row)."""
    key, eq, value = override.partition("=")
    if eq and key.lstrip("+~") == "db.url":
        return f"{key}={db.display_url(value)}"
    return db.redact(override)


def staged_url(job_dir: Path) -> str:
    """The per-job SQLite store of ``db.stage=true`` (merged later by ``tpo_sweeps merge``)."""
    return f"sqlite:///{(job_dir / STAGED_STORE).resolve()}"


def stored_seeds(bind, ident: I.Identity, seeds: list[int] | None = None) -> dict[int, int]:
    """``seed -> run id`` of the completed (or diverged: ``db.FINAL``) runs that serve
    ``ident`` at ``seeds`` (default: its own); when several do, a completed one, the most
    recently finished."""
    return {s: r.id for s, r in stored_rows(bind, ident, seeds).items()}


def stored_rows(bind, ident: I.Identity, seeds: list[int] | None = None) -> dict[int, Any]:
    """As ``stored_seeds``, with the rows (``id``, ``status``, ``error``, ...)."""
    wanted = set(ident.seeds if seeds is None else seeds)
    best: dict[int, Any] = {}
    for row in db.satisfying_runs(bind, [ident.cell], statuses=db.FINAL):
        if row.seed not in wanted or not I.satisfies(db.extras_of(row), ident.extras):
            continue
        have = best.get(row.seed)
        if have is None or recency(row) > recency(have):
            best[row.seed] = row
    return best


def recency(row) -> tuple:
    """Order of preference among runs serving the same seed: a completed run over a
    diverged one, then the most recently finished."""
    return (row.status == db.COMPLETED, row.finished_at or dt.datetime.min, row.id)


class RunStore:
    """Look up, claim, heartbeat, finish and fail the runs of one job."""

    def __init__(
        self,
        url: str,
        busy_timeout_s: float = 30.0,
        migrate: bool = True,
        read_url: str | None = None,
        retry_s: float = 600.0,
        job_dir: Path | None = None,
    ):
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.retry_s = retry_s
        self.job_dir = job_dir  # where the results go when db.url stays locked
        if read_url is not None:  # staged: url is this job's own store, in its own folder
            staged = db.sqlite_path(make_url(url))
            if staged is not None:
                staged.parent.mkdir(parents=True, exist_ok=True)
        self.engine = db.connect(url, busy_timeout_s, migrate=migrate)
        self.reader = self.engine
        self.staged = read_url is not None
        if read_url is not None:
            try:  # staged: the main database is read only to skip what it holds
                self.reader = db.connect(read_url, busy_timeout_s, create=False, migrate=False)
            except db.DatabaseUnavailable as e:
                log.info(
                    "staged job: not checking %s for completed runs (%s)",
                    db.display_url(read_url),
                    e,
                )
                self.reader = None
        self.job_id = uuid.uuid4().hex
        self.run_ids: dict[int, int] = {}  # seed -> run id claimed by this job
        self.found: dict[int, Any] = {}  # seed -> stored row serving it (``stored``)
        self.staged_to: Path | None = None  # the store the results went to instead of url
        self._claim: dict[str, Any] = {}  # the job's own row fields, restated by finish
        self._rows: list[dict[str, Any]] = []  # the run rows of ``start``
        self._sweep = ""

    @classmethod
    def for_job(cls, cfg: C.Config, job_dir: Path, in_multirun: bool) -> RunStore:
        # inside a multirun the schema was created or migrated once by its start callback
        d = cfg.db
        if d.stage:
            return cls(staged_url(job_dir), d.busy_timeout_s, read_url=d.url, retry_s=d.retry_s)
        return cls(
            d.url, d.busy_timeout_s, migrate=not in_multirun, retry_s=d.retry_s, job_dir=job_dir
        )

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()
        if self.reader is not None and self.reader is not self.engine:
            self.reader.dispose()

    def stored(self, ident: I.Identity) -> dict[int, int]:
        """``seed -> run id`` of the job's seeds already served by completed (or diverged)
        runs; their rows are in ``found``."""
        self.found = {} if self.reader is None else stored_rows(self.reader, ident)
        return {s: r.id for s, r in self.found.items()}

    def link(self, sweep: str, run_ids: list[int]) -> None:
        """Record that ``sweep`` asked for these (already stored) runs."""
        if run_ids and not self.staged:
            with self.engine.begin() as conn:
                db.link(conn, sweep, run_ids)

    def start(
        self,
        ident: I.Identity,
        seeds: list[int],
        overrides: list[str],
        provenance: dict[str, Any],
        rerun_completed: bool = False,
    ) -> list[int]:
        """Record ``seeds`` as running under this job; returns the seeds it now runs (a seed
        completed meanwhile by another job is left out)."""
        rows = [
            {
                **run_row(ident, s, overrides),
                **provenance,
                "job_id": self.job_id,
                "job_seeds": len(seeds),
            }
            for s in seeds
        ]
        self.run_ids = db.claim_runs(self.engine, rows, ident.config.name, rerun_completed)
        self._rows, self._sweep = rows, ident.config.name
        # another job may claim the same rows before this one finishes (a relaunch racing a
        # live job): whichever writes the results restates its own labels and provenance
        skip = ("run_key", "cell_hash", "seed")
        self._claim = {k: v for k, v in rows[0].items() if k not in skip} if rows else {}
        return sorted(self.run_ids)

    def heartbeat(self, status: str | None = None) -> None:
        db.heartbeat(self.engine, list(self.run_ids.values()), status)

    def finish(self, result, before_commit=None) -> int | None:
        """Write the job's results (``train.Result``); None if others completed them all.

        A write that does not get the database (locked past ``busy_timeout_s``, connection
        lost) is retried with backoff for ``retry_s``; then the results go to the job's own
        staged store (``staged_to``) instead of being lost."""

        def write(engine, run_ids, pause=before_commit):
            return db.finish_runs(
                engine,
                run_ids,
                result.metrics,
                result.steps,
                result.summary,
                np.asarray(result.seeds),
                extra={
                    **self._claim,
                    "compile_s": result.compile_s,
                    "run_s": result.run_s,
                    "job_seeds": getattr(result, "runs", 0) or len(result.seeds),
                },
                before_commit=pause,
                diverged=getattr(result, "diverged", None),
            )

        try:
            return self._retrying(lambda: write(self.engine, self.run_ids), "storing the results")
        except db.DatabaseBusy as e:
            if self.staged or self.job_dir is None:
                raise
            return self._stage(write, e)

    def _retrying(self, fn, what: str):
        """``fn()``, retried with backoff (0.5 s doubling to 30 s) while the database is
        busy or unreachable, for ``retry_s`` seconds; then ``DatabaseBusy``."""
        deadline, delay, attempt = time.monotonic() + self.retry_s, 0.5, 0
        while True:
            try:
                return fn()
            except (OperationalError, DBAPIError) as e:
                if isinstance(e, DBAPIError) and not isinstance(e, OperationalError):
                    if not e.connection_invalidated:
                        raise
                reason = db.redact(db._first_line(e.orig or e))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise db.DatabaseBusy(
                        f"{what} in {db.display_url(self.url)} failed for {self.retry_s:.0f} s "
                        f"after {attempt + 1} attempt(s): {reason}"
                    ) from None
                attempt += 1
                wait = min(delay, left)
                log.warning(
                    "%s: %s (%s); retry %d in %.1f s",
                    what,
                    reason,
                    db.display_url(self.url),
                    attempt,
                    wait,
                )
                time.sleep(wait)
                delay = min(2 * delay, 30.0)

    def _stage(self, write, busy: Exception) -> int | None:
        """Write the job's runs and results to ``results.sqlite`` in its output directory
        (what ``db.stage=true`` writes; ``tpo_sweeps merge`` brings it into ``db.url``)."""
        assert self.job_dir is not None
        self.job_dir.mkdir(parents=True, exist_ok=True)
        path = (self.job_dir / STAGED_STORE).resolve()
        engine = db.connect(staged_url(self.job_dir), self.busy_timeout_s)
        try:
            run_ids = db.claim_runs(engine, self._rows, self._sweep)
            rows = write(engine, run_ids, None)
        finally:
            engine.dispose()
        self.staged_to = path
        log.error(
            "%s; the results of %d seed(s) are safe in %s: bring them into the database with "
            "'python -m tpo_sweeps merge %s --db %s' (a multirun does at its end)",
            busy,
            len(run_ids),
            path,
            path,
            db.display_url(self.url),
        )
        return rows

    def fail(self, error: str, status: str = db.FAILED) -> None:
        if not self.run_ids:
            return
        try:
            db.fail_runs(self.engine, list(self.run_ids.values()), error, status)
        except (OperationalError, DBAPIError) as e:  # keep the job's own error the one raised
            log.error("could not store the job's failure in %s: %s", db.display_url(self.url), e)
