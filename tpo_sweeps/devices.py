"""What each platform wants: the one place that resolves the ``auto`` hardware settings.

Two settings have a best value that depends on the device the job runs on, measured with
``benchmarks/reversal_speed.py`` (README "Measured"):

* ``hardware.model_kernels`` — the transformer's training-path layers. On a CPU the fused
  kernels of ``tpo_sweeps.models`` (custom backward passes built for XLA:CPU); on a GPU or
  TPU Flax's own layers, whose attention and fusions are what XLA compiles well there.
* ``hardware.seed_batch`` — how many runs (seeds, and lanes × seeds) go through the program
  in lockstep. On a CPU the transformer runs one at a time (1): a vmapped run axis turns
  every GEMM into a batched one, 20–40% slower there; the bandits and MNIST, whose ops are
  tiny, all at once (0). On a GPU or TPU all at once (0): side by side is the point.

Both are overridable (``hardware.model_kernels=flax``, ``hardware.seed_batch=4``); neither
is part of a run's identity (they change numbers only at float32 rounding).
"""

from __future__ import annotations

AUTO_SEED_BATCH = -1


def backend() -> str:
    """The platform JAX runs this process's programs on (``cpu``, ``gpu``, ``tpu``)."""
    import jax

    return jax.default_backend()


def model_kernels(choice: str, platform: str | None = None) -> str:
    """``auto`` -> ``cpu_fused`` on a CPU, ``flax`` elsewhere; any other choice as given."""
    if choice != "auto":
        return choice
    return "cpu_fused" if (platform or backend()) == "cpu" else "flax"


def seed_batch(choice: int, task: str, platform: str | None = None) -> int:
    """``-1`` (auto) -> 1 for the transformer (``task=reversal``) on a CPU, else 0 (all runs
    in one vmap); any other choice as given."""
    if choice != AUTO_SEED_BATCH:
        return choice
    return 1 if task == "reversal" and (platform or backend()) == "cpu" else 0
