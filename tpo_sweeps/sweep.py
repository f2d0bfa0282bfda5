"""A sweep's cells, as Hydra's basic sweeper would launch them, and their status in the database.

``expand`` turns a command line (``experiment=<id> algorithm=tpo,pg ...``) into its cells
exactly like ``python -m tpo_sweeps -m`` does: the experiment's ``hydra.sweeper.params`` plus
the command line's own sweeps, through ``BasicSweeper.split_arguments``; a campaign preset
(``experiment=paper``) gives the cells of every member preset. Each cell's config is composed
and identified the way its job will (``tpo_sweeps.identity``), so the database answers which
of its seeds are missing, pending, running, dead, completed or failed without any bookkeeping
of its own, whichever sweep or machine stored them. ``relaunch_commands``
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
from tpo_sweeps import identity as I
from tpo_sweeps.store import recency, run_row

MISSING, DEAD = "missing", "dead"
# what `status --relaunch` runs again: never started, failed, or whose job is gone
RELAUNCH = (MISSING, db.FAILED, db.TIMEOUT, DEAD)


@dataclass
class Cell:
    overrides: list[str]  # the job's overrides, as the sweeper passes them
    config: C.Config
    ident: I.Identity
    status: str = MISSING  # of the whole cell: see ``cell_status``
    seed_status: dict[int, str] = field(default_factory=dict)
    run_ids: dict[int, int] = field(default_factory=dict)  # seed -> run serving it
    heartbeat_at: dt.datetime | None = None
    slurm_job_id: str | None = None
    error: str | None = None

    @property
    def config_hash(self) -> str:
        return self.ident.cell

    @property
    def run_id(self) -> int | None:
        return min(self.run_ids.values()) if self.run_ids else None

    def rows(self) -> list[dict[str, Any]]:
        """The run rows of this cell's seeds, as its job will write them (no provenance)."""
        return [run_row(self.ident, s, self.overrides) for s in self.ident.seeds]


# how a cell's seed statuses sum up, most urgent first: a cell is running while any seed
# runs, failed while any failed, ..., diverged when every seed is stored but some diverged,
# and completed only when every seed is
_PRECEDENCE = (
    db.RUNNING,
    db.PREEMPTED,
    DEAD,
    db.FAILED,
    db.TIMEOUT,
    db.PENDING,
    MISSING,
    db.DIVERGED,
    db.COMPLETED,
)


def cell_status(seed_status: dict[int, str]) -> str:
    present = set(seed_status.values())
    return next(s for s in _PRECEDENCE if s in present) if present else MISSING


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
    from tpo_sweeps.settings import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return fn()


def expand(args: list[str]) -> Sweep:
    """The sweep a ``python -m tpo_sweeps -m <args>`` command line would launch; for a
    campaign preset (``experiment=paper``), the cells of all its member presets."""
    C.register_configs()
    hydra_args = [a for a in args if is_hydra_override(a)]
    task_args = [a for a in args if not is_hydra_override(a)]

    def build() -> Sweep:
        parsed = OverridesParser.create().parse_overrides(task_args)
        fixed = [a for a, o in zip(task_args, parsed, strict=True) if not o.is_sweep_override()]
        primary = _compose(fixed + hydra_args, hydra_config=True)
        members = list(primary.get("campaign") or [])
        if members:
            return _campaign(primary, members, task_args, hydra_args)
        params = dict(primary.hydra.sweeper.get("params") or {})
        return _sweep(primary, split_cells(task_args, params), hydra_args)

    return _with_hydra(build)


def member_args(task_args: list[str], member: str) -> list[str]:
    """A campaign's command line for one of its member presets: the member replaces the
    campaign (its ``experiment``, ``campaign`` and ``name``); every other override stays."""
    rest = [
        a
        for a in task_args
        if a.lstrip("+~").split("=")[0] not in ("experiment", "campaign", "name")
    ]
    return [f"experiment={member}", *rest]


def _campaign(primary, members: list[str], task_args: list[str], hydra_args: list[str]) -> Sweep:
    cells: list[Cell] = []
    for member in members:
        # a member that is itself a campaign contributes its members' cells
        cells += expand(member_args(task_args, member) + hydra_args).cells
    return Sweep(
        name=str(primary.name),
        cells=cells,
        hydra_overrides=hydra_args,
        db_url=str(primary.db.url),
        heartbeat_s=float(primary.db.heartbeat_s),
    )


def from_multirun_config(config) -> Sweep:
    """The sweep of a running multirun, from its primary config (Hydra callbacks)."""
    task = list(config.hydra.overrides.task)
    members = list(config.get("campaign") or [])
    if members:
        return _with_hydra(lambda: _campaign(config, members, task, []))
    params = dict(config.hydra.sweeper.get("params") or {})
    return _with_hydra(lambda: _sweep(config, split_cells(task, params), []))


# (Hydra instance, overrides) -> (typed config, identity): a multirun expands its sweep twice
# (the start callback, then the sweeper), at ~0.1 s of composition per cell
_composed: dict[tuple[int, tuple[str, ...]], tuple[C.Config, I.Identity]] = {}


def compose_cell(overrides: list[str]) -> Cell:
    """The cell a job with these overrides runs (Hydra's compose API must be initialised)."""
    key = (id(GlobalHydra.instance().hydra), tuple(overrides))
    if key not in _composed:
        cfg = C.to_config(_compose(overrides))
        _composed[key] = (cfg, I.identify(cfg))
    cfg, ident = _composed[key]
    return Cell(list(overrides), cfg, ident)


def _sweep(primary, batch: list[list[str]], hydra_args: list[str]) -> Sweep:
    cells = [compose_cell(overrides) for overrides in batch]
    return Sweep(
        name=str(primary.name),
        cells=cells,
        hydra_overrides=hydra_args,
        db_url=str(primary.db.url),
        heartbeat_s=float(primary.db.heartbeat_s),
    )


def refresh(sweep: Sweep, engines: list, stale_after_s: float | None = None) -> Sweep:
    """Fill each cell's per-seed status from the databases: a seed is completed when any
    database holds a completed run serving it (``identity.satisfies``), diverged when the
    runs serving it are stored but diverged (``db.FINAL``); otherwise it takes
    the status of the run with its own run key, else of one that would serve it (later
    engines win), and a live status whose heartbeat is older than ``stale_after_s``
    (default: 3 heartbeats + 60 s) becomes ``dead``. A cell's status sums its seeds'
    (``cell_status``)."""
    stale = stale_after_s if stale_after_s is not None else 3 * sweep.heartbeat_s + 60.0
    cells = sorted({c.ident.cell for c in sweep.cells})
    rows: list[Any] = []
    for engine in engines:
        rows += db.satisfying_runs(engine, cells, statuses=None)
    by_cell: dict[str, list[Any]] = {}
    for row in rows:
        by_cell.setdefault(row.cell_hash, []).append(row)
    now = db._now()
    for cell in sweep.cells:
        cell.seed_status, cell.run_ids = {}, {}
        cell.heartbeat_at = cell.slurm_job_id = cell.error = None
        candidates = by_cell.get(cell.ident.cell, [])
        for seed in cell.ident.seeds:
            key = cell.ident.run_key(seed)
            serving = [
                r
                for r in candidates
                if r.seed == seed and I.satisfies(db.extras_of(r), cell.ident.extras)
            ]
            done = [r for r in serving if r.status in db.FINAL]
            # its own row, else one a job with more extras will fill (campaign.unique_jobs)
            own = [r for r in serving if r.run_key == key] or serving
            if done:
                row = max(done, key=recency)  # a completed one over a diverged one
                status = row.status
                if status == db.DIVERGED:
                    cell.error = cell.error or row.error
            elif own:
                row, status = own[-1], own[-1].status
                if status in db.LIVE and row.heartbeat_at is not None:
                    if (now - row.heartbeat_at).total_seconds() > stale:
                        status = DEAD
                cell.heartbeat_at = max(
                    filter(None, (cell.heartbeat_at, row.heartbeat_at)), default=None
                )
                cell.slurm_job_id = row.slurm_job_id or cell.slurm_job_id
                cell.error = row.error or cell.error
            else:
                cell.seed_status[seed] = MISSING
                continue
            cell.seed_status[seed] = status
            cell.run_ids[seed] = row.id
        cell.status = cell_status(cell.seed_status)
    return sweep


def open_databases(url: str, staged: list[Path], must_exist: bool = False) -> list:
    """Engines on the main database (none if nothing was written to it yet) and on the
    staged per-job stores (``db.stage=true``) under the directories ``staged``. Read only:
    nothing is created or migrated. ``must_exist``: a SQLite file that is not there is an
    error (a mistyped ``--db``), not a database where every cell is missing. Raises
    ``db.DatabaseUnavailable`` (a staged path that does not exist too)."""
    from tpo_sweeps.merge import find_stores

    engines = []
    try:
        engines.append(db.connect(url, create=False, migrate=False))
    except db.NoSuchFile:
        if must_exist:
            raise
    except db.NoResults:
        pass
    try:
        stores = find_stores(staged)
    except FileNotFoundError as e:
        for engine in engines:
            engine.dispose()
        raise db.DatabaseUnavailable(str(e)) from None
    for store in stores:
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
    # cells of a campaign come from several presets: cover each preset's cells on their own
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in todo:
        groups.setdefault(tuple(k for k, _ in map(_split, cell.overrides)), []).append(cell)
    return [
        base + block + keep + list(extra or [])
        for cells in groups.values()
        for block in relaunch_blocks(cells)
    ]


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
