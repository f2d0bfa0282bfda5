"""Entry point: ``python -m tpo_sweeps [-m] experiment=<id> [overrides]``.

One Hydra job = one static config cell (algorithm × task × shapes) whose ``num_seeds`` seeds
run in one compiled program. The job skips itself if ``db.url`` already holds a completed run
with the same config hash; otherwise it records itself as running, trains, and writes all its
metrics in one transaction. A job that raises is stored as failed with its error text, then
re-raised so Hydra reports it (the other jobs of a multirun still run).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tpo_sweeps import config as C
from tpo_sweeps import db
from tpo_sweeps.provenance import provenance

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


def run_job(cfg: C.Config, overrides: list[str] | None = None) -> dict:
    """Run one job described by a typed config; returns a small status dict."""
    from tpo_sweeps import tasks, train

    config_dict = C.as_dict(cfg)
    chash = db.config_hash(config_dict)
    engine = db.connect(cfg.db.url, cfg.db.busy_timeout_s)
    try:
        found = db.find_run(engine, chash)
        if cfg.skip_completed and found is not None and found[1] == db.COMPLETED:
            log.info("skip: run %d (%s) is already completed in %s", found[0], chash[:12], cfg.db.url)
            return {"status": "skipped", "run_id": found[0]}
        _configure_jax(cfg.hardware, cfg.x64)
        prov = provenance()
        run_id = db.start_run(
            engine,
            {
                **_promoted(cfg),
                "config_hash": chash,
                "overrides": overrides if overrides is not None else _overrides(),
                "config": config_dict,
                **prov,
            },
        )
        try:
            if cfg.debug.fail:
                raise RuntimeError("debug.fail=true: failure injected on purpose")
            program = tasks.build(cfg)
            seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
            result = train.run(program, seeds, cfg.log_every)
            rows = db.finish_run(
                engine,
                run_id,
                result.seeds,
                result.metrics,
                result.steps,
                result.summary,
                extra={"compile_s": result.compile_s, "run_s": result.run_s},
            )
        except BaseException as e:
            db.fail_run(engine, run_id, "".join(traceback.format_exception(e)).strip())
            raise
        log.info(
            "run %d %s/%s: %d seeds, compile %.2fs, run %.2fs, %d metric rows -> %s",
            run_id,
            cfg.algorithm.name,
            cfg.task.name,
            cfg.num_seeds,
            result.compile_s,
            result.run_s,
            rows,
            cfg.db.url,
        )
        return {"status": "completed", "run_id": run_id, "summary": result.summary}
    finally:
        engine.dispose()


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
    _hydra_main()


__all__ = ["main", "run_job", "OmegaConf"]
