"""``python -m tpo_sweeps merge <dirs or files> [--db URL]``: staged job stores -> main database.

With ``db.stage=true`` each job writes its run to ``results.sqlite`` in its own output
directory: one writer per file, nothing shared, safe on the NFS home of a cluster where
SQLite's locking is not. The launching process merges them into ``db.url`` when the multirun
ends, and this command does the same at any time. The merge is idempotent and keyed by run
key (cell, seed, extras): a run already completed in the main database is left alone; otherwise the staged row
replaces the main one, with its metrics and summaries, in one transaction per run. Running it
twice, or on stores that overlap, changes nothing the second time.

``python -m tpo_sweeps migrate [--db URL]`` creates or migrates the schema of a database once
(a multirun does this itself at its start).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from tpo_sweeps import db
from tpo_sweeps.store import STAGED_STORE

def find_stores(paths: Iterable[Path]) -> list[Path]:
    """Staged stores: the files given, and every ``results.sqlite`` under the directories."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(p.rglob(STAGED_STORE)))
        elif p.exists():
            out.append(p)
    return out


_COPIED = [c.name for c in db.Run.__table__.columns if c.name != "id"]


def merge_store(src: Engine, dst: Engine) -> Counter:
    """Upsert every run of ``src`` into ``dst`` (see the module docstring); counts by outcome."""
    counts: Counter = Counter()
    M, S, L = db.Metric, db.Summary, db.SweepRun
    with src.connect() as s:
        runs = s.execute(select(db.Run.__table__)).mappings().all()
        sweeps: dict[int, list[str]] = {}
        for row in s.execute(select(L.run_id, L.sweep)):
            sweeps.setdefault(row.run_id, []).append(row.sweep)
    for run in runs:
        with dst.begin() as d:
            current = d.execute(
                select(db.Run.id, db.Run.status)
                .where(db.Run.run_key == run["run_key"])
                .with_for_update()
            ).first()
            if current is not None and current.status == db.COMPLETED:
                for sweep in sweeps.get(run["id"], [run["sweep"]]):
                    db.link(d, sweep, [current.id])
                counts["already completed"] += 1
                continue
            run_id, _ = db._upsert(d, {k: run[k] for k in _COPIED}, update_existing=True)
            for sweep in sweeps.get(run["id"], [run["sweep"]]):
                db.link(d, sweep, [run_id])
            d.execute(delete(M).where(M.run_id == run_id))
            d.execute(delete(S).where(S.run_id == run_id))
            if run["status"] == db.COMPLETED:
                with src.connect() as s:
                    metrics = s.execute(
                        select(M.name, M.step, M.value).where(M.run_id == run["id"])
                    ).mappings()
                    rows = [{**m, "run_id": run_id} for m in metrics]
                    summaries = s.execute(
                        select(S.name, S.value).where(S.run_id == run["id"])
                    ).mappings()
                    summary_rows = [{**m, "run_id": run_id} for m in summaries]
                if rows:
                    d.execute(insert(M), rows)
                if summary_rows:
                    d.execute(insert(S), summary_rows)
            counts[run["status"]] += 1
    return counts


def merge(paths: Iterable[Path], url: str, busy_timeout_s: float = 30.0) -> Counter:
    """Merge every staged store under ``paths`` into ``url``; returns counts by outcome."""
    total: Counter = Counter()
    dst = db.connect(url, busy_timeout_s)
    try:
        for store in find_stores(paths):
            src = db.connect(f"sqlite:///{store.resolve()}", busy_timeout_s, create=False)
            try:
                total.update(merge_store(src, dst))
            finally:
                src.dispose()
    finally:
        dst.dispose()
    return total


def _default_url() -> str:
    from tpo_sweeps.config import DBConfig

    return DBConfig().url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tpo_sweeps merge",
        description="Merge staged per-job stores (db.stage=true) into the main database.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="sweep directories or results.sqlite files")
    p.add_argument("--db", default=_default_url(), help="main database URL (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        counts = merge(args.paths, args.db)
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = sum(counts.values())
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no staged runs found"
    print(f"merged {found} staged run(s) into {args.db}: {detail}")
    return 0


def migrate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tpo_sweeps migrate",
        description="Create or migrate the results schema of a database, once.",
    )
    p.add_argument("--db", default=_default_url(), help="database URL (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        engine = db.connect(args.db)
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    version, _ = db.schema_version(engine)
    engine.dispose()
    print(f"{args.db}: results schema version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
