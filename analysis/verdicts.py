"""Verdicts: each number the paper reports (``analysis/paper_numbers.csv``) set against ours.

For every paper row (``analysis.paper.numbers()``) the rows the builders computed
(``analysis.tables.ROW_COLUMNS``) are searched for the same artefact, method (the paper's
``all`` = any method) and metric, in the same cell: ``paper.matches(paper_row, key)`` with
``key`` our row's key fields (``paper.KEY_FIELDS``) that are set; a key field we leave empty
does not distinguish cells. Each (paper row, our row) pair gets one verdict:

* **agrees** / **differs**: by ``RULE`` below;
* **reduced**: our run is smaller than the paper's (fewer seeds, fewer episodes or a smaller
  batch B than the paper row's ``seeds``/``episodes``/``B``; or a smaller group size K where
  K is fixed for the whole artefact, as at smoke scale), so no verdict is final; the rule's
  provisional reading is given beside it: ``consistent``, ``inconsistent``, or ``unmeasured``
  (the run is too small to have the number at all, e.g. an episode it never reached);
* **not run**: we have no row for it.

Artefacts we cannot compute (``OUT_OF_SCOPE``: the LLM experiment) are listed but neither
judged nor counted.

A few paper numbers are printed under another metric name or on another axis than ours:
``METRIC_MAP`` translates them and says why (Fig 5a's steps to 5% are on the authors'
x axis, one evaluation block early: D15).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from analysis import paper
from analysis.tables import ROW_COLUMNS

VERDICTS = ("agrees", "differs", "reduced", "not run")
READINGS = ("consistent", "inconsistent", "unmeasured")

RULE = (
    "Exact values agree when |ours − paper| ≤ 2·√(se² + paper_se²) + half the paper's last "
    "printed digit (se = our standard error over seeds, population std/√n; paper_se where the "
    "paper gives one, else 0; a number without a standard error counts it as 0). "
    "Steps-to-x% agree when the paper's step lies in our 95% bootstrap interval of the "
    'crossing step (± half a digit). "never" agrees when our seed-mean never crosses or the '
    'interval reaches never. Bounds ">x" agree when mean + 2·se > x, "<x" when '
    'mean − 2·se < x. Figure readings "~x" (read off a log axis) agree within a factor of 3. '
    "A run smaller than the paper's (fewer seeds, fewer episodes, a smaller batch, or a "
    "smaller group size K where the paper fixes K for the whole artefact) is "
    '"reduced": the rule\'s reading is shown as consistent/inconsistent but is not a verdict.'
)

OUT_OF_SCOPE = {
    "fig10_llm": "the LLM experiment (Fig 10, App. G) has no code in the authors' repository "
    "and no preset here",
}

# the authors' MNIST evaluation interval (steps); their x axis is one such block early (D15)
_MNIST_EVAL_EVERY = 200
# set by analysis.mnist's TPO_PAPER_X_AXIS switch: our MNIST steps are then on their axis too
_PAPER_X_ENV = "TPO_PAPER_X_AXIS"


@dataclass(frozen=True)
class MetricMap:
    """A paper metric that our builders name ``ours``; the paper's value + ``shift`` is on
    our scale."""

    ours: str
    shift: float = 0.0
    why: str = ""


def _metric_map() -> dict[tuple[str, str], MetricMap]:
    on_their_axis = os.environ.get(_PAPER_X_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    shift = 0.0 if on_their_axis else float(_MNIST_EVAL_EVERY)
    why = (
        "paper's step is on the authors' x axis, as ours (TPO_PAPER_X_AXIS)"
        if on_their_axis
        else f"paper's step is on the authors' x axis, one eval block early: true step = "
        f"paper + {_MNIST_EVAL_EVERY} (D15)"
    )
    return {
        ("fig5_mnist", "step_to_5pct_test_error"): MetricMap(
            "steps_to_5pct_test_error", shift, why
        ),
    }


VERDICT_COLUMNS = [
    "paper_item",
    "artifact",
    "method",
    "metric",
    "cell",
    "setting",
    "paper",
    "paper_se",
    "paper_seeds",
    "paper_episodes",
    "paper_B",
    "value",
    "se",
    "n_seeds",
    "episodes",
    "B",
    "ci_low",
    "ci_high",
    "ours",
    "verdict",
    "reading",
    "detail",
    "discrepancy",
    "discrepancy_text",
]

_OUR_COLUMNS = ROW_COLUMNS  # the builders' row contract


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def missing(v) -> bool:
    """None, NaN, pd.NA or '' (a CSV's empty field)."""
    if v is None or v is pd.NA or (isinstance(v, str) and v == ""):
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def num(v) -> float:
    """A value as float, NaN where missing or not a number."""
    if missing(v):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plain(v):
    """A key value as plain Python (int for integral numbers), None where missing."""
    if missing(v):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def fmt(x: float, digits: int = 4) -> str:
    """A number for a table cell: 4 significant digits, scientific when small or large."""
    if missing(x):
        return "—"
    x = float(x)
    if math.isinf(x):
        return "never" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def is_steps(metric: str) -> bool:
    """A first-crossing step (``steps_to_1pct``, the paper's ``step_to_5pct_test_error``)."""
    return metric.startswith(("steps_to_", "step_to_"))


def key_text(key: Mapping) -> str:
    """``target=copy reward=sequential H=10``: the set key fields, in ``KEY_FIELDS`` order."""
    return " ".join(f"{f}={plain(key[f])}" for f in paper.KEY_FIELDS if not missing(key.get(f)))


def our_key(row: Mapping) -> dict:
    """Our row's key fields that are set (the ones that distinguish a cell)."""
    return {f: plain(row.get(f)) for f in paper.KEY_FIELDS if not missing(row.get(f))}


def tolerant(rows: pd.DataFrame | None) -> pd.DataFrame:
    """Our rows with every column verdicts read (missing ones NaN), numbers as floats."""
    if rows is None:
        rows = pd.DataFrame(columns=_OUR_COLUMNS)
    df = rows.copy()
    for c in _OUR_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan
    for c in ("value", "se", "n_seeds", "episodes", "B", "ci_low", "ci_high"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df["artifact"] = [_preset(str(a)) for a in df["artifact"]]
    return df.reset_index(drop=True)


@lru_cache(maxsize=256)
def _preset(artifact) -> str:
    """An artefact id without a scale suffix (older builders wrote ``fig3_..._smoke``)."""
    a = str(artifact)
    try:
        from analysis import selection

        return selection.preset_of(a)
    except Exception:  # noqa: BLE001 - an id selection does not know stays as it is
        return a


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The rule's answer for one number: ``ok`` True (agrees), False (differs) or None (no
    number of ours to judge), and the comparison in words."""

    ok: bool | None
    detail: str


def judge(
    pv: paper.PaperValue,
    value: float,
    se: float = math.nan,
    paper_se: float = math.nan,
    ci: tuple[float, float] = (math.nan, math.nan),
    n_seeds: float = math.nan,
    steps: bool = False,
    shift: float = 0.0,
) -> Judgement:
    """Apply ``RULE`` to one paper value and our mean ``value`` ± ``se``.

    ``steps``: the number is a first-crossing step; ``value`` NaN with ``n_seeds`` > 0 then
    means our seed-mean curve never crosses, and ``ci`` is the bootstrap interval of the
    crossing step (``ci[1] = inf``: some resamples never cross). ``shift`` is added to the
    paper's value first (``METRIC_MAP``)."""
    se0 = 0.0 if missing(se) else float(se)
    pse0 = 0.0 if missing(paper_se) else float(paper_se)
    lo, hi = (num(ci[0]), num(ci[1]))
    never = steps and missing(value) and num(n_seeds) > 0
    if missing(value) and not never:
        return Judgement(None, "no value of ours")
    x = math.inf if never else float(value)
    p = pv.value + shift
    h = pv.half_unit
    if pv.kind == "never":
        if not steps:
            return Judgement(None, "'never' applies to a steps-to-x% metric only")
        if never:
            return Judgement(True, "our seed-mean never crosses")
        if hi == math.inf:
            return Judgement(True, f"ours crosses at {fmt(x)}, but its interval reaches never")
        return Judgement(False, f"ours crosses at {fmt(x)} (interval [{fmt(lo)}, {fmt(hi)}])")
    if pv.kind == "approx":
        if not (x > 0):
            return Judgement(False, f"ours {fmt(x)} is not positive: no factor of 3 holds")
        ratio = x / p
        ok = 1 / 3 <= ratio <= 3
        return Judgement(ok, f"ours/paper = {fmt(ratio, 3)} ({'within' if ok else 'outside'} ×3)")
    if pv.kind == "lower":
        top = x + 2 * se0
        return Judgement(top > p, f"mean + 2·se = {fmt(top)} {'>' if top > p else '≤'} {fmt(p)}")
    if pv.kind == "upper":
        bottom = x - 2 * se0
        ok = bottom < p
        return Judgement(ok, f"mean − 2·se = {fmt(bottom)} {'<' if ok else '≥'} {fmt(p)}")
    if pv.kind == "range":
        a, b = pv.value + shift, pv.high + shift
        ok = x + 2 * se0 >= a - h and x - 2 * se0 <= b + h
        return Judgement(ok, f"mean ± 2·se = [{fmt(x - 2 * se0)}, {fmt(x + 2 * se0)}] vs {pv.text}")
    # exact
    shown = f"{fmt(p)} (paper {pv.text} + {fmt(shift)})" if shift else pv.text
    if steps:
        if never and missing(lo):
            lo, hi = math.inf, math.inf
        if missing(lo) or missing(hi):
            ok = abs(x - p) <= h
            return Judgement(
                ok,
                f"no bootstrap interval (fewer than 2 seeds): step {fmt(x)} vs {shown} ± {fmt(h)}",
            )
        ok = lo - h <= p <= hi + h
        where = "inside" if ok else "outside"
        return Judgement(ok, f"{shown} {where} our interval [{fmt(lo)}, {fmt(hi)}] ± {fmt(h)}")
    diff = abs(x - p)
    tol = 2 * math.sqrt(se0**2 + pse0**2) + h
    ok = diff <= tol
    return Judgement(
        ok,
        f"|ours − paper| = {fmt(diff)} {'≤' if ok else '>'} {fmt(tol)} "
        f"(= 2·√({fmt(se0)}² + {fmt(pse0)}²) + {fmt(h)})",
    )


def smaller(ours: Mapping, paper_row: Mapping) -> list[str]:
    """How our run is smaller than the paper row's (seeds, episodes, batch B, group size K);
    [] if it is not. (K only differs where ``matching_rows`` relaxed it: an artefact whose
    paper numbers share one K, run at a smaller K.)"""
    out = []
    for ours_field, paper_field, name in (
        ("n_seeds", "seeds", "seeds"),
        ("episodes", "episodes", "episodes"),
        ("B", "B", "B"),
        ("K", "K", "K"),
    ):
        mine, theirs = num(ours.get(ours_field)), num(paper_row.get(paper_field))
        if not missing(mine) and not missing(theirs) and mine < theirs:
            out.append(f"{name} {fmt(mine)} < {fmt(theirs)}")
    return out


# --------------------------------------------------------------------------------------------
# All verdicts
# --------------------------------------------------------------------------------------------


def _ours_text(r: Mapping, steps: bool) -> str:
    value, se, n = num(r.get("value")), num(r.get("se")), num(r.get("n_seeds"))
    lo, hi = num(r.get("ci_low")), num(r.get("ci_high"))
    if steps and missing(value) and n > 0:
        head = "never"
    elif missing(value):
        head = "—"
    else:
        head = fmt(value) + ("" if missing(se) else f" ± {fmt(se, 2)}")
    parts = [head]
    if not missing(n):
        parts.append(f"n={int(n)}")
    if not missing(num(r.get("episodes"))):
        parts.append(f"ep={int(num(r.get('episodes')))}")
    if not missing(lo) or not missing(hi):
        parts.append(f"CI [{fmt(lo)}, {fmt(hi)}]")
    return ", ".join(parts)


def _paper_cell(prow: Mapping) -> str:
    return key_text({f: prow[f] for f in paper.KEY_FIELDS})


def _base(prow: Mapping) -> dict:
    code = prow.get("discrepancy", "")
    return {
        "paper_item": prow["paper_item"],
        "artifact": prow["artifact"],
        "method": prow["method"],
        "metric": prow["metric"],
        "cell": _paper_cell(prow),
        "setting": "",
        "paper": prow["value"],
        "paper_se": num(prow.get("paper_se")),
        "paper_seeds": num(prow.get("seeds")),
        "paper_episodes": num(prow.get("episodes")),
        "paper_B": num(prow.get("B")),
        "value": math.nan,
        "se": math.nan,
        "n_seeds": math.nan,
        "episodes": math.nan,
        "B": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "ours": "—",
        "verdict": "not run",
        "reading": "",
        "detail": "",
        "discrepancy": code,
        "discrepancy_text": paper.DISCREPANCIES.get(code, "") if code else "",
    }


def _no_row(prow: Mapping, ours: Mapping[str, list[dict]], metric: str) -> dict:
    """The verdict of a paper number we have no row for: 'not run', or reduced/unmeasured
    when we ran its cell on a smaller run that cannot have the number (e.g. the error at
    episode 999 of a 20-episode run)."""
    row = _base(prow)
    ran = matching_rows(prow, ours, None)
    small = sorted({s for r in ran for s in smaller(r, prow)})
    if small:
        row["verdict"], row["reading"] = "reduced", "unmeasured"
        row["detail"] = f"the cell ran but has no {metric} row (reduced: {', '.join(small)})"
    else:
        row["detail"] = "no row of ours" + (
            f" (ours would be {metric})" if metric != prow["metric"] else ""
        )
    return row


def by_artifact(rows: pd.DataFrame | None) -> dict[str, list[dict]]:
    """Our rows (``tolerant``) as records, per artefact id."""
    out: dict[str, list[dict]] = {}
    for r in tolerant(rows).to_dict("records"):
        out.setdefault(r["artifact"], []).append(r)
    return out


@lru_cache(maxsize=64)
def _fixed_k(artifact: str) -> bool:
    """Whether the paper's numbers of an artefact all share one group size K (it is part of
    the setting, not swept as in Fig 13)."""
    p = paper.numbers()
    return len({k for k in p.loc[p["artifact"] == artifact, "K"] if k != ""}) == 1


def matching_rows(prow: Mapping, ours: Mapping[str, list[dict]], metric: str | None) -> list[dict]:
    """Our rows (``by_artifact``) for one paper row: same artefact, method (``all``: any)
    and metric (None: any), in a cell ``paper.matches`` accepts; sorted by setting and
    method. Where none matches and the artefact's paper numbers share one K, rows run at a
    smaller K serve it (a reduced run: smoke scale shrinks the group)."""
    hits = _matching(prow, ours, metric)
    if not hits and prow["K"] != "" and _fixed_k(prow["artifact"]):
        relaxed = _matching({**prow, "K": ""}, ours, metric)
        hits = [r for r in relaxed if num(r.get("K")) < float(prow["K"])]
    return hits


def _matching(prow: Mapping, ours: Mapping[str, list[dict]], metric: str | None) -> list[dict]:
    hits = [
        r
        for r in ours.get(prow["artifact"], [])
        if (metric is None or r["metric"] == metric)
        and (prow["method"] == "all" or r["method"] == prow["method"])
        and paper.matches(prow, our_key(r))
    ]
    return sorted(hits, key=lambda r: (str(r["setting"]), str(r["method"])))


def verdicts(rows: pd.DataFrame | None) -> pd.DataFrame:
    """One verdict per (paper number, our matching row); a paper number with no row of ours
    is one 'not run' row. Columns ``VERDICT_COLUMNS``; in ``paper_numbers.csv`` order, our
    rows of one number sorted by setting and method. Out-of-scope artefacts are left out
    (``out_of_scope()`` lists them)."""
    ours = by_artifact(rows)
    mapping = _metric_map()
    out: list[dict] = []
    for prow in paper.numbers().to_dict("records"):
        if prow["artifact"] in OUT_OF_SCOPE:
            continue
        mm = mapping.get((prow["artifact"], prow["metric"]), MetricMap(prow["metric"]))
        pv = paper.parse(prow["value"])
        steps = is_steps(prow["metric"])
        hits = matching_rows(prow, ours, mm.ours)
        if not hits:
            out.append(_no_row(prow, ours, mm.ours))
            continue
        for r in hits:
            row = _base(prow)
            row["method"] = r["method"]
            row["setting"] = "" if missing(r["setting"]) else str(r["setting"])
            for c in ("value", "se", "n_seeds", "episodes", "B", "ci_low", "ci_high"):
                row[c] = num(r[c])
            row["ours"] = _ours_text(r, steps)
            j = judge(
                pv,
                row["value"],
                row["se"],
                row["paper_se"],
                (row["ci_low"], row["ci_high"]),
                row["n_seeds"],
                steps=steps,
                shift=mm.shift,
            )
            small = smaller(r, prow)
            detail = [j.detail]
            if mm.ours != prow["metric"] or mm.shift:
                detail.append(f"ours is {mm.ours}; {mm.why}" if mm.why else f"ours is {mm.ours}")
            if small:
                row["verdict"] = "reduced"
                row["reading"] = (
                    "unmeasured" if j.ok is None else ("consistent" if j.ok else "inconsistent")
                )
                detail.append("reduced: " + ", ".join(small))
            elif j.ok is None:
                row["verdict"] = "not run"
            else:
                row["verdict"] = "agrees" if j.ok else "differs"
            row["detail"] = "; ".join(detail)
            out.append(row)
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def out_of_scope() -> pd.DataFrame:
    """The paper numbers we do not compute: artefact, paper item, method, metric, value, why."""
    p = paper.numbers()
    p = p[p["artifact"].isin(OUT_OF_SCOPE)]
    return pd.DataFrame(
        {
            "artifact": p["artifact"],
            "paper_item": p["paper_item"],
            "method": p["method"],
            "metric": p["metric"],
            "paper": p["value"],
            "why": [OUT_OF_SCOPE[a] for a in p["artifact"]],
        }
    ).reset_index(drop=True)


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Verdict counts: agrees, differs, reduced (and its readings), not run."""
    out = {v: int((df["verdict"] == v).sum()) for v in VERDICTS}
    red = df[df["verdict"] == "reduced"]
    for reading in READINGS:
        out[f"reduced: {reading}"] = int((red["reading"] == reading).sum())
    return out


def write_csv(df: pd.DataFrame, path) -> None:
    """``verdicts.csv``: the verdict rows, numbers in shortest round-trip form."""
    df[VERDICT_COLUMNS].to_csv(path, index=False, lineterminator="\n")
