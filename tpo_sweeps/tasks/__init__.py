"""Task registry: task name -> builder of the compiled training ``Program``."""

from __future__ import annotations

from collections.abc import Callable

from tpo_sweeps import config as C
from tpo_sweeps import identity
from tpo_sweeps.tasks import mnist, reversal, tabular
from tpo_sweeps.train import Program

TASKS: dict[str, Callable[[C.Config], Program]] = {
    "tabular_single": tabular.single_context,
    "tabular_multi": tabular.multi_context,
    "reversal": reversal.reversal,
    "mnist": mnist.mnist,
}


def build(cfg: C.Config) -> Program:
    """The training program of ``cfg``'s task and algorithm, built from its effective
    config (``tpo_sweeps.identity.resolve``): what runs is what the run identity says."""
    return build_resolved(identity.resolve(cfg))


def build_resolved(cfg: C.Config) -> Program:
    """The program of an already resolved config (``build`` without ``identity.resolve``;
    hyperparameter lanes build it with traced values, ``tpo_sweeps.lanes``)."""
    try:
        builder = TASKS[cfg.task.name]
    except KeyError:
        raise C.ConfigError(
            f"unknown task '{cfg.task.name}' (known: {', '.join(sorted(TASKS))})"
        ) from None
    return builder(cfg)
