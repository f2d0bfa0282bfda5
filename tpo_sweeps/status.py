"""``python -m tpo_sweeps status [options] experiment=<id> [overrides]``: a sweep's cells by status.

Give it the same overrides as the multirun (``-m`` is accepted and ignored). It expands the
sweep as Hydra would, hashes every cell like its job does, and looks the hashes up in the
results database: each cell is missing, pending, running, dead (running, but no heartbeat for
``--stale-after`` seconds: the job was killed, ran out of memory, or lost its node), completed,
diverged (stored, but some seed's metrics went non-finite: the error column says where; not
relaunched, since the same seed diverges again), failed, timeout or preempted.
``--relaunch`` prints the multirun commands that run only the missing, failed, timed-out
and dead cells (``--run`` runs them); ``--mark-dead`` stores dead runs as failed. Exit
status: 0 when every cell is completed, 1 otherwise (a diverged cell too), 2 for bad input
(a ``--db`` that does not exist included: status never creates a database).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from tpo_sweeps import config as C
from tpo_sweeps import db, settings
from tpo_sweeps import sweep as S


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=settings.prog("status", "python -m tpo_sweeps status"),
        description="List a sweep's cells by status; relaunch the missing or failed ones.",
    )
    p.add_argument("overrides", nargs="*", help="the multirun's overrides (experiment=<id> ...)")
    p.add_argument("-m", "--multirun", action="store_true", help="ignored (for copy-paste)")
    p.add_argument("--db", help="results database URL (default: the sweep's db.url)")
    p.add_argument(
        "--staged",
        action="append",
        default=[],
        metavar="DIR",
        help="also read the per-job stores (db.stage=true) under DIR (a sweep directory)",
    )
    p.add_argument("--stale-after", type=float, metavar="S", help="heartbeat age of a dead job")
    p.add_argument("--mark-dead", action="store_true", help="store dead runs as failed")
    p.add_argument("--relaunch", action="store_true", help="print commands for the cells to redo")
    p.add_argument("--run", action="store_true", help="with --relaunch: run those commands")
    p.add_argument("--json", action="store_true", help="one JSON object per cell")
    return p


def _age(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    s = (db._now() - t).total_seconds()
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def _last_line(error: str | None) -> str | None:
    """The exception line of a stored traceback."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else None


def _refresh(sweep: S.Sweep, args: argparse.Namespace, mark_dead: bool) -> str | None:
    """Look the cells up in the database(s); returns an error message or None."""
    url = args.db or sweep.db_url
    try:
        # a --db that does not exist is a typo; the sweep's own db.url may not exist yet
        engines = S.open_databases(url, [Path(d) for d in args.staged], must_exist=bool(args.db))
    except db.DatabaseUnavailable as e:
        return str(e)
    try:
        db.check_url(url, create=False)
    except db.NoSuchFile as e:
        print(f"note: {e} (nothing stored yet)", file=sys.stderr)
    except db.DatabaseUnavailable:
        pass
    try:
        S.refresh(sweep, engines, args.stale_after)
        if mark_dead and engines:
            dead = [
                i for c in sweep.cells for s, i in c.run_ids.items() if c.seed_status[s] == S.DEAD
            ]
            n = db.mark_dead(engines[0], dead, "no heartbeat: the job died (marked by status)")
            print(f"marked {n} dead run(s) failed", file=sys.stderr)
            S.refresh(sweep, engines, args.stale_after)
    finally:
        for e in engines:
            e.dispose()
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not any(a.split("=")[0].lstrip("+") == "experiment" for a in args.overrides):
        print("note: no experiment=<id> given; describing the default config", file=sys.stderr)
    try:
        sweep = S.expand(args.overrides)
    except Exception as e:  # bad override, unknown experiment: one line naming it
        if not C.is_user_error(e):
            raise
        print(f"error: {db.redact(C.error_line(e))}", file=sys.stderr)
        return 2
    error = _refresh(sweep, args, args.mark_dead)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(sweep, args.json)
    if args.relaunch:
        commands = S.relaunch_commands(sweep)
        if not commands:
            print("nothing to relaunch", file=sys.stderr)
        for command in commands:
            print(S.format_command(command), flush=True)
            if args.run:
                rc = subprocess.call(command)
                if rc != 0:
                    print(f"relaunch exited with {rc}", file=sys.stderr)
                    return rc
        if args.run and commands:
            _refresh(sweep, args, mark_dead=False)
            _print(sweep, args.json)
    counts = sweep.counts()
    return 0 if counts.get(db.COMPLETED, 0) == len(sweep.cells) else 1


def _print(sweep: S.Sweep, as_json: bool) -> None:
    keys = sweep.swept_keys()
    if as_json:
        for c in sweep.cells:
            row = {
                "cell": {k: v for k, v in map(S._split, c.overrides) if k in keys},
                "sweep": c.config.name,
                "cell_hash": c.config_hash,
                "seeds": {str(k): v for k, v in c.seed_status.items()},
                "status": c.status,
                "run_ids": {str(k): v for k, v in c.run_ids.items()},
                "heartbeat_at": c.heartbeat_at.isoformat() if c.heartbeat_at else None,
                "slurm_job_id": c.slurm_job_id,
                "error": _last_line(c.error),
            }
            print(json.dumps(row))
    else:
        from tabulate import tabulate

        rows = []
        for i, c in enumerate(sweep.cells):
            cell = " ".join(o for o in c.overrides if S._split(o)[0] in keys) or "(single cell)"
            error = (_last_line(c.error) or "")[:60]
            done = sum(v == db.COMPLETED for v in c.seed_status.values())
            rows.append(
                [
                    i,
                    cell,
                    c.status,
                    f"{done}/{len(c.seed_status)}",
                    _age(c.heartbeat_at),
                    c.slurm_job_id or "",
                    error,
                ]
            )
        headers = ["#", "cell", "status", "seeds done", "heartbeat", "slurm job", "error"]
        print(tabulate(rows, headers=headers))
    counts = sweep.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
    print(f"sweep {sweep.name}: {len(sweep.cells)} cells: {summary}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
