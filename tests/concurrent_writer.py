"""One writer process of the concurrency tests (tests/test_concurrency.py runs 32 at once).

It writes its cells through the object a job talks to (``tpo_sweeps.store.RunStore``: look
up the stored seeds, claim the rest, finish them in one transaction), one store per cell as
one job per cell would, so the test exercises the real write path: schema creation racing 31
other processes on an empty database, then one claim and one write transaction per job.
Writer ``i`` owns cells ``i*k .. i*k+k-1`` and, before them, the first cell of writer
``i+1``, which that writer also writes first: every such cell is written by two processes at
the same moment (the duplicate that a requeue or a relaunch racing a live job can cause).
Cell ``c`` is a real cell (TPO on the single-context bandit at temperature ``c + 1``) with
``SEEDS`` seeds, i.e. ``SEEDS`` runs; values encode (cell, seed, step), so the test can tell
a misplaced row from a right one.

Usage: python tests/concurrent_writer.py URL INDEX WRITERS CELLS STEPS BARRIER_DIR
It creates BARRIER_DIR/ready-INDEX once imported, then waits for BARRIER_DIR/go, so that all
processes start writing together. Prints one JSON line: {"index", "written", "skipped",
"seconds", "jobs"} where ``jobs`` maps each cell it wrote to the job id that wrote it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tpo_sweeps import config as C
from tpo_sweeps import identity as I
from tpo_sweeps.store import RunStore

SEEDS = 2


def cell_config(cell: int, steps: int) -> C.Config:
    return C.Config(
        algorithm=C.TPOConfig(name="tpo", eta=float(cell + 1)),
        task=C.TabularSingleConfig(steps=steps),
        optimizer=C.NormalizedStepConfig(),
        name="concurrency",
        num_seeds=SEEDS,
    )


def identity(cell: int, steps: int) -> I.Identity:
    """``identity.identify`` of the cell without importing JAX (32 processes importing it
    would dominate the test on a small machine): a canonical algorithm on a tabular task is
    its own resolved config. The test checks that this equals ``identify``."""
    cfg = cell_config(cell, steps)
    as_dict = C.as_dict(cfg)
    return I.Identity(cfg, cfg, I.cell_hash(as_dict), I.extras(as_dict))


def cell_of_eta(eta: float) -> int:
    return int(round(eta)) - 1


def value(cell: int, seed: int, step: int) -> float:
    return cell * 1000.0 + seed * 100.0 + step * 0.001


def write_cell(url: str, cell: int, steps: int) -> str | None:
    """The job id that wrote the cell, or None if this process found it completed."""
    ident = identity(cell, steps)
    with RunStore(url, busy_timeout_s=60.0) as store:
        if len(store.stored(ident)) == SEEDS:
            return None
        seeds = store.start(ident, ident.seeds, [f"cell={cell}"], {"host": f"writer-{cell}"})
        if not seeds:
            return None
        step_idx = np.arange(steps)
        values = np.array([[value(cell, s, t) for t in step_idx] for s in seeds])
        result = SimpleNamespace(  # what RunStore.finish reads of a train.Result
            seeds=np.asarray(seeds),
            metrics={"error": values},
            steps={"error": step_idx},
            summary={"final_error": values[:, -1]},
            compile_s=0.0,
            run_s=0.0,
        )
        return store.job_id if store.finish(result) is not None else None


def main() -> None:
    url, index, writers, cells, steps, barrier = sys.argv[1:7]
    index, writers, cells, steps = int(index), int(writers), int(cells), int(steps)
    barrier = Path(barrier)
    (barrier / f"ready-{index}").touch()
    while not (barrier / "go").exists():  # all processes hit the database together
        time.sleep(0.005)
    t0 = time.perf_counter()
    # first the neighbour's first cell, which the neighbour also writes first: a real race
    mine = [((index + 1) % writers) * cells, *range(index * cells, (index + 1) * cells)]
    jobs: dict[int, str] = {}
    skipped = 0
    for cell in mine:
        job = write_cell(url, cell, steps)
        if job is None:
            skipped += 1
        else:
            jobs[cell] = job
    seconds = time.perf_counter() - t0
    report = {
        "index": index,
        "written": len(jobs),
        "skipped": skipped,
        "seconds": seconds,
        "jobs": jobs,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
