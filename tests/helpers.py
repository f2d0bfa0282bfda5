"""Helpers shared by several test modules."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tpo_sweeps import config as C
from tpo_sweeps.settings import config_dir


def compose_config(overrides: list[str]) -> C.Config:
    """The typed config a job would get for ``overrides`` (the root config, no Hydra run)."""
    GlobalHydra.instance().clear()
    C.register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = C.to_config(compose("config", overrides=list(overrides)))
    GlobalHydra.instance().clear()
    return cfg
