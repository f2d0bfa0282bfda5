"""``python -m tpo_sweeps plan experiment=<id> [scale=...] [overrides]``: what a launch computes.

Before a sweep or a campaign (``experiment=paper``) is launched, the plan says, per artefact
(member preset) and in total: its cells and seeds, the seed-episodes it asks for, how many of
them the database already holds (from any sweep or machine), how many it shares with other
artefacts, what is left to compute, and the estimated time on this hardware. The *naive*
total is what running every preset on its own asks for (as the authors' code does: every
cell of every preset, shared or not); the *deduplicated* total counts each (cell, seed) once.

Estimates (``tpo_sweeps.cost``): seconds per seed-episode from the database's completed runs
on the same device — of the same cell, else of the same task and batch layout scaled by work
— else the reference figures measured on the project's 2-core CPU. The table says which
source each artefact's estimate used. Exit status: 0, or 2 with one line for bad input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from tpo_sweeps import config as C
from tpo_sweeps import cost, db, settings
from tpo_sweeps import lanes as LN
from tpo_sweeps import sweep as S

MEASURED_CELL, MEASURED_SHAPE, REFERENCE = "this cell, measured", "same shape, measured", "ref"


@dataclass
class Costs:
    """Seconds per seed-episode and per compile, learned from stored runs on one device."""

    per_cell: dict[str, float] = field(default_factory=dict)  # cell hash -> s/seed-episode
    # shape class -> [(work units per seed-episode, s per work unit)] of the stored runs
    per_unit: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)  # shape class -> s per job

    def estimate(self, cell: S.Cell) -> tuple[float, float, str]:
        """(seconds per seed-episode, compile seconds per job, source) of a cell."""
        shape = cost.shape_class(cell.ident.resolved)
        ref_unit, ref_compile = cost.REFERENCE.get(cell.config.task.name, (0.0, 0.0))
        compile_s = self.compile_s.get(shape, ref_compile)
        if cell.ident.cell in self.per_cell:
            return self.per_cell[cell.ident.cell], compile_s, MEASURED_CELL
        units = cost.work_units(cell.ident.resolved)
        # only runs of a similar size: a small run's time is mostly fixed overhead, which
        # scaled up by work would overstate a large one (and the reverse)
        similar = [c for u, c in self.per_unit.get(shape, ()) if units / 4 <= u <= units * 4]
        if similar:
            return statistics.median(similar) * units, compile_s, MEASURED_SHAPE
        return ref_unit * units, compile_s, REFERENCE


def learn_costs(engine, cells: list[S.Cell], device: str | None) -> Costs:
    """Median costs of the completed runs of ``cells``' shape classes on ``device``."""
    from sqlalchemy import select

    R = db.Run
    by_hash = {c.ident.cell: c for c in cells}
    shapes = {cost.shape_class(c.ident.resolved) for c in cells}
    per_cell, per_unit, compile_s = defaultdict(list), defaultdict(list), defaultdict(list)
    stmt = select(R.cell_hash, R.config, R.run_s, R.compile_s, R.job_seeds, R.steps).where(
        R.status == db.COMPLETED, R.run_s.is_not(None), R.job_seeds > 0
    )
    if device is not None:
        stmt = stmt.where(R.device == device)
    typed: dict[str, C.Config] = {}  # many runs share a config (all seeds of a cell)
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            key = json.dumps(row.config, sort_keys=True, default=str)
            try:
                resolved = typed.get(key) or typed.setdefault(key, C.from_dict(row.config))
            except C.ConfigError:  # a config this code cannot type any more: no estimate
                continue
            shape = cost.shape_class(resolved)
            if shape not in shapes:
                continue
            steps = resolved.task.steps
            per_episode = row.run_s / (row.job_seeds * steps)
            if row.cell_hash in by_hash:
                per_cell[row.cell_hash].append(per_episode)
            units = cost.work_units(resolved)
            per_unit[shape].append((units, per_episode / units))
            if row.compile_s is not None:
                compile_s[shape].append(row.compile_s)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    return Costs(med(per_cell), dict(per_unit), med(compile_s))


@dataclass
class Row:
    artefact: str
    cells: int = 0
    seeds: int = 0  # (cell, seed) pairs asked for
    asked: int = 0  # seed-episodes asked for
    stored: int = 0
    shared: int = 0  # seed-episodes another artefact also asks for
    todo: int = 0  # seed-episodes this artefact adds to the deduplicated launch
    seconds: float = 0.0
    sources: set[str] = field(default_factory=set)


def make_plan(sweep: S.Sweep, costs: Costs) -> tuple[list[Row], Row, dict]:
    """Per-artefact rows, the deduplicated total, and the naive totals."""
    askers: dict[tuple[str, int], set[str]] = defaultdict(set)
    for cell in sweep.cells:
        for s in cell.ident.seeds:
            askers[(cell.ident.cell, s)].add(cell.config.name)
    rows: dict[str, Row] = {}
    counted: set[tuple[str, int]] = set()  # (cell, seed) already attributed to an artefact
    # the launches with work left: compile seconds of each, keyed as the sweeper groups cells
    # into jobs (cells that differ only in traced hyperparameters are lanes of one job)
    jobs: dict[str, float] = {}
    total = Row("deduplicated")
    for cell in sweep.cells:
        row = rows.setdefault(cell.config.name, Row(cell.config.name))
        row.cells += 1
        steps = cell.ident.resolved.task.steps
        per_episode, compile_s, source = costs.estimate(cell)
        for s in cell.ident.seeds:
            pair = (cell.ident.cell, s)
            row.seeds += 1
            row.asked += steps
            done = cell.seed_status.get(s) in db.FINAL  # a diverged seed is not recomputed
            row.stored += steps if done else 0
            row.shared += steps if len(askers[pair]) > 1 else 0
            if pair in counted:
                continue
            counted.add(pair)
            total.seeds += 1
            total.asked += steps
            if done:
                total.stored += steps
                continue
            row.todo += steps
            row.seconds += per_episode * steps
            row.sources.add(source)
            jobs.setdefault(_launch_key(cell), compile_s)
    total.cells = len({c.ident.cell for c in sweep.cells})
    naive_jobs = len(jobs)
    for cell in sweep.cells:  # compile time goes to the artefact that launches the job
        key = _launch_key(cell)
        if key in jobs:
            rows[cell.config.name].seconds += jobs.pop(key)
    for row in rows.values():
        total.todo += row.todo
        total.seconds += row.seconds
        total.sources |= row.sources
    naive = {
        "cells": sum(r.cells for r in rows.values()),
        "seeds": sum(r.seeds for r in rows.values()),
        "asked": sum(r.asked for r in rows.values()),
        "jobs": naive_jobs,  # jobs (compiled programs) with seeds left to compute
    }
    return list(rows.values()), total, naive


def _launch_key(cell: S.Cell) -> str:
    """Cells with the same key run in one job (``campaign.lane_launches``)."""
    cfg = cell.config
    return "lanes:" + LN.group_key(cfg) if cfg.hardware.lanes else cell.ident.cell


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=settings.prog("plan", "python -m tpo_sweeps plan"),
        description="What a sweep or campaign will compute, what is stored, and its cost.",
    )
    p.add_argument("overrides", nargs="*", help="the multirun's overrides (experiment=<id> ...)")
    p.add_argument("-m", "--multirun", action="store_true", help="ignored (for copy-paste)")
    p.add_argument("--db", help="results database URL (default: the sweep's db.url)")
    p.add_argument(
        "--device",
        help="estimate from stored runs on this device, e.g. 'gpu:NVIDIA H200 x1' "
        "(default: this machine's JAX device; 'any' = all)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = S.expand(args.overrides)
    except Exception as e:  # unknown preset or scale, bad override: one line naming it
        if not C.is_user_error(e):
            raise
        print(f"error: {db.redact(C.error_line(e))}", file=sys.stderr)
        return 2
    url = args.db or sweep.db_url
    try:
        engines = S.open_databases(url, [])
    except db.DatabaseUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = args.device
    if device is None:
        from tpo_sweeps.provenance import device as this_device

        device = this_device()
    try:
        S.refresh(sweep, engines)
        costs = (
            learn_costs(engines[0], sweep.cells, None if device == "any" else device)
            if engines
            else Costs()
        )
    finally:
        for e in engines:
            e.dispose()
    rows, total, naive = make_plan(sweep, costs)
    _print(sweep, url, device, rows, total, naive)
    return 0


def _print(sweep: S.Sweep, url: str, device: str, rows: list[Row], total: Row, naive) -> None:
    from tabulate import tabulate

    def line(r: Row, cells=None, seeds=None, asked=None):
        return [
            r.artefact,
            r.cells if cells is None else cells,
            r.seeds if seeds is None else seeds,
            f"{r.asked if asked is None else asked:,}",
            f"{r.stored:,}",
            f"{r.shared:,}" if r.artefact != "deduplicated" else "",
            f"{r.todo:,}",
            _duration(r.seconds) if r.todo else "-",
            ", ".join(sorted(r.sources)),
        ]

    headers = [
        "artefact",
        "cells",
        "seeds",
        "seed-episodes",
        "stored",
        "shared",
        "to compute",
        "est. time",
        "estimate from",
    ]
    body = [line(r) for r in rows]
    body.append(
        [
            "naive (each preset alone)",
            naive["cells"],
            naive["seeds"],
            f"{naive['asked']:,}",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    body.append(line(total))
    print(f"plan for {sweep.name} against {db.display_url(url)} (estimates for {device}):")
    print(tabulate(body, headers=headers, disable_numparse=True))
    saved = 1 - total.asked / naive["asked"] if naive["asked"] else 0.0
    print(
        f"{naive['asked']:,} seed-episodes asked by the presets one by one; "
        f"{total.asked:,} distinct ({saved:.1%} saved); {total.stored:,} stored; "
        f"{total.todo:,} to compute in {naive['jobs']} jobs, about {_duration(total.seconds)}"
        f" here (ref = the reference CPU figures in tpo_sweeps/cost.py)"
    )
