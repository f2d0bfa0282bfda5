"""Entry point: ``python -m tpo_sweeps [-m] experiment=<id> [overrides]`` and its verbs.

The Hydra app whose every job is ``tpo_sweeps.job.run_job`` (one config cell, or the lanes
of one: resolve → skip what is stored → train the rest in one compiled program → store), the
one-line errors around it, the preflight of a single job's command line, and the
``COMMANDS`` of ``tpo-sweeps <verb>``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from tpo_sweeps import config as C
from tpo_sweeps import db, identity, settings
from tpo_sweeps.job import in_multirun as _in_multirun
from tpo_sweeps.job import job_dir as _job_dir
from tpo_sweeps.job import run_job
from tpo_sweeps.settings import config_dir

log = logging.getLogger("tpo_sweeps")

C.register_configs()


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
    n = sum(len(set(o.get("seeds", [])) | set(o["run_ids"])) for o in out.get("lanes", [out]))
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
