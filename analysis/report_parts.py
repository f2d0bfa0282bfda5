"""The pieces of the reproduction report: the artefact record (``Built``) and the Markdown
tables of its summary, scale, verdict, claim and cell sections. ``analysis.report`` puts
them together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from analysis import claims as claims_mod
from analysis import paper, verdicts

ARTEFACT_DIR = "artefacts"


@dataclass
class Built:
    """One artefact of the report: its builder's output, or why it has none."""

    id: str  # the preset id
    stem: str  # what its files are called (``fig3_tabular_single_smoke``)
    title: str
    status: str  # built | computed | not run | failed
    message: str = ""
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[str] = field(default_factory=list)  # relative to the report folder
    markdown: str = ""
    provenance: list[str] = field(default_factory=list)


def _label(method: str) -> str:
    try:
        from analysis.methods import label
    except ImportError:
        from analysis.tables import label
    return label(method)


def _cell(text) -> str:
    """A value for a Markdown table cell: one line, pipes escaped."""
    s = "" if verdicts.missing(text) else str(text)
    return s.replace("\n", " ").replace("|", "\\|") or "—"


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    out.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        out.append("| " + " | ".join(_cell(c) for c in r) + " |")
    return out


def _int(x) -> str:
    x = verdicts.num(x)
    return "—" if verdicts.missing(x) else str(int(x))


def _span(values) -> str:
    """``2`` or ``2–5`` for the values of a size column; '—' when none."""
    xs = sorted({int(v) for v in (verdicts.num(x) for x in values) if not verdicts.missing(v)})
    if not xs:
        return "—"
    return str(xs[0]) if xs[0] == xs[-1] else f"{xs[0]}–{xs[-1]}"


def _counts_rows(v: pd.DataFrame, c: pd.DataFrame) -> list[list]:
    rows = []
    for name, counts, total in (
        ("numbers", verdicts.counts(v), len(v)),
        ("claims", claims_mod.counts(c), len(c)),
    ):
        rows.append(
            [
                name,
                counts["agrees"],
                counts["differs"],
                counts["reduced"],
                counts["reduced: consistent"],
                counts["reduced: inconsistent"],
                counts["reduced: unmeasured"],
                counts["not run"],
                total,
            ]
        )
    return rows


def _scale_rows(items: Sequence[Built], v: pd.DataFrame) -> list[list]:
    rows = []
    for b in items:
        size = claims_mod.paper_size(b.id)
        df = verdicts.tolerant(b.rows) if not b.rows.empty else verdicts.tolerant(None)
        mine = v[v["artifact"] == b.id]
        counted = (
            " / ".join(str(int((mine["verdict"] == x).sum())) for x in verdicts.VERDICTS)
            if len(mine)
            else "—"
        )
        rows.append(
            [
                f"[{b.id}](#{_anchor(b.id)})",
                b.title,
                b.status + (f": {b.message}" if b.status in ("failed",) else ""),
                _span(df["n_seeds"]),
                _int(size["seeds"]),
                _span(df["episodes"]),
                _int(size["episodes"]),
                _span(df["B"]),
                _int(size["B"]),
                counted,
            ]
        )
    return rows


def _anchor(artifact_id: str) -> str:
    return "a-" + re.sub(r"[^a-z0-9]+", "-", artifact_id.lower()).strip("-")


_VERDICT_HEADER = ["item", "method", "metric", "cell", "paper", "ours", "verdict", "detail", "D"]


def _split_cell(text: str) -> dict[str, str]:
    """``H=7 V=2`` -> {"H": "7", "V": "2"} (key values hold no spaces)."""
    return dict(tok.split("=", 1) for tok in str(text).split() if "=" in tok)


def common_cell(v: pd.DataFrame) -> dict[str, str]:
    """The key fields every verdict row of ``v`` shares (said once above its table)."""
    cells = [_split_cell(c) for c in v["cell"]]
    if not cells:
        return {}
    return {k: x for k, x in cells[0].items() if all(c.get(k) == x for c in cells[1:])}


def _verdict_rows(v: pd.DataFrame) -> list[list]:
    common = common_cell(v)
    rows = []
    for r in v.to_dict("records"):
        cell = " ".join(f"{k}={x}" for k, x in _split_cell(r["cell"]).items() if k not in common)
        paper_text = r["paper"]
        extra = []
        if not verdicts.missing(r["paper_se"]):
            extra.append(f"± {verdicts.fmt(r['paper_se'], 2)}")
        if not verdicts.missing(r["paper_seeds"]):
            extra.append(f"n={int(r['paper_seeds'])}")
        if not verdicts.missing(r["paper_episodes"]):
            extra.append(f"ep={int(r['paper_episodes'])}")
        if extra:
            paper_text += " (" + ", ".join(extra) + ")"
        verdict = r["verdict"] + (f" ({r['reading']})" if r["reading"] else "")
        rows.append(
            [
                r["paper_item"],
                _label(r["method"]) if r["method"] != "all" else "all",
                r["metric"],
                cell or "—",
                paper_text,
                r["ours"],
                f"**{verdict}**",
                r["detail"],
                r["discrepancy"] or "",
            ]
        )
    return rows


_CLAIM_HEADER = [
    "item",
    "claim",
    "verdict",
    "evidence (seed means)",
    "detail",
    "paper's own numbers",
]


def _claim_rows(c: pd.DataFrame) -> list[list]:
    rows = []
    for r in c.to_dict("records"):
        verdict = r["verdict"] + (f" ({r['reading']})" if r["reading"] else "")
        rows.append(
            [
                r["paper_item"],
                r["text"],
                f"**{verdict}**",
                r["evidence"],
                r["detail"],
                r["paper_check"],
            ]
        )
    return rows


def _discrepancy_lines(v: pd.DataFrame) -> list[str]:
    codes = sorted({c for c in v["discrepancy"] if c}, key=lambda c: (len(c), c))
    return [f"- **{c}**: {paper.DISCREPANCIES.get(c, '(no text)')}" for c in codes]


def _cells_rows(b: Built) -> list[list]:
    df = verdicts.tolerant(b.rows)
    if df.empty:
        return []
    rows = []
    for setting, g in df.groupby(df["setting"].astype(str), sort=True):
        methods = sorted(set(g["method"].astype(str)))
        rows.append(
            [
                setting,
                ", ".join(_label(m) for m in methods),
                _span(g["n_seeds"]),
                _span(g["episodes"]),
                _span(g["B"]),
            ]
        )
    return rows


def _embedded_markdown(b: Built) -> list[str]:
    """The builder's Markdown: headings two levels down, the title dropped, figure and file
    links made relative to the report folder."""
    prefix = f"{ARTEFACT_DIR}/{b.stem}/"
    out = []
    lines = b.markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    for line in lines:
        m = re.match(r"^(#{1,4}) (.*)$", line)
        if m:
            line = "#" * min(len(m.group(1)) + 3, 6) + " " + m.group(2)
        line = re.sub(
            r"(!?\[[^\]]*\])\((?![a-z]+:|/|#)([^)]+)\)",
            lambda mm: f"{mm.group(1)}({prefix}{mm.group(2)})",
            line,
        )
        out.append(line)
    while out and not out[0].strip():
        out.pop(0)
    return out


def _figures_not_in(b: Built) -> list[str]:
    """PNG files of the artefact its Markdown does not show (they are shown after it)."""
    return [
        f
        for f in b.files
        if f.endswith(".png") and f"({f})" not in "\n".join(_embedded_markdown(b))
    ]
