"""Entry point: ``python -m tpo_sweeps [-m] experiment=<id> [overrides]``.

One Hydra job = one static config cell (algorithm × task × shapes) whose ``num_seeds`` seeds
run in one compiled program. The job skips itself if ``db.url`` already holds a completed run
with the same config hash; otherwise it records itself as running, trains, and writes all its
metrics in one transaction. A job that raises is stored as failed with its error text, then
re-raised so Hydra reports it (the other jobs of a multirun still run).
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
from tpo_sweeps import db
from tpo_sweeps.provenance import provenance
from tpo_sweeps.supervise import Heartbeat, Progress, SlurmSignals

log = logging.getLogger("tpo_sweeps")

C.register_configs()


def _config_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError("tpo-sweeps: cannot find conf/config.yaml")


def _promoted(cfg: C.Config) -> dict:
    a, t = cfg.algorithm, cfg.task
    return {
        "sweep": cfg.name,
        "algorithm": a.name,
        "task": t.name,
        "optimizer": cfg.optimizer.name,
        "seed": cfg.seed,
        "num_seeds": cfg.num_seeds,
        "steps": t.steps,
        "epochs": a.epochs,
        "K": getattr(t, "K", None) or getattr(t, "num_actions", None),
        "eta": getattr(a, "eta", None),
        "H": getattr(t, "H", None),
        "V": getattr(t, "V", None),
        "match": getattr(t, "match", None),
    }


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


def staged_url(job_dir: Path) -> str:
    """The per-job SQLite store of ``db.stage=true`` (merged later by ``tpo_sweeps merge``)."""
    from tpo_sweeps.merge import STAGED_STORE

    return f"sqlite:///{(job_dir / STAGED_STORE).resolve()}"


def _open_main_for_reading(cfg: C.Config):
    """Staged mode reads the main database only to skip completed cells; it may not exist."""
    try:
        return db.connect(cfg.db.url, cfg.db.busy_timeout_s, create=False, migrate=False)
    except db.DatabaseUnavailable as e:
        log.info("staged job: not checking %s for completed runs (%s)", cfg.db.url, e)
        return None


def _completed_run(engine, chash: str) -> dict | None:
    """The skip result if ``chash`` is completed in ``engine``'s database, else None."""
    found = db.find_run(engine, chash)
    if found is None or found[1] != db.COMPLETED:
        return None
    log.info("skip: run %d (%s) is already completed", found[0], chash[:12])
    return {"status": "skipped", "run_id": found[0]}


def run_job(cfg: C.Config, overrides: list[str] | None = None) -> dict:
    """Run one job described by a typed config; returns a small status dict.

    Writes go to ``db.url`` (or, with ``db.stage``, to ``results.sqlite`` in the job's output
    directory). Inside a multirun the schema was created or migrated by the multirun's start
    callback, so the job only checks its version.
    """
    config_dict = C.as_dict(cfg)
    chash = db.config_hash(config_dict)
    if cfg.db.stage and cfg.skip_completed:
        main_engine = _open_main_for_reading(cfg)
        if main_engine is not None:
            done = _completed_run(main_engine, chash)
            main_engine.dispose()
            if done is not None:
                return done
    url = staged_url(_job_dir()) if cfg.db.stage else cfg.db.url
    engine = db.connect(url, cfg.db.busy_timeout_s, migrate=not _in_multirun())
    try:
        done = _completed_run(engine, chash) if cfg.skip_completed else None
        if done is not None:
            return done
        _configure_jax(cfg.hardware, cfg.x64)
        fields = {
            **_promoted(cfg),
            "config_hash": chash,
            "overrides": overrides if overrides is not None else _overrides(),
            "config": config_dict,
            **provenance(),
        }
        run_id = db.start_run(engine, fields, rerun_completed=not cfg.skip_completed)
        if run_id is None:
            log.info("skip: %s was completed by another job meanwhile", chash[:12])
            return {"status": "skipped", "run_id": db.find_run(engine, chash)[0]}
        beat = Heartbeat(engine, run_id, cfg.db.heartbeat_s)

        def on_term() -> None:  # SIGTERM: SLURM will SIGKILL after KillWait; say so now
            beat.status = db.PREEMPTED
            beat.poke()

        signals = SlurmSignals(on_term=on_term)
        with beat, signals:
            try:
                result, resumed_from, ckpt = _train(cfg, chash, signals, run_id)
                pause = cfg.debug.pause_in_write_s
                rows = db.finish_run(
                    engine,
                    run_id,
                    result.seeds,
                    result.metrics,
                    result.steps,
                    result.summary,
                    extra={"compile_s": result.compile_s, "run_s": result.run_s},
                    before_commit=(lambda: _pause_in_write(pause)) if pause > 0 else None,
                )
            except BaseException as e:
                status = signals.status if isinstance(e, SystemExit) else None
                db.fail_run(
                    engine,
                    run_id,
                    "".join(traceback.format_exception(e)).strip(),
                    status=status or db.FAILED,
                )
                raise
        if ckpt is not None and not cfg.checkpoint.keep:
            ckpt.clear()
        if rows is None:
            log.info("run %d was completed by another job meanwhile; kept that result", run_id)
            return {"status": "skipped", "run_id": run_id}
        log.info(
            "run %d %s/%s: %d seeds, compile %.2fs, run %.2fs, %d metric rows -> %s%s",
            run_id,
            cfg.algorithm.name,
            cfg.task.name,
            cfg.num_seeds,
            result.compile_s,
            result.run_s,
            rows,
            url,
            f" (resumed at point {resumed_from})" if resumed_from else "",
        )
        return {
            "status": "completed",
            "run_id": run_id,
            "summary": result.summary,
            "resumed_from": resumed_from,
        }
    finally:
        engine.dispose()


def _train(cfg: C.Config, chash: str, signals: SlurmSignals, run_id: int):
    """Build and run the program, with checkpoints and progress between chunks.

    Returns ``(result, points resumed from, checkpointer or None)``.
    """
    import numpy as np

    from tpo_sweeps import tasks, train
    from tpo_sweeps.checkpoint import Checkpointer

    if cfg.debug.fail or cfg.algorithm.name in cfg.debug.fail_algorithms:
        raise RuntimeError("debug.fail: failure injected on purpose")
    program = tasks.build(cfg)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.num_seeds)
    total = program.num_points
    every = cfg.checkpoint.every
    ckpt = Checkpointer(cfg.checkpoint.dir, chash) if every else None
    start = ckpt.load(program, seeds) if ckpt is not None else None
    resumed_from = start[0] if start is not None else 0
    if resumed_from:
        log.info("run %d resumes from its checkpoint at point %d/%d", run_id, resumed_from, total)
    chunk = min((n for n in (every, cfg.progress.every) if n > 0), default=0) or None
    progress = None
    if chunk:
        label = f"run {run_id} {cfg.algorithm.name}/{cfg.task.name}"
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


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _hydra_main(dcfg: DictConfig) -> dict:
    try:
        cfg = C.to_config(dcfg)
    except C.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
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
}


__all__ = ["main", "run_job", "OmegaConf"]
