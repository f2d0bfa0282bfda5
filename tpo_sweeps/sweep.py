"""A sweep's cells, as Hydra's basic sweeper would launch them, and their status in the database.

``cells`` expands a command line (``experiment=<id> algorithm=tpo,pg ...``) exactly like
``python -m tpo_sweeps -m`` does: the experiment's ``hydra.sweeper.params`` plus the command
line's own sweeps, through ``BasicSweeper.split_arguments``. Each cell's config is composed and
hashed the way its job will hash it, so the database answers which cells are missing, pending,
running, dead, completed or failed without any bookkeeping of its own. ``relaunch_commands``
covers the cells that need another go with as few multirun commands as possible.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from tpo_sweeps import config as C
from tpo_sweeps import db

MISSING, DEAD = "missing", "dead"
# what `status --relaunch` runs again: never started, failed, or whose job is gone
RELAUNCH = (MISSING, db.FAILED, db.TIMEOUT, DEAD)


@dataclass
class Cell:
    overrides: list[str]  # the job's overrides, as the sweeper passes them
    config: C.Config
    config_hash: str
    status: str = MISSING
    run_id: int | None = None
    heartbeat_at: dt.datetime | None = None
    slurm_job_id: str | None = None
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        """The run row of this cell, as the job will write it (without provenance)."""
        from tpo_sweeps.run import _promoted

        return {
            **_promoted(self.config),
            "config_hash": self.config_hash,
            "overrides": self.overrides,
            "config": C.as_dict(self.config),
        }


@dataclass
class Sweep:
    name: str
    cells: list[Cell]
    hydra_overrides: list[str] = field(default_factory=list)  # hydra.* / hydra/...
    db_url: str = ""
    heartbeat_s: float = 60.0

    def swept_keys(self) -> list[str]:
        """Keys whose value differs between cells (the ones worth showing)."""
        values: dict[str, set[str]] = {}
        for cell in self.cells:
            for key, value in map(_split, cell.overrides):
                values.setdefault(key, set()).add(value)
        return [k for k, v in values.items() if len(v) > 1]

    def counts(self) -> Counter:
        return Counter(cell.status for cell in self.cells)


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def is_hydra_override(arg: str) -> bool:
    key = arg.lstrip("+~")
    return key.startswith(("hydra.", "hydra/")) or key.split("=")[0] == "hydra"


def split_cells(task_overrides: list[str], sweeper_params: dict[str, Any]) -> list[list[str]]:
    """The per-job override lists of a multirun, in launch order (Hydra's basic sweeper)."""
    args = [f"{k}={v}" for k, v in sweeper_params.items()] + list(task_overrides)
    parsed = OverridesParser.create().parse_overrides(args)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def _compose(overrides: list[str], hydra_config: bool = False):
    return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def _with_hydra(fn):
    """Run ``fn`` with Hydra's compose API available (inside a Hydra app it already is)."""
    if GlobalHydra.instance().is_initialized():
        return fn()
    from tpo_sweeps.run import _config_dir

    with initialize_config_dir(config_dir=_config_dir(), version_base="1.3"):
        return fn()


def expand(args: list[str]) -> Sweep:
    """The sweep a ``python -m tpo_sweeps -m <args>`` command line would launch."""
    C.register_configs()
    hydra_args = [a for a in args if is_hydra_override(a)]
    task_args = [a for a in args if not is_hydra_override(a)]

    def build() -> Sweep:
        parsed = OverridesParser.create().parse_overrides(task_args)
        fixed = [a for a, o in zip(task_args, parsed, strict=True) if not o.is_sweep_override()]
        primary = _compose(fixed + hydra_args, hydra_config=True)
        params = dict(primary.hydra.sweeper.get("params") or {})
        return _sweep(primary, split_cells(task_args, params), hydra_args)

    return _with_hydra(build)


def from_multirun_config(config) -> Sweep:
    """The sweep of a running multirun, from its primary config (Hydra callbacks)."""
    params = dict(config.hydra.sweeper.get("params") or {})
    task = list(config.hydra.overrides.task)
    return _with_hydra(lambda: _sweep(config, split_cells(task, params), []))


def _sweep(primary, batch: list[list[str]], hydra_args: list[str]) -> Sweep:
    cells = []
    for overrides in batch:
        cfg = C.to_config(_compose(overrides))
        cells.append(Cell(overrides, cfg, db.config_hash(C.as_dict(cfg))))
    return Sweep(
        name=str(primary.name),
        cells=cells,
        hydra_overrides=hydra_args,
        db_url=str(primary.db.url),
        heartbeat_s=float(primary.db.heartbeat_s),
    )


def refresh(sweep: Sweep, engines: list, stale_after_s: float | None = None) -> Sweep:
    """Fill each cell's status from the databases (later engines win unless a cell is
    completed in an earlier one); a live status whose heartbeat is older than
    ``stale_after_s`` (default: 3 heartbeats + 60 s) becomes ``dead``."""
    stale = stale_after_s if stale_after_s is not None else 3 * sweep.heartbeat_s + 60.0
    hashes = [c.config_hash for c in sweep.cells]
    rows: dict[str, Any] = {}
    for engine in engines:
        for chash, row in db.runs_by_hash(engine, hashes).items():
            if rows.get(chash) is None or rows[chash].status != db.COMPLETED:
                rows[chash] = row
    now = db._now()
    for cell in sweep.cells:
        row = rows.get(cell.config_hash)
        if row is None:
            cell.status, cell.run_id = MISSING, None
            continue
        cell.status, cell.run_id = row.status, row.id
        cell.heartbeat_at, cell.slurm_job_id, cell.error = (
            row.heartbeat_at,
            row.slurm_job_id,
            row.error,
        )
        live = (db.RUNNING, db.PREEMPTED)
        if row.status in live and row.heartbeat_at is not None:
            if (now - row.heartbeat_at).total_seconds() > stale:
                cell.status = DEAD
    return sweep


def open_databases(url: str, staged: list[Path]) -> list:
    """Engines on the main database (none if nothing was written to it yet) and on the
    staged per-job stores (``db.stage=true``) under the directories ``staged``."""
    from tpo_sweeps.merge import find_stores

    engines = []
    try:
        engines.append(db.connect(url, create=False, migrate=False))
    except db.NoResults:
        pass
    for store in find_stores(staged):
        engines.append(db.connect(f"sqlite:///{store}", create=False, migrate=False))
    return engines


def relaunch_blocks(cells: list[Cell]) -> list[list[str]]:
    """Cover ``cells`` exactly with few cartesian products of their overrides.

    Each cell is a point (one value per key); merging points that agree on every key but one
    keeps the cover exact, and doing that key by key reduces a full grid to one product.
    Returns one override list per product, in Hydra's sweep syntax (``k=a,b``).
    """
    if not cells:
        return []
    keys = [k for k, _ in map(_split, cells[0].overrides)]
    blocks: list[dict[str, tuple[str, ...]]] = []
    for cell in cells:
        point = dict(map(_split, cell.overrides))
        blocks.append({k: (point[k],) for k in keys})
    for key in keys:
        merged: dict[tuple, dict[str, tuple[str, ...]]] = {}
        for block in blocks:
            rest = tuple((k, v) for k, v in block.items() if k != key)
            if rest in merged:
                have = merged[rest][key]
                merged[rest][key] = have + tuple(v for v in block[key] if v not in have)
            else:
                merged[rest] = dict(block)
        blocks = list(merged.values())
    return [[f"{k}={','.join(v)}" for k, v in block.items()] for block in blocks]


def relaunch_commands(sweep: Sweep, extra: list[str] | None = None) -> list[list[str]]:
    """Multirun command lines (argv) that launch exactly the cells in ``RELAUNCH``."""
    todo = [c for c in sweep.cells if c.status in RELAUNCH]
    base = [sys.executable, "-m", "tpo_sweeps", "-m"]
    # a fresh sweep directory: the old one's job folders 0..n would be reused and overwritten
    keep = [a for a in sweep.hydra_overrides if not a.startswith("hydra.sweep.")]
    return [base + block + keep + list(extra or []) for block in relaunch_blocks(todo)]


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
