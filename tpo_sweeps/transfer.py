"""The ``export`` and ``import`` commands: stored runs out to bundles (``tpo_sweeps.bundle``)
or MLflow (``tpo_sweeps.mlflow_export``), bundles back into any results database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tpo_sweeps import db, settings
from tpo_sweeps.bundle import BundleError, check, export, find_bundles, import_bundles


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=settings.prog("export", "python -m tpo_sweeps export"),
        description="Export stored runs: as immutable Parquet bundles named by their identity, "
        "OUT/<cell_hash>/<run_key>.parquet (existing files are left alone; completed runs), "
        "or with --to mlflow as MLflow runs (completed and diverged runs; idempotent).",
    )
    settings.add_db_option(p)
    p.add_argument("--to", choices=("bundles", "mlflow"), default="bundles", help="format")
    p.add_argument("--out", type=Path, help="folder of bundles (--to bundles)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--experiment", default="tpo-sweeps", help="MLflow experiment name")
    p.add_argument("--sweep", action="append", help="runs a sweep asked for (repeatable)")
    p.add_argument("--algorithm", action="append", help="algorithm name (repeatable)")
    p.add_argument("--task", action="append", help="task name (repeatable)")
    p.add_argument("--cell", action="append", help="cell hash prefix (repeatable)")
    args = p.parse_args(argv)
    needed = {"bundles": ("--out", args.out), "mlflow": ("--tracking-uri", args.tracking_uri)}
    flag, value = needed[args.to]
    if not value:
        p.error(f"--to {args.to} needs {flag}")
    args.db = settings.db_url(args.db)
    try:
        # read only: exporting must not create or migrate the database it reads
        engine = db.connect(args.db, create=False, migrate=False)
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    filters = (args.sweep, args.algorithm, args.task, args.cell)
    try:
        if args.to == "mlflow":
            from tpo_sweeps import mlflow_export

            counts = mlflow_export.export(engine, args.tracking_uri, args.experiment, *filters)
            print(
                f"exported to MLflow {args.tracking_uri} (experiment {args.experiment}): "
                f"{counts['logged']} logged, {counts['redone']} redone after an interrupted "
                f"export, {counts['existing']} already there"
            )
            return 0
        counts = export(engine, args.out, *filters)
    except db.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write bundles under {args.out}: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    total = counts["written"] + counts["existing"]
    print(
        f"exported {total} completed run(s) to {args.out}: {counts['written']} written, "
        f"{counts['existing']} already there"
    )
    return 0


def import_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=settings.prog("import", "python -m tpo_sweeps import"),
        description="Load run bundles (tpo_sweeps export) into a database, idempotently; "
        "every file is checked before anything is written.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="bundle folders or .parquet files")
    settings.add_db_option(p)
    args = p.parse_args(argv)
    args.db = settings.db_url(args.db)
    try:
        paths = find_bundles(args.paths)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = check(paths)
    if bad:
        (path, reason), more = bad[0], len(bad) - 1
        also = f" (and {more} more bad file(s))" if more else ""
        print(f"error: {path}: {reason}{also}; nothing imported", file=sys.stderr)
        return 2
    if not paths:
        print(f"no bundles found under {' '.join(map(str, args.paths))}")
        return 0
    try:
        engine = db.connect(args.db)
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        counts = import_bundles(paths, engine)
    except BundleError as e:  # changed since it was checked
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(
        f"imported {counts['imported']} run(s) from {len(paths)} bundle(s) into {engine.url!r}; "
        f"{counts['already completed']} already completed there (their sweeps linked)"
    )
    return 0
