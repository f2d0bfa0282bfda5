"""Command line: rebuild paper artefacts from the results database.

    python -m analysis <id> [--scale S] [overrides] [--db URL] [--out DIR]
        one artefact (e.g. fig3_tabular_single, appendix_b): the runs serving the cells of
        ``python -m tpo_sweeps -m experiment=<id> scale=S [overrides]``, whichever sweep
        stored them; written as <id> (scale paper) or <id>_<S> (fig3_tabular_single_smoke,
        also accepted as the id)
    python -m analysis all  [--scale S] [--db URL] [--out DIR]
        every artefact and scale the database holds runs for (plus appendix_b)
    python -m analysis report [--db URL] [--out DIR] [--scale S] [--label TEXT]
        every artefact, the paper's numbers beside ours with a verdict, the paper's claims
        checked: DIR/report.html (self-contained), report.md, verdicts.csv, claims.csv
    python -m analysis list [--db URL]
        sweeps with completed/failed/running counts (a run counts for every sweep that
        asked for it)

Bad input (unknown id or scale, a URL that is not a tpo-sweeps database, no completed runs
for the artefact's cells) exits with status 2 and one line on stderr naming the culprit.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_OUT = "figures"
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from analysis.artifacts import ARTIFACTS
    from tpo_sweeps import settings

    p = _Parser(
        prog=settings.prog("analysis", "python -m analysis"),
        description="Rebuild the TPO paper's figures and tables from the results database.",
        epilog=f"artefact ids: {', '.join(ARTIFACTS)}. appendix_b needs no database.",
    )
    p.add_argument("target", help="an artefact id, 'all' (every artefact in --db), or 'list'")
    p.add_argument(
        "overrides",
        nargs="*",
        help="overrides the artefact's runs were launched with, e.g. task.steps=40: the "
        "analysis reads the cells of that command line",
    )
    p.add_argument(
        "--scale",
        default=None,
        help="the scale the runs were launched at (paper, reduced, smoke; default: the id's "
        "_<scale> suffix, else paper; with 'all': only that scale)",
    )
    settings.add_db_option(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and notes")
    return p


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("analysis")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("analysis: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:  # one page with every artefact and its verdicts
        from analysis import report

        return report.main(argv[1:])
    # intermixed: overrides may follow --scale (fig1b_terminal --scale smoke task.steps=4)
    args = _parser().parse_intermixed_args(argv)
    _setup_logging(args.verbose)
    from tpo_sweeps import settings

    args.db = settings.db_url(args.db)
    from analysis import artifacts, load, selection

    try:
        if args.target in ("list", "all") and args.overrides:
            raise load.AnalysisError(
                f"'{args.target}' takes no overrides (got {' '.join(args.overrides)})"
            )
        if args.target == "list":
            return _list(load.connect(args.db))
        if args.target == "all":
            if args.scale is not None:
                selection.check_scale(args.scale)  # an unknown scale: one line, before any work
            return _all(args.db, Path(args.out), args.scale)
        builder, sweep = artifacts.resolve(args.target, args.scale, args.overrides)
        engine = load.connect(args.db) if builder.needs_runs else None
        _report(sweep, builder(engine, args.out, sweep))
        return 0
    except load.AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _list(engine) -> int:
    from analysis import artifacts, load

    counts = load.sweep_counts(engine)
    if counts.empty:
        print(f"{load.display_url(engine)}: no runs")
        return 0

    def artefact(sweep: str) -> str:
        try:
            builder, _ = artifacts.resolve(sweep)
        except load.AnalysisError:
            return "-"
        return sweep if builder.needs_runs else "-"

    counts.insert(1, "artefact", [artefact(s) for s in counts["sweep"]])
    print(f"{load.display_url(engine)}:")
    widths = {c: max(len(c), *(len(str(v)) for v in counts[c])) for c in counts.columns}
    text_cols = ("sweep", "artefact")
    for row in [dict(zip(counts.columns, counts.columns, strict=True)), *counts.to_dict("records")]:
        cells = [
            str(row[c]).ljust(widths[c]) if c in text_cols else str(row[c]).rjust(widths[c])
            for c in counts.columns
        ]
        print("  ".join(cells).rstrip())
    return 0


def _all(url: str, out: Path, scale: str | None = None) -> int:
    from analysis import artifacts, load

    engine = load.connect(url)
    ids = artifacts.available(engine, scale)
    if not any(artifacts.resolve(i)[0].needs_runs for i in ids):
        print(
            f"warning: {load.display_url(engine)} holds no completed runs of any artefact's "
            "cells; building only the artefacts that need none",
            file=sys.stderr,
        )
    failed = 0
    for artifact_id in ids:
        builder, sweep = artifacts.resolve(artifact_id)
        try:
            _report(artifact_id, builder(engine if builder.needs_runs else None, out, sweep))
        except load.AnalysisError as e:
            print(f"error: {artifact_id}: {e}", file=sys.stderr)
            failed += 1
    return EXIT_BAD_INPUT if failed else 0


def _report(artifact_id: str, df) -> None:
    files = df.attrs.get("files", [])
    print(f"{artifact_id}: wrote {', '.join(files)}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    logging.getLogger("analysis").info("done in %.1fs", time.perf_counter() - t0)
    sys.exit(rc)
