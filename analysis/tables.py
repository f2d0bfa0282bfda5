"""Tables: the long-format CSV every artefact writes, its Markdown view, the paper's numbers.

CSV columns are exactly ``COLUMNS``: one row per (setting, method, metric) with the seed
mean in ``value``, its standard error in ``se`` and the number of seeds in ``n_seeds``
(``se``/``n_seeds`` empty where they do not apply, e.g. Appendix B's exact coefficients).
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

COLUMNS = ["artifact", "setting", "method", "metric", "value", "se", "n_seeds"]

METHOD_LABELS = {
    "tpo": "TPO",
    "grpo": "GRPO",
    "dg": "DG",
    "pg": "PG",
    "ce": "CE",
    "ppo": "PPO",
    "group_pg": "Group PG",
    "batch_std_pg": "Batch-std PG",
    "tpo_token": "TPO (token)",
    "grpo_token": "GRPO (token)",
    "grpo_no_kl": "GRPO (no KL)",
    "tpo_no_anchor": "TPO (no anchor)",
}
# Paper legend order; methods not listed follow alphabetically.
METHOD_ORDER = ["tpo", "grpo", "dg", "pg", "ce"]


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method.upper())


def order_methods(methods) -> list[str]:
    methods = set(methods)
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(methods - set(known))


def long_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> the long-format frame with exactly ``COLUMNS`` and stable dtypes."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["value"] = df["value"].astype(float)
    df["se"] = df["se"].astype(float)
    df["n_seeds"] = df["n_seeds"].astype("Int64")
    return df


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df[COLUMNS].to_csv(path, index=False)  # shortest round-trip repr: lossless
    return path


@lru_cache(maxsize=1)
def paper_numbers() -> pd.DataFrame:
    """``analysis/paper_numbers.csv`` (a copy of the reference sheet), values as strings."""
    with resources.files("analysis").joinpath("paper_numbers.csv").open() as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def paper_value(artifact: str, setting: str, method: str, metric: str) -> str:
    """The paper's number for this row, or '' (exact match on all four keys)."""
    p = paper_numbers()
    hit = p[
        (p["artifact"] == artifact)
        & (p["setting"] == setting)
        & (p["method"] == method)
        & (p["metric"] == metric)
    ]
    return "" if hit.empty else str(hit["value"].iloc[0])


def has_paper_numbers(artifact: str) -> bool:
    return bool((paper_numbers()["artifact"] == artifact).any())


def fmt(x: float | None, digits: int = 3) -> str:
    """Compact number for Markdown: scientific below 1e-2, '—' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = float(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits + 1}g}"


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub Markdown table; cells are shown as formatted here (no re-parsing of numbers)."""
    return df.to_markdown(index=False, disable_numparse=True)
