"""``python -m tpo_sweeps merge <dirs or files> [--db URL]``: staged job stores -> main database.

With ``db.stage=true`` each job writes its run to ``results.sqlite`` in its own output
directory: one writer per file, nothing shared, safe on the NFS home of a cluster where
SQLite's locking is not. The launching process merges them into ``db.url`` when the multirun
ends, and this command does the same at any time. The merge is idempotent and keyed by run
key (cell, seed, extras): a run already completed in the main database is left alone (it only
gains the staged run's sweep links); otherwise the staged row replaces the main one, with its
metrics and summaries, in one transaction per run (``put_run``, shared with ``tpo_sweeps
import`` of run bundles). Running it twice, or on stores that overlap, changes nothing the
second time.

``python -m tpo_sweeps migrate [--db URL]`` creates or migrates the schema of a database once
(a multirun does this itself at its start).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine, make_url

from tpo_sweeps import db, settings
from tpo_sweeps.store import STAGED_STORE


def find_stores(paths: Iterable[Path]) -> list[Path]:
    """Staged stores: the files given, and every ``results.sqlite`` under the directories.
    Raises ``FileNotFoundError`` (one line) for a path that does not exist."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(p.rglob(STAGED_STORE)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


RUN_COLUMNS = [c.name for c in db.Run.__table__.columns if c.name != "id"]
"""The columns of a run row that travel between databases (its ``id`` is local to each)."""


def put_run(
    conn: Connection,
    run: Mapping[str, Any],
    sweeps: Iterable[str],
    results: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]],
) -> str:
    """Put one run into the database of ``conn`` unless a completed run with its run key is
    there already; used by ``merge`` (staged stores) and ``tpo_sweeps.bundle`` (bundle files).

    ``run``: the row's ``RUN_COLUMNS``; ``sweeps``: the sweeps that asked for it (none given:
    its own ``sweep``); ``results()``: its metric rows ``(name, step, value)`` and summary rows
    ``(name, value)``, called only when the run is completed (or diverged: ``db.FINAL``) and
    written. A completed run already there is left alone and only gains the sweep links (so
    is a diverged one, unless the run given completed). Otherwise the row replaces the one
    there, with its metrics and summaries (none for a run that is not final).
    Non-finite values are stored as NULL, as ``db.finish_runs`` stores them.

    Call it inside a write transaction, one per run: a concurrent job then waits for one run's
    rows at most, and a run is either wholly there or not. Returns the outcome,
    ``"already completed"`` or the status the run was written with.
    """
    M, S = db.Metric, db.Summary
    sweeps = list(sweeps) or [run["sweep"]]
    current = conn.execute(
        select(db.Run.id, db.Run.status).where(db.Run.run_key == run["run_key"]).with_for_update()
    ).first()
    if current is not None and (
        current.status == db.COMPLETED
        or (current.status == db.DIVERGED and run["status"] != db.COMPLETED)
    ):
        for sweep in sweeps:
            db.link(conn, sweep, [current.id])
        return f"already {current.status}"
    row = {k: run.get(k) for k in RUN_COLUMNS}  # diverged_step: None from an older store
    run_id, _ = db._upsert(conn, row, update_existing=True, keep_completed=False)
    for sweep in sweeps:
        db.link(conn, sweep, [run_id])
    # a run that was pending, running or failed here may have partial rows of its own
    conn.execute(delete(M).where(M.run_id == run_id))
    conn.execute(delete(S).where(S.run_id == run_id))
    if run["status"] in db.FINAL:
        metrics, summaries = results()
        metric_rows = [
            {
                "run_id": run_id,
                "name": m["name"],
                "step": int(m["step"]),
                "value": _finite(m["value"]),
            }
            for m in metrics
        ]
        summary_rows = [
            {"run_id": run_id, "name": m["name"], "value": _finite(m["value"])} for m in summaries
        ]
        if metric_rows:
            conn.execute(insert(M), metric_rows)
        if summary_rows:
            conn.execute(insert(S), summary_rows)
    return run["status"]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def merge_store(src: Engine, dst: Engine) -> Counter:
    """Upsert every run of ``src`` into ``dst`` (see the module docstring); counts by outcome."""
    counts: Counter = Counter()
    M, S, L = db.Metric, db.Summary, db.SweepRun
    with src.connect() as s:
        runs = s.execute(select(db.Run.__table__)).mappings().all()
        sweeps: dict[int, list[str]] = {}
        for row in s.execute(select(L.run_id, L.sweep)):
            sweeps.setdefault(row.run_id, []).append(row.sweep)

    def results(src_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with src.connect() as s:
            metrics = s.execute(select(M.name, M.step, M.value).where(M.run_id == src_id))
            summaries = s.execute(select(S.name, S.value).where(S.run_id == src_id))
            return [dict(m) for m in metrics.mappings()], [dict(m) for m in summaries.mappings()]

    for run in runs:
        with dst.begin() as d:
            outcome = put_run(d, run, sweeps.get(run["id"], []), partial(results, run["id"]))
        counts[outcome] += 1
    return counts


def merge(paths: Iterable[Path], url: str, busy_timeout_s: float = 30.0) -> Counter:
    """Merge every staged store under ``paths`` into ``url``; returns counts by outcome.
    Raises ``FileNotFoundError`` for a path that does not exist (before opening ``url``)."""
    total: Counter = Counter()
    stores = find_stores(paths)
    dst = db.connect(url, busy_timeout_s)
    try:
        for store in stores:
            src = db.connect(f"sqlite:///{store.resolve()}", busy_timeout_s, create=False)
            try:
                total.update(merge_store(src, dst))
            finally:
                src.dispose()
    finally:
        dst.dispose()
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=settings.prog("merge", "python -m tpo_sweeps merge"),
        description="Merge staged per-job stores (db.stage=true) into the main database.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="sweep directories or results.sqlite files")
    settings.add_db_option(p, "main database URL")
    args = p.parse_args(argv)
    args.db = settings.db_url(args.db)
    try:
        counts = merge(args.paths, args.db)
    except (db.DatabaseUnavailable, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = sum(counts.values())
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no staged runs found"
    where = make_url(args.db).render_as_string(hide_password=True)
    print(f"merged {found} staged run(s) into {where}: {detail}")
    return 0


def migrate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=settings.prog("migrate", "python -m tpo_sweeps migrate"),
        description="Create or migrate the results schema of a database, once.",
    )
    settings.add_db_option(p)
    args = p.parse_args(argv)
    args.db = settings.db_url(args.db)
    import logging

    from tpo_sweeps import migrations

    # what the migration did (runs re-keyed, duplicates superseded) goes to stderr; Alembic's
    # own step-by-step lines stay quiet
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger(migrations.log.name).setLevel(logging.INFO)
    try:
        engine = db.connect(args.db)
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with engine.connect() as conn:
            version, _ = db.schema_version(conn)
            revision = migrations.current(conn)
    finally:
        engine.dispose()
    print(f"{db.display_url(args.db)}: results schema version {version}, revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
