"""Command line: rebuild paper artefacts from the results database.

    python -m analysis <id> [--db URL] [--out DIR]   one artefact (e.g. fig3_tabular_single,
                                                     fig3_tabular_single_smoke, appendix_b)
    python -m analysis all  [--db URL] [--out DIR]   every artefact the database holds runs for
                                                     (plus appendix_b, which needs none)
    python -m analysis list [--db URL]               sweeps with completed/failed/running counts

Bad input (unknown id, a URL that is not a tpo-sweeps database, no completed runs for the
artefact's sweep) exits with status 2 and one line on stderr naming the culprit.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_DB = "sqlite:///results/tpo.sqlite"
DEFAULT_OUT = "figures"
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see python -m analysis --help)\n")


def _parser() -> argparse.ArgumentParser:
    from analysis.artifacts import ARTIFACTS, SMOKE

    ids = [*ARTIFACTS, *(f"{i}{SMOKE}" for i, b in ARTIFACTS.items() if b.needs_runs)]
    p = _Parser(
        prog="python -m analysis",
        description="Rebuild the TPO paper's figures and tables from the results database.",
        epilog=f"artefact ids: {', '.join(ids)}. appendix_b needs no database.",
    )
    p.add_argument("target", help="an artefact id, 'all' (every artefact in --db), or 'list'")
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
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
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    from analysis import artifacts, load

    try:
        if args.target == "list":
            return _list(load.connect(args.db))
        if args.target == "all":
            return _all(args.db, Path(args.out))
        builder, sweep = artifacts.resolve(args.target)
        engine = load.connect(args.db) if builder.needs_runs else None
        _report(args.target, builder(engine, args.out, sweep))
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


def _all(url: str, out: Path) -> int:
    from analysis import artifacts, load

    engine = load.connect(url)
    ids = artifacts.available(engine)
    if not any(artifacts.resolve(i)[0].needs_runs for i in ids):
        print(
            f"warning: {load.display_url(engine)} holds no completed runs of any known "
            "sweep; building only the artefacts that need none",
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
