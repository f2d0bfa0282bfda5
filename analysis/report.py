"""The one-page reproduction report: every artefact, every paper number and claim, one file.

    python -m analysis.report --db URL --out DIR [--scale S] [--label TEXT]

builds every artefact of ``analysis.artifacts.ARTIFACTS`` at scale ``S`` (default paper) from
the database into ``DIR/artefacts/<id>/`` (an artefact without runs is listed as not run),
sets every number the paper prints against ours (``analysis.verdicts``) and checks the
paper's qualitative claims (``analysis.claims``), and writes

* ``DIR/report.md``: the report, figures linked as relative files;
* ``DIR/report.html``: the same content as one self-contained page (figures embedded as
  base64 PNG, inline CSS, no scripts, nothing fetched);
* ``DIR/verdicts.csv`` and ``DIR/claims.csv``: the verdict rows.

The output depends only on the database's contents and the code: no clock, no absolute
paths (``--label`` names the database in every text, so a report rebuilt from a copy of the
database in a temporary folder is byte-identical), everything in a fixed order.

Exit status: 0 when written; 2 for bad input (a URL that is not a results database, an
unknown scale); 1 when a builder failed unexpectedly (the report is still written and says
which).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from analysis import claims as claims_mod
from analysis import verdicts
from analysis.errors import AnalysisError, first_line
from analysis.html_page import to_html
from analysis.report_parts import (  # noqa: F401
    _CLAIM_HEADER,
    _VERDICT_HEADER,
    ARTEFACT_DIR,
    Built,
    _anchor,
    _cells_rows,
    _claim_rows,
    _counts_rows,
    _discrepancy_lines,
    _embedded_markdown,
    _figures_not_in,
    _label,
    _scale_rows,
    _verdict_rows,
    common_cell,
    md_table,
)
from tpo_sweeps import settings

log = logging.getLogger("analysis")

DEFAULT_OUT = "report"
EXIT_BAD_INPUT = 2
EXIT_BUILDER_FAILED = 1
# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _connect(url: str, label: str | None):
    from analysis import load

    try:
        return load.connect(url, label=label)
    except TypeError:  # a loader without labels
        return load.connect(url)


def build_all(engine, out: Path, scale: str) -> list[Built]:
    """Every registered artefact at ``scale``, built into ``out/artefacts/<stem>/``."""
    from analysis import artifacts, selection

    available = {selection.parse(a).preset for a in artifacts.available(engine, scale)}
    result = []
    for artifact_id in list(artifacts.ARTIFACTS):
        builder = artifacts.ARTIFACTS[artifact_id]
        builder, sweep = artifacts.resolve(artifact_id, scale if builder.needs_runs else None)
        stem = str(sweep)
        item = Built(artifact_id, stem, builder.title, "not run")
        if builder.needs_runs and artifact_id not in available:
            item.message = f"no completed runs of its cells ({sweep.describe()})"
            result.append(item)
            continue
        folder = out / ARTEFACT_DIR / stem
        try:
            df = builder(engine if builder.needs_runs else None, folder, sweep)
        except AnalysisError as e:
            item.message = first_line(e)
            result.append(item)
            continue
        except Exception as e:  # noqa: BLE001 - one broken builder must not lose the report
            log.exception("report: %s failed", stem)
            item.status, item.message = "failed", f"{type(e).__name__}: {first_line(e)}"
            result.append(item)
            continue
        item.status = "built" if builder.needs_runs else "computed"
        item.rows = df
        item.files = sorted(_relative(f, out) for f in df.attrs.get("files", []))
        md = folder / f"{stem}.md"
        if md.is_file():
            item.markdown = md.read_text(encoding="utf-8")
        if builder.needs_runs:
            item.provenance = provenance(engine, sweep)
        result.append(item)
    return result


def _relative(path: str, out: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return p.name


# --------------------------------------------------------------------------------------------
# Provenance: what the runs table stores about the runs behind an artefact
# --------------------------------------------------------------------------------------------


def _versions(engine, run_ids: Sequence[int], runs: pd.DataFrame) -> dict[int, object]:
    """run id -> the package versions stored with it (``runs.versions``; None if absent)."""
    if "versions" in runs.columns:
        return {int(i): v for i, v in zip(runs["id"], runs["versions"], strict=True)}
    from sqlalchemy import bindparam, inspect, text

    if "versions" not in {c["name"] for c in inspect(engine).get_columns("runs")}:
        return {}
    out: dict[int, object] = {}
    ids = sorted(int(i) for i in run_ids)
    stmt = text("SELECT id, versions FROM runs WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            for rid, v in conn.execute(stmt, {"ids": ids[start : start + 500]}):
                out[int(rid)] = json.loads(v) if isinstance(v, str) else v
    return out


def provenance(engine, sweep) -> list[str]:
    """Markdown bullet lines: runs used, seeds per method, computing sweeps, git commits,
    devices and package versions of the runs an artefact reads."""
    from analysis import load

    kept = load.kept_seeds(engine, sweep)
    if kept.empty:
        return ["- runs: none"]
    ids = sorted(int(i) for i in kept["run_id"].unique())
    runs = load.runs(engine, sweep=sweep)
    runs = runs[runs["id"].isin(ids)]
    lines = [f"- runs used: {len(ids)} (ids {load.id_ranges(ids)})"]
    seeds = kept.groupby("algorithm")["seed"].nunique()
    lines.append(
        "- seeds per method: "
        + ", ".join(f"{_label(m)} {int(n)}" for m, n in sorted(seeds.items()))
    )
    swept = runs["sweep"].value_counts()
    lines.append(
        "- computed by sweeps: " + ", ".join(f"{s} ({n})" for s, n in sorted(swept.items()))
    )
    commits = {}
    for c, d in zip(runs["git_commit"], runs.get("git_dirty", [None] * len(runs)), strict=True):
        name = str(c)[:10] if isinstance(c, str) and c else "unknown"
        if d is True or d == 1:
            name += " (dirty)"
        commits[name] = commits.get(name, 0) + 1
    lines.append(
        "- git commits: " + ", ".join(f"`{c}` ({n} runs)" for c, n in sorted(commits.items()))
    )
    devices = runs["device"].fillna("unknown").value_counts()
    lines.append("- devices: " + ", ".join(f"{d} ({n})" for d, n in sorted(devices.items())))
    versions = _versions(engine, ids, runs)
    sets: dict[str, int] = {}
    for rid in ids:
        v = versions.get(rid)
        text_ = ", ".join(f"{k} {v[k]}" for k in sorted(v)) if isinstance(v, Mapping) and v else ""
        sets[text_] = sets.get(text_, 0) + 1
    if set(sets) == {""}:
        lines.append(
            "- package versions: not stored for these runs (the runs table has no versions "
            "for them); the git commits above identify the code"
        )
    else:
        for text_, n in sorted(sets.items()):
            lines.append(f"- package versions ({n} runs): {text_ or 'not stored'}")
    return lines


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def markdown(
    items: Sequence[Built],
    v: pd.DataFrame,
    c: pd.DataFrame,
    db_name: str,
    scale: str,
) -> str:
    built = [b for b in items if b.status in ("built", "computed")]
    lines = [
        "# Target Policy Optimization: reproduction report",
        "",
        f"Database `{db_name}`, scale `{scale}`: {len(built)} of {len(items)} artefacts built "
        f"({sum(b.status == 'built' for b in items)} from runs, "
        f"{sum(b.status == 'computed' for b in items)} computed without runs), "
        f"{sum(b.status == 'not run' for b in items)} not run"
        + (
            f", {sum(b.status == 'failed' for b in items)} failed"
            if any(b.status == "failed" for b in items)
            else ""
        )
        + ".",
        "",
        "## Verdict rule",
        "",
        verdicts.RULE,
        "",
        "Each paper number (`analysis/paper_numbers.csv`) is matched to our rows of the same "
        "artefact, method (the paper's `all`: every method) and metric in the same cell (the "
        "key fields target, reward, match, H, V, K, epochs, η, p that the paper fills); one "
        'verdict per matching row of ours. "not run": no row of ours. "reduced '
        "(unmeasured)\": the cell ran, smaller than the paper's run, and cannot give the "
        "number (e.g. an episode it never reached).",
        "",
        claims_mod.RULE,
        "",
        "## Summary",
        "",
        *md_table(
            [
                "verdicts of",
                "agrees",
                "differs",
                "reduced",
                "reduced: consistent",
                "reduced: inconsistent",
                "reduced: unmeasured",
                "not run",
                "total",
            ],
            _counts_rows(v, c),
        ),
        "",
        f"Out of scope, not counted: {len(verdicts.out_of_scope())} numbers of "
        + ", ".join(sorted(verdicts.OUT_OF_SCOPE))
        + f" ({'; '.join(verdicts.OUT_OF_SCOPE[k] for k in sorted(verdicts.OUT_OF_SCOPE))}).",
        "",
        "## Artefacts and their scale",
        "",
        "Seeds, episodes and batch size B of our rows against the paper's (the largest its "
        "printed numbers of the artefact give); the last column counts the artefact's paper "
        "numbers by verdict: agrees / differs / reduced / not run.",
        "",
        *md_table(
            [
                "artefact",
                "paper item",
                "status",
                "seeds (ours)",
                "seeds (paper)",
                "episodes (ours)",
                "episodes (paper)",
                "B (ours)",
                "B (paper)",
                "numbers: agrees / differs / reduced / not run",
            ],
            _scale_rows(items, v),
        ),
        "",
        "## Claims",
        "",
        *md_table(_CLAIM_HEADER, _claim_rows(c)),
        "",
    ]
    for b in items:
        lines += _section(b, v[v["artifact"] == b.id], c[c["artifact"] == b.id])
    lines += ["## Out of scope", ""]
    oos = verdicts.out_of_scope()
    lines += md_table(
        ["artefact", "item", "method", "metric", "paper", "why"],
        oos[["artifact", "paper_item", "method", "metric", "paper", "why"]].values.tolist(),
    )
    lines.append("")
    return "\n".join(lines)


def _section(b: Built, v: pd.DataFrame, c: pd.DataFrame) -> list[str]:
    lines = [
        f'<a id="{_anchor(b.id)}"></a>',
        "",
        f"## {b.title} (`{b.stem}`)",
        "",
    ]
    if b.status == "not run":
        lines += [f"**Not run**: {b.message}.", ""]
    elif b.status == "failed":
        lines += [f"**Builder failed**: {b.message}.", ""]
    if b.status in ("built", "computed"):
        lines += ["### Figures and table", ""]
        lines += _embedded_markdown(b)
        for f in _figures_not_in(b):
            lines += ["", f"![{Path(f).stem}]({f})"]
        others = [f for f in b.files if not f.endswith(".png")]
        if others:
            lines += ["", "Files: " + ", ".join(f"[{Path(f).name}]({f})" for f in others)]
        lines.append("")
    if len(v):
        lines += ["### Paper numbers", ""]
        common = common_cell(v)
        if common:
            shared = " ".join(f"{k}={x}" for k, x in common.items())
            lines += [f"Every number below is for `{shared}`; `cell` gives the rest.", ""]
        lines += md_table(_VERDICT_HEADER, _verdict_rows(v))
        lines.append("")
        d = _discrepancy_lines(v)
        if d:
            lines += ["Known paper inconsistencies (column D):", "", *d, ""]
    if len(c):
        lines += ["### Claims", ""]
        lines += md_table(_CLAIM_HEADER, _claim_rows(c))
        lines.append("")
    if b.status in ("built", "computed"):
        cells = _cells_rows(b)
        if cells:
            lines += ["### Cells, seeds and episodes", ""]
            lines += md_table(["setting", "methods", "seeds", "episodes", "B"], cells)
            lines.append("")
        lines += ["### Provenance", ""]
        lines += b.provenance or [
            "- computed from the code, no runs (no git commit or package versions stored)"
        ]
        lines.append("")
    return lines


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=settings.prog("report", "python -m analysis report"),
        description="Build every artefact, set the paper's numbers and claims against ours, "
        "and write one reproduction report (report.html, report.md, verdicts.csv).",
    )
    settings.add_db_option(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--scale", default="paper", help="the runs' scale (paper, reduced, smoke)")
    p.add_argument(
        "--label",
        default=None,
        help="the database's name in every text of the report (default: its URL, password "
        "masked); give one to rebuild byte-identically from a copy elsewhere",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def write_report(engine, out: Path, scale: str, db_name: str) -> tuple[list[Built], pd.DataFrame]:
    """Build, judge and write the report into ``out``; returns the artefacts and verdicts."""
    out.mkdir(parents=True, exist_ok=True)
    items = build_all(engine, out, scale)
    frames = [b.rows for b in items if not b.rows.empty]
    rows = pd.concat(frames, ignore_index=True) if frames else None
    v = verdicts.verdicts(rows)
    c = claims_mod.claims(rows)
    md = markdown(items, v, c, db_name, scale)
    (out / "report.md").write_text(md, encoding="utf-8")
    title = f"TPO reproduction report ({scale})"
    (out / "report.html").write_text(to_html(md, out, title), encoding="utf-8")
    verdicts.write_csv(v, out / "verdicts.csv")
    c.to_csv(out / "claims.csv", index=False, lineterminator="\n")
    return items, v


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logger = logging.getLogger("analysis")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("analysis: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    from analysis import load, selection

    try:
        selection.check_scale(args.scale)
        engine = _connect(settings.db_url(args.db), args.label)
        db_name = args.label if args.label is not None else load.display_url(engine)
        out = Path(args.out)
        items, _ = write_report(engine, out, args.scale, db_name)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = [b.stem for b in items if b.status == "failed"]
    for b in items:
        print(f"{b.stem}: {b.status}" + (f" ({b.message})" if b.message else ""))
    print(f"report: wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'verdicts.csv'}")
    if failed:
        print(f"error: builder(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_BUILDER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
