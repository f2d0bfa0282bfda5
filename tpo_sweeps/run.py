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
from omegaconf import DictConfig, OmegaConf, open_dict

from tpo_sweeps import config as C
from tpo_sweeps import cost, db, identity, settings
from tpo_sweeps.provenance import provenance
from tpo_sweeps.settings import config_dir
from tpo_sweeps.store import RunStore
from tpo_sweeps.supervise import Heartbeat, Progress, SlurmSignals, auto_every

log = logging.getLogger("tpo_sweeps")

C.register_configs()


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (tests calling run_job directly)
        return []


def _configure_jax(hw: C.HardwareConfig, x64: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", x64)
    if str(hw.platform):  # "" (auto): JAX's own choice
        jax.config.update("jax_platforms", str(hw.platform))
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
    one compiled program, store them. Returns a small status dict: ``status`` is completed,
    skipped (every seed was stored), diverged (some seed's run went non-finite: ``diverged``
    maps it to what did, and where; its results are stored, status diverged) or staged (the
    database stayed locked: the results are in ``staged_to``, for ``tpo_sweeps merge``).

    Writes go to ``db.url`` (or, with ``db.stage``, to ``results.sqlite`` in the job's output
    directory). Inside a multirun the schema was created or migrated by the multirun's start
    callback, so the job only checks its version.
    """
    ident = identity.identify(cfg)
    overrides = overrides if overrides is not None else _overrides()
    with RunStore.for_job(cfg, _job_dir(), _in_multirun()) as store:
        stored = store.stored(ident) if cfg.skip_completed else {}
        store.link(cfg.name, list(stored.values()))
        # a diverged seed is stored too: the same cell and seed diverge again
        was_diverged = {
            s: r.error or "diverged"
            for s, r in store.found.items()
            if s in stored and r.status == db.DIVERGED
        }
        todo = [s for s in ident.seeds if s not in stored]
        if not todo:
            log.info("skip: all %d seed(s) of cell %s are stored", len(stored), ident.cell[:12])
            return _stored_outcome(ident, stored, was_diverged)
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
            return _stored_outcome(ident, stored, was_diverged)
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
                text = "".join(traceback.format_exception(e)).strip()
                store.fail(text, status or db.FAILED)
                if _in_multirun() and not isinstance(e, (SystemExit, KeyboardInterrupt)):
                    # the job's own log keeps what went wrong (the sweeper sums up in one
                    # line): one line for an error in what was asked for, else the traceback
                    log.error(
                        "cell %s %s/%s failed: %s",
                        ident.cell[:12],
                        cfg.algorithm.name,
                        cfg.task.name,
                        C.error_line(e) if C.is_user_error(e) else text,
                    )
                raise
        if ckpt is not None and not cfg.checkpoint.keep:
            ckpt.clear()
        run_ids = {**stored, **store.run_ids}
        if rows is None:
            log.info(
                "cell %s was completed by another job meanwhile; kept that result", ident.cell[:12]
            )
            return {"status": "skipped", "run_ids": run_ids}
        where = store.staged_to or db.display_url(store.url)
        log.info(
            "cell %s %s/%s: %d seed(s), compile %.2fs, run %.2fs, %d metric rows -> %s%s",
            ident.cell[:12],
            cfg.algorithm.name,
            cfg.task.name,
            len(seeds),
            result.compile_s,
            result.run_s,
            rows,
            where,
            f" (resumed at point {resumed_from})" if resumed_from else "",
        )
        diverged = dict(was_diverged)
        for seed, (step, what) in sorted(result.diverged.items()):
            diverged[seed] = db.divergence_text(step, what)
            log.warning(
                "cell %s %s/%s seed %d %s; stored with status diverged",
                ident.cell[:12],
                cfg.algorithm.name,
                cfg.task.name,
                seed,
                diverged[seed],
            )
        status = "staged" if store.staged_to else db.DIVERGED if diverged else db.COMPLETED
        return {
            "status": status,
            "run_ids": run_ids,
            "seeds": seeds,
            "summary": result.summary,
            "resumed_from": resumed_from,
            "diverged": diverged,
            "staged_to": str(store.staged_to) if store.staged_to else None,
        }


def _stored_outcome(ident: identity.Identity, stored: dict, diverged: dict) -> dict:
    """The status dict of a job whose seeds were all stored already."""
    if diverged:
        log.warning(
            "cell %s: %d stored seed(s) diverged (rerun with skip_completed=false to recompute)",
            ident.cell[:12],
            len(diverged),
        )
        return {
            "status": db.DIVERGED,
            "run_ids": stored,
            "seeds": sorted(stored),
            "diverged": diverged,
        }
    return {"status": "skipped", "run_ids": stored}


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
    report_every = cfg.progress.every
    if report_every < 0:  # auto: only runs expected to take more than about a minute
        expected = cost.reference_seconds(ident.resolved, len(seed_list))
        report_every = auto_every(total, expected)
    chunk = min((n for n in (every, report_every) if n > 0), default=0) or None
    progress = None
    if chunk:
        label = f"{cfg.name} {cfg.algorithm.name}/{cfg.task.name}"
        # a bar on a terminal when progress is reported; else (SLURM logs, files, or only
        # checkpoints asked for) throttled log lines
        bar = None if report_every > 0 else False
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
    redact_logs()  # again here: a submitit job process does not run main()
    try:
        return _job(dcfg)
    except Exception as e:
        # a single job: one line, before Hydra logs "Error executing job" around it; in a
        # multirun the job fails (stored) and the sweeper sums up at the end
        if _in_multirun() or _FULL_ERROR or not C.is_user_error(e):
            raise
        raise SystemExit(f"error: {db.redact(C.error_line(e))}") from None


_FULL_ERROR = False  # HYDRA_FULL_ERROR=1 was set: tracebacks for every error


def _job(dcfg: DictConfig) -> dict:
    cfg = C.to_config(dcfg)
    _not_a_campaign(cfg)
    scrub_hydra_files(_job_dir())
    out = run_job(cfg)
    if not _in_multirun():  # a multirun's sweeper sums its jobs up at the end
        if out["status"] == db.DIVERGED:
            raise Diverged(_diverged_line(cfg, out))
        if out["status"] == "staged":
            raise C.UserError(
                f"{db.display_url(cfg.db.url)} stayed locked; the results are in "
                f"{out['staged_to']}: python -m tpo_sweeps merge {out['staged_to']} "
                f"--db {db.display_url(cfg.db.url)}"
            )
    return out


def redact_logs() -> None:
    """Mask database passwords in every log record of this process: Hydra's launchers log
    each job's overrides, ``db.url`` included (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return record
        clean = db.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def scrub_hydra_files(folder: Path) -> None:
    """Mask a database password in the files Hydra wrote for this job (``.hydra/*.yaml``:
    the overrides and the config hold ``db.url`` as given)."""
    for path in sorted((folder / ".hydra").glob("*.yaml")):
        try:
            text = path.read_text()
        except OSError:
            continue
        clean = db.redact(text)
        if clean != text:
            path.write_text(clean)


class Diverged(C.UserError):
    """A job's result is stored, but some seed's loss or metrics went non-finite."""


def _diverged_line(cfg: C.Config, out: dict) -> str:
    seed, text = min(out["diverged"].items())
    text = text.removeprefix("diverged: ")
    n = len(set(out["seeds"]) | set(out["run_ids"]))
    return (
        f"{len(out['diverged'])} of {n} seed(s) of {cfg.algorithm.name}/{cfg.task.name} "
        f"diverged (seed {seed}: {text}); stored with status diverged"
    )


def preflight(argv: list[str]) -> None:
    """Check a single job's command line before Hydra makes its output folder: compose and
    validate its config, resolve its identity and its output folder, and open ``db.url``
    (creating or migrating it, as the job would). Raises what the job would; a no-op for a
    multirun (its sweeper composes every cell and opens the database before anything is
    made) and for Hydra's own flags."""
    if not argv or any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(argv)):
        return  # Hydra refuses a sweep without -m, in its own words
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        dcfg = compose(config_name="config", overrides=argv, return_hydra_config=True)
        str(dcfg.hydra.run.dir)  # the folder a name refused by tpo_folder would make
    GlobalHydra.instance().clear()
    with open_dict(dcfg):
        del dcfg["hydra"]
    cfg = C.to_config(dcfg)
    _not_a_campaign(cfg)
    identity.identify(cfg)
    if not cfg.db.stage:  # staged: the job writes its own store, and reads url if it can
        # what the job opens first: a database that is not usable fails here, one line
        db.connect(cfg.db.url, cfg.db.busy_timeout_s).dispose()


def _not_a_campaign(cfg: C.Config) -> None:
    if cfg.campaign:
        raise C.ConfigError(
            f"'{cfg.name}' is a campaign of presets ({', '.join(cfg.campaign)}): launch it "
            "with -m, or see what it computes with 'python -m tpo_sweeps plan <overrides>'"
        )


def help_text() -> str:
    """``python -m tpo_sweeps --help``: the subcommands and the config groups' options."""
    conf = Path(config_dir())
    groups = []
    for group in sorted(p for p in conf.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml") if not f.stem.startswith("_"))
        if options:
            groups.append(f"  {group.name + '=':<12} {', '.join(options)}")
    commands = [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(
        [
            "usage: tpo-sweeps [-m] [group=option ...] [key=value ...]",
            "       tpo-sweeps <command> [--help] ...",
            "       (tpo-sweeps is the installed script; python -m tpo_sweeps is the same)",
            "",
            "Runs one config cell (or, with -m, a sweep or campaign) and stores every seed in",
            "db.url. Print the resolved config with --cfg job; Hydra's own options: --hydra-help.",
            "",
            "commands:",
            *commands,
            "",
            "config groups (group=option):",
            *groups,
            "",
            "e.g. tpo-sweeps -m experiment=fig3_tabular_single scale=smoke",
            "     tpo-sweeps plan experiment=paper",
            "     tpo-sweeps report --out report",
        ]
    )


def main() -> None:
    # Hydra re-raises instead of printing its 10-40 lines: errors in what was asked for are
    # one line here; a bug keeps its traceback (as it does with HYDRA_FULL_ERROR=1 set)
    global _FULL_ERROR
    full_error = _FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    redact_logs()
    argv = sys.argv[1:]
    if argv[:1] == ["--version"]:
        from tpo_sweeps import __version__

        print(__version__)
        return
    if argv[:1] and argv[0] in COMMANDS:
        module, func, _ = COMMANDS[argv[0]]
        script = Path(sys.argv[0]).name
        settings.entered_as(script if script == "tpo-sweeps" else "python -m tpo_sweeps")
        sys.exit(getattr(importlib.import_module(module), func)(argv[1:]))
    if "--help" in argv or "-h" in argv:  # anywhere: Hydra's own lists schema internals
        print(help_text())
        return
    try:
        preflight(argv)
        _hydra_main()
    except Exception as e:
        if full_error or not C.is_user_error(e):
            raise
        raise SystemExit(f"error: {db.redact(C.error_line(e))}") from None


# `tpo-sweeps <command> ...` (= `python -m tpo_sweeps <command>`): every verb beside the
# Hydra run; each reads db.url from the same composition (tpo_sweeps.settings) unless --db
COMMANDS = {
    "status": ("tpo_sweeps.status", "main", "a sweep's cells by status; --relaunch the rest"),
    "plan": ("tpo_sweeps.plan", "main", "what a sweep or campaign computes and costs"),
    "merge": ("tpo_sweeps.merge", "main", "staged per-job stores -> db.url"),
    "migrate": ("tpo_sweeps.merge", "migrate_main", "create or migrate the schema, once"),
    "export": ("tpo_sweeps.transfer", "export_main", "stored runs -> bundle files or MLflow"),
    "import": ("tpo_sweeps.transfer", "import_main", "bundle files -> db.url (idempotent)"),
    "data": ("tpo_sweeps.data", "main", "fetch or --check datasets (MNIST)"),
    "analysis": ("analysis.__main__", "main", "rebuild a paper artefact's figures and tables"),
    "report": ("analysis.report", "main", "the reproduction report: ours beside the paper"),
}


__all__ = ["main", "run_job", "OmegaConf"]
