"""The paper's qualitative claims, as data, each checked on our rows with its own verdict.

A claim (``Claim``) names an artefact, a metric and what must hold between methods in every
cell it covers (``per``: the key fields that make a cell, e.g. ``V`` for "at every V";
``where``: the cells it is about, e.g. prompt-matched; ``expect``: the cells the paper
checks). The kinds:

* ``order``: ``groups`` lowest first; in every cell each method of a group has a smaller
  seed mean than each method of the next group ("TPO below GRPO below PPO and DG"). For a
  steps-to-x% metric a run that never crosses counts as +∞ (two that never cross: the order
  is undetermined);
* ``above`` / ``below``: each of ``methods`` has a seed mean above / below ``threshold``;
* ``increasing``: the seed mean of ``methods[0]`` grows strictly along ``along`` (its values
  in ``expect[along]`` order);
* ``closed_form``: ``metric`` equals ``reference`` (same method and cell) to ``tol``.

Claims compare seed means, without a tolerance; the numbers behind each check are its
evidence. Verdicts as for numbers (``analysis.verdicts``): agrees (holds), differs (fails),
reduced (a row behind it comes from a run smaller than the paper's, or fewer cells than the
paper checks: the reading is provisional), not run (no row to check it on). Each claim is
also checked on the paper's own printed numbers where it has them (figure readings ``~x``
count as the interval x/3 … 3x, bounds as half-lines), which shows where the paper's text
and its tables disagree (Table 3 at H = 7: GRPO 14.5% is not below PPO's 12.0%).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from analysis import paper
from analysis.paper_claims import CLAIMS, Claim  # noqa: F401  (re-exported)
from analysis.verdicts import VERDICTS, fmt, is_steps, missing, num, plain, smaller, tolerant

RULE = (
    "Claims are checked on seed means, without a tolerance: an ordering claim holds when, "
    "in every cell it covers, each method's mean is below the next group's (a run that never "
    "reaches a steps-to-x% threshold counts as +∞; two that never reach it leave the order "
    "undetermined, which fails it); a threshold claim when every mean is on the stated side. "
    "A claim checked on rows of a reduced run, or on fewer cells than the paper's, is "
    '"reduced" with its provisional reading. Each claim is also checked on the paper\'s '
    "own printed numbers (figure readings ~x as x/3…3x, bounds as half-lines)."
)

CLAIM_COLUMNS = [
    "claim",
    "paper_item",
    "artifact",
    "text",
    "verdict",
    "reading",
    "evidence",
    "detail",
    "paper_check",
]


# --------------------------------------------------------------------------------------------
# Values as intervals: ours are points, the paper's readings and bounds are not
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Val:
    lo: float
    hi: float
    text: str

    @property
    def never(self) -> bool:
        return self.lo == math.inf


def _ours(r: Mapping, steps: bool) -> Val | None:
    value, n = num(r.get("value")), num(r.get("n_seeds"))
    if missing(value):
        if steps and n > 0:
            return Val(math.inf, math.inf, "never")
        return None
    return Val(value, value, fmt(value))


def _theirs(text: str) -> Val:
    pv = paper.parse(text)
    if pv.kind == "never":
        return Val(math.inf, math.inf, "never")
    if pv.kind == "approx":
        return Val(pv.value / 3, pv.value * 3, text)
    if pv.kind == "lower":
        return Val(pv.value, math.inf, text)
    if pv.kind == "upper":
        return Val(-math.inf, pv.value, text)
    if pv.kind == "range":
        return Val(pv.value, pv.high, text)
    return Val(pv.value, pv.value, text)


def less(a: Val, b: Val) -> bool | None:
    """a < b: True, False, or None when undetermined (overlapping intervals, both never)."""
    if a.never and b.never:
        return None
    if a.hi < b.lo:
        return True
    if a.lo >= b.hi:
        return False
    return None


def _above(a: Val, x: float) -> bool | None:
    return True if a.lo >= x else (False if a.hi <= x else None)


def _below(a: Val, x: float) -> bool | None:
    return True if a.hi <= x else (False if a.lo >= x else None)


def _all(results: Sequence[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    if any(r is None for r in results):
        return None
    return True


# --------------------------------------------------------------------------------------------
# Checking one claim
# --------------------------------------------------------------------------------------------


def _label(method: str) -> str:
    try:
        from analysis.methods import label
    except ImportError:  # older trees: the labels lived in tables
        from analysis.tables import label
    return label(method)


def _where_ok(row: Mapping, where: Mapping) -> bool:
    return all(paper._same(str(v), plain(row.get(k))) for k, v in where.items())


def _cell_name(claim: Claim, cell: tuple) -> str:
    return " ".join(f"{f}={v}" for f, v in zip(claim.per, cell, strict=True))


def _at(claim: Claim, cell: tuple, text: str) -> str:
    """``H=7: text``, or just ``text`` for a claim about one cell."""
    name = _cell_name(claim, cell)
    return f"{name}: {text}" if name else text


def _cells(
    claim: Claim, rows: Sequence[dict], fields: Sequence[str] | None = None
) -> dict[tuple, dict[str, list[dict]]]:
    """cell (values of ``fields``, default ``per``) -> method -> [our rows], for the claim's
    methods and ``where``."""
    fields = claim.per if fields is None else fields
    out: dict[tuple, dict[str, list[dict]]] = {}
    want = set(claim.all_methods())
    for r in rows:
        if want and r["method"] not in want:
            continue
        if not _where_ok(r, claim.where):
            continue
        cell = tuple(plain(r.get(f)) for f in fields)
        out.setdefault(cell, {}).setdefault(r["method"], []).append(r)
    return out


def _sort_cells(cells) -> list:
    return sorted(cells, key=lambda c: tuple((v is None, str(type(v)), v) for v in c))


def _judge_cell(claim: Claim, by_method: Mapping[str, list], steps: bool):
    """(result, evidence) of the claim in one cell; result None if undetermined; a missing
    method gives result 'missing'."""
    vals: dict[str, list[Val]] = {}
    for m in claim.all_methods():
        got = [v for v in (_ours(r, steps) for r in by_method.get(m, [])) if v is not None]
        if not got:
            return "missing", f"no {_label(m)}"
        vals[m] = got
    return _evaluate(claim, vals)


def _evaluate(claim: Claim, vals: Mapping[str, list[Val]]):
    def show(m: str) -> str:
        return f"{_label(m)} " + "/".join(v.text for v in vals[m])

    if claim.kind == "order":
        results = []
        for lower, upper in zip(claim.groups, claim.groups[1:], strict=False):
            for a in lower:
                for b in upper:
                    results += [less(x, y) for x in vals[a] for y in vals[b]]
        text = " < ".join(", ".join(show(m) for m in g) for g in claim.groups)
        return _all(results), text
    if claim.kind in ("above", "below"):
        test = _above if claim.kind == "above" else _below
        results = [test(v, claim.threshold) for m in claim.methods for v in vals[m]]
        sign = ">" if claim.kind == "above" else "<"
        return _all(results), ", ".join(show(m) for m in claim.methods) + f" vs {sign} " + fmt(
            claim.threshold
        )
    raise ValueError(f"claim {claim.id}: kind {claim.kind} is not judged per cell")


def _smaller_rows(claim: Claim, rows: Sequence[dict]) -> list[str]:
    """How the rows behind the claim are smaller than the paper's runs of the artefact."""
    size = paper_size(claim.artifact)
    return sorted({s for r in rows for s in smaller(r, size)})


def paper_size(artifact: str) -> dict:
    """The paper's run size for an artefact: the largest seeds, episodes and B its printed
    numbers give, and K where they all share one."""
    p = paper.numbers()
    p = p[p["artifact"] == artifact]
    out = {}
    for f in (*paper.SIZE_FIELDS, "K"):
        vals = [num(v) for v in p[f] if not missing(v)]
        out[f] = max(vals) if vals and (f != "K" or len(set(vals)) == 1) else math.nan
    return out


def check(claim: Claim, rows: pd.DataFrame | None) -> dict:
    """The verdict row (``CLAIM_COLUMNS``) of one claim on our rows."""
    mine = [r for r in tolerant(rows).to_dict("records") if r["artifact"] == claim.artifact]
    ours = [r for r in mine if r["metric"] == claim.metric]
    base = {
        "claim": claim.id,
        "paper_item": claim.paper_item,
        "artifact": claim.artifact,
        "text": claim.text,
        "verdict": "not run",
        "reading": "",
        "evidence": "",
        "detail": "",
        "paper_check": paper_check(claim),
    }
    if claim.kind == "closed_form":
        result, evidence, used, missing_cells = _closed_form(claim, mine)
    elif claim.kind == "increasing":
        result, evidence, used, missing_cells = _increasing(claim, ours)
    else:
        result, evidence, used, missing_cells = _per_cell(claim, ours)
    base["evidence"] = evidence
    if result == "missing":
        base["detail"] = "no rows to check it on" + (
            f" ({'; '.join(missing_cells)})" if missing_cells else ""
        )
        return base
    detail = []
    small = _smaller_rows(claim, used)
    if missing_cells:
        detail.append("not checked: " + "; ".join(missing_cells))
    if small:
        detail.append("reduced: " + ", ".join(small))
    if result is None:
        detail.append("undetermined (ties at never)")
    if small or missing_cells:
        base["verdict"] = "reduced"
        base["reading"] = {True: "consistent", False: "inconsistent", None: "unmeasured"}[result]
    else:
        base["verdict"] = "agrees" if result else "differs"
    base["detail"] = "; ".join(detail)
    return base


def _per_cell(claim: Claim, ours: Sequence[dict]):
    steps = is_steps(claim.metric)
    cells = _cells(claim, ours)
    judged, evidence, used, missing_cells = [], [], [], []
    for cell in _sort_cells(cells):
        res, text = _judge_cell(claim, cells[cell], steps)
        if res == "missing":
            missing_cells.append(_at(claim, cell, text))
            continue
        judged.append(res)
        mark = {True: "holds", False: "fails", None: "undetermined"}[res]
        evidence.append(_at(claim, cell, f"{text} ({mark})"))
        used += [r for rs in cells[cell].values() for r in rs]
    expected = _expected_cells(claim)
    have = {c for c in cells}
    for cell in expected:
        if cell not in have:
            missing_cells.append(_at(claim, cell, "not run"))
    if not judged:
        return "missing", "", [], missing_cells
    return _all(judged), "; ".join(evidence), used, missing_cells


def _expected_cells(claim: Claim) -> list[tuple]:
    if not claim.expect or not claim.per:
        return []
    values = [claim.expect.get(f, ()) for f in claim.per]
    if any(not v for v in values):
        return []
    return [tuple(plain(x) for x in c) for c in itertools.product(*values)]


def _increasing(claim: Claim, ours: Sequence[dict]):
    steps = is_steps(claim.metric)
    method = claim.methods[0]
    cells = _cells(claim, ours, (claim.along,))
    points, missing_cells, used = [], [], []
    for x in claim.expect[claim.along]:
        rows = cells.get((plain(x),), {}).get(method, [])
        vals = [v for v in (_ours(r, steps) for r in rows) if v is not None]
        if not vals:
            missing_cells.append(f"{claim.along}={plain(x)}: not run")
            continue
        points.append((plain(x), vals[0]))
        used += rows
    if len(points) < 2:
        return "missing", "", [], missing_cells
    results = [less(a[1], b[1]) for a, b in zip(points, points[1:], strict=False)]
    shown = " < ".join(f"{v.text} ({claim.along}={x})" for x, v in points)
    return _all(results), f"{_label(method)}: {shown}", used, missing_cells


def _closed_form(claim: Claim, rows: Sequence[dict]):
    def key(r: dict) -> tuple:
        return (r["method"], *(plain(r.get(f)) for f in claim.per))

    measured = [r for r in rows if r["metric"] == claim.metric]
    reference = {key(r): num(r["value"]) for r in rows if r["metric"] == claim.reference}
    diffs = [
        (abs(num(r["value"]) - reference[key(r)]), key(r)) for r in measured if key(r) in reference
    ]
    if not diffs:
        return "missing", "", [], []
    worst, (method, *cell) = max(diffs, key=lambda d: (d[0], str(d[1])))
    n_methods = len({k[0] for _, k in diffs})
    evidence = (
        f"{len(diffs)} coefficients ({n_methods} methods); largest |measured − closed form| "
        f"= {worst:.1e} ({_label(method)} {_cell_name(claim, tuple(cell))}) vs tolerance "
        f"{claim.tol:.0e}"
    )
    return all(d <= claim.tol for d, _ in diffs), evidence, measured, []


def _paper_cells(claim: Claim, fields: Sequence[str]) -> dict[tuple, dict[str, list[Val]]]:
    """The paper's printed numbers of the claim: cell (values of ``fields``) -> method ->
    values."""
    p = paper.numbers()
    p = p[(p["artifact"] == claim.artifact) & (p["metric"] == claim.metric)]
    want = set(claim.all_methods())
    out: dict[tuple, dict[str, list[Val]]] = {}
    for _, r in p.iterrows():
        if want and r["method"] not in want:
            continue
        if not all(r[k] != "" and paper._same(r[k], v) for k, v in claim.where.items()):
            continue
        cell = tuple(_paper_key(r[f]) for f in fields)
        out.setdefault(cell, {}).setdefault(r["method"], []).append(_theirs(r["value"]))
    return out


def _paper_key(text: str):
    """A paper key field as our cells hold it: a number for numeric fields, None if empty."""
    if text == "":
        return None
    try:
        return plain(float(text))
    except ValueError:
        return text


def paper_check(claim: Claim) -> str:
    """The claim checked on the paper's own printed numbers: 'holds', 'fails at ...',
    'undetermined ...' or '—' where the paper prints none of them."""
    if claim.kind == "closed_form":
        return "—"
    if claim.kind == "increasing":
        cells = _paper_cells(claim, (claim.along,))
        m = claim.methods[0]
        pts = [
            cells[(plain(x),)][m][0]
            for x in claim.expect[claim.along]
            if m in cells.get((plain(x),), {})
        ]
        if len(pts) < 2:
            return "—"
        res = _all([less(a, b) for a, b in zip(pts, pts[1:], strict=False)])
        shown = " < ".join(v.text for v in pts)
        return {True: "holds", False: "fails", None: "undetermined"}[res] + f" ({shown})"
    cells = _paper_cells(claim, claim.per)
    fails, undetermined, partial = [], [], []
    judged = 0
    for cell in _sort_cells(cells):
        vals = cells[cell]
        absent = [m for m in claim.all_methods() if m not in vals]
        if absent:
            partial.append(_at(claim, cell, f"no {', '.join(map(_label, absent))}"))
            continue
        res, text = _evaluate(claim, vals)
        judged += 1
        if res is False:
            fails.append(_at(claim, cell, text))
        elif res is None:
            undetermined.append(_at(claim, cell, text))
    if not judged:
        return "— (not printed: " + "; ".join(partial) + ")" if partial else "—"
    if fails:
        out = "fails: " + "; ".join(fails)
    elif undetermined:
        out = "undetermined (the printed values overlap): " + "; ".join(undetermined)
    else:
        out = "holds"
    if partial:
        out += " (not printed: " + "; ".join(partial) + ")"
    return out


def claims(rows: pd.DataFrame | None) -> pd.DataFrame:
    """Every claim's verdict row, in ``CLAIMS`` order."""
    return pd.DataFrame([check(c, rows) for c in CLAIMS], columns=CLAIM_COLUMNS)


def counts(df: pd.DataFrame) -> dict[str, int]:
    out = {v: int((df["verdict"] == v).sum()) for v in VERDICTS}
    red = df[df["verdict"] == "reduced"]
    for reading in ("consistent", "inconsistent", "unmeasured"):
        out[f"reduced: {reading}"] = int((red["reading"] == reading).sum())
    return out
