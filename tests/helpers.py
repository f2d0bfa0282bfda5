"""Helpers shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys

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


def multirun(cwd, *args: str) -> str:
    """``python -m tpo_sweeps -m <args>`` in ``cwd``, as a user runs it (no inherited Hydra
    or SLURM variables; compilations of any length cached); its output. Fails on rc != 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = subprocess.run(
        [sys.executable, "-m", "tpo_sweeps", "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr
