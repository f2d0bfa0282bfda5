"""Hyperparameter lanes: cells that differ only in traced hyperparameters, in one program.

Table 5's η grid is five cells that compute the same program with a different number in one
place. Compiling it five times costs more than running it at smoke scale on a CPU, and on a
GPU, where a cell runs in seconds, compilation and launch overhead dominate a sweep. So the
sweeper (``tpo_sweeps.campaign``) groups a multirun's jobs whose configs are equal except in
``TRACED`` fields into one job whose ``lanes`` list each lane's values
(``lanes=['algorithm.eta=0.25','algorithm.eta=0.5',...]``). The job (``tpo_sweeps.job``)
identifies, skips, claims and stores every lane as the cell it is (its own identity, rows and
status; a lane's run is indistinguishable from the same cell run alone) and trains all lanes
× seeds in one ``jit``: the lane values are inputs of the program, carried beside each run's
state, and the task's program is built with them as traced scalars (``laned_program``).

A field is *traced* when every task uses it only in array arithmetic inside the compiled
step (a learning rate, a temperature, a clip range): then a lane computes what the cell alone
computes (``tests/test_lanes.py``: bit for bit where the lanes × seeds vmap is narrow; to
float32 rounding, ~1e-7, when a wide vmap reorders a reduction, as grouping seeds differently
does; with ``hardware.seed_batch=1`` every run is its own unbatched computation). A task
that turns one into a Python number while building (MNIST's Fig 5b mechanism diagnostics
put TPO's η in a closed form) cannot trace it: the job then runs its lanes one program each
(``LanesNotTraceable``), logged, still as one job.

Lanes run on the same axis as the seeds (lanes × seeds runs, ``hardware.seed_batch``
groups them as it groups seeds), so a CPU runs them one after another and a GPU side by side.
``hardware.lanes=false`` turns the grouping off (one job per cell).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from tpo_sweeps import config as C
from tpo_sweeps import identity as I

if TYPE_CHECKING:  # the sweeper and `plan` group cells without importing JAX
    from tpo_sweeps.train import Program, Result

# hyperparameters that enter a program only as numbers in its arithmetic
TRACED = (
    "algorithm.eta",  # TPO/Group PG target temperature, DG gate temperature
    "algorithm.clip_eps",  # PPO/GRPO clip range
    "algorithm.kl_beta",  # GRPO KL weight
    "optimizer.lr",  # Adam, Muon (before Muon's lr_multiplier)
    "optimizer.alpha",  # the bandits' normalised step
)


class LanesNotTraceable(Exception):
    """The task uses a lane field as a Python number while building its program."""


def get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            return default
        node = getattr(node, part)
    return node


def with_values(cfg: Any, values: dict[str, Any]) -> Any:
    """``cfg`` (a typed config) with the dotted fields of ``values`` replaced."""
    for dotted, value in values.items():
        head, _, rest = dotted.partition(".")
        child = value if not rest else with_values(getattr(cfg, head), {rest: value})
        cfg = dataclasses.replace(cfg, **{head: child})
    return cfg


def parse(lane: str) -> dict[str, Any]:
    """One entry of ``lanes`` (``"algorithm.eta=0.5 optimizer.lr=0.001"``) -> ``{path: value}``;
    a field that is not in ``TRACED`` or a value that is not a number is one ConfigError line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(lane.split())
    except Exception as e:
        raise C.ConfigError(f"lanes: cannot read {lane!r} ({C.error_line(e)})") from None
    out = {}
    for o in parsed:
        key, value = o.key_or_group, o.value()
        if key not in TRACED:
            raise C.ConfigError(
                f"lanes: '{key}' is not a traced field (traced: {', '.join(TRACED)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise C.ConfigError(f"lanes: {key}={value!r} is not a number")
        out[key] = float(value)
    if not out:
        raise C.ConfigError(f"lanes: {lane!r} sets no field")
    return out


def without_traced(config: dict[str, Any]) -> dict[str, Any]:
    """A config's ``as_dict`` with the traced fields removed: equal for two configs that can
    be lanes of one program."""
    out = json.loads(json.dumps(config, default=str))
    for dotted in TRACED:
        I._pop(out, dotted)
    return out


def group_key(cfg: C.Config) -> str:
    """Jobs with equal keys may run as lanes of one job: every field but the traced ones
    equal (sweep name, seeds, extras, hardware and database included)."""
    return json.dumps(without_traced(C.as_dict(cfg)), sort_keys=True, default=str)


def lane_values(configs: list[C.Config]) -> list[dict[str, Any]]:
    """Each config's values of the traced fields that differ between ``configs``."""
    varying = [p for p in TRACED if len({repr(get(c, p)) for c in configs}) > 1]
    return [{p: get(c, p) for p in varying} for c in configs]


def laned_program(resolved: list[C.Config], build: Callable[[C.Config], Program]):
    """One program for the lanes ``resolved`` (effective configs, ``identity.resolve``).

    Returns ``(program, values)``: the program's ``init`` takes ``(key, lane values)`` per run
    and carries the values beside the run's state; its ``step`` builds the task's step with
    them traced. ``values`` maps each traced path that differs to its ``[lanes]`` array.
    Raises ConfigError when the configs differ in anything but traced fields, and
    ``LanesNotTraceable`` when the task cannot take a lane field as a traced value.
    """
    import jax
    import jax.numpy as jnp

    from tpo_sweeps.train import Program

    base = without_traced(C.as_dict(resolved[0]))
    for cfg in resolved[1:]:
        if without_traced(C.as_dict(cfg)) != base:
            raise C.ConfigError("lanes: the lanes' configs differ in more than traced fields")
    varying = [p for p in TRACED if len({repr(get(c, p)) for c in resolved}) > 1]
    values = {p: np.asarray([get(c, p) for c in resolved], np.float32) for p in varying}
    concrete = build(resolved[0])  # the static parts: points, metric steps, NaN metrics

    def program_of(hv: dict[str, Any]) -> Program:
        return build(with_values(resolved[0], hv))

    def init(inp):
        key, hv = inp
        return hv, program_of(hv).init(key)

    def step(carry, t):
        hv, state = carry
        state, out = program_of(hv).step(state, t)
        return (hv, state), out

    program = Program(init, step, concrete.num_points, concrete.steps, concrete.may_be_nan)
    probe = {p: jnp.float32(v[0]) for p, v in values.items()}
    try:  # trace one run abstractly: a lane field used as a Python number fails here
        key = jax.random.PRNGKey(0)
        carry = jax.eval_shape(init, (key, probe))
        jax.eval_shape(step, carry, jnp.int32(0))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError) as e:
        raise LanesNotTraceable(C.error_line(e)) from None
    except TypeError as e:  # math.exp(tracer) and the like
        raise LanesNotTraceable(C.error_line(e)) from None
    return program, values


def inputs(values: dict[str, np.ndarray], seeds: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Per-run inputs of a laned program, lane-major: run ``l·S + s`` is lane ``l``, seed
    ``seeds[s]`` (its key is that seed's key, as when the cell runs alone)."""
    import jax.numpy as jnp

    from tpo_sweeps.train import seed_keys

    n_lanes = len(next(iter(values.values())))
    keys = seed_keys(np.tile(np.asarray(seeds), n_lanes))
    hv = {p: jnp.repeat(jnp.asarray(v), len(seeds)) for p, v in values.items()}
    return keys, hv


def split(result: Result, n_lanes: int, seeds: np.ndarray) -> list[Result]:
    """A laned run's ``Result`` (runs lane-major) as one ``Result`` per lane, with its seeds.
    Compile and run time are the job's, spent on ``runs`` = lanes × seeds runs."""
    from tpo_sweeps.train import Result

    S = len(seeds)
    out = []
    for lane in range(n_lanes):
        rows = slice(lane * S, (lane + 1) * S)
        diverged = {
            int(seeds[i - lane * S]): v
            for i, v in result.diverged.items()
            if lane * S <= i < (lane + 1) * S
        }
        out.append(
            Result(
                np.asarray(seeds),
                {k: v[rows] for k, v in result.metrics.items()},
                result.steps,
                {k: v[rows] for k, v in result.summary.items()},
                result.compile_s,
                result.run_s,
                diverged,
                runs=n_lanes * S,
            )
        )
    return out
