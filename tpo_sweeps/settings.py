"""The settings every subcommand shares, composed the way a run composes them.

A run's ``db.url`` comes from Hydra: the command line, then the site's untracked
``conf/local/default.yaml``, then ``conf/config.yaml``. The bookkeeping subcommands
(``migrate``, ``merge``, ``export``, ``import``, ``report``, the artefact builds) read it
here, from the same composition, so that a URL set once in ``conf/local`` serves every verb:
``--db`` on their command line wins, as an override would.

``TPO_SWEEPS_CONFIG_DIR`` points at another config folder (a site's copy of ``conf/``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

CONFIG_DIR_ENV = "TPO_SWEEPS_CONFIG_DIR"

# the program name a subcommand's usage line shows: `tpo-sweeps <verb>` when it was reached
# through the one CLI (run.main sets it), else the module it was started as
_entry: str | None = None


def config_dir() -> str:
    """The folder holding ``config.yaml``: $TPO_SWEEPS_CONFIG_DIR, else the checkout's
    ``conf/``, else the copy packaged inside an installed wheel."""
    if os.environ.get(CONFIG_DIR_ENV):
        path = Path(os.environ[CONFIG_DIR_ENV]).expanduser().resolve()
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"{CONFIG_DIR_ENV}={path}: no config.yaml there")
        return str(path)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError("tpo-sweeps: cannot find conf/config.yaml")


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The root config (no experiment) with ``overrides``, as a run would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tpo_sweeps import config as C

    C.register_configs()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def db_url(given: str | None = None) -> str:
    """``given`` (a ``--db`` value), else the composed ``db.url``."""
    return given if given else str(compose().db.url)


def add_db_option(parser: argparse.ArgumentParser, what: str = "results database URL") -> None:
    """``--db URL``; its default, named in ``--help``, is the composed ``db.url``."""
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help=f"{what} (default: db.url from conf/local/default.yaml, else conf/config.yaml)",
    )


def prog(verb: str, module: str) -> str:
    """The usage name of ``verb``: ``tpo-sweeps <verb>`` through the one CLI, else
    ``module`` (e.g. ``python -m analysis``)."""
    return f"{_entry} {verb}" if _entry else module


def entered_as(name: str) -> None:
    global _entry
    _entry = name
