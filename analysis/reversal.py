"""Token-reversal artefacts: Fig 1b, Figs 6–9 / Tables 1–3, Figs 11–18 / Table 5.

One builder per reversal preset, registered in ``analysis.artifacts.ARTIFACTS`` under the
preset's name; each reads the runs serving its preset's cells, whichever preset computed them
(``analysis.load``: Fig 1b's cells are three of Table 3's); ``<id>_smoke`` at smoke scale:

==========================  =================================================================
id                          paper artefact(s)
==========================  =================================================================
``fig1b_terminal``          Fig 1b (terminal reward, H = 10: TPO, GRPO, DG)
``table1_vocab``            Table 1 (steps to 1% over V) and Fig 6 (one panel per V)
``table2_variations``       Table 2 (steps to 1%, 8 variants) and Fig 7 (4 x 4 grid)
``table3_terminal``         Table 3 (final exact-match error over H) and Fig 8
``fig9_ablations``          Fig 9 (anchor / Group PG / no-KL ablations, H in {7, 8, 10})
``fig11_diagnostics``       Figs 11, 12, 15 (grad norm, success / all-fail, weights, epochs)
``fig13_k_sweep``           Fig 13 (final error vs K)
``fig14_grpo_masking``      Fig 14 (GRPO with zero-variance masking)
``fig16_epoch_sweep``       Fig 16 (final error vs epochs per batch)
``table5_eta``              Table 5 and Fig 17 (TPO temperature η)
``fig18_dg_epochs``         Fig 18 (DG 1 vs 4 epochs; (b, c) from ``table2_variations``)
==========================  =================================================================

Conventions (``paper_protocols.md`` §3.4, §4.5–4.13):

* ``error`` at step t is episode t's error (0-based), measured on that episode's rollouts
  before its update.
* ``final_error_pct`` = 100 x the seed-mean error at the **last** episode (the authors' npz
  confirms this for Table 3); s.e. = population std / sqrt(n_seeds), also x 100.
* ``steps_to_1pct`` = the first episode whose **seed-mean** error is below 0.01; NaN in the
  CSV when it never is ("never" in the Markdown, as ``paper_numbers.csv`` writes it).
* The CSV's ``artifact`` column uses the paper's naming (``table1``, ``fig13``, ...), and the
  Markdown's paper column comes from ``analysis/paper_numbers.csv`` rows of that artefact and
  method whose setting agrees with the cell on the artefact's key numbers (V for Table 1;
  target, reward and matching for Table 2; H and matching for Table 3; K for Fig 13; epochs
  for Fig 16; η for Table 5).

Every builder works on partial sweeps: it builds what the database holds and logs (and
writes into the Markdown) the cells of the paper's grid that are missing.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import artifacts, load, selection, stats, tables
from analysis.load import AnalysisError

log = logging.getLogger("analysis")

TASK = "reversal"
TARGETS = ("copy", "flip", "reverse_copy", "reverse_flip")
REWARDS = ("bag_of_tokens", "sequential", "terminal")
MATCHES = ("prompts", "interactions")
DIAGNOSTICS = (
    "grad_norm",
    "frac_success",
    "frac_all_fail",
    "frac_zero_var",
    "weight_winners",
    "weight_losers",
)
# every attribute that tells two requested cells of an artefact apart (their labels)
ATTRS = ("algorithm", "target", "reward", "H", "V", "K", "B", "match", "epochs", "eta", "steps")

LABELS = {
    **tables.METHOD_LABELS,
    "tpo_token": "TPO (token)",
    "tpo_1ep": "TPO (1 ep)",
    "tpo_no_anchor": "TPO (no anchor)",
    "grpo_no_kl": "GRPO (no KL)",
    "grpo_masked": "GRPO (zv-masked)",
    "grpo_token": "GRPO (token)",
    "grpo_token_no_kl": "GRPO (token, no KL)",
    "ppo": "PPO",
    "dg_4ep": "DG (4 ep)",
    "group_pg": "Group PG",
    "reinforce": "REINFORCE",
}
ORDER = [
    "tpo",
    "tpo_token",
    "tpo_1ep",
    "grpo",
    "grpo_token",
    "grpo_no_kl",
    "grpo_token_no_kl",
    "grpo_masked",
    "tpo_no_anchor",
    "group_pg",
    "dg",
    "dg_4ep",
    "ppo",
    "pg",
    "reinforce",
]
# (palette index, line style): TPO/GRPO/DG keep the bandit figures' colours
_STYLE = {
    "tpo": (0, "-"),
    "tpo_token": (0, "-"),
    "tpo_1ep": (0, "--"),
    "grpo": (1, "-"),
    "grpo_token": (1, "-"),
    "grpo_no_kl": (6, "-"),
    "grpo_token_no_kl": (6, "-"),
    "grpo_masked": (7, "-"),
    "dg": (2, "-"),
    "dg_4ep": (2, "--"),
    "pg": (3, "-"),
    "ce": (4, "-"),
    "tpo_no_anchor": (5, "-"),
    "ppo": (8, "-"),
    "group_pg": (9, "-"),
    "reinforce": (3, ":"),
}
_MATCH_WORD = {"prompts": "prompt-matched", "interactions": "interaction-matched"}
_DIM_LABEL = {"match": "matching", "epochs": "E", "eta": "η"}
THRESHOLD = 0.01


def label(method: str) -> str:
    return LABELS.get(method, method.upper())


def method_rank(method: str) -> int:
    return ORDER.index(method) if method in ORDER else len(ORDER)


def _num(v):
    """Database value -> plain Python (None for missing, int for integral counts)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    return v


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _rank(dim: str, v):
    """Sort key of a dimension's value: paper order for words, numbers ascending."""
    if v is None:
        return (2, 0, "")
    for words in (TARGETS, REWARDS, MATCHES):
        if v in words:
            return (0, words.index(v), "")
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0, str(v))


def _show(dim: str, v) -> str:
    if v is None:
        return "—"
    if dim == "match":
        return _MATCH_WORD.get(v, v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --------------------------------------------------------------------------------------------
# Loading: one cell per distinct requested configuration (ATTRS) of the artefact
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    sweep: str  # the artefact (analysis.selection.Artefact)
    base: str  # its preset
    cells: dict[int, dict]  # cell id -> ATTRS values, in display order
    m: pd.DataFrame  # tidy metrics with a ``cell`` column
    run_ids: list[int]
    runs_of: dict[int, list[int]]  # cell id -> run ids (one per seed)
    info: pd.DataFrame  # load.runs(...) indexed by run id
    engine: Engine

    def select(self, **sel) -> list[int]:
        return [c for c, a in self.cells.items() if all(_same(a[k], v) for k, v in sel.items())]

    def values(self, dim: str, cells: Iterable[int] | None = None) -> list:
        """Distinct values of ``dim`` over ``cells`` (all cells by default), in display order."""
        seen: list = []
        for c in self.cells if cells is None else cells:
            v = self.cells[c][dim]
            if not any(_same(v, s) for s in seen):
                seen.append(v)
        return sorted(seen, key=lambda v: _rank(dim, v))

    def metric(self, name: str) -> pd.DataFrame:
        return self.m[self.m["name"] == name]


def load_sweep(
    engine: Engine | None,
    sweep: str,
    dims: Sequence[str],
    names: Sequence[str] = ("error",),
    algorithms: Iterable[str] | None = None,
) -> Data:
    """The artefact's cells and metrics. A cell is one requested configuration (``ATTRS``, as
    the preset requests it: one stored run may serve two cells, e.g. a grouped method under
    both matchings); two cells that agree on ``dims`` + algorithm would be drawn as one
    curve, which is refused."""
    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    kept = load.kept_seeds(engine, sweep)
    if algorithms is not None:
        kept = kept[kept["algorithm"].isin(list(algorithms))]
    if kept.empty:
        raise AnalysisError(artifacts.no_runs(engine, sweep))
    wrong = sorted(set(kept["task"]) - {TASK})
    if wrong:
        raise AnalysisError(f"artefact '{sweep}' selects runs of task {wrong}, not '{TASK}'")
    info = load.runs(engine, sweep=sweep).set_index("id")
    attrs_of: dict[int, dict] = {}
    for request, g in kept.groupby("request", sort=True):
        row = g.iloc[0]
        attrs_of[int(request)] = {c: _num(row[c]) for c in ATTRS}
    cells: list[dict] = []
    requests_of: list[list[int]] = []
    for request, a in attrs_of.items():
        for i, c in enumerate(cells):
            if all(_same(a[k], c[k]) for k in ATTRS):
                requests_of[i].append(request)
                break
        else:
            cells.append(a)
            requests_of.append([request])
    keys = [*dims, "algorithm"]
    for c1, c2 in itertools.combinations(cells, 2):
        if all(_same(c1[k], c2[k]) for k in keys):
            diff = [k for k in ATTRS if not _same(c1[k], c2[k])]
            where = ", ".join(f"{k}={_show(k, c1[k])}" for k in keys)
            raise AnalysisError(
                f"sweep '{sweep}' has two configurations for {where} (they differ in "
                f"{', '.join(diff)}); one curve per cell is drawn, split the sweep"
            )
    order = sorted(
        range(len(cells)),
        key=lambda i: (
            tuple(_rank(d, cells[i][d]) for d in dims),
            method_rank(cells[i]["algorithm"]),
            cells[i]["algorithm"],
        ),
    )
    cell_dict = {new: cells[old] for new, old in enumerate(order)}
    cell_of_request = {r: new for new, old in enumerate(order) for r in requests_of[old]}
    m = load.metrics(engine, sweep, names=list(names))
    m = m[m["request"].isin(list(cell_of_request))].copy()
    m["cell"] = m["request"].map(cell_of_request).astype(int)
    m["name"] = m["name"].astype(str)
    # two requests with the same labels (one cell) may be served by the same run: count it once
    m = m.drop_duplicates(["cell", "run_id", "name", "step"])
    kept = kept.assign(cell=kept["request"].map(cell_of_request))
    runs_dict = {
        c: sorted(set(kept.loc[kept["cell"] == c, "run_id"].astype(int))) for c in cell_dict
    }
    return Data(
        sweep=sweep,
        base=selection.preset_of(sweep),
        cells=cell_dict,
        m=m,
        run_ids=sorted(set(kept["run_id"].astype(int))),
        runs_of=runs_dict,
        info=info,
        engine=engine,
    )


# --------------------------------------------------------------------------------------------
# Per-cell statistics
# --------------------------------------------------------------------------------------------


def per_seed_at(df: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """One row per (cell, run, seed): the value at ``step`` (None: each seed's last step)."""
    if df.empty:
        return df
    if step is not None:
        return df[df["step"] == step]
    idx = df.groupby(["cell", "run_id", "seed"], observed=True)["step"].idxmax()
    return df.loc[idx.to_numpy()]


def per_seed_late(df: pd.DataFrame, steps: int, frac: float = 0.1) -> pd.DataFrame:
    """Each seed's mean over its last ``frac`` of the episodes (at least one)."""
    start = steps - max(1, int(round(frac * steps)))
    late = df[df["step"] >= start]
    g = late.groupby(["cell", "run_id", "seed"], observed=True)["value"].mean()
    return g.reset_index()


def curve(curves: pd.DataFrame, cell: int) -> pd.DataFrame:
    return curves[curves["cell"] == cell].sort_values("step")


def steps_to(curves: pd.DataFrame, cell: int, thr: float) -> tuple[float, int]:
    c = curve(curves, cell)
    if c.empty:
        return math.nan, 0
    hit = stats.steps_to_threshold(c["mean"].to_numpy(), c["step"].to_numpy(), thr)
    return (math.nan if hit is None else float(hit)), int(c["n_seeds"].max())


def moving_average_left(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` episodes, left-padded with the first value (Fig 1b)."""
    y = np.asarray(y, dtype=float)
    if y.size == 0 or window <= 1:
        return y
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def moving_average_centred(y: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` episodes, edge-padded (Figs 11/12/15 panels b–e)."""
    y = np.asarray(y, dtype=float)
    if y.size == 0 or window <= 1:
        return y
    left = window // 2
    padded = np.pad(y, (left, window - 1 - left), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


# --------------------------------------------------------------------------------------------
# The paper's numbers, matched on an artefact's key settings
# --------------------------------------------------------------------------------------------


def _setting_terms(setting: str) -> tuple[dict[str, float], set[str]]:
    nums: dict[str, float] = {}
    words: set[str] = set()
    for tok in setting.replace(",", " ").split():
        key, eq, val = tok.partition("=")
        if eq:
            try:
                nums[key] = float(val)
            except ValueError:
                words.add(tok)
        else:
            words.add(tok)
    return nums, words


def _agrees(key: str, want, nums: dict[str, float], words: set[str]) -> bool:
    """A paper setting agrees with ``key = want`` unless it names a different value."""
    if key in ("target", "reward"):
        named = words & set(TARGETS if key == "target" else REWARDS)
        return not named or want in named
    if key == "match":
        named = words & set(_MATCH_WORD.values())
        return not named or _MATCH_WORD.get(want) in named
    if key in nums:
        return want is not None and math.isclose(float(want), nums[key], rel_tol=1e-9)
    return True


def paper_value(artifact: str, method: str, metric: str, want: dict | None = None) -> str:
    """The paper's value ('' if none) for this artefact, method and metric, from the first
    ``paper_numbers.csv`` row whose setting agrees with every ``want`` key. A row for method
    ``all`` applies to every method."""
    p = tables.paper_numbers()
    for m in (method, "all"):
        hits = p[(p["artifact"] == artifact) & (p["method"] == m) & (p["metric"] == metric)]
        for setting, value in zip(hits["setting"], hits["value"], strict=True):
            nums, words = _setting_terms(setting)
            if all(_agrees(k, v, nums, words) for k, v in (want or {}).items()):
                return str(value)
    return ""


# --------------------------------------------------------------------------------------------
# Rows: the long CSV and the Markdown cells, side by side
# --------------------------------------------------------------------------------------------


def setting_of(a: dict, extra: Sequence[str] = ()) -> str:
    parts = [
        str(a["target"]),
        str(a["reward"]),
        f"H={_show('H', a['H'])}",
        f"V={_show('V', a['V'])}",
        f"K={_show('K', a['K'])}",
        f"B={_show('B', a['B'])}",
        _MATCH_WORD.get(a["match"], str(a["match"])),
        f"episodes={_show('steps', a['steps'])}",
    ]
    parts += [f"{k}={_show(k, a[k])}" for k in extra]
    return " ".join(parts)


class Rows:
    def __init__(self):
        self.long: list[dict] = []

    def add(self, artifact, setting, method, metric, value, se=math.nan, n=None) -> None:
        self.long.append(
            {
                "artifact": artifact,
                "setting": setting,
                "method": method,
                "metric": metric,
                "value": value,
                "se": se,
                "n_seeds": n,
            }
        )

    def over_seeds(self, artifact, setting, method, metric, values, scale=1.0):
        """Mean ± s.e. (population std / sqrt n) of one value per seed; returns them."""
        mean, se, n = stats.mean_se(np.asarray(values, dtype=float) * scale)
        if n:
            self.add(artifact, setting, method, metric, mean, se, n)
        return mean, se, n

    def frame(self) -> pd.DataFrame:
        return tables.long_frame(self.long)


def fmt_pct(mean: float, se: float, dash_above: float | None = None) -> str:
    if mean is None or math.isnan(mean):
        return "—"

    def f(x: float) -> str:
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.1e}"
        return f"{x:.3f}" if abs(x) < 0.1 else f"{x:.2f}"

    text = f(mean) + ("" if se is None or math.isnan(se) else f" ± {f(se)}")
    if dash_above is not None and mean > dash_above:
        return f"− ({text})"
    return text


def fmt_steps(value: float, steps: int | None) -> str:
    if math.isnan(value):
        return f"never (≤ {steps - 1})" if steps else "never"
    return str(int(value))


def fmt_num(mean: float, se: float = math.nan) -> str:
    return tables.fmt(mean) + ("" if math.isnan(se) else f" ± {tables.fmt(se, 2)}")


# --------------------------------------------------------------------------------------------
# The standard table: final error and steps-to-threshold per cell
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    metric: str  # CSV metric name
    header: str  # Markdown header
    kind: str  # "final" | "steps" | "at"
    threshold: float = THRESHOLD
    step: int | None = None  # for kind "at"
    dash_above: float | None = None  # Markdown "−" when the final error % exceeds this


FINAL = Measure("final_error_pct", "final error %", "final")
STEPS_1 = Measure("steps_to_1pct", "steps to 1%", "steps", 0.01)


def summarise(
    data: Data,
    artifact: str,
    dims: Sequence[str],
    measures: Sequence[Measure],
    paper_keys: Sequence[str],
    rows: Rows,
    cells: Sequence[int] | None = None,
    extra_setting: Sequence[str] = (),
    paper_artifact: str | None = None,
    paper_method: Callable[[str], str] = lambda m: m,
    ci: bool = True,
) -> list[dict]:
    """CSV rows for every cell and measure; returns the Markdown rows (one per cell)."""
    paper_artifact = paper_artifact or artifact
    err = data.metric("error")
    curves = stats.seed_stats(err, ["cell", "step"])
    finals = per_seed_at(err)
    has_paper = {
        ms.metric: bool(
            (
                (tables.paper_numbers()["artifact"] == paper_artifact)
                & (tables.paper_numbers()["metric"] == ms.metric)
            ).any()
        )
        for ms in measures
    }
    n_paper = sum(has_paper.values())
    md: list[dict] = []
    for c in data.cells if cells is None else cells:
        a = data.cells[c]
        method = a["algorithm"]
        setting = setting_of(a, extra_setting)
        row = {_DIM_LABEL.get(d, d): _show(d, a[d]) for d in dims}
        row["method"] = label(method)
        n_seeds = 0
        want = {k: a[k] for k in paper_keys}
        for ms in measures:
            if ms.kind == "steps":
                value, n = steps_to(curves, c, ms.threshold)
                rows.add(artifact, setting, method, ms.metric, value, math.nan, n)
                shown = fmt_steps(value, a["steps"])
            else:
                if ms.kind == "final":
                    vals = finals.loc[finals["cell"] == c, "value"]
                else:
                    sel = err[(err["cell"] == c) & (err["step"] == ms.step)]
                    vals = sel["value"]
                    if sel.empty:
                        row[ms.header] = "—"
                        continue
                mean, se, n = rows.over_seeds(artifact, setting, method, ms.metric, vals, 100.0)
                shown = fmt_pct(mean, se, ms.dash_above)
            n_seeds = max(n_seeds, n)
            row[ms.header] = shown
            if has_paper[ms.metric]:
                col = "paper" if n_paper == 1 else f"paper ({ms.header})"
                row[col] = paper_value(paper_artifact, paper_method(method), ms.metric, want) or "—"
            if ci and ms.kind == "final":
                lo, hi = stats.bootstrap_ci(np.asarray(vals, dtype=float) * 100.0)
                row["95% CI (final %)"] = (
                    "—" if math.isnan(lo) else f"[{fmt_pct(lo, math.nan)}, {fmt_pct(hi, math.nan)}]"
                )
        row["n_seeds"] = str(n_seeds)
        row["episodes"] = _show("steps", a["steps"])
        md.append(row)
    return md


# --------------------------------------------------------------------------------------------
# Missing cells of the paper's grid
# --------------------------------------------------------------------------------------------


def missing_cells(data: Data, grid: dict[str, Sequence], cells: Iterable[int] | None = None):
    """The combinations of ``grid`` (dimension -> the paper's values) with no cell."""
    present = [data.cells[c] for c in (data.cells if cells is None else cells)]
    dims = list(grid)
    gone = []
    for combo in itertools.product(*(grid[d] for d in dims)):
        if not any(all(_same(a[d], v) for d, v in zip(dims, combo, strict=True)) for a in present):
            gone.append(
                " ".join(
                    label(v) if d == "algorithm" else f"{_DIM_LABEL.get(d, d)}={_show(d, v)}"
                    for d, v in zip(dims, combo, strict=True)
                )
            )
    return gone


def report_missing(sweep: str, what: str, gone: list[str]) -> str:
    """Log the missing cells (a warning at paper scale, info at a smaller one: smoke cells
    are not the paper's grid) and return the Markdown line."""
    if not gone:
        return f"- {what}: every cell of the paper's grid is in the database."
    level = (
        logging.WARNING if selection.selects_like_paper(selection.scale_of(sweep)) else logging.INFO
    )
    shown = "; ".join(gone[:40]) + (f"; … ({len(gone) - 40} more)" if len(gone) > 40 else "")
    log.log(
        level,
        "%s: %s: %d cell(s) of the paper's grid not in the database: %s",
        sweep,
        what,
        len(gone),
        shown,
    )
    return f"- {what}: not in the database ({len(gone)} cell(s) of the paper's grid): {shown}."


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def header(data: Data, title: str, lines: Sequence[str] = ()) -> list[str]:
    settings = sorted({setting_of(a) for a in data.cells.values()})
    return [
        f"# {title}{artifacts.scale_note(data.sweep)}",
        "",
        f"- artefact: `{data.sweep}`",
        load.runs_line(data.engine, data.sweep, data.info, data.run_ids),
        f"- settings: {'; '.join(settings)}",
        "- error at episode t (0-based) is measured on episode t's rollouts before its update "
        "(protocols §3.4); `final error %` = 100 × seed-mean error at the last episode, "
        "± s.e. = population std (ddof=0)/sqrt(n_seeds); 95% CI = percentile bootstrap over "
        "seeds (10,000 resamples, seed 0); `steps to x%` = first episode whose seed-mean error "
        'is below x% ("never": not within the run).',
        *lines,
        "",
    ]


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    df = pd.DataFrame([{c: r.get(c, "—") for c in cols} for r in rows], columns=cols)
    return tables.markdown_table(df)


def write(out: Path, stem: str, df: pd.DataFrame, md: Sequence[str], figs: list[Path]):
    csv = tables.write_csv(df, out / f"{stem}.csv")
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    df.attrs["files"] = [str(f) for f in [*figs, md_path, csv]]
    return df


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def method_style(method: str):
    from analysis import figures

    idx, ls = _STYLE.get(method, (None, "-"))
    col = figures._PALETTE[idx] if idx is not None else figures.color(method, method_rank(method))
    return col, ls


@dataclass(frozen=True)
class Series:
    key: str  # legend key
    label: str
    color: object
    linestyle: str = "-"


def by_method(a: dict, labels: dict[str, str] | None = None) -> Series:
    m = a["algorithm"]
    col, ls = method_style(m)
    return Series(m, (labels or {}).get(m, label(m)), col, ls)


def draw_curve(ax, x, mean, se, s: Series, smooth=None, floor: float | None = None, lw=1.4):
    y = np.asarray(mean, dtype=float)
    e = np.nan_to_num(np.asarray(se, dtype=float))
    if smooth is not None:
        y, e = smooth(y), smooth(e)
    lo, hi = y - e, y + e
    if floor is not None:
        y, lo, hi = (np.maximum(v, floor) for v in (y, lo, hi))
    ax.fill_between(x, lo, hi, color=s.color, alpha=0.18, linewidth=0)
    (h,) = ax.plot(x, y, color=s.color, linestyle=s.linestyle, linewidth=lw, label=s.label)
    return h


def curve_grid(
    data: Data,
    curves: pd.DataFrame,
    rows: Sequence[tuple[str, dict]],
    cols: Sequence[tuple[str, dict]],
    series: Callable[[dict], Series],
    cells: Sequence[int] | None = None,
    smooth=None,
    ylim: tuple[float, float | None] | None = (0.0, 1.05),
    ylabel: str = "error",
    suptitle: str | None = None,
):
    """A rows x cols grid of seed-mean ± s.e. curves vs episode (linear axes); a panel
    holds the cells matching its row's and column's selections, one curve per cell."""
    from matplotlib.figure import Figure

    pool = list(data.cells if cells is None else cells)
    nr, nc = max(1, len(rows)), max(1, len(cols))
    fig = Figure(figsize=(0.6 + 3.1 * nc, 0.9 + 2.5 * nr), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True, sharey=True)
    handles: dict[str, tuple] = {}
    x_max = 1
    for i, (rlabel, rsel) in enumerate(rows or [("", {})]):
        for j, (clabel, csel) in enumerate(cols or [("", {})]):
            ax = axes[i][j]
            sel = {**rsel, **csel}
            here = [c for c in pool if all(_same(data.cells[c][k], v) for k, v in sel.items())]
            for c in reversed(here):
                cv = curve(curves, c)
                if cv.empty:
                    continue
                s = series(data.cells[c])
                h = draw_curve(ax, cv["step"].to_numpy(), cv["mean"], cv["se"], s, smooth)
                handles.setdefault(s.key, (h, s.label, method_rank(s.key)))
                x_max = max(x_max, int(cv["step"].max()))
            if not here:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", color="0.5")
            if i == 0 and clabel:
                ax.set_title(clabel, fontsize="medium")
            if j == 0:
                ax.set_ylabel(f"{rlabel}\n{ylabel}" if rlabel else ylabel)
            if i == nr - 1:
                ax.set_xlabel("episode")
    for ax in axes.flat:
        ax.set_xlim(0, x_max)
        if ylim is not None:
            ax.set_ylim(*ylim)
    legend(fig, handles)
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    return fig


def legend(fig, handles: dict[str, tuple], ncol: int | None = None) -> None:
    if not handles:
        return
    items = sorted(handles.values(), key=lambda t: t[2])
    fig.legend(
        [h for h, _, _ in items],
        [lab for _, lab, _ in items],
        loc="outside lower center",
        ncol=ncol or min(len(items), 6),
        frameon=False,
    )


def bar_chart(ax, groups: list[str], series: list[Series], values: dict, ylabel: str):
    """Grouped bars: ``values[(group, series.key)] = (mean, se)``; missing bars are skipped."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    handles = {}
    for k, s in enumerate(series):
        xs, ys, es = [], [], []
        for g_i, g in enumerate(groups):
            if (g, s.key) in values:
                mean, se = values[(g, s.key)]
                xs.append(x[g_i] - 0.4 + width * (k + 0.5))
                ys.append(mean)
                es.append(0.0 if math.isnan(se) else se)
        if xs:
            h = ax.bar(
                xs,
                ys,
                width=width * 0.95,
                yerr=es,
                capsize=2.5,
                color=s.color,
                label=s.label,
                hatch="//" if s.linestyle == "--" else None,
                edgecolor="white" if s.linestyle != "--" else "0.2",
                linewidth=0.5,
            )
            handles[s.key] = (h, s.label, method_rank(s.key))
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    return handles


def save(fig, out: Path, stem: str) -> list[Path]:
    from analysis import figures

    return figures.save(fig, out, stem)


def _figure_style():
    from analysis import figures

    return figures.style()


# --------------------------------------------------------------------------------------------
# Fig 1b
# --------------------------------------------------------------------------------------------

FIG1B_WINDOW = 40
FIG1B_CHECKPOINTS = (199, 399, 499, 999, 1499)


def build_fig1b(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("target", "reward", "H", "V", "K", "B", "match")
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    steps = max(a["steps"] for a in data.cells.values())
    measures = [
        FINAL,
        *(
            Measure(f"error_pct_at_episode_{t}", f"error % at ep {t}", "at", step=t)
            for t in FIG1B_CHECKPOINTS
            if t < steps
        ),
        Measure("steps_to_50pct", "steps to 50%", "steps", 0.5),
        Measure("steps_to_10pct", "steps to 10%", "steps", 0.1),
    ]
    md_rows = summarise(data, "fig1b", (), measures, ("H", "match"), rows, paper_artifact="table3")
    err = data.metric("error")
    curves = stats.seed_stats(err, ["cell", "step"])
    for c, a in data.cells.items():
        cv = curve(curves, c)
        if cv.empty:
            continue
        smoothed = moving_average_left(cv["mean"].to_numpy(), FIG1B_WINDOW)
        rows.add(
            "fig1b",
            setting_of(a),
            a["algorithm"],
            "smoothed40_final_error_pct",
            100.0 * smoothed[-1],
            math.nan,
            int(cv["n_seeds"].max()),
        )
        md_rows[list(data.cells).index(c)]["40-ep smoothed final %"] = fmt_pct(
            100.0 * smoothed[-1], math.nan
        )
    gone = missing_cells(data, {"algorithm": ("tpo", "grpo", "dg")})
    settings = data.values("H")
    with _figure_style():
        fig = curve_grid(
            data,
            curves,
            [("", {})],
            [(f"H = {h}", {"H": h}) for h in settings],
            by_method,
            smooth=lambda y: moving_average_left(y, FIG1B_WINDOW),
            ylabel="exact-match error",
            suptitle="Fig 1b: token reversal, terminal reward (40-episode moving average)",
        )
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Fig 1b: token reversal with terminal (exact-match) reward",
        [
            report_missing(sweep, "methods", gone),
            "- paper column: Table 3's prompt-matched value at the same H (the authors' npz "
            "for Fig 1b, H = 10, gives final 7.36% TPO, 50.37% GRPO, 99.75% DG; at episodes "
            "199/399/499/999/1499 TPO 94.9/67.7/47.8/22.9/11.0%, GRPO 94.6/95.2/84.5/62.9/58.7%;"
            " TPO first below 50% at 489, below 10% at 1164; protocols §9).",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        f"*Figure:* seed-mean exact-match error ± 1 s.e., both smoothed with a "
        f"{FIG1B_WINDOW}-episode trailing moving average left-padded with the first value; "
        "linear y axis 0–1.05.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Table 1 / Fig 6
# --------------------------------------------------------------------------------------------

DENSE_METHODS = ("tpo_token", "grpo_token", "dg", "ppo")


def build_table1(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("V",)
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    md_rows = summarise(data, "table1", dims, [STEPS_1, FINAL], ("V",), rows)
    gone = missing_cells(data, {"V": (2, 4, 8, 16), "algorithm": DENSE_METHODS})
    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    with _figure_style():
        fig = curve_grid(
            data,
            curves,
            [("", {})],
            [(f"V = {v}", {"V": v}) for v in data.values("V")],
            by_method,
            ylabel="sequence error (fraction of wrong tokens)",
            suptitle="Fig 6: dense token reversal (bag-of-tokens reward) by vocabulary size",
        )
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Table 1 / Fig 6: dense token reversal over the vocabulary size V",
        [
            report_missing(sweep, "V × method", gone),
            "- paper column: Table 1 (steps to 1%, 20 seeds) at the same V.",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure (Fig 6):* one panel per V, seed-mean error ± 1 s.e. vs episode, linear y.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Table 2 / Fig 7
# --------------------------------------------------------------------------------------------


def _variant_rows(data: Data, cells: Sequence[int] | None = None) -> list[tuple[str, dict]]:
    pool = list(data.cells if cells is None else cells)
    out = []
    for match in data.values("match", pool):
        for reward in data.values("reward", data.select(match=match)):
            if data.select(match=match, reward=reward):
                short = {"prompts": "prompt", "interactions": "interaction"}.get(match, match)
                rw = {"bag_of_tokens": "bag", "sequential": "sequential"}.get(reward, reward)
                out.append((f"{short} / {rw}", {"match": match, "reward": reward}))
    return out


def build_table2(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("match", "reward", "target")
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    md_rows = summarise(data, "table2", dims, [STEPS_1, FINAL], ("target", "reward", "match"), rows)
    gone = missing_cells(
        data,
        {
            "match": MATCHES,
            "reward": ("bag_of_tokens", "sequential"),
            "target": TARGETS,
            "algorithm": DENSE_METHODS,
        },
    )
    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    with _figure_style():
        fig = curve_grid(
            data,
            curves,
            _variant_rows(data),
            [(t.replace("_", " "), {"target": t}) for t in data.values("target")],
            by_method,
            ylabel="error",
            suptitle="Fig 7: token-reversal variations (rows: matching / reward; columns: target)",
        )
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Table 2 / Fig 7: target logics × reward types, prompt- and interaction-matched",
        [
            report_missing(sweep, "matching × reward × target × method", gone),
            '- paper column: Table 2 (steps to 1%, prompt-matched only; "never" = the paper\'s '
            '"−", not within 1000 episodes). Interaction-matched rows have no paper numbers '
            "(Fig 7 only; see protocols D6).",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure (Fig 7):* rows prompt/bag, prompt/sequential, interaction/bag, "
        "interaction/sequential (those present); columns = targets; seed-mean error ± 1 s.e., "
        "linear y.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Table 3 / Fig 8 and Fig 9
# --------------------------------------------------------------------------------------------

TERMINAL_METHODS = ("tpo", "grpo", "grpo_no_kl", "ppo", "dg")
ABLATION_METHODS = ("tpo", "grpo", "grpo_no_kl", "tpo_no_anchor", "group_pg")


def _h_grid(data: Data, title: str):
    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    rows = [(_MATCH_WORD.get(m, m), {"match": m}) for m in data.values("match")]
    cols = [(f"H = {h}", {"H": h}) for h in data.values("H")]
    return curve_grid(
        data, curves, rows, cols, by_method, ylabel="exact-match error", suptitle=title
    )


def build_table3(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("match", "H")
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    final = Measure("final_error_pct", "final error %", "final", dash_above=95.0)
    steps5 = Measure("steps_to_5pct", "steps to 5%", "steps", 0.05)
    md_rows = summarise(data, "table3", dims, [final, steps5], ("H", "match"), rows)
    gone = missing_cells(
        data, {"match": MATCHES, "H": (7, 8, 9, 10), "algorithm": TERMINAL_METHODS}
    )
    with _figure_style():
        fig = _h_grid(
            data,
            "Fig 8: terminal reward by sequence length H (rows: prompt- / interaction-matched)",
        )
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Table 3 / Fig 8: terminal (exact-match) reward over H",
        [
            report_missing(sweep, "matching × H × method", gone),
            "- `−` = final error above 95% (the paper's convention; our value in brackets). "
            "Interaction-matched: PPO/DG get B·K prompts per episode and lr·√K.",
            "- paper column: Table 3 at the same H and matching (final-episode seed mean, "
            "20 seeds).",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure (Fig 8):* rows = matching, columns = H; seed-mean exact-match error ± 1 s.e., "
        "linear y.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


def build_fig9(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("match", "H")
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    md_rows = summarise(data, "fig9", dims, [FINAL], ("H",), rows)
    gone = missing_cells(data, {"H": (7, 8, 10), "algorithm": ABLATION_METHODS})
    with _figure_style():
        fig = _h_grid(data, "Fig 9: anchor and target-matching ablations, terminal reward")
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Fig 9: anchor / Group PG / no-KL ablations (terminal reward)",
        [
            report_missing(sweep, "H × method", gone),
            "- paper column: §3.7 at H = 10 (TPO 7.4%, every ablation > 99%). Read off the "
            "paper's figure: TPO (no anchor) plateaus ~89% / 93% / 100% at H = 7 / 8 / 10; Group "
            "PG ~99–100%; GRPO (no KL) ~60% (H = 7) and ~90% (H = 8); GRPO ~15% / 28% / 52%.",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure (Fig 9):* columns = H; seed-mean exact-match error ± 1 s.e., linear y.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Figs 11, 12, 15: per-episode diagnostics
# --------------------------------------------------------------------------------------------

GROUPED = ("tpo", "tpo_1ep", "grpo", "grpo_no_kl", "grpo_masked", "tpo_no_anchor", "group_pg")
EPOCH_PANEL = ("tpo", "tpo_1ep", "dg")
FIG15_EPISODE = 400
DIAG_FLOOR = 1e-6
ERROR_FLOOR = 1e-4


def grad_norm_decay_episode(smoothed: np.ndarray, frac: float = 0.05) -> float:
    """First episode after the peak from which the smoothed gradient norm stays below
    ``frac`` x its peak; NaN if it never settles."""
    y = np.asarray(smoothed, dtype=float)
    if y.size == 0 or not np.isfinite(y).any():
        return math.nan
    peak = int(np.nanargmax(y))
    below = y < frac * y[peak]
    # below[t:] all true <=> t after the last False
    above = np.flatnonzero(~below[peak:])
    t = peak + (above[-1] + 1 if above.size else 0)
    return float(t) if t < y.size else math.nan


def build_fig11(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    data = load_sweep(engine, sweep, (), names=("error", *DIAGNOSTICS))
    rows = Rows()
    steps = max(a["steps"] for a in data.cells.values())
    window = max(1, steps // 40)
    curves = stats.seed_stats(data.m, ["cell", "name", "step"])
    err = data.metric("error")
    finals = per_seed_at(err)
    md11, md12, md15 = [], [], []
    present = set(data.m["name"].unique())
    for c, a in data.cells.items():
        method, setting = a["algorithm"], setting_of(a)
        row = {"method": label(method)}
        mean, se, n_final = rows.over_seeds(
            "fig11",
            setting,
            method,
            "final_error_pct",
            finals.loc[finals["cell"] == c, "value"],
            100.0,
        )
        row["final error %"] = fmt_pct(mean, se)
        row["paper (final %)"] = paper_value("fig11", method, "final_error_pct") or "—"
        gn = curves[(curves["cell"] == c) & (curves["name"] == "grad_norm")].sort_values("step")
        if not gn.empty and gn["mean"].notna().any():
            smoothed = moving_average_centred(gn["mean"].to_numpy(), window)
            n_gn = int(gn["n_seeds"].max())
            peak = float(np.nanmax(smoothed))
            decay = grad_norm_decay_episode(smoothed)
            rows.add("fig11", setting, method, "grad_norm_peak_smoothed", peak, math.nan, n_gn)
            rows.add("fig11", setting, method, "grad_norm_decay_episode", decay, math.nan, n_gn)
            row["grad-norm peak (smoothed)"] = tables.fmt(peak)
            row["grad norm ≤ 5% of peak from episode"] = fmt_steps(decay, a["steps"])
            row["paper (decay ep.)"] = (
                paper_value("fig11", method, "grad_norm_decay_episode") or "—"
            )
        for name, col in (
            ("grad_norm", "grad norm, late"),
            ("weight_winners", "w winners, late"),
            ("weight_losers", "w losers, late"),
        ):
            df = data.metric(name)
            late = per_seed_late(df[df["cell"] == c], a["steps"])
            if not late.empty:
                mean, se, n = rows.over_seeds(
                    "fig11", setting, method, f"{name}_late", late["value"]
                )
                row[col] = fmt_num(mean, se) if n else "—"
        row["n_seeds"] = str(n_final)
        row["episodes"] = _show("steps", a["steps"])
        md11.append(row)

        row12 = {"method": label(method)}
        allfail = data.metric("frac_all_fail")
        af = allfail[allfail["cell"] == c]
        first = per_seed_at(af, 0)
        mean, se, n0 = rows.over_seeds(
            "fig12", setting, method, "initial_all_fail_fraction", first["value"]
        )
        row12["all-fail fraction, episode 0"] = fmt_num(mean, se) if n0 else "— (single rollout)"
        if n0:
            row12["paper (episode 0)"] = (
                paper_value("fig12", method, "initial_all_fail_fraction") or "—"
            )
            late = per_seed_late(af, a["steps"])
            mean, se, _ = rows.over_seeds("fig12", setting, method, "all_fail_late", late["value"])
            row12["all-fail, late"] = fmt_num(mean, se)
        fs = data.metric("frac_success")
        late = per_seed_late(fs[fs["cell"] == c], a["steps"])
        if not late.empty:
            mean, se, _ = rows.over_seeds(
                "fig12", setting, method, "frac_success_late", late["value"]
            )
            row12["success fraction, late"] = fmt_num(mean, se)
        md12.append(row12)

        if FIG15_EPISODE < a["steps"]:
            at = per_seed_at(err[err["cell"] == c], FIG15_EPISODE)
            mean, se, n = rows.over_seeds(
                "fig15",
                setting,
                method,
                f"error_pct_at_episode_{FIG15_EPISODE}",
                at["value"],
                100.0,
            )
            row15 = {
                "method": label(method),
                f"error % at episode {FIG15_EPISODE}": fmt_pct(mean, se),
                "paper (ep. 400)": paper_value(
                    "fig15", method, f"error_pct_at_episode_{FIG15_EPISODE}"
                )
                or "—",
            }
        else:
            row15 = {
                "method": label(method),
                f"error % at episode {FIG15_EPISODE}": f"— (run has {a['steps']} episodes)",
            }
        if method in EPOCH_PANEL:
            mean, se, n = rows.over_seeds(
                "fig15",
                setting,
                method,
                "final_error_pct",
                finals.loc[finals["cell"] == c, "value"],
                100.0,
            )
            row15["final error %"] = fmt_pct(mean, se)
            row15["paper (final %)"] = paper_value("fig15", method, "final_error_pct") or "—"
        md15.append(row15)

    gone = missing_cells(data, {"algorithm": ("tpo", "tpo_1ep", "grpo", "grpo_no_kl", "ppo", "dg")})
    lacking = [d for d in DIAGNOSTICS if d not in present]
    if lacking:
        log.log(
            logging.WARNING
            if selection.selects_like_paper(selection.scale_of(sweep))
            else logging.INFO,
            "%s: no %s metrics (runs without task.diagnostics=true?)",
            sweep,
            ", ".join(lacking),
        )
    if FIG15_EPISODE >= steps:
        log.info(
            "%s: runs have %d episodes; Fig 15's error at episode %d is not available",
            sweep,
            steps,
            FIG15_EPISODE,
        )
    with _figure_style():
        fig = _diagnostics_figure(data, curves, window)
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Figs 11, 12, 15: per-episode diagnostics, terminal reward",
        [
            report_missing(sweep, "methods", gone),
            "- diagnostics missing from the database: " + (", ".join(lacking) or "none") + ".",
            f"- `late` = each seed's mean over the last 10% of episodes, then mean ± s.e. over "
            f"seeds. Grad norm = L2 norm of the raw loss gradient at the first epoch of each "
            f"batch. Smoothed curves: centred moving average over {window} episodes "
            f"(T // 40), edge padded. All-fail fraction = 1 − success fraction for grouped methods "
            f"(D12); success fraction = share of prompts with ≥ 1 exact match among K (grouped) "
            f"or share of exact rollouts (PPO/DG).",
            "- paper (10 seeds): GRPO plateaus at 12.7% with persistent gradient norms (peaks "
            "~140, 10–60 later); TPO's gradient norm decays to ~0 by about episode 300; ~90% of "
            "groups all-fail at the start; TPO (4 ep) 0.2% at episode 400 vs 1.1% for TPO (1 ep), "
            "both < 0.1% at the end; DG (1 ep) plateaus at 14%; grad-norm peaks ~3.3 (TPO 4 ep), "
            "~12 delayed (TPO 1 ep).",
        ],
    )
    md += [
        "## Fig 11: error, gradient norm, weight on winners vs losers",
        "",
        md_table(md11),
        "",
        "## Fig 12: all-fail and success fractions",
        "",
        md_table(md12),
        "",
        "## Fig 15: multiple epochs per batch (TPO 4 ep vs 1 ep vs DG)",
        "",
        md_table(md15),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure:* (a) error, (b) first-epoch gradient norm, (c) success fraction, (d) all-fail "
        "fraction (grouped methods), (e) weight on winners (solid) vs losers (dotted), (f) "
        f"TPO (4 ep) vs TPO (1 ep) vs DG error. Seed means ± 1 s.e.; (b)–(e) smoothed with a "
        f"centred window of {window} episode(s); log axes for (a), (b), (e), (f) with values below "
        f"{ERROR_FLOOR:g} (error) / {DIAG_FLOOR:g} (others) drawn at that floor.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


def _diagnostics_figure(data: Data, curves: pd.DataFrame, window: int):
    from matplotlib.figure import Figure

    labels = {"tpo": "TPO (4 ep)"}
    fig = Figure(figsize=(13.5, 7.6), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False).flat
    smooth = (lambda y: moving_average_centred(y, window)) if window > 1 else None
    panels = [
        ("(a) error", "error", None, True, ERROR_FLOOR, None),
        ("(b) gradient norm (first epoch)", "grad_norm", smooth, True, DIAG_FLOOR, None),
        ("(c) success fraction", "frac_success", smooth, False, None, None),
        ("(d) all-fail fraction (grouped)", "frac_all_fail", smooth, False, None, None),
        ("(e) weight: winners vs losers", "weight_winners", smooth, True, DIAG_FLOOR, None),
        ("(f) epochs per batch", "error", None, True, ERROR_FLOOR, EPOCH_PANEL),
    ]
    handles: dict[str, tuple] = {}
    x_max = 1
    for ax, (title, name, sm, logy, floor, only) in zip(axes, panels, strict=True):
        drawn = False
        for c in reversed(list(data.cells)):
            a = data.cells[c]
            if only is not None and a["algorithm"] not in only:
                continue
            s = by_method(a, labels)
            names = [name] + (["weight_losers"] if name == "weight_winners" else [])
            for nm in names:
                cv = curves[(curves["cell"] == c) & (curves["name"] == nm)].sort_values("step")
                if cv.empty or not cv["mean"].notna().any():
                    continue
                style = s if nm != "weight_losers" else Series(s.key, s.label, s.color, ":")
                h = draw_curve(
                    ax,
                    cv["step"].to_numpy(),
                    cv["mean"],
                    cv["se"],
                    style,
                    sm,
                    floor if logy else None,
                )
                if nm != "weight_losers":
                    handles.setdefault(s.key, (h, s.label, method_rank(s.key)))
                x_max = max(x_max, int(cv["step"].max()))
                drawn = True
        if logy and drawn:
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("episode")
    for ax in fig.axes:
        ax.set_xlim(0, x_max)
    legend(fig, handles)
    return fig


# --------------------------------------------------------------------------------------------
# Figs 13, 14, 16: final error bars
# --------------------------------------------------------------------------------------------


def _final_bars(data: Data, dim: str | None, title: str, xlabel: str):
    from matplotlib.figure import Figure

    finals = per_seed_at(data.metric("error"))
    values, series, groups = {}, {}, []
    for c, a in data.cells.items():
        g = _show(dim, a[dim]) if dim else label(a["algorithm"])
        if g not in groups:
            groups.append(g)
        s = by_method(a)
        series.setdefault(s.key, s)
        mean, se, n = stats.mean_se(finals.loc[finals["cell"] == c, "value"] * 100.0)
        if n:
            values[(g, s.key)] = (mean, se)
    fig = Figure(figsize=(max(4.2, 1.1 * len(groups) + 2.0), 3.6), layout="constrained")
    ax = fig.subplots()
    ordered = sorted(series.values(), key=lambda s: method_rank(s.key))
    if dim is None:  # one bar per method, coloured by method
        x = np.arange(len(ordered))
        for i, s in enumerate(ordered):
            if (label(s.key), s.key) in values:
                mean, se = values[(label(s.key), s.key)]
                ax.bar(
                    x[i],
                    mean,
                    yerr=0.0 if math.isnan(se) else se,
                    capsize=3,
                    color=s.color,
                    width=0.6,
                )
        ax.set_xticks(x, [s.label for s in ordered])
        ax.set_ylabel("final error %")
        ax.set_ylim(bottom=0)
    else:
        handles = bar_chart(ax, groups, ordered, values, "final error %")
        ax.set_xlabel(xlabel)
        legend(fig, handles)
    ax.set_title(title, fontsize="medium")
    return fig


def _bars_builder(
    artifact: str,
    dim: str | None,
    grid: dict,
    title: str,
    xlabel: str,
    figure_title: str,
    note: str,
):
    def fn(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
        dims = (dim,) if dim else ()
        data = load_sweep(engine, sweep, dims)
        rows = Rows()
        extra = ("epochs",) if dim == "epochs" else ()
        steps5 = Measure("steps_to_5pct", "steps to 5%", "steps", 0.05)
        md_rows = summarise(data, artifact, dims, [FINAL, steps5], dims, rows, extra_setting=extra)
        gone = missing_cells(data, grid)
        with _figure_style():
            fig = _final_bars(data, dim, figure_title, xlabel)
            figs = save(fig, out, sweep)
        md = header(data, title, [report_missing(sweep, "cells", gone), note])
        md += [
            md_table(md_rows),
            "",
            f"![{sweep}]({sweep}.png)",
            "",
            "*Figure:* final (last-episode) seed-mean error % ± 1 s.e. (population std / √n).",
        ]
        return write(out, sweep, rows.frame(), md, figs)

    return fn


# --------------------------------------------------------------------------------------------
# Table 5 / Fig 17: TPO temperature η
# --------------------------------------------------------------------------------------------


def build_table5(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    dims = ("eta",)
    data = load_sweep(engine, sweep, dims)
    rows = Rows()
    md_rows = summarise(
        data,
        "table5",
        dims,
        [FINAL, STEPS_1],
        ("eta",),
        rows,
        extra_setting=("eta",),
        paper_method=lambda m: "tpo" if m in ("tpo", "tpo_token") else m,
    )
    methods = sorted({a["algorithm"] for a in data.cells.values()}, key=method_rank)
    gone = missing_cells(data, {"eta": (0.25, 0.5, 1.0, 2.0, 4.0)})
    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    etas = data.values("eta")

    def by_eta(a: dict) -> Series:
        import seaborn as sns

        pal = sns.color_palette("viridis", max(1, len(etas)))
        i = next((k for k, e in enumerate(etas) if _same(e, a["eta"])), 0)
        return Series(f"eta={_show('eta', a['eta'])}", f"η = {_show('eta', a['eta'])}", pal[i])

    with _figure_style():
        fig = curve_grid(
            data,
            curves,
            [("", {})],
            [(label(m), {"algorithm": m}) for m in methods],
            by_eta,
            ylim=(0.0, None),
            ylabel="sequence error",
            suptitle="Fig 17: TPO temperature η (reverse copy, bag-of-tokens reward)",
        )
        figs = save(fig, out, sweep)
    md = header(
        data,
        "Table 5 / Fig 17: TPO temperature η",
        [
            report_missing(sweep, "η", gone),
            "- η = the runs' `eta` column (TPO's temperature). The paper does not say which TPO "
            "variant it used (D9); its row is shown for `tpo` and `tpo_token` alike.",
            "- paper column: Table 5 at the same η (10 seeds).",
        ],
    )
    md += [
        md_table(md_rows),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure (Fig 17):* one curve per η, seed-mean error ± 1 s.e., linear y.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Fig 18: DG with 1 vs 4 epochs
# --------------------------------------------------------------------------------------------

DG_METHODS = ("dg", "dg_4ep")


def _variations_sweep(sweep: str) -> selection.Artefact:
    """Fig 18 (b, c): Table 2's prompt-matched cells with DG at 1 and 4 epochs, at the
    artefact's scale (and with its overrides, but its own algorithms and matching)."""
    art = selection.parse(sweep)
    own = ("algorithm", "task.match")
    keep = [o for o in art.overrides if o.lstrip("+~").split("=")[0] not in own]
    variants = [f"algorithm={','.join(DG_METHODS)}", "task.match=prompts"]
    return selection.Artefact("table2_variations", art.scale, [*keep, *variants])


def build_fig18(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    from matplotlib.figure import Figure

    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    rows = Rows()
    md: list[str] = []
    lines: list[str] = []
    data_a = data_bc = None
    try:
        data_a = load_sweep(engine, sweep, ())
    except AnalysisError as e:
        if "no completed runs" not in str(e):
            raise
    variations = _variations_sweep(sweep)
    try:
        data_bc = load_sweep(
            engine, variations, ("match", "reward", "target"), algorithms=DG_METHODS
        )
    except AnalysisError as e:
        if "no completed runs" not in str(e):
            raise
    if data_a is None and data_bc is None:
        raise AnalysisError(
            f"{artifacts.no_runs(engine, sweep)}, nor for its (b, c) cells, those of "
            f"{variations.describe()}"
        )
    md_a: list[dict] = []
    md_bc: list[dict] = []
    bc_cells: list[int] = []
    if data_a is not None:
        md_a = summarise(data_a, "fig18a", (), [FINAL], (), rows)
        lines.append(
            report_missing(sweep, "(a) methods", missing_cells(data_a, {"algorithm": DG_METHODS}))
        )
    else:
        lines.append(
            f"- (a): no completed runs of the cells of `{selection.parse(sweep).describe()}`."
        )
    worse = compared = 0
    if data_bc is not None:
        bc_cells = data_bc.select(match="prompts")
        md_bc = summarise(
            data_bc,
            "fig18bc",
            ("reward", "target"),
            [FINAL],
            ("target", "reward", "match"),
            rows,
            cells=bc_cells,
        )
        finals = per_seed_at(data_bc.metric("error"))
        for reward in data_bc.values("reward", bc_cells):
            for target in data_bc.values("target", bc_cells):
                pair = [
                    data_bc.select(match="prompts", reward=reward, target=target, algorithm=m)
                    for m in DG_METHODS
                ]
                if all(pair):
                    means = [finals.loc[finals["cell"] == p[0], "value"].mean() for p in pair]
                    compared += 1
                    worse += int(means[1] > means[0])
        if compared:
            rows.add(
                "fig18bc",
                f"{compared} variants of table2",
                "dg_4ep",
                "variants_worse_than_1ep",
                float(worse),
                math.nan,
                None,
            )
        lines.append(
            report_missing(
                variations,
                "(b, c) prompt-matched variants × DG 1/4 ep",
                missing_cells(
                    data_bc,
                    {
                        "reward": ("bag_of_tokens", "sequential"),
                        "target": TARGETS,
                        "algorithm": DG_METHODS,
                    },
                    bc_cells,
                ),
            )
        )
    else:
        lines.append(
            f"- (b, c): no completed runs of the cells of `{variations.describe()}` (run "
            f"`python -m tpo_sweeps -m {variations.describe()}`)."
        )
    with _figure_style():
        ncols = int(data_a is not None) + int(bool(bc_cells))
        fig = Figure(figsize=(5.0 + (6.5 if bc_cells else 0.0), 3.8), layout="constrained")
        axes = list(fig.subplots(1, max(1, ncols), squeeze=False)[0])
        handles: dict[str, tuple] = {}
        if data_a is not None:
            ax = axes.pop(0)
            curves = stats.seed_stats(data_a.metric("error"), ["cell", "step"])
            for c in reversed(list(data_a.cells)):
                cv = curve(curves, c)
                s = by_method(data_a.cells[c])
                h = draw_curve(ax, cv["step"].to_numpy(), cv["mean"], cv["se"], s)
                handles.setdefault(s.key, (h, s.label, method_rank(s.key)))
            ax.set_ylim(0, 1.05)
            ax.set_xlim(0, max(1, int(curves["step"].max())))
            ax.set_xlabel("episode")
            ax.set_ylabel("exact-match error")
            ax.set_title("(a) terminal reward", fontsize="medium")
        if bc_cells:
            ax = axes.pop(0)
            finals = per_seed_at(data_bc.metric("error"))
            groups, values = [], {}
            short = {"bag_of_tokens": "bag", "sequential": "seq"}
            for c in bc_cells:
                a = data_bc.cells[c]
                g = f"{short.get(a['reward'], a['reward'])}\n{a['target'].replace('_', ' ')}"
                if g not in groups:
                    groups.append(g)
                mean, se, n = stats.mean_se(finals.loc[finals["cell"] == c, "value"] * 100.0)
                if n:
                    values[(g, a["algorithm"])] = (mean, se)
            series = [by_method({"algorithm": m}) for m in DG_METHODS]
            handles.update(bar_chart(ax, groups, series, values, "final error %"))
            ax.tick_params(axis="x", labelsize="x-small")
            ax.set_title("(b, c) prompt-matched variants", fontsize="medium")
        legend(fig, handles)
        fig.suptitle("Fig 18: DG with 1 vs 4 epochs per batch", fontsize="medium")
        figs = save(fig, out, sweep)
    head_data = data_a if data_a is not None else data_bc
    md = header(
        head_data,
        "Fig 18: DG with 1 vs 4 epochs per batch (App. E)",
        [
            *lines,
            "- paper: (a) 2.0% (1 ep) vs 48.3% (4 ep), 20 seeds, H and B not stated (D10); "
            "(b, c) 4-epoch DG worse in 7 of 8 prompt-matched variants of §3.5 (10 seeds).",
        ],
    )
    if data_a is not None:
        md += ["## (a) terminal reward", "", md_table(md_a), ""]
    if data_bc is not None:
        md += [
            f"## (b, c) prompt-matched variants (the cells of `{variations.describe()}`)",
            "",
            md_table(md_bc),
            "",
            f"4-epoch DG worse than 1-epoch DG (final seed mean) in {worse} of {compared} "
            "variants with both (paper: 7 of 8).",
            "",
        ]
    md += [
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure:* (a) seed-mean error ± 1 s.e.; (b, c) final error % ± 1 s.e. per variant.",
    ]
    return write(out, sweep, rows.frame(), md, figs)


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------

for _builder in (
    artifacts.Builder("fig1b_terminal", "Fig 1b: token reversal, terminal reward", build_fig1b),
    artifacts.Builder("table1_vocab", "Table 1 / Fig 6: vocabulary sweep", build_table1),
    artifacts.Builder("table2_variations", "Table 2 / Fig 7: variations", build_table2),
    artifacts.Builder("table3_terminal", "Table 3 / Fig 8: terminal reward over H", build_table3),
    artifacts.Builder("fig9_ablations", "Fig 9: anchor / target-matching ablations", build_fig9),
    artifacts.Builder("fig11_diagnostics", "Figs 11, 12, 15: diagnostics", build_fig11),
    artifacts.Builder(
        "fig13_k_sweep",
        "Fig 13: group size K",
        _bars_builder(
            "fig13",
            "K",
            {"K": (4, 8, 16, 32, 64), "algorithm": ("tpo", "grpo")},
            "Fig 13: final error vs group size K (terminal reward, H = 8)",
            "K",
            "Fig 13: final error vs K",
            "- paper column: Fig 13 at the same K (30 seeds).",
        ),
    ),
    artifacts.Builder(
        "fig14_grpo_masking",
        "Fig 14: GRPO zero-variance masking",
        _bars_builder(
            "fig14",
            None,
            {"algorithm": ("tpo", "grpo", "grpo_masked")},
            "Fig 14: GRPO with zero-variance masking (terminal reward, H = 8, K = 32)",
            "",
            "Fig 14: zero-variance masking",
            "- paper column: Fig 14 (30 seeds): GRPO 6.3% → 29.7% masked; TPO 0.05%.",
        ),
    ),
    artifacts.Builder(
        "fig16_epoch_sweep",
        "Fig 16: epochs per batch",
        _bars_builder(
            "fig16",
            "epochs",
            {"epochs": (1, 2, 4, 8, 16), "algorithm": ("tpo", "grpo")},
            "Fig 16: final error vs epochs per batch E (terminal reward, H = 8, K = 32)",
            "epochs per batch E",
            "Fig 16: final error vs E",
            '- paper column: Fig 16 at the same E (30 seeds; TPO "< 2.3%" where the text '
            "gives no number).",
        ),
    ),
    artifacts.Builder("table5_eta", "Table 5 / Fig 17: TPO temperature η", build_table5),
    artifacts.Builder("fig18_dg_epochs", "Fig 18: DG 1 vs 4 epochs", build_fig18),
):
    artifacts._register(_builder)
