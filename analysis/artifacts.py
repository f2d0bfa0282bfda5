"""The registry of builders: one per paper artefact, under the artefact id.

The id is the experiment preset's (``fig3_tabular_single``, ``table1_vocab``): the builder
reads the runs serving that preset's cells (``analysis.load``), whichever sweep stored them.
``<id>_<scale>`` (``fig3_tabular_single_smoke``), or ``--scale`` on the command line, reads
the preset's cells at that scale.

A builder is called as ``ARTIFACTS[id](engine, out_dir, sweep)`` with ``sweep`` an
``analysis.selection.Artefact`` (the id string, carrying preset, scale and overrides); it
writes its figure(s) as PNG and PDF, ``<stem>.md`` and ``<stem>.csv`` into ``out_dir`` (the
stem is the artefact id, e.g. ``fig3_tabular_single_smoke``) and returns the long-format
frame (``analysis.tables.ROW_COLUMNS``), with the written paths in ``df.attrs["files"]``.

The builders live in one module per experiment family (``FAMILIES``), each registering its
builders with ``register`` when imported. This module imports none of them at import time:
the registry loads them on first use, so any module imports alone and in any order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, selection
from analysis.errors import AnalysisError

BuildFn = Callable[[Engine | None, Path, str], pd.DataFrame]

# in registry order: `available` lists artefacts family by family, each in its own order
FAMILIES = (
    "analysis.bandits",
    "analysis.mnist",
    "analysis.reversal_terminal",
    "analysis.reversal_dense",
    "analysis.reversal_diagnostics",
)


@dataclass(frozen=True)
class Builder:
    id: str
    title: str
    fn: BuildFn
    needs_runs: bool = True  # False: built without a database (appendix_b)

    def __call__(self, engine: Engine | None, out_dir: str | Path, sweep: str | None = None):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return self.fn(engine, out, selection.parse(sweep or self.id))


class _Registry(Mapping[str, Builder]):
    """id -> Builder, loading the family modules on first use; family by family in
    ``FAMILIES`` order, each in its own order, whatever order they were imported in."""

    def __init__(self) -> None:
        self._builders: dict[str, tuple[int, int, Builder]] = {}
        self._loaded = False

    def add(self, family: str, builder: Builder) -> None:
        rank = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
        self._builders[builder.id] = (rank, len(self._builders), builder)

    def _all(self) -> dict[str, Builder]:
        if not self._loaded:
            for name in FAMILIES:
                importlib.import_module(name)
            self._loaded = True
        return {b.id: b for _, _, b in sorted(self._builders.values(), key=lambda t: t[:2])}

    def __getitem__(self, artifact_id: str) -> Builder:
        return self._all()[artifact_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


ARTIFACTS = _Registry()


def register(family: str, *builders: Builder) -> None:
    """Add the builders of a family module (``family``: its ``__name__``, in ``FAMILIES``)."""
    for builder in builders:
        ARTIFACTS.add(family, builder)


def resolve(
    artifact_id: str, scale: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Builder, selection.Artefact]:
    """Builder and artefact for an id (``<id>_<scale>`` or ``scale``: the preset's cells at
    that scale; ``overrides``: as given to the preset's multirun)."""
    art = selection.parse(artifact_id, scale, overrides)
    builder = ARTIFACTS.get(art.preset)
    if builder is not None and (builder.needs_runs or (art == builder.id and not overrides)):
        return builder, art
    known = ", ".join(ARTIFACTS)
    raise AnalysisError(
        f"unknown artefact id '{artifact_id}' (known: {known}; any but appendix_b also as "
        f"<id>_<scale>, scales: {', '.join(selection.scales())})"
    )


def build(artifact_id: str, engine: Engine | None, out_dir: str | Path) -> pd.DataFrame:
    builder, sweep = resolve(artifact_id)
    return builder(engine, out_dir, sweep)


def available(engine: Engine, scale: str | None = None) -> list[str]:
    """Artefact ids buildable from ``engine``: every artefact and scale for which at least
    one requested cell has a completed run (``load.present``; only ``scale`` if given), in
    registry order (each paper id before its smaller scales), then the artefacts that need
    no runs (``appendix_b`` is always listed). A scale with the paper's cells (``reduced``)
    gives the paper-scale ids."""
    if scale is not None and selection.selects_like_paper(scale):
        scale = selection.PAPER
    presets = [i for i, b in ARTIFACTS.items() if b.needs_runs]
    found = load.present(engine, presets)
    ids = [str(a) for a in found if scale is None or a.scale == scale]
    return ids + [i for i, b in ARTIFACTS.items() if not b.needs_runs]
