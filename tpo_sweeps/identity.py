"""What a stored result *is*: the identity rule, in one place.

A stored result is one seed of one **cell**. The cell is the *effective* config: the composed
config after every rule that makes two configs compute the same numbers has been applied.
Two requests with the same cell and seed are served by one stored run, whichever sweep,
machine or job asked for it.

The rule (each line has a test in ``tests/test_identity.py`` that fails if two configs that
compute differently collide, or two that compute the same do not):

1. **Not part of it** — where and how a run executes or is reported: ``name`` (the sweep),
   ``seed``/``num_seeds`` (the seed is the second half of the identity; seed ``s`` always
   uses ``PRNGKey(s)``), ``hardware``, ``db``, ``debug``, ``checkpoint``, ``progress``,
   ``skip_completed``, ``campaign``, ``lanes`` (a job's hyperparameter lanes: each lane
   is identified as its own config), and the data's location (``task.data_dir``; not
   ``task.check_md5``: a run on unchecked files must not serve a request for real MNIST).
   Grouping seeds and other ``hardware`` settings change numbers only at float rounding:
   with ``hardware.seed_batch=1`` a seed's numbers are bit for bit the same whichever seeds
   share its program; under one vmap over the seeds (the default) they agree to ~1e-5.
2. **Canonical algorithm names** — an algorithm option that is a registry alias of another
   (``tpo_1ep`` is TPO with ``epochs: 1``, ``dg_4ep`` DG with 4, ``reinforce`` PG with 4,
   ``tpo_token``/``grpo_masked``/... differ from their parent only in fields) is stored
   under the registry's canonical name; the fields then say what differs.
3. **Interaction matching resolved** (token reversal, protocols §5) — ``task.match=
   interactions`` gives a method that is not sequence-grouped ``B·K`` prompts and the
   config lr ``× √K``; the effective config holds that batch and lr and ``match=prompts``.
   A sequence-grouped method is unchanged by ``match`` (it drops out).
4. **Unused fields dropped** — a single-sample method on token reversal draws one rollout
   per prompt: after rule 3, ``task.K`` does not enter its computation and is set to null.
5. **Extras, not identity** — switches that only add logged values: ``task.diagnostics``
   (reversal §4 diagnostics), ``task.mechanism`` (MNIST Fig 5b gains), and ``log_every``
   (a thinning of the stored curve). A stored run *satisfies* a request when it has every
   extra the request asks for (``satisfies``): a diagnostics run serves a request without
   diagnostics, not the reverse; a run logged every step serves one logged every 10.

``resolve(cfg)`` applies rules 2–4 to a typed config; the trainer runs the resolved config, so
what is stored is by construction what was computed. ``cell_hash`` hashes the resolved config
without the keys of rule 1 and the extras of rule 5; ``run_key`` adds the seed and extras.
Changing what a cell's numbers depend on (a new semantic field, a new rule) re-keys stored
runs: ship it with an Alembic revision that recomputes ``cell_hash``/``run_key``
(``tpo_sweeps/migrations``), as the v1 → v2 revision does.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from typing import Any

from tpo_sweeps import config as C

# rule 1: top-level keys and dotted leaves that never enter the identity
NOT_IDENTITY = (
    "name",
    "seed",
    "num_seeds",
    "hardware",
    "db",
    "debug",
    "checkpoint",
    "progress",
    "skip_completed",
    "campaign",
    "lanes",
)
LOCATION = ("task.data_dir",)
# rule 5: extras, with how a stored value satisfies a requested one
EXTRAS = {
    "diagnostics": "task.diagnostics",
    "mechanism": "task.mechanism",
    "log_every": "log_every",
}


def _get(d: dict, dotted: str, default=None):
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _pop(d: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = d
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


# --------------------------------------------------------------------------------------------
# rules 2-4 on a typed config (what the trainer runs)
# --------------------------------------------------------------------------------------------


def interaction_scaling(layout: str, B: int, K: int, match: str) -> tuple[int, float]:
    """(prompts per episode, lr multiplier) under ``task.match`` (protocols §5).

    Interaction-matched runs give every method that is not sequence-grouped B·K prompts and
    the config lr × √K (applied before Muon's ×10); sequence-grouped methods, which already
    consume K rollouts per prompt, are unchanged.
    """
    if match == "interactions" and layout != "sequence":
        return B * K, math.sqrt(K)
    return B, 1.0


def resolve(cfg: C.Config) -> C.Config:
    """The effective config of ``cfg`` (rules 2–4): what its job computes, and trains."""
    from tpo_sweeps import algorithms as A

    algo_cfg = dataclasses.replace(cfg.algorithm, name=A.canonical_name(cfg.algorithm.name))
    task, opt = cfg.task, cfg.optimizer
    if isinstance(task, C.ReversalConfig):
        layout = A.layout(cfg.algorithm)
        B, lr_scale = interaction_scaling(layout, task.B, task.K, task.match)
        if lr_scale != 1.0:
            if not hasattr(opt, "lr"):
                raise C.ConfigError("task.match=interactions needs an optimizer with an lr")
            opt = dataclasses.replace(opt, lr=opt.lr * lr_scale)
        K = None if layout == "single" else task.K
        task = dataclasses.replace(task, B=B, K=K, match=C.Match.prompts)
    return dataclasses.replace(cfg, algorithm=algo_cfg, task=task, optimizer=opt)


# --------------------------------------------------------------------------------------------
# hashes (on plain dicts: a typed config's ``as_dict`` or a stored ``runs.config``)
# --------------------------------------------------------------------------------------------


def semantic(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config's dict that is the cell (rules 1 and 5 removed)."""
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in NOT_IDENTITY}
    for dotted in (*LOCATION, *EXTRAS.values()):
        _pop(out, dotted)
    return out


def extras(config: dict[str, Any]) -> dict[str, Any]:
    """The extras a config asks for (rule 5), with their defaults filled."""
    return {
        "diagnostics": bool(_get(config, EXTRAS["diagnostics"], False)),
        "mechanism": bool(_get(config, EXTRAS["mechanism"], False)),
        "log_every": int(_get(config, EXTRAS["log_every"], 1)),
    }


def satisfies(stored: dict[str, Any], requested: dict[str, Any]) -> bool:
    """Whether a stored run's extras serve a request's: every switch the request turns on is
    on, and the request's logging interval is a multiple of the stored one."""
    return (
        (stored["diagnostics"] or not requested["diagnostics"])
        and (stored["mechanism"] or not requested["mechanism"])
        and requested["log_every"] % stored["log_every"] == 0
    )


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cell_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``semantic(resolved)``."""
    return _digest(semantic(resolved))


def run_key(cell: str, seed: int, extra: dict[str, Any]) -> str:
    """The unique key of one stored run: its cell, its seed and its extras."""
    return _digest({"cell": cell, "seed": int(seed), "extras": extras_key(extra)})


def extras_key(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: extra[k] for k in EXTRAS}


@dataclasses.dataclass(frozen=True)
class Identity:
    """A typed config, its resolved form and the keys derived from it."""

    config: C.Config  # as requested (labels: algorithm name, match, ...)
    resolved: C.Config  # what the job computes
    cell: str  # cell_hash
    extras: dict[str, Any]

    @property
    def seeds(self) -> list[int]:
        return list(range(self.config.seed, self.config.seed + self.config.num_seeds))

    def run_key(self, seed: int) -> str:
        return run_key(self.cell, seed, self.extras)

    def job_key(self, seeds: list[int]) -> str:
        """A key for the state of one job (its checkpoint): the cell, its seeds and extras."""
        return _digest(
            {"cell": self.cell, "seeds": sorted(map(int, seeds)), "extras": extras_key(self.extras)}
        )


def identify(cfg: C.Config) -> Identity:
    resolved = resolve(cfg)
    as_dict = C.as_dict(resolved)
    return Identity(cfg, resolved, cell_hash(as_dict), extras(as_dict))
