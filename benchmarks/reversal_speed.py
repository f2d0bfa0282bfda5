"""Seconds per seed-episode of the token-reversal trainer, beside the authors' code.

    python benchmarks/reversal_speed.py [--seeds 4] [--episodes 3] [--seed-batch 1]
        [--streams 2] [--kernels auto|flax|cpu_fused] [--xla-option KEY=VALUE ...]
        [--only tpo_terminal,ppo_terminal] [--flops]

Each setting is compiled once (compile time reported separately), run once to warm up, then
timed over ``--episodes`` episodes for ``--seeds`` seeds in one compiled program (groups of
``--seed-batch`` seeds in lockstep; 0 = one vmap over all; ``--streams`` groups side by
side). ``cpu s`` is process CPU time
per seed-episode (all threads): steadier than wall time on a busy machine.
Also prints the token forward passes one episode needs in each implementation (counted
from the algorithms, not measured): ours uses a KV-cached sampler, encodes each shared
prompt once per group in sampling and in the update, keeps the rollout log-probs, and
never runs the last answer token; the authors' sampler re-runs the full 2H-token pass at
each of the H generation steps for every candidate.

``--flops`` adds the matmul GFLOPs one seed-episode performs (counted from the program's
jaxpr, ``benchmarks/flops.py``), the rate the run reached, and that rate as a fraction of a
large float32 GEMM's on this device (the practical peak): how far from the machine's limit
the program runs.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
from flops import gemm_rate, program_flops

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import tasks
from tpo_sweeps.cost import token_forwards
from tpo_sweeps.train import map_seeds, seed_keys

# name: (algorithm config, task overrides, authors' seconds per seed-episode on this machine)
SETTINGS = {
    "tpo_terminal": (C.TPOConfig(name="tpo", epochs=4), dict(reward="terminal"), 0.867),
    "grpo_terminal": (
        C.GRPOConfig(name="grpo", epochs=4, kl_beta=0.04, log_ratio_clamp=20.0),
        dict(reward="terminal"),
        0.745,
    ),
    "ppo_terminal": (C.PPOConfig(name="ppo", epochs=4), dict(reward="terminal"), 0.110),
    "dg_terminal": (C.DGConfig(name="dg", epochs=1), dict(reward="terminal"), 0.059),
    "tpo_token_dense": (
        C.TPOConfig(name="tpo_token", epochs=4, level="token"),
        dict(reward="bag_of_tokens"),
        0.703,
    ),
    "tpo_sec4_H8_B256_K32": (
        C.TPOConfig(name="tpo", epochs=4),
        dict(reward="terminal", H=8, B=256, K=32),
        7.58,
    ),
}


def token_passes(mode: str, H: int, B: int, K: int, E: int) -> tuple[int, int]:
    """(ours, authors') token forward passes per episode (a backward pass counts as none)."""
    ours = token_forwards(mode, H, B, K, E)
    if mode == "sequence":
        theirs = B * K * 2 * H * H + E * B * K * 2 * H
    elif mode == "token":
        theirs = B * 2 * H * H + E * B * H * 2 * H
    else:  # single: the authors' DG/REINFORCE recompute log-probs once more
        theirs = B * 2 * H * H + E * B * 2 * H
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--only", default="")
    ap.add_argument(
        "--seed-batch", type=int, default=1, help="seeds per vmapped group (0 = all in one vmap)"
    )
    ap.add_argument("--streams", type=int, default=1, help="seed groups run side by side")
    ap.add_argument(
        "--kernels",
        default="auto",
        choices=("auto", "flax", "cpu_fused"),
        help="hardware.model_kernels: the update's kernels (auto: by platform)",
    )
    ap.add_argument(
        "--xla-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="XLA debug option for the compilation (repeatable), as hardware.xla_options",
    )
    ap.add_argument("--flops", action="store_true", help="GFLOP/seed-ep and fraction of peak")
    args = ap.parse_args()
    options = dict(kv.split("=", 1) for kv in args.xla_option) or None
    print(
        f"jax {jax.__version__} on {jax.default_backend()}:{jax.devices()[0].device_kind} "
        f"x{jax.device_count()}, kernels={args.kernels}, seeds={args.seeds}, "
        f"seed batch={args.seed_batch or 'all'}, streams={args.streams}, "
        f"episodes={args.episodes}, xla options={options or 'none'}"
    )
    print(
        f"{'setting':24s} {'compile s':>9s} {'s/seed-ep':>10s} {'authors':>8s} {'speed-up':>8s}"
        f" {'tok-fwd ours':>12s} {'authors':>10s} {'cpu s':>8s}"
        + (f" {'GFLOP/ep':>9s} {'GFLOP/s':>8s} {'of peak':>8s}" if args.flops else "")
    )
    peak = gemm_rate() if args.flops else 0.0
    group = dict(seed_batch=args.seed_batch, streams=args.streams)
    for name, (hp, over, theirs_s) in SETTINGS.items():
        if args.only and name not in args.only.split(","):
            continue
        task = C.ReversalConfig(steps=args.episodes, **over)
        hardware = C.HardwareConfig(model_kernels=C.ModelKernels(args.kernels))
        cfg = C.Config(algorithm=hp, task=task, optimizer=C.MuonConfig(), hardware=hardware)
        program = tasks.build(cfg)
        keys = seed_keys(np.arange(args.seeds))
        if args.seed_batch:
            fn = jax.jit(functools.partial(map_seeds, program.train, **group))
        else:
            fn = jax.jit(jax.vmap(program.train))
        t0 = time.perf_counter()
        compiled = fn.lower(keys).compile(compiler_options=options)
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(keys))
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(keys))
        per = (time.perf_counter() - t0) / (args.seeds * args.episodes)
        cpu = (time.process_time() - c0) / (args.seeds * args.episodes)
        ours_n, theirs_n = token_passes(A.layout(hp), task.H, task.B, task.K, hp.epochs)
        extra = ""
        if args.flops:  # one seed's program: its episodes' matmuls, per episode
            flops = program_flops(program.train, keys[0]) / args.episodes
            extra = f" {flops / 1e9:9.2f} {flops / per / 1e9:8.1f} {flops / per / peak:8.0%}"
        print(
            f"{name:24s} {compile_s:9.1f} {per:10.3f} {theirs_s:8.3f} {theirs_s / per:7.1f}x"
            f" {ours_n:12,d} {theirs_n:10,d} {cpu:8.3f}" + extra
        )
    if args.flops:
        print(f"float32 GEMM rate on this device (2048x2048, best of 5): {peak / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
