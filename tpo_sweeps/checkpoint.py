"""Checkpoints of a run's training state, so that a requeued or rerun job resumes mid-run.

The state is what ``train.run`` hands to ``on_chunk`` between chunks: the vmapped carry (a
pytree of arrays: parameters, optimiser state, PRNG keys) and the metrics of the points done so
far. One ``.npz`` per config hash holds the carry's leaves in tree order, the metrics so far
and a small JSON header; the tree structure is not stored but rebuilt from the program
(``jax.eval_shape`` of its ``init``), and a file that cannot be read, or whose header or leaf
shapes do not match, is moved aside (``<hash>.unusable-<time>.npz``, kept for inspection) with
a warning instead of being trusted, and the run starts over. Writes go to a temporary file
that is fsynced and then renamed over the old one, so a job killed mid-save leaves the
previous checkpoint. Plain numpy was preferred over orbax: the state is a few arrays and
the whole save is one small file write between two compiled chunks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tpo_sweeps.train import Program, seed_keys

log = logging.getLogger("tpo_sweeps")

FORMAT = 1


class Checkpointer:
    """Save and load one run's ``(points_done, (carry, parts))`` under ``<root>/<hash>/``."""

    def __init__(self, root: str | os.PathLike, config_hash: str):
        self.dir = Path(root).expanduser() / config_hash
        self.path = self.dir / "state.npz"
        self.config_hash = config_hash

    def save(self, points_done: int, state: tuple[Any, list[dict[str, np.ndarray]]]) -> None:
        carry, parts = state
        leaves = jax.tree_util.tree_leaves(carry)
        arrays: dict[str, np.ndarray] = {}
        key_impls: dict[str, str] = {}
        for i, leaf in enumerate(leaves):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                key_impls[str(i)] = str(jax.random.key_impl(leaf))
                leaf = jax.random.key_data(leaf)
            arrays[f"carry_{i}"] = np.asarray(leaf)
        names = list(parts[0]) if parts else []
        for name in names:
            arrays[f"metric_{name}"] = np.concatenate([np.asarray(p[name]) for p in parts])
        header = {
            "format": FORMAT,
            "config_hash": self.config_hash,
            "points_done": int(points_done),
            "num_leaves": len(leaves),
            "metrics": names,
            "key_impls": key_impls,
        }
        arrays["header"] = np.asarray(json.dumps(header))
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".state.npz.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)

    def load(
        self, program: Program, seeds: np.ndarray, inputs: Any = None
    ) -> tuple[int, Any] | None:
        """The saved ``(points_done, (carry, parts))``, or None if there is no usable one
        (an unusable file is moved aside: ``set_aside``). ``inputs``: what ``program.init``
        receives per run, as ``train.run`` takes it (default: the seeds' keys)."""
        if not self.path.exists():
            return None
        try:
            return self._load(program, seed_keys(seeds) if inputs is None else inputs)
        except Exception as e:  # truncated, corrupt or foreign: start over rather than crash
            self.set_aside(f"it is unreadable ({type(e).__name__}: {_first_line(e)})")
            return None

    def set_aside(self, problem: str) -> Path | None:
        """Rename the checkpoint file out of the way (a rerun must not trip over it again),
        beside the run's folder, which is removed once the run completes."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.dir.parent / f"{self.config_hash}.unusable-{stamp}-{os.getpid()}.npz"
        try:
            os.replace(self.path, aside)
        except OSError as e:
            log.warning(
                "ignoring checkpoint %s: %s; cannot move it aside (%s)", self.path, problem, e
            )
            return None
        log.warning(
            "ignoring checkpoint %s: %s; moved to %s, starting from zero", self.path, problem, aside
        )
        return aside

    def _load(self, program: Program, inputs: Any) -> tuple[int, Any] | None:
        with np.load(self.path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        expected = jax.eval_shape(jax.vmap(program.init), inputs)
        ref_leaves, treedef = jax.tree_util.tree_flatten(expected)
        done = int(header.get("points_done", -1))
        problem = None
        if header.get("format") != FORMAT or header.get("config_hash") != self.config_hash:
            problem = "it belongs to another config or format"
        elif header.get("num_leaves") != len(ref_leaves):
            problem = "its state has a different structure"
        elif not 0 < done < program.num_points:
            problem = f"points_done={done} is outside 1..{program.num_points - 1}"
        if problem is None:
            leaves = []
            for i, ref in enumerate(ref_leaves):
                value = arrays[f"carry_{i}"]
                impl = header["key_impls"].get(str(i))
                if impl is not None:
                    value = jax.random.wrap_key_data(value, impl=impl)
                if value.shape != ref.shape or value.dtype != ref.dtype:
                    got, want = f"{value.dtype}{value.shape}", f"{ref.dtype}{ref.shape}"
                    problem = f"leaf {i} is {got}, expected {want}"
                    break
                leaves.append(value)
        if problem is None:
            metrics = {name: arrays[f"metric_{name}"] for name in header["metrics"]}
            if any(m.shape[0] != done for m in metrics.values()):
                problem = "its metrics do not cover points_done"
        if problem is not None:
            self.set_aside(problem)
            return None
        carry = jax.tree_util.tree_unflatten(treedef, leaves)
        return done, (carry, [metrics] if metrics else [])

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)
