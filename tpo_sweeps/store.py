"""The one object a job talks to about what is stored: ``RunStore``.

A job asks for a cell (``tpo_sweeps.identity``) and seeds. The store answers which seeds are
already served by completed runs (``stored``), records the rest as running under this job
(``start``), keeps their heartbeat, and writes their results in one transaction (``finish``)
or their error (``fail``). With ``db.stage=true`` it reads the main database and writes the
job's own SQLite file (merged into the main database when the multirun ends).

``run_row`` is the shape of a run row, shared with the multirun's pending rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

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
    return override


def staged_url(job_dir: Path) -> str:
    """The per-job SQLite store of ``db.stage=true`` (merged later by ``tpo_sweeps merge``)."""
    return f"sqlite:///{(job_dir / STAGED_STORE).resolve()}"


def stored_seeds(bind, ident: I.Identity, seeds: list[int] | None = None) -> dict[int, int]:
    """``seed -> run id`` of the completed runs that serve ``ident`` at ``seeds`` (default:
    its own); when several do, the most recently finished."""
    wanted = set(ident.seeds if seeds is None else seeds)
    best: dict[int, Any] = {}
    for row in db.satisfying_runs(bind, [ident.cell]):
        if row.seed not in wanted or not I.satisfies(db.extras_of(row), ident.extras):
            continue
        have = best.get(row.seed)
        if have is None or recency(row) > recency(have):
            best[row.seed] = row
    return {s: r.id for s, r in best.items()}


def recency(row) -> tuple:
    """Order of preference among runs serving the same seed: the most recently finished."""
    return (row.finished_at or dt.datetime.min, row.id)


class RunStore:
    """Look up, claim, heartbeat, finish and fail the runs of one job."""

    def __init__(
        self,
        url: str,
        busy_timeout_s: float = 30.0,
        migrate: bool = True,
        read_url: str | None = None,
    ):
        self.url = url
        self.engine = db.connect(url, busy_timeout_s, migrate=migrate)
        self.reader = self.engine
        self.staged = read_url is not None
        if read_url is not None:
            try:  # staged: the main database is read only to skip what it holds
                self.reader = db.connect(read_url, busy_timeout_s, create=False, migrate=False)
            except db.DatabaseUnavailable as e:
                log.info("staged job: not checking %s for completed runs (%s)", read_url, e)
                self.reader = None
        self.job_id = uuid.uuid4().hex
        self.run_ids: dict[int, int] = {}  # seed -> run id claimed by this job
        self._claim: dict[str, Any] = {}  # the job's own row fields, restated by finish

    @classmethod
    def for_job(cls, cfg: C.Config, job_dir: Path, in_multirun: bool) -> RunStore:
        # inside a multirun the schema was created or migrated once by its start callback
        if cfg.db.stage:
            return cls(staged_url(job_dir), cfg.db.busy_timeout_s, read_url=cfg.db.url)
        return cls(cfg.db.url, cfg.db.busy_timeout_s, migrate=not in_multirun)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()
        if self.reader is not None and self.reader is not self.engine:
            self.reader.dispose()

    def stored(self, ident: I.Identity) -> dict[int, int]:
        """``seed -> run id`` of the job's seeds already served by completed runs."""
        return {} if self.reader is None else stored_seeds(self.reader, ident)

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
        # another job may claim the same rows before this one finishes (a relaunch racing a
        # live job): whichever writes the results restates its own labels and provenance
        skip = ("run_key", "cell_hash", "seed")
        self._claim = {k: v for k, v in rows[0].items() if k not in skip} if rows else {}
        return sorted(self.run_ids)

    def heartbeat(self, status: str | None = None) -> None:
        db.heartbeat(self.engine, list(self.run_ids.values()), status)

    def finish(self, result, before_commit=None) -> int | None:
        """Write the job's results (``train.Result``); None if others completed them all."""
        return db.finish_runs(
            self.engine,
            self.run_ids,
            result.metrics,
            result.steps,
            result.summary,
            np.asarray(result.seeds),
            extra={
                **self._claim,
                "compile_s": result.compile_s,
                "run_s": result.run_s,
                "job_seeds": len(result.seeds),
            },
            before_commit=before_commit,
        )

    def fail(self, error: str, status: str = db.FAILED) -> None:
        if self.run_ids:
            db.fail_runs(self.engine, list(self.run_ids.values()), error, status)
