"""The one table of methods: how every table and figure names, orders and draws a method.

``METHODS`` maps an algorithm name (as the presets name it) to its ``Method``: the label in
tables and legends, its legend rank (lower first), its colour as an index into the figure
kit's palette (``analysis.figures.PALETTE``, seaborn's 10-colour colourblind palette) and its
line style. Variants of one method share its colour and differ in line style (TPO (1 ep)
dashed, DG (4 ep) dotted); DG and CE are dashed because their curves can lie on top of TPO's
(Figs 3-4). ``ALIASES`` renames an algorithm where a task runs it under the paper's name for
another method: the paper's MNIST "GRPO" is single-sample batch-standardised PG
(``batch_std_pg``, protocols §1.8). This module holds no plotting code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    label: str
    color: int  # index into analysis.figures.PALETTE
    linestyle: str = "-"


# In legend order: the rank of a method is its position here.
METHODS: dict[str, Method] = {
    "tpo": Method("TPO", 0),
    "tpo_token": Method("TPO (token)", 0),
    "tpo_1ep": Method("TPO (1 ep)", 0, "--"),
    "grpo": Method("GRPO", 1),
    "grpo_token": Method("GRPO (token)", 1),
    "grpo_no_kl": Method("GRPO (no KL)", 6),
    "grpo_token_no_kl": Method("GRPO (token, no KL)", 6),
    "grpo_masked": Method("GRPO (zv-masked)", 7),
    "tpo_no_anchor": Method("TPO (no anchor)", 5),
    "group_pg": Method("Group PG", 9),
    "dg": Method("DG", 2, "--"),
    "dg_4ep": Method("DG (4 ep)", 2, ":"),
    "ppo": Method("PPO", 8),
    "pg": Method("PG", 3),
    "reinforce": Method("REINFORCE", 3, ":"),
    "ce": Method("CE", 4, "-."),
    "batch_std_pg": Method("Batch-std PG", 1),
}
_RANK = {name: i for i, name in enumerate(METHODS)}

# task -> {algorithm as run: method as the paper names it on that task}
ALIASES: dict[str, dict[str, str]] = {"mnist": {"batch_std_pg": "grpo"}}

# colours for methods not in the table: from here on, wrapping round the palette
_UNKNOWN_COLOR_BASE = 5


def label(method: str) -> str:
    m = METHODS.get(method)
    return m.label if m is not None else method.upper()


def rank(method: str) -> int:
    """Legend position; methods not in the table come after every method that is."""
    return _RANK.get(method, len(_RANK))


def order(methods: Iterable[str], first: Sequence[str] = ()) -> list[str]:
    """Distinct ``methods`` in legend order: those in ``first`` (a figure's own legend, e.g.
    the paper's Fig 5 order) as given there, then by rank, ties alphabetically."""
    present = set(methods)
    head = [m for m in first if m in present]
    rest = sorted(present - set(head), key=lambda m: (rank(m), m))
    return head + rest


def color_index(method: str, fallback: int = 0) -> int:
    """Palette index of ``method``; ``fallback`` (e.g. its position in a figure) picks a
    colour for a method the table does not know."""
    m = METHODS.get(method)
    return m.color if m is not None else _UNKNOWN_COLOR_BASE + fallback


def linestyle(method: str) -> str:
    m = METHODS.get(method)
    return m.linestyle if m is not None else "-"


def shown_as(algorithm: str, task: str | None = None) -> str:
    """The method name an algorithm's results are shown under on ``task`` (``ALIASES``)."""
    return ALIASES.get(task or "", {}).get(algorithm, algorithm)
