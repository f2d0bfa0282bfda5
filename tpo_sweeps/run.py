"""Entry point: ``python -m tpo_sweeps [-m] experiment=<id> [overrides]``.

One Hydra job = one config cell (``tpo_sweeps.identity``: the effective config) and the seeds
``seed .. seed + num_seeds - 1``. The job reads as: resolve the cell → skip the seeds the
database already holds (from any sweep, job or machine) → train the missing seeds in one
compiled program → store them in one transaction (``tpo_sweeps.store.RunStore``). A job that
raises is stored as failed with its error text, then re-raised so Hydra reports it (the other
jobs of a multirun still run).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tpo_sweeps import config as C
from tpo_sweeps import db, identity
from tpo_sweeps.provenance import provenance
from tpo_sweeps.store import RunStore
from tpo_sweeps.supervise import Heartbeat, Progress, SlurmSignals

log = logging.getLogger("tpo_sweeps")

C.register_configs()


def config_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError("tpo-sweeps: cannot find conf/config.yaml")


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (tests calling run_job directly)
        return []


def _configure_jax(hw: C.HardwareConfig, x64: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", x64)
    if hw.platform:
        jax.config.update("jax_platforms", hw.platform)
    if hw.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(hw.compilation_cache))


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _job_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def run_job(cfg: C.Config, overrides: list[str] | None = None) -> dict:
    """Run one job: resolve its cell, skip the seeds already stored, train the missing ones in
    one compiled program, store them. Returns a small status dict.

    Writes go to ``db.url`` (or, with ``db.stage``, to ``results.sqlite`` in the job's output
    directory). Inside a multirun the schema was created or migrated by the multirun's start
    callback, so the job only checks its version.
    """
    ident = identity.identify(cfg)
    overrides = overrides if overrides is not None else _overrides()
    with RunStore.for_job(cfg, _job_dir(), _in_multirun()) as store:
        stored = store.stored(ident) if cfg.skip_completed else {}
        store.link(cfg.name, list(stored.values()))
        todo = [s for s in ident.seeds if s not in stored]
        if not todo:
            log.info("skip: all %d seed(s) of cell %s are stored", len(stored), ident.cell[:12])
            return {"status": "skipped", "run_ids": stored}
        if stored:
            log.info(
                "cell %s: %d seed(s) stored, computing %d", ident.cell[:12], len(stored), len(todo)
            )
        _configure_jax(cfg.hardware, cfg.x64)
        seeds = store.start(
            ident, todo, overrides, provenance(), rerun_completed=not cfg.skip_completed
        )
        if not seeds:
            log.info("skip: cell %s was completed by another job meanwhile", ident.cell[:12])
            return {"status": "skipped", "run_ids": stored}
        beat = Heartbeat(store.heartbeat, cfg.db.heartbeat_s)

        def on_term() -> None:  # SIGTERM: SLURM will SIGKILL after KillWait; say so now
            beat.status = db.PREEMPTED
            beat.poke()

        signals = SlurmSignals(on_term=on_term)
        with beat, signals:
            try:
                result, resumed_from, ckpt = _train(cfg, ident, seeds, signals)
                pause = cfg.debug.pause_in_write_s
                rows = store.finish(
                    result,
                    before_commit=(lambda: _pause_in_write(pause)) if pause > 0 else None,
                )
            except BaseException as e:
                status = signals.status if isinstance(e, SystemExit) else None
                store.fail("".join(traceback.format_exception(e)).strip(), status or db.FAILED)
                raise
        if ckpt is not None and not cfg.checkpoint.keep:
            ckpt.clear()
        run_ids = {**stored, **store.run_ids}
        if rows is None:
            log.info(
                "cell %s was completed by another job meanwhile; kept that result", ident.cell[:12]
            )
            return {"status": "skipped", "run_ids": run_ids}
        log.info(
            "cell %s %s/%s: %d seed(s), compile %.2fs, run %.2fs, %d metric rows -> %s%s",
            ident.cell[:12],
            cfg.algorithm.name,
            cfg.task.name,
            len(seeds),
            result.compile_s,
            result.run_s,
            rows,
            db.display_url(store.url),
            f" (resumed at point {resumed_from})" if resumed_from else "",
        )
        return {
            "status": "completed",
            "run_ids": run_ids,
            "seeds": seeds,
            "summary": result.summary,
            "resumed_from": resumed_from,
        }


def _train(cfg: C.Config, ident: identity.Identity, seed_list: list[int], signals: SlurmSignals):
    """Build and run the program, with checkpoints and progress between chunks.

    Returns ``(result, points resumed from, checkpointer or None)``.
    """
    import numpy as np

    from tpo_sweeps import tasks, train
    from tpo_sweeps.checkpoint import Checkpointer

    if cfg.debug.fail or cfg.algorithm.name in cfg.debug.fail_algorithms:
        raise RuntimeError("debug.fail: failure injected on purpose")
    program = tasks.build(cfg)
    seeds = np.asarray(seed_list)
    total = program.num_points
    every = cfg.checkpoint.every
    # one checkpoint per (cell, seeds of this job): a job with other seeds starts afresh
    key = ident.job_key(seed_list)
    ckpt = Checkpointer(cfg.checkpoint.dir, key) if every else None
    start = ckpt.load(program, seeds) if ckpt is not None else None
    resumed_from = start[0] if start is not None else 0
    if resumed_from:
        log.info(
            "cell %s resumes from its checkpoint at point %d/%d", key[:12], resumed_from, total
        )
    chunk = min((n for n in (every, cfg.progress.every) if n > 0), default=0) or None
    progress = None
    if chunk:
        label = f"{cfg.name} {cfg.algorithm.name}/{cfg.task.name}"
        # a bar only when asked for and on a terminal; else throttled log lines
        bar = None if cfg.progress.every > 0 else False
        progress = Progress(total, label, resumed_from, bar=bar)
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
            cfg.hardware.seed_batch,
            cfg.hardware.seed_streams,
            dict(cfg.hardware.xla_options),
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(dcfg: DictConfig) -> dict:
    try:
        cfg = C.to_config(dcfg)
    except C.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.campaign:
        raise SystemExit(
            f"error: '{cfg.name}' is a campaign of presets ({', '.join(cfg.campaign)}): launch it "
            "with -m, or see what it computes with 'python -m tpo_sweeps plan <overrides>'"
        )
    try:
        return run_job(cfg)
    except (C.ConfigError, db.DatabaseUnavailable) as e:
        raise SystemExit(f"error: {e}") from None


def main() -> None:
    # Hydra's own messages for bad overrides already name the key; keep them short
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    if len(sys.argv) > 1 and sys.argv[1] in ("--version",):
        from tpo_sweeps import __version__

        print(__version__)
        return
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        module, func = COMMANDS[sys.argv[1]]
        sys.exit(getattr(importlib.import_module(module), func)(sys.argv[2:]))
    _hydra_main()


# `python -m tpo_sweeps <command> ...`: results bookkeeping beside the Hydra entry point
COMMANDS = {
    "status": ("tpo_sweeps.status", "main"),  # a sweep's cells by status; --relaunch
    "merge": ("tpo_sweeps.merge", "main"),  # staged per-job stores -> db.url
    "migrate": ("tpo_sweeps.merge", "migrate_main"),  # create/migrate the schema once
    "plan": ("tpo_sweeps.plan", "main"),  # what a sweep or campaign will compute and cost
    "export": ("tpo_sweeps.bundle", "export_main"),  # completed runs -> bundle files
    "import": ("tpo_sweeps.bundle", "import_main"),  # bundle files -> db.url (idempotent)
}


__all__ = ["main", "run_job", "OmegaConf"]
