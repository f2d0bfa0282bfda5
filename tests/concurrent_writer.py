"""One writer process of the concurrency tests (tests/test_concurrency.py runs 32 at once).

It writes its cells through the same calls a job makes (connect, find_run, start_run,
finish_run) so the test exercises the real write path: schema creation racing 31 other
processes on an empty database, then one transaction per run. Writer ``i`` owns cells
``i*k .. i*k+k-1`` and, before them, the first cell of writer ``i+1``, which that writer
also writes first: every such cell is written by two processes at the same moment (the
duplicate that a requeue or a relaunch racing a live job can cause). Values encode
(cell, seed, step), so the test can tell a misplaced row from a right one.

Usage: python tests/concurrent_writer.py URL INDEX WRITERS CELLS STEPS BARRIER_DIR
It creates BARRIER_DIR/ready-INDEX once imported, then waits for BARRIER_DIR/go, so that all
processes start writing together. Prints one JSON line: {"index", "written", "skipped",
"seconds"}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from tpo_sweeps import db

SEEDS = 2


def cell_fields(cell: int, steps: int) -> dict:
    return {
        "config_hash": f"cell-{cell:06d}",
        "sweep": "concurrency",
        "algorithm": "tpo",
        "task": "synthetic",
        "optimizer": "none",
        "seed": 0,
        "num_seeds": SEEDS,
        "steps": steps,
        "epochs": 1,
        "overrides": [f"cell={cell}"],
        "config": {"cell": cell},
    }


def value(cell: int, seed: int, step: int) -> float:
    return cell * 1000.0 + seed * 100.0 + step * 0.001


def write_cell(engine, cell: int, steps: int) -> bool:
    """True if this process wrote the cell, False if it found it completed."""
    chash = cell_fields(cell, steps)["config_hash"]
    found = db.find_run(engine, chash)
    if found is not None and found[1] == db.COMPLETED:
        return False
    run_id = db.start_run(engine, cell_fields(cell, steps))
    if run_id is None:
        return False
    seeds = np.arange(SEEDS)
    step_idx = np.arange(steps)
    values = np.array([[value(cell, s, t) for t in step_idx] for s in seeds])
    rows = db.finish_run(
        engine,
        run_id,
        seeds,
        {"error": values},
        {"error": step_idx},
        {"final_error": values[:, -1]},
    )
    return rows is not None


def main() -> None:
    url, index, writers, cells, steps, barrier = sys.argv[1:7]
    index, writers, cells, steps = int(index), int(writers), int(cells), int(steps)
    barrier = Path(barrier)
    (barrier / f"ready-{index}").touch()
    while not (barrier / "go").exists():  # all processes hit the database together
        time.sleep(0.005)
    t0 = time.perf_counter()
    engine = db.connect(url, busy_timeout_s=60.0)
    # first the neighbour's first cell, which the neighbour also writes first: a real race
    mine = [((index + 1) % writers) * cells, *range(index * cells, (index + 1) * cells)]
    written = skipped = 0
    for cell in mine:
        if write_cell(engine, cell, steps):
            written += 1
        else:
            skipped += 1
    engine.dispose()
    seconds = time.perf_counter() - t0
    print(json.dumps({"index": index, "written": written, "skipped": skipped, "seconds": seconds}))


if __name__ == "__main__":
    main()
