"""One Hydra job: resolve its cell(s) → skip what is stored → train the rest → store it.

A job is one config cell (``tpo_sweeps.identity``: the effective config) and the seeds
``seed .. seed + num_seeds - 1``, or, when the sweeper grouped cells that differ only in
traced hyperparameters, several such cells as **lanes** (``cfg.lanes``; ``tpo_sweeps.lanes``).
Each cell (lane) is looked up, claimed and stored as its own runs through its own
``RunStore``: the seeds the database already holds (from any sweep, job or machine) are
skipped, the missing ones of every lane are trained in one compiled program and stored in one
transaction per lane. A job that raises stores its runs as failed with its error text and
re-raises, so Hydra reports it (the other jobs of a multirun still run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from tpo_sweeps import config as C
from tpo_sweeps import cost, db, devices, identity
from tpo_sweeps import lanes as LN
from tpo_sweeps.provenance import provenance
from tpo_sweeps.store import RunStore
from tpo_sweeps.supervise import Heartbeat, Progress, SlurmSignals, auto_every

log = logging.getLogger("tpo_sweeps")


def overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (tests calling run_job directly)
        return []


def in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def job_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def configure_jax(hw: C.HardwareConfig, x64: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", x64)
    if str(hw.platform):  # "" (auto): JAX's own choice
        jax.config.update("jax_platforms", str(hw.platform))
    if hw.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(hw.compilation_cache))


@dataclass
class Cell:
    """One cell of a job (the job's only one, or one of its lanes) and its store."""

    cfg: C.Config
    overrides: list[str]
    ident: identity.Identity = field(init=False)
    store: RunStore | None = None
    stored: dict[int, int] = field(default_factory=dict)  # seed -> run id already stored
    was_diverged: dict[int, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # claimed by this job
    outcome: dict[str, Any] | None = None
    lane: str = ""  # this lane's traced values ("algorithm.eta=0.5"), if the job has lanes

    def __post_init__(self) -> None:
        self.ident = identity.identify(self.cfg)

    @property
    def label(self) -> str:
        lane = f" [{self.lane}]" if self.lane else ""
        return f"cell {self.ident.cell[:12]} {self.cfg.algorithm.name}/{self.cfg.task.name}{lane}"


def lane_cells(cfg: C.Config, job_overrides: list[str]) -> list[Cell]:
    """The cells of a job: its config, or one per entry of ``cfg.lanes`` (the config with that
    lane's traced values; its overrides as the cell run alone would have them)."""
    if not cfg.lanes:
        return [Cell(cfg, job_overrides)]
    base = [o for o in job_overrides if _key(o) != "lanes"]
    cells = []
    for lane in cfg.lanes:
        values = LN.parse(lane)
        # the lane is stored as this cell alone: its config without the job's lanes, its
        # overrides the job's with the lane's values in place
        lane_cfg = dataclasses.replace(LN.with_values(cfg, values), lanes=[])  # validated
        tokens = {_key(t): t for t in lane.split()}
        lane_overrides = [tokens.pop(_key(o), o) for o in base] + list(tokens.values())
        cells.append(Cell(lane_cfg, lane_overrides, lane=lane))
    if len({c.ident.cell for c in cells}) < len(cells):
        raise C.ConfigError("lanes: two lanes are the same cell")
    return cells


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def run_job(cfg: C.Config, job_overrides: list[str] | None = None) -> dict:
    """Run one job: resolve its cell(s), skip the seeds already stored, train the missing ones
    in one compiled program, store them. Returns a small status dict: ``status`` is completed,
    skipped (every seed was stored), diverged (some seed's run went non-finite: ``diverged``
    maps it to what did, and where; its results are stored, status diverged) or staged (the
    database stayed locked: the results are in ``staged_to``, for ``tpo_sweeps merge``).
    A job with lanes returns the same keys summed over its lanes (the worst status;
    ``diverged`` keys as ``"<seed> [<lane>]"``) and ``lanes``, each lane's own dict.

    Writes go to ``db.url`` (or, with ``db.stage``, to ``results.sqlite`` in the job's output
    directory). Inside a multirun the schema was created or migrated by the multirun's start
    callback, so the job only checks its version.
    """
    job_overrides = job_overrides if job_overrides is not None else overrides()
    cells = lane_cells(cfg, job_overrides)
    with contextlib.ExitStack() as stack:
        for cell in cells:
            cell.store = stack.enter_context(RunStore.for_job(cell.cfg, job_dir(), in_multirun()))
        _run_cells(cfg, cells)
    if not cfg.lanes:
        return cells[0].outcome
    return _lanes_outcome(cells)


def _run_cells(cfg: C.Config, cells: list[Cell]) -> None:
    """Skip, claim, train and store ``cells`` (the lanes of one job); sets each ``outcome``."""
    todo_cells = []
    for cell in cells:
        store, ident = cell.store, cell.ident
        cell.stored = store.stored(ident) if cfg.skip_completed else {}
        store.link(cfg.name, list(cell.stored.values()))
        # a diverged seed is stored too: the same cell and seed diverge again
        cell.was_diverged = {
            s: r.error or "diverged"
            for s, r in store.found.items()
            if s in cell.stored and r.status == db.DIVERGED
        }
        todo = [s for s in ident.seeds if s not in cell.stored]
        if not todo:
            log.info("skip: all %d seed(s) of %s are stored", len(cell.stored), cell.label)
            cell.outcome = _stored_outcome(cell)
            continue
        if cell.stored:
            log.info("%s: %d seed(s) stored, computing %d", cell.label, len(cell.stored), len(todo))
        todo_cells.append((cell, todo))
    if not todo_cells:
        return
    configure_jax(cfg.hardware, cfg.x64)
    running = []
    for cell, todo in todo_cells:
        cell.seeds = cell.store.start(
            cell.ident, todo, cell.overrides, provenance(), rerun_completed=not cfg.skip_completed
        )
        if not cell.seeds:
            log.info("skip: %s was completed by another job meanwhile", cell.label)
            cell.outcome = _stored_outcome(cell)
        else:
            running.append(cell)
    if not running:
        return

    def beat(status: str | None) -> None:
        for cell in running:
            cell.store.heartbeat(status)

    heartbeat = Heartbeat(beat, cfg.db.heartbeat_s)

    def on_term() -> None:  # SIGTERM: SLURM will SIGKILL after KillWait; say so now
        heartbeat.status = db.PREEMPTED
        heartbeat.poke()

    signals = SlurmSignals(on_term=on_term)
    with heartbeat, signals:
        try:
            results, resumed_from, ckpt = _train(cfg, running, signals)
            pause = cfg.debug.pause_in_write_s
            rows = [
                cell.store.finish(
                    result,
                    before_commit=(lambda: _pause_in_write(pause)) if pause > 0 else None,
                )
                for cell, result in zip(running, results, strict=True)
            ]
        except BaseException as e:
            status = signals.status if isinstance(e, SystemExit) else None
            text = "".join(traceback.format_exception(e)).strip()
            for cell in running:
                cell.store.fail(text, status or db.FAILED)
            if in_multirun() and not isinstance(e, (SystemExit, KeyboardInterrupt)):
                # the job's own log keeps what went wrong (the sweeper sums up in one line):
                # one line for an error in what was asked for, else the traceback
                line = C.error_line(e) if C.is_user_error(e) else text
                log.error("%s failed: %s", running[0].label, line)
            raise
    if ckpt is not None and not cfg.checkpoint.keep:
        ckpt.clear()
    for cell, result, written in zip(running, results, rows, strict=True):
        cell.outcome = _finished_outcome(cell, result, written, resumed_from)


def _finished_outcome(cell: Cell, result, rows: int | None, resumed_from: int) -> dict:
    store = cell.store
    run_ids = {**cell.stored, **store.run_ids}
    if rows is None:
        log.info("%s was completed by another job meanwhile; kept that result", cell.label)
        return {"status": "skipped", "run_ids": run_ids}
    where = store.staged_to or db.display_url(store.url)
    log.info(
        "%s: %d seed(s), compile %.2fs, run %.2fs, %d metric rows -> %s%s",
        cell.label,
        len(cell.seeds),
        result.compile_s,
        result.run_s,
        rows,
        where,
        f" (resumed at point {resumed_from})" if resumed_from else "",
    )
    diverged = dict(cell.was_diverged)
    for seed, (step, what) in sorted(result.diverged.items()):
        if seed not in cell.seeds:
            continue
        diverged[seed] = db.divergence_text(step, what)
        log.warning("%s seed %d %s; stored with status diverged", cell.label, seed, diverged[seed])
    status = "staged" if store.staged_to else db.DIVERGED if diverged else db.COMPLETED
    return {
        "status": status,
        "run_ids": run_ids,
        "seeds": cell.seeds,
        "summary": result.summary,
        "resumed_from": resumed_from,
        "diverged": diverged,
        "staged_to": str(store.staged_to) if store.staged_to else None,
    }


def _stored_outcome(cell: Cell) -> dict:
    """The status dict of a cell whose seeds were all stored already."""
    if cell.was_diverged:
        log.warning(
            "%s: %d stored seed(s) diverged (rerun with skip_completed=false to recompute)",
            cell.label,
            len(cell.was_diverged),
        )
        return {
            "status": db.DIVERGED,
            "run_ids": cell.stored,
            "seeds": sorted(cell.stored),
            "diverged": cell.was_diverged,
        }
    return {"status": "skipped", "run_ids": cell.stored}


# how a job's lanes sum up, most urgent first
_LANE_PRECEDENCE = ("staged", db.DIVERGED, db.COMPLETED, "skipped")


def _lanes_outcome(cells: list[Cell]) -> dict:
    outcomes = [c.outcome for c in cells]
    status = next(s for s in _LANE_PRECEDENCE if any(o["status"] == s for o in outcomes))
    diverged = {
        f"{seed} [{c.lane}]": text
        for c in cells
        for seed, text in (c.outcome.get("diverged") or {}).items()
    }
    staged = next((o["staged_to"] for o in outcomes if o.get("staged_to")), None)
    return {
        "status": status,
        "lanes": outcomes,
        "run_ids": {c.lane: c.outcome["run_ids"] for c in cells},
        "seeds": sorted({s for o in outcomes for s in o.get("seeds", [])}),
        "diverged": diverged,
        "staged_to": staged,
    }


def _train(cfg: C.Config, cells: list[Cell], signals: SlurmSignals):
    """Build and run the program of ``cells`` (one, or the lanes of the job), with
    checkpoints and progress between chunks. Returns ``(one train.Result per cell, points
    resumed from, checkpointer or None)``."""
    import numpy as np

    from tpo_sweeps import tasks

    if cfg.debug.fail or cfg.algorithm.name in cfg.debug.fail_algorithms:
        raise RuntimeError("debug.fail: failure injected on purpose")
    seeds = np.asarray(sorted({s for c in cells for s in c.seeds}))
    if len(cells) == 1:
        cell = cells[0]
        program = tasks.build(cell.cfg)
        result, resumed, ckpt = _run_program(
            cfg, program, seeds, cell.ident.job_key(cell.seeds), cell.ident.resolved, 1, signals
        )
        return [result], resumed, ckpt
    resolved = [c.ident.resolved for c in cells]
    try:
        program, values = LN.laned_program(resolved, tasks.build_resolved)
    except LN.LanesNotTraceable as e:
        log.warning(
            "lanes: %s/%s cannot take %s as traced values (%s); running its %d lanes one "
            "program each",
            cfg.algorithm.name,
            cfg.task.name,
            ", ".join(sorted(LN.lane_values(resolved)[0])),
            e,
            len(cells),
        )
        results, resumed, ckpt = [], 0, None
        for cell in cells:
            program = tasks.build_resolved(cell.ident.resolved)
            key = cell.ident.job_key(list(seeds))
            result, resumed, ckpt = _run_program(
                cfg, program, seeds, key, cell.ident.resolved, 1, signals
            )
            if ckpt is not None and not cfg.checkpoint.keep and cell is not cells[-1]:
                ckpt.clear()
            results.append(result)
        return results, resumed, ckpt
    key = identity._digest([c.ident.job_key(list(seeds)) for c in cells])
    laned_seeds = np.arange(len(cells) * len(seeds))
    inputs = LN.inputs(values, seeds)
    result, resumed, ckpt = _run_program(
        cfg, program, laned_seeds, key, resolved[0], len(cells), signals, inputs
    )
    log.info(
        "lanes: %d lanes × %d seed(s) of %s/%s in one program (%s), compile %.2fs",
        len(cells),
        len(seeds),
        cfg.algorithm.name,
        cfg.task.name,
        ", ".join(values),
        result.compile_s,
    )
    return LN.split(result, len(cells), seeds), resumed, ckpt


def _run_program(cfg, program, seeds, key, resolved, n_lanes, signals, inputs=None):
    """``train.run`` with the job's checkpoint (under ``key``) and progress reports."""
    from tpo_sweeps import train
    from tpo_sweeps.checkpoint import Checkpointer

    total = program.num_points
    every = cfg.checkpoint.every
    ckpt = Checkpointer(cfg.checkpoint.dir, key) if every else None
    start = ckpt.load(program, seeds, inputs) if ckpt is not None else None
    resumed_from = start[0] if start is not None else 0
    if resumed_from:
        log.info(
            "cell %s resumes from its checkpoint at point %d/%d", key[:12], resumed_from, total
        )
    report_every = cfg.progress.every
    if report_every < 0:  # auto: only runs expected to take more than about a minute
        report_every = auto_every(total, cost.reference_seconds(resolved, len(seeds)))
    chunk = min((n for n in (every, report_every) if n > 0), default=0) or None
    progress = None
    if chunk:
        label = f"{cfg.name} {cfg.algorithm.name}/{cfg.task.name}"
        if n_lanes > 1:
            label += f" ({n_lanes} lanes)"
        # a bar on a terminal when progress is reported; else (SLURM logs, files, or only
        # checkpoints asked for) throttled log lines
        bar = None if report_every > 0 else False
        progress = Progress(total, label, resumed_from, bar=bar)
        if report_every > 0:  # a SLURM log says at once what it will report, and how often
            log.info(
                "%s: %d run(s) × %d points, progress every %d points",
                label,
                len(seeds),
                total,
                report_every,
            )
    saved, last = resumed_from, None

    def on_chunk(done: int, state) -> None:
        nonlocal saved, last
        last = (done, state)
        # a SIGTERM means SIGKILL follows within KillWait: save now rather than at `every`
        if ckpt is not None and (done - saved >= every or signals.status is not None):
            ckpt.save(done, state)
            saved = done
        if progress is not None:
            progress.update(done)
        crash = cfg.debug.crash_at
        if crash and resumed_from < crash <= done:
            raise RuntimeError(f"debug.crash_at={crash}: crash injected at point {done}")

    try:
        result = train.run(
            program,
            seeds,
            cfg.log_every,
            chunk,
            on_chunk,
            start,
            devices.seed_batch(cfg.hardware.seed_batch, cfg.task.name),
            cfg.hardware.seed_streams,
            dict(cfg.hardware.xla_options),
            inputs,
        )
        if progress is not None:
            progress.update(total)  # on_chunk is not called after the last chunk
    except SystemExit:  # submitit requeues after SIGUSR2: keep the newest state
        if ckpt is not None and last is not None and last[0] > saved:
            ckpt.save(*last)
        raise
    finally:
        if progress is not None:
            progress.close()
    return result, resumed_from, ckpt


def _pause_in_write(seconds: float) -> None:
    log.warning("debug.pause_in_write_s: pausing %.1f s inside the write transaction", seconds)
    sys.stderr.flush()
    time.sleep(seconds)
