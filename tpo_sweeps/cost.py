"""What a cell costs to compute: work units per seed-episode and reference timings.

The plan (``tpo_sweeps.plan``) estimates a job's time as ``seconds per work unit × work
units per seed-episode × seeds × episodes + compile``. The seconds per work unit come, in
order of preference, from the database's own completed runs on the same device (of the same
cell; else of the same task and batch layout, scaled by work), else from ``REFERENCE``: the
figures the benchmarks measured on the project's 2-core CPU machine (JAX 0.10.2):

* token reversal: ``python benchmarks/reversal_speed.py --seeds 4 --episodes 5`` gave
  0.251 s (TPO terminal, 41,000 token forwards per episode), 0.068 s (PPO, 9,500),
  0.021 s (DG, 3,800), 0.068 s (tpo_token, 9,500) and 1.93 s (TPO at H 8, B 256, K 32,
  296,960): 5.5–7.2 µs per token forward; 6.3 µs is used, plus ~8 s compile per job.
* the bandits and MNIST, per seed-step with all seeds of a job in one vmap:
  ``experiment=fig3_tabular_single`` 6.4 s for 100 seeds × 150 steps × 4 methods
  (≈1.1e-4 s); ``fig4_tabular_multi`` 19.1 s for 100 × 1000 × 5 (≈3.8e-5 s);
  ``fig5_mnist`` 64 s run for 20 × 10,000 per method (≈3.2e-4 s), ~4 s compile.
"""

from __future__ import annotations

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C

# task -> (seconds per work unit, compile seconds per job) on the reference CPU
REFERENCE: dict[str, tuple[float, float]] = {
    "reversal": (6.3e-6, 8.0),
    "tabular_single": (1.1e-4, 1.0),
    "tabular_multi": (3.8e-5, 1.0),
    "mnist": (3.2e-4, 4.0),
}


def token_forwards(layout: str, H: int, B: int, K: int | None, epochs: int) -> int:
    """Token forward passes of one token-reversal episode in this project's trainer (a
    backward pass counts as none): the KV-cached sampler encodes each prompt once per group
    and never runs the last answer token; each epoch runs the shared prompt once per group."""
    if layout == "sequence":
        assert K is not None
        return B * H + B * K * (H - 1) + epochs * (B * H + B * K * (H - 1))
    return B * H + B * (H - 1) + epochs * (B * (2 * H - 1))


def work_units(resolved: C.Config) -> float:
    """Work units of one seed-episode of a resolved config (``identity.resolve``): token
    forwards for token reversal, one step for the bandits and MNIST."""
    task = resolved.task
    if isinstance(task, C.ReversalConfig):
        layout = A.layout(resolved.algorithm)
        return float(token_forwards(layout, task.H, task.B, task.K, resolved.algorithm.epochs))
    return 1.0


def shape_class(resolved: C.Config) -> str:
    """Cells whose cost per work unit is comparable: the task, and for token reversal the
    batch layout (sequence, token, single)."""
    if isinstance(resolved.task, C.ReversalConfig):
        return f"reversal/{A.layout(resolved.algorithm)}"
    return resolved.task.name


def reference_seconds(resolved: C.Config, seeds: int) -> float:
    """Run time (no compile) of one job of ``seeds`` seeds of a resolved config on the
    reference CPU: what decides whether a run reports progress by default."""
    unit, _ = REFERENCE.get(resolved.task.name, (0.0, 0.0))
    return unit * work_units(resolved) * seeds * resolved.task.steps
