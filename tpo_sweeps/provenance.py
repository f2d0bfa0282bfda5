"""Where a number came from: host, device, git commit (+ dirty flag), package versions."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("tpo-sweeps", "jax", "jaxlib", "flax", "optax", "numpy", "hydra-core", "sqlalchemy")


@functools.lru_cache(maxsize=1)
def _git() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)} x{jax.device_count()}"


def provenance() -> dict:
    commit, dirty = _git()
    return {
        "host": platform.node(),
        "device": device(),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions(),
        "slurm_job_id": slurm_job_id(),
    }


def slurm_job_id() -> str | None:
    """The job's SLURM id as submitit and ``sacct`` name an array task, ``<array>_<task>``
    (the folder of its logs: ``.submitit/%A_%a``); a plain job's own id otherwise."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
