"""Artefact ids -> the cells they request: the experiment presets' expansion, cached.

An artefact ``X`` at scale ``S`` (with optional extra overrides ``O``) requests the cells of
``python -m tpo_sweeps -m experiment=X scale=S O`` (``tpo_sweeps.sweep.expand``, the one
definition the multirun also launches). Each requested cell carries its hash, its extras
(diagnostics, mechanism, log_every), its overrides and its labels: the *requested* config's
values (the algorithm as the preset names it, K/H/V/match/target/reward/B as requested), not
the resolved ones. ``analysis.load`` reads the stored runs that serve these cells.

Artefact ids: ``X`` is ``X`` at scale ``paper``; ``X_<scale>`` (``fig1b_terminal_smoke``)
is ``X`` at that scale. ``Artefact`` carries the preset, scale and overrides while being the
id string itself (the output stem and the tidy frames' ``sweep`` column), so builders pass
it to the functions here and in ``analysis.load`` unchanged. Expansions are cached in the
process and on disk (``TPO_SWEEPS_CACHE_DIR``, default ``~/.cache/tpo_sweeps/selections``),
keyed by the contents of ``conf/`` and of the ``tpo_sweeps`` modules that compose and
identify cells. No database is read and the trainers are never imported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.errors import AnalysisError, first_line

log = logging.getLogger("analysis")

PAPER = "paper"  # the default scale: the preset as the paper ran it

# Labels that are no run column, from the requested config: name -> dotted path (None where a
# task has none). B is here because interaction matching changes the stored (resolved) B.
CONFIG_CELL = {"target": "task.target", "reward": "task.reward", "B": "task.B"}


def config_value(config, dotted: str, default=None):
    """``config["a"]["b"]`` for ``dotted = "a.b"`` (a requested config, or a parsed
    ``runs.config``), or ``default``."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# --------------------------------------------------------------------------------------------
# Artefact ids: preset + scale + overrides
# --------------------------------------------------------------------------------------------


@functools.cache
def config_dir() -> Path:
    """``conf/``, as the entry point finds it."""
    from tpo_sweeps import settings

    return Path(settings.config_dir())


@functools.cache
def scales() -> tuple[str, ...]:
    """The options of the ``scale`` config group (``conf/scale/*.yaml``)."""
    return tuple(sorted(p.stem for p in (config_dir() / "scale").glob("*.yaml")))


@functools.cache
def selects_like_paper(scale: str) -> bool:
    """Whether ``scale`` only changes how many seeds a job runs (``reduced``): its cells are
    the paper's, and the analysis, which reads every stored seed, builds the same artefact."""
    from omegaconf import OmegaConf

    if scale == PAPER:
        return True
    own = OmegaConf.load(config_dir() / "scale" / f"{scale}.yaml")
    per_task = list((config_dir() / "scale" / "task").glob(f"{scale}_*.yaml"))
    return not per_task and set(own.keys()) <= {"num_seeds", "seed"}


class Artefact(str):
    """An artefact id (``fig1b_terminal_smoke``) that also says which cells it reads: those of
    ``experiment=<preset> scale=<scale> <overrides>``. It *is* the id string (output stem,
    ``sweep`` column, messages), so the builders pass it along as they passed sweep names."""

    preset: str
    scale: str
    overrides: tuple[str, ...]

    def __new__(cls, preset: str, scale: str = PAPER, overrides: Iterable[str] = ()):
        self = super().__new__(cls, preset if scale == PAPER else f"{preset}_{scale}")
        self.preset, self.scale, self.overrides = preset, scale, tuple(overrides)
        return self

    @property
    def args(self) -> list[str]:
        """The multirun command line whose cells this artefact reads."""
        return [f"experiment={self.preset}", f"scale={self.scale}", *self.overrides]

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        # not the string: two artefacts with one id may differ in their overrides
        return (self.preset, self.scale, self.overrides)

    def describe(self) -> str:
        return " ".join(self.args)


def parse(name: str, scale: str | None = None, overrides: Iterable[str] = ()) -> Artefact:
    """The artefact an id names: ``X`` (scale ``paper``, or ``scale``), ``X_<scale>``.

    Raises ``AnalysisError`` for a scale that does not exist or contradicts the id's suffix.
    """
    overrides = tuple(overrides)
    if isinstance(name, Artefact) and scale is None and not overrides:
        return name
    base, suffix = str(name), None
    for s in scales():
        if base.endswith(f"_{s}") and len(base) > len(s) + 1:
            base, suffix = base[: -len(s) - 1], s
            break
    if scale is not None:
        check_scale(scale)
    if scale is not None and suffix is not None and scale != suffix:
        raise AnalysisError(f"'{name}' is at scale {suffix}, not the requested scale {scale}")
    if isinstance(name, Artefact):
        overrides = name.overrides + overrides
    return Artefact(base, scale or suffix or PAPER, overrides)


def check_scale(scale: str) -> str:
    if scale not in scales():
        raise AnalysisError(f"unknown scale '{scale}' (known: {', '.join(scales())})")
    return scale


def preset_of(name: str) -> str:
    return parse(name).preset


def scale_of(name: str) -> str:
    return parse(name).scale


# --------------------------------------------------------------------------------------------
# Expansion (cached): the requested cells of an artefact
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    env = os.environ.get("TPO_SWEEPS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "tpo_sweeps" / "selections"


@functools.cache
def _fingerprint() -> str:
    """What an expansion depends on: every file under ``conf/`` (site settings too) and the
    ``tpo_sweeps`` modules (schema defaults, identity rules, algorithm registry, expansion)."""
    import hydra
    import omegaconf

    import tpo_sweeps

    h = hashlib.sha256(f"{hydra.__version__} {omegaconf.__version__}".encode())
    pkg = Path(tpo_sweeps.__file__).resolve().parent
    files = [p for p in config_dir().rglob("*") if p.is_file()]
    files += list(pkg.glob("*.py"))
    for p in sorted(files):
        h.update(str(p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _cached(kind: str, key: Any, compute):
    """``compute()``, memoised on disk under the fingerprint (best effort: an unwritable
    cache only costs the recomputation)."""
    digest = hashlib.sha256(json.dumps([kind, key, _fingerprint()]).encode()).hexdigest()
    path = _cache_dir() / f"{kind}-{digest[:32]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)  # atomic: concurrent analyses never read half a file
    except OSError as e:
        log.debug("selection cache not written (%s)", e)
    return value


def _check_preset(preset: str) -> None:
    if not (config_dir() / "experiment" / f"{preset}.yaml").is_file():
        raise AnalysisError(f"no experiment preset '{preset}' in {config_dir() / 'experiment'}")


def _expand(args: list[str]) -> list[dict]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tpo_sweeps import config as C
    from tpo_sweeps import sweep as S
    from tpo_sweeps.store import promoted

    try:
        cells = S.expand(args).cells
    except (HydraException, OmegaConfBaseException, C.ConfigError) as e:
        raise AnalysisError(f"{' '.join(args)}: {first_line(e)}") from None
    out = []
    for cell in cells:
        requested = C.as_dict(cell.config)
        labels = {k: v for k, v in promoted(cell.config).items() if k != "sweep"}
        labels.update({k: config_value(requested, d) for k, d in CONFIG_CELL.items()})
        out.append(
            {
                "cell": cell.ident.cell,
                "extras": dict(cell.ident.extras),
                "overrides": list(cell.overrides),
                "labels": labels,
            }
        )
    return out


@functools.lru_cache(maxsize=256)
def _selection(key: tuple[str, str, tuple[str, ...]]) -> tuple[dict, ...]:
    preset, scale, overrides = key
    _check_preset(preset)
    art = Artefact(preset, scale, overrides)
    return tuple(_cached("cells", list(key), lambda: _expand(art.args)))


def selection(name: str) -> list[dict]:
    """The requested cells of an artefact, in launch order: ``cell`` (hash), ``extras``,
    ``overrides`` and ``labels`` (the requested config's promoted and ``CONFIG_CELL``
    values)."""
    return list(_selection(parse(name).key))


@functools.lru_cache(maxsize=256)
def primary(preset: str, scale: str) -> dict:
    """The preset's task, steps and swept keys at ``scale`` (one composition, no cells)."""
    _check_preset(preset)

    def compute() -> dict:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from tpo_sweeps import config as C

        C.register_configs()
        args = [f"experiment={preset}", f"scale={scale}"]

        def go():
            cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
            params = dict(cfg.hydra.sweeper.get("params") or {})
            return {
                "task": str(cfg.task.name),
                "steps": int(cfg.task.steps),
                "swept": sorted(params),
                "campaign": list(cfg.get("campaign") or []),
            }

        if GlobalHydra.instance().is_initialized():
            return go()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return go()

    return _cached("primary", [preset, scale], compute)
