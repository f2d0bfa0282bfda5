"""What reporting progress costs a compiled run: the same program whole vs in chunks.

    python benchmarks/progress_overhead.py [--experiment fig4_tabular_multi] [--algorithm tpo]
        [--chunks 100] [--repeats 3]

Runs one cell of the preset (its paper size) with ``train.run`` unchunked and split into
``--chunks`` chunks (what ``progress.every`` does), alternating, ``--repeats`` times each,
after one warm-up of each (compiles excluded). Prints the median run seconds of both, the
difference per chunk boundary, and what ``progress.every=-1`` (auto) would add to a run of
a minute: its chunk boundaries times that cost. A fast cell (the multi-context bandit:
~4 s for 100 seeds x 1000 steps) makes the per-boundary cost easiest to see.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from hydra import compose, initialize_config_dir

from tpo_sweeps import config as C
from tpo_sweeps import cost, identity, tasks, train
from tpo_sweeps.settings import config_dir
from tpo_sweeps.supervise import AUTO_AFTER_S, auto_every


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="fig4_tabular_multi")
    p.add_argument("--algorithm", default="tpo")
    p.add_argument("--chunks", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    C.register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        dcfg = compose(
            "config", overrides=[f"experiment={args.experiment}", f"algorithm={args.algorithm}"]
        )
    cfg = C.to_config(dcfg)
    program = tasks.build(cfg)
    seeds = np.arange(cfg.num_seeds)
    total = program.num_points
    chunk = max(1, total // args.chunks)

    def timed(n: int | None) -> float:
        t0 = time.perf_counter()
        result = train.run(program, seeds, chunk=n, on_chunk=lambda done, state: None)
        return result.run_s if result.run_s else time.perf_counter() - t0

    timed(None), timed(chunk)  # compile both chunk lengths, warm up
    whole, chunked = [], []
    for _ in range(args.repeats):
        whole.append(timed(None))
        chunked.append(timed(chunk))
    w, c = statistics.median(whole), statistics.median(chunked)
    boundaries = -(-total // chunk) - 1
    per = (c - w) / boundaries
    print(f"{args.experiment} {args.algorithm}: {len(seeds)} seeds x {total} points")
    print(f"  whole:   {w:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in whole)})")
    runs = ", ".join(f"{x:.3f}" for x in chunked)
    print(f"  chunked: {c:.3f} s  in chunks of {chunk} (runs: {runs})")
    print(f"  per chunk boundary: {per * 1e3:+.2f} ms ({100 * (c - w) / w:+.2f}% of the run)")
    expected = cost.reference_seconds(identity.identify(cfg).resolved, len(seeds))
    auto = auto_every(total, max(expected, AUTO_AFTER_S))
    auto_boundaries = -(-total // auto) - 1 if auto else 0
    print(
        f"  auto (progress.every=-1) on a {AUTO_AFTER_S:.0f} s run of this cell: chunks of "
        f"{auto} points, {auto_boundaries} boundaries, ~{auto_boundaries * per:.2f} s added "
        f"({100 * auto_boundaries * per / AUTO_AFTER_S:+.2f}%)"
    )


if __name__ == "__main__":
    main()
