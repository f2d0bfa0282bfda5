"""Typed configuration: one dataclass schema per config group, one subclass per option.

Hydra composes ``conf/``; every option file starts from the schema registered here
(``defaults: [<name>_schema, _self_]``), so a key that does not belong to the chosen option
fails at composition. ``to_config`` converts the composed ``DictConfig`` once, at the entry
point, and additionally rejects keys added with ``+`` that the dataclass does not declare
(OmegaConf would drop them silently).

Fixed choices are ``Choice`` enums (a typo fails at composition, naming the key and the
allowed values) that compare and store as their plain strings, so the run identity hashes
what it hashed when they were ``str`` fields. ``validate`` checks every number against its
stated range (``RANGES``), NaN and infinity, the sweep name and the combinations a task cannot
run; ``error_line`` shortens Hydra's and OmegaConf's many-line errors to one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from enum import Enum, EnumMeta
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot be run; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# Fixed choices
# --------------------------------------------------------------------------------------------


class _ChoiceMeta(EnumMeta):
    # OmegaConf looks a string up by member *name*; a member whose value is not a valid name
    # (Platform.auto = "") is also found by its value, so YAML may keep writing ''
    def __getitem__(cls, name):
        try:
            return super().__getitem__(name)
        except KeyError:
            if isinstance(name, str) and name in cls._value2member_map_:
                return cls._value2member_map_[name]
            raise


class Choice(str, Enum, metaclass=_ChoiceMeta):
    """A fixed-choice field: OmegaConf rejects any other value when the config is composed,
    naming the key and the allowed values. A member is a ``str`` equal to its value (which
    is its name, but for ``Platform.auto``), so code compares it with plain strings, and
    ``as_dict`` stores the value: the run identity hashes the same strings as before."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Level(Choice):
    sequence = "sequence"  # K full rollouts per prompt
    token = "token"  # K next-token candidates at each prefix of one rollout


class Baseline(Choice):
    constant = "constant"
    batch_mean = "batch_mean"
    expected = "expected"
    none = "none"


class StdEpsMode(Choice):
    add = "add"  # (s - mean)/(std + ε)
    sqrt = "sqrt"  # (s - mean)/sqrt(var + ε)


class Target(Choice):
    copy = "copy"
    flip = "flip"
    reverse_copy = "reverse_copy"
    reverse_flip = "reverse_flip"


class Reward(Choice):
    bag_of_tokens = "bag_of_tokens"
    sequential = "sequential"
    terminal = "terminal"


class Match(Choice):
    prompts = "prompts"
    interactions = "interactions"


class Platform(Choice):
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    rocm = "rocm"
    tpu = "tpu"
    auto = ""  # JAX's own choice (written '' or auto)


class ModelKernels(Choice):
    auto = "auto"  # by platform (tpo_sweeps.devices): cpu_fused on a CPU, else flax
    flax = "flax"  # Flax's own layers and autodiff: the reference path
    cpu_fused = "cpu_fused"  # tpo_sweeps.models: custom backward passes built for XLA:CPU


# --------------------------------------------------------------------------------------------
# algorithm/
# --------------------------------------------------------------------------------------------


@dataclass
class AlgorithmConfig:
    name: str = MISSING  # registry key (tpo_sweeps.algorithms.ALGORITHMS)
    epochs: int = 1  # E, optimiser steps per rollout batch (paper: 4 for TPO/GRPO/PPO, DG 1)


@dataclass
class TPOConfig(AlgorithmConfig):
    eta: float = 1.0  # η, target temperature, Eq. 2 (code: tpo_eta)
    anchor: bool = True  # keep p_old in q ∝ p_old·exp(u/η); False = "TPO no-anchor" (§3.7)
    level: Level = Level.sequence  # sequence: K full rollouts | token: K next-token candidates
    std_threshold: float = 1e-6  # σ ≤ this → u = centred scores (App. A; code tpo_skill)


@dataclass
class ClippedConfig(AlgorithmConfig):
    """PPO and GRPO: clipped importance-ratio surrogate."""

    clip_eps: float = 0.2  # ε, ratio clip range [1-ε, 1+ε]
    kl_beta: float = 0.0  # β, weight of the k3 KL estimator to the rollout snapshot (App. F)
    log_ratio_clamp: float | None = None  # clamp of log r before exp (GRPO code: 20); None = off


@dataclass
class PPOConfig(ClippedConfig):
    baseline: Baseline = Baseline.batch_mean  # b: constant | batch_mean | expected | none
    baseline_value: float = 0.0  # b when baseline == constant


@dataclass
class GRPOConfig(ClippedConfig):
    std_eps: float = 1e-8  # ε of the group z-score A = (s - mean)/(std + ε)
    std_eps_mode: StdEpsMode = StdEpsMode.add  # add: std + ε (code) | sqrt: sqrt(var + ε) (tabular)
    mask_zero_variance: bool = False  # "GRPO (zv-masked)": drop zero-variance groups (§4.2)
    level: Level = Level.sequence  # sequence: K full rollouts | token: K next-token candidates
    std_threshold: float = 1e-6  # σ ≤ this marks a zero-variance group for the mask


@dataclass
class PGConfig(AlgorithmConfig):
    baseline: Baseline = Baseline.batch_mean  # b: constant | batch_mean | expected | none
    baseline_value: float = 0.0  # b when baseline == constant


@dataclass
class DGConfig(PGConfig):
    eta: float = 1.0  # η, gate temperature: w = σ(A·ℓ_s/η) (Delightful PG)
    surprisal_clip: float | None = None  # symmetric clip of ℓ_s = -log π(a); code never sets it


@dataclass
class GroupPGConfig(AlgorithmConfig):
    eta: float = 1.0  # η, scores u/η as scalar weights (same signal as TPO, §3.7)
    std_threshold: float = 1e-6  # as TPO's standardisation


@dataclass
class BatchStdPGConfig(AlgorithmConfig):
    """Batch-standardised REINFORCE: the paper's single-sample "GRPO" on MNIST."""

    std_eps: float = 1e-8  # A = (r - mean_B r)/(std_B r + ε)


@dataclass
class CEConfig(AlgorithmConfig):
    """Supervised cross-entropy oracle (uses the label; not an RL method)."""


# --------------------------------------------------------------------------------------------
# task/
# --------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    name: str = MISSING  # registry key (tpo_sweeps.tasks.TASKS)
    steps: int = MISSING  # T, training steps (episodes)
    baseline: Baseline = Baseline.batch_mean  # what single-sample methods use in this protocol
    baseline_value: float = 0.0  # its value when baseline == constant
    grpo_std_eps_mode: StdEpsMode = StdEpsMode.add  # GRPO z-score guard in this protocol


@dataclass
class TabularSingleConfig(TaskConfig):
    name: str = "tabular_single"
    steps: int = 150  # paper Fig 3
    num_actions: int = 100  # K actions of the single context; correct action y* = 0
    batch_size: int = 100  # B actions sampled per step
    baseline: Baseline = Baseline.constant  # code: A = r - 0.5 for PG and DG
    baseline_value: float = 0.5
    grpo_std_eps_mode: StdEpsMode = StdEpsMode.sqrt  # code: (r - mean)/sqrt(var + 1e-8)


@dataclass
class TabularMultiConfig(TaskConfig):
    name: str = "tabular_multi"
    steps: int = 1000  # paper Fig 4
    num_contexts: int = 100  # N contexts
    num_actions: int = 10  # A actions per context; correct action y = 0
    init_std: float = 1.0  # logits ~ N(0, init_std²) per seed
    baseline: Baseline = Baseline.none  # exact population PG, b = 0
    grpo_std_eps_mode: StdEpsMode = StdEpsMode.sqrt


@dataclass
class TransformerConfig:
    """The authors' causal transformer (protocols §2.2)."""

    d_model: int = 64
    num_heads: int = 2  # the authors' code uses 2; the paper text says 4 (D1)
    num_layers: int = 2
    ffn_mult: int = 4  # FFN width = ffn_mult · d_model


@dataclass
class ReversalConfig(TaskConfig):
    """Token reversal with a causal transformer (paper §3.4–3.7, §4; protocols §3)."""

    name: str = "reversal"
    steps: int = 1000  # episodes
    H: int = 10  # sequence length (prompt = answer = H tokens)
    V: int = 2  # vocabulary size
    B: int = 100  # prompts per episode
    K: int = 8  # group size: full rollouts (sequence level) or token candidates (token level)
    target: Target = Target.reverse_copy  # copy | flip | reverse_copy | reverse_flip
    reward: Reward = Reward.bag_of_tokens  # bag_of_tokens | sequential | terminal
    match: Match = (
        Match.prompts
    )  # prompts | interactions: single-sample methods get B·K, lr·√K (§5)
    diagnostics: bool = False  # log §4 diagnostics (grad norm, success/zero-var, weights)
    std_threshold: float = 1e-6  # σ ≤ this counts a group as zero-variance (diagnostics)
    cached_sampler: bool = True  # KV cache; false = re-run the full pass per token (authors')
    model: TransformerConfig = field(default_factory=TransformerConfig)


@dataclass
class MnistConfig(TaskConfig):
    """MNIST contextual bandit (paper §3.3, Figs 1a, 5a, 5b; protocols §4.3–4.4)."""

    name: str = "mnist"
    steps: int = 10000  # T, Adam steps (one batch each)
    batch_size: int = 100  # B contexts per step, drawn uniformly with replacement
    eval_every: int = 200  # test error (full test set) after every n steps
    hidden: int = 50  # width of both hidden layers: 784-hidden-hidden-10 ReLU MLP
    baseline: Baseline = (
        Baseline.expected
    )  # b = Σ_a π(a)² for PG/DG (and the sign of TPO/Group PG's A)
    data_dir: str = (
        "~/.cache/tpo_sweeps/mnist"  # the four IDX files (python -m tpo_sweeps data mnist)
    )
    check_md5: bool = True  # require the canonical MNIST files (false: synthetic test data)
    mechanism: bool = False  # log the Fig 5b gain diagnostic per concentration bin at each eval


# --------------------------------------------------------------------------------------------
# optimizer/
# --------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    name: str = MISSING


@dataclass
class NormalizedStepConfig(OptimizerConfig):
    """θ ← θ - α·g/‖g‖ with one global L2 norm (the tabular runs' logit-space step)."""

    name: str = "normalized_step"
    alpha: float = 0.1  # α, step length in logit space
    eps: float = 1e-30  # ‖g‖ = sqrt(Σg² + eps)


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    lr: float = 1e-3  # MNIST: optax.adam(1e-3)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


@dataclass
class MuonConfig(OptimizerConfig):
    """optax.contrib.muon as the authors call it (protocols §2.3)."""

    name: str = "muon"
    lr: float = 1e-4  # config learning rate (authors' configs store 1e-4)
    lr_multiplier: float = 10.0  # effective lr = lr·lr_multiplier (authors' ×10 → 1e-3)
    beta: float = 0.95  # Muon momentum (Nesterov)
    ns_steps: int = 5  # Newton-Schulz iterations
    adam_b1: float = 0.9  # the non-2-D parameters' AdamW branch
    adam_b2: float = 0.999
    weight_decay: float = 0.0

    @property
    def effective_lr(self) -> float:
        return self.lr * self.lr_multiplier


# --------------------------------------------------------------------------------------------
# hardware/, db, root
# --------------------------------------------------------------------------------------------


@dataclass
class HardwareConfig:
    name: str = "cpu"
    platform: Platform = Platform.cpu  # JAX platform: cpu | gpu | ... | "" or auto (JAX's choice)
    compilation_cache: str = ""  # directory for JAX's persistent compilation cache; "" = off
    # runs (seeds; lanes × seeds) in lockstep (vmap) per group, groups one after another
    # (lax.map) inside the same compiled program; 0 = all in one vmap; -1 = auto by platform
    # (tpo_sweeps.devices: 1 for the transformer on a CPU, where vmapped weights make batched
    # GEMMs 20-40% slower than plain ones; else 0)
    seed_batch: int = -1
    # with seed_batch > 0: this many seed groups run side by side as independent
    # computations, which XLA overlaps on the cores (small ops leave a core idle)
    seed_streams: int = 1
    # the transformer's training-path kernels (tpo_sweeps.flax_models): the same maths to
    # float32 rounding, so, like the seed grouping, not part of a run's identity
    model_kernels: ModelKernels = ModelKernels.auto
    # a multirun's cells that differ only in traced hyperparameters (tpo_sweeps.lanes.TRACED:
    # eta, lr, clip_eps, ...) run as lanes of one job and one compiled program, each stored
    # as its own run; false: one job per cell
    lanes: bool = True
    # XLA debug options for every compiled program (per compilation, not process-wide), e.g.
    # {xla_cpu_experimental_ynn_fusion_type: LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT}
    xla_options: dict[str, str] = field(default_factory=dict)
    # SLURM site settings, read by hardware=slurm_gpu; set them on the command line or in the
    # untracked conf/local/default.yaml, never in a committed file
    partition: str | None = None  # sbatch --partition
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos


@dataclass
class DBConfig:
    url: str = "sqlite:///results/tpo.sqlite"  # any SQLAlchemy URL (sqlite, postgresql+psycopg)
    busy_timeout_s: float = 30.0  # SQLite: wait this long for a lock before failing
    # a finished job retries a write that did not get the lock (or the connection) this long
    # (s), then stores its results in its output dir's results.sqlite (tpo_sweeps merge)
    retry_s: float = 600.0
    heartbeat_s: float = 60.0  # a running job refreshes runs.heartbeat_at this often (s); 0 = off
    stage: bool = False  # write results.sqlite in each job's output dir, merge into url at end


@dataclass
class DebugConfig:
    fail: bool = False  # raise inside the job after setup (exercises failure recording)
    fail_algorithms: list[str] = field(default_factory=list)  # as fail, for these algorithm names
    crash_at: int = 0  # raise once this many points are done (checkpoint/resume tests); 0 = off
    pause_in_write_s: float = 0.0  # sleep inside the final write transaction (SIGKILL tests)


@dataclass
class CheckpointConfig:
    every: int = 0  # save the run's training state every n logged points; 0 = off
    dir: str = "results/checkpoints"  # <dir>/<config hash>/; on a cluster: a shared filesystem
    keep: bool = False  # keep the checkpoint after the run completed


@dataclass
class ProgressConfig:
    # a run reports progress every n points (its scan then runs in chunks of n); 0 = off;
    # -1 = auto: off for a run expected to take under a minute on the reference CPU
    # (tpo_sweeps.cost), else ~100 reports per run (supervise.auto_every)
    every: int = -1
    sweep_every_s: float = 30.0  # a multirun logs its cells' pending/running/done/failed counts


@dataclass
class Config:
    algorithm: AlgorithmConfig = MISSING
    task: TaskConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    db: DBConfig = field(default_factory=DBConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    name: str = "default"  # sweep id: the experiment preset's name; analysis selects on it
    seed: int = 0  # base seed; this job runs seeds seed .. seed + num_seeds - 1
    num_seeds: int = 1  # seeds run by one job, in one compiled program
    x64: bool = False  # compute in float64 (jax_enable_x64); the authors' code is float32
    log_every: int = 1  # store per-step metrics every n steps (the last step is always kept)
    skip_completed: bool = True  # skip the seeds whose cell already completed in db.url
    # a campaign preset (experiment=paper): the member presets whose cells it launches,
    # deduplicated (tpo_sweeps.campaign); empty for an ordinary preset
    campaign: list[str] = field(default_factory=list)
    # hyperparameter lanes of this job, set by the sweeper (tpo_sweeps.lanes): each entry is
    # one lane's traced values as overrides ("algorithm.eta=0.5 optimizer.lr=0.001"); the
    # job runs them all in one compiled program and stores each as its own cell. Empty: the
    # job is the one cell its config says
    lanes: list[str] = field(default_factory=list)


GROUPS: dict[str, tuple[type, dict[str, type]]] = {
    "algorithm": (
        AlgorithmConfig,
        {
            "tpo": TPOConfig,
            "clipped": ClippedConfig,
            "ppo": PPOConfig,
            "grpo": GRPOConfig,
            "pg": PGConfig,
            "dg": DGConfig,
            "group_pg": GroupPGConfig,
            "batch_std_pg": BatchStdPGConfig,
            "ce": CEConfig,
        },
    ),
    "task": (
        TaskConfig,
        {
            "tabular_single": TabularSingleConfig,
            "tabular_multi": TabularMultiConfig,
            "reversal": ReversalConfig,
            "mnist": MnistConfig,
        },
    ),
    "optimizer": (
        OptimizerConfig,
        {"normalized_step": NormalizedStepConfig, "adam": AdamConfig, "muon": MuonConfig},
    ),
}

_registered = False


def register_configs() -> None:
    """Store the root schema and every option schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from tpo_sweeps.campaign import TpoSweeperConf

    # hydra.run.dir and hydra.sweep.dir name their folder after the sweep: a name that is no
    # safe folder name fails there, before Hydra makes any folder
    if not OmegaConf.has_resolver("tpo_folder"):
        OmegaConf.register_new_resolver("tpo_folder", _folder_name)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="hydra/sweeper", name="tpo", node=TpoSweeperConf)
    for group, (_, options) in GROUPS.items():
        for name, schema in options.items():
            cs.store(group=group, name=f"{name}_schema", node=schema)
    _registered = True


def _check_keys(node: DictConfig, schema: type, path: str) -> None:
    names = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in names:
            raise ConfigError(
                f"'{path}.{key}' is not a field of {schema.__name__} "
                f"(valid: {', '.join(sorted(names))})"
            )
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(child._metadata.object_type):
            _check_keys(child, child._metadata.object_type, f"{path}.{key}")


def to_config(cfg: DictConfig) -> Config:
    """Convert a composed config to the typed ``Config``, rejecting undeclared keys."""
    groups = ("algorithm", "task", "optimizer", "hardware", "db", "debug", "checkpoint", "progress")
    for key in groups:
        if key not in cfg:
            raise ConfigError(f"config has no '{key}' group")
        node = cfg._get_node(key)
        schema = node._metadata.object_type
        if schema is None or not dataclasses.is_dataclass(schema):
            raise ConfigError(
                f"'{key}' is not built from a registered schema; start its file with "
                f"'defaults: [<option>_schema, _self_]'"
            )
        _check_keys(node, schema, key)
    names = {f.name for f in dataclasses.fields(Config)}
    extra = [k for k in cfg.keys() if k not in names and k != "hydra"]
    if extra:
        raise ConfigError(f"unknown top-level key '{extra[0]}'")
    try:
        obj = OmegaConf.to_object(cfg)
    except Exception as e:  # missing values, bad interpolations
        raise ConfigError(str(e).splitlines()[0]) from e
    assert isinstance(obj, Config)
    validate(obj)
    return obj


# a sweep name is a folder name (outputs/<name>/, multirun/<name>/) and a database label
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
MAX_SEED = 2**32 - 1  # seed s is PRNGKey(s) of a uint32: 2**32 would wrap to seed 0


def check_name(name: str, key: str = "name") -> None:
    """A sweep name must be a safe folder name: no separators, no '..', at most 200 chars."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{key}={name!r} is not a valid sweep name (letters, digits and _ . + -, "
            "starting with a letter or digit, no '..', at most 200 characters)"
        )


def _folder_name(name: Any) -> str:
    check_name(name if isinstance(name, str) else str(name))
    return name


def _finite_floats(node: Any, path: str) -> None:
    """No float field anywhere in the config may be NaN or infinite."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            _finite_floats(value, where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")


def _check(cfg: Config, key: str, ok, rule: str) -> None:
    """``ok(value)`` or a one-line ``ConfigError`` naming ``key``, the rule and the value;
    a key the chosen options do not have is skipped."""
    node: Any = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            return
        node = getattr(node, part)
    if node is not None and not ok(node):
        raise ConfigError(f"{key} must be {rule}, got {node!r}")


def _positive(v) -> bool:
    return v > 0


def _at_least(n):
    return lambda v: v >= n


def _unit(v) -> bool:
    return 0 <= v < 1


# (key, test, rule): checked where the chosen options have the key
RANGES: list[tuple[str, Any, str]] = [
    ("num_seeds", _at_least(1), ">= 1"),
    ("seed", lambda v: 0 <= v <= MAX_SEED, f"in 0..{MAX_SEED} (seed s is PRNGKey(s), uint32)"),
    ("log_every", _at_least(1), ">= 1"),
    ("algorithm.epochs", _at_least(1), ">= 1"),
    ("algorithm.eta", _positive, "> 0"),
    ("algorithm.clip_eps", _positive, "> 0"),
    ("algorithm.kl_beta", _at_least(0), ">= 0"),
    ("algorithm.log_ratio_clamp", _positive, "> 0 (or null: off)"),
    ("algorithm.std_eps", _positive, "> 0"),
    ("algorithm.std_threshold", _at_least(0), ">= 0"),
    ("algorithm.surprisal_clip", _positive, "> 0 (or null: off)"),
    ("task.steps", _at_least(1), ">= 1"),
    ("task.num_actions", _at_least(2), ">= 2"),
    ("task.batch_size", _at_least(1), ">= 1"),
    ("task.num_contexts", _at_least(1), ">= 1"),
    ("task.init_std", _at_least(0), ">= 0"),
    ("task.H", _at_least(2), ">= 2"),
    ("task.V", _at_least(2), ">= 2"),
    ("task.B", _at_least(1), ">= 1"),
    ("task.K", _at_least(1), ">= 1"),
    ("task.std_threshold", _at_least(0), ">= 0"),
    ("task.model.d_model", _at_least(1), ">= 1"),
    ("task.model.num_heads", _at_least(1), ">= 1"),
    ("task.model.num_layers", _at_least(1), ">= 1"),
    ("task.model.ffn_mult", _at_least(1), ">= 1"),
    ("task.eval_every", _at_least(1), ">= 1"),
    ("task.hidden", _at_least(1), ">= 1"),
    ("optimizer.alpha", _positive, "> 0"),
    ("optimizer.eps", _positive, "> 0"),
    ("optimizer.lr", _positive, "> 0"),
    ("optimizer.b1", _unit, "in [0, 1)"),
    ("optimizer.b2", _unit, "in [0, 1)"),
    ("optimizer.lr_multiplier", _positive, "> 0"),
    ("optimizer.beta", _unit, "in [0, 1)"),
    ("optimizer.ns_steps", _at_least(1), ">= 1"),
    ("optimizer.adam_b1", _unit, "in [0, 1)"),
    ("optimizer.adam_b2", _unit, "in [0, 1)"),
    ("optimizer.weight_decay", _at_least(0), ">= 0"),
    ("hardware.seed_batch", _at_least(-1), ">= -1 (-1 = auto by platform, 0 = all in one vmap)"),
    ("hardware.seed_streams", _at_least(1), ">= 1"),
    ("db.url", lambda v: v.strip() != "", "a database URL"),
    ("db.busy_timeout_s", _positive, "> 0"),
    ("db.retry_s", _at_least(0), ">= 0"),
    ("db.heartbeat_s", _at_least(0), ">= 0 (0 = off)"),
    ("checkpoint.every", _at_least(0), ">= 0 (0 = off)"),
    ("checkpoint.dir", lambda v: v.strip() != "", "a directory"),
    ("progress.every", _at_least(-1), ">= -1 (-1 = auto, 0 = off)"),
    ("progress.sweep_every_s", _at_least(0), ">= 0 (0 = off)"),
    ("debug.crash_at", _at_least(0), ">= 0 (0 = off)"),
    ("debug.pause_in_write_s", _at_least(0), ">= 0"),
]


def validate(cfg: Config) -> None:
    """Value checks that a schema type cannot express: every number in its stated range
    (``RANGES``), no NaN or infinity, a safe sweep name, and the combinations a task
    cannot run. Each failure is one ``ConfigError`` line naming the key."""
    _finite_floats(cfg, "")
    check_name(cfg.name)
    for member in cfg.campaign:
        check_name(member, "campaign")
    if cfg.lanes:
        from tpo_sweeps import lanes

        for lane in cfg.lanes:  # only traced fields, only numbers, each in its range
            try:
                validate(lanes.with_values(dataclasses.replace(cfg, lanes=[]), lanes.parse(lane)))
            except ConfigError as e:
                raise ConfigError(f"lanes: {lane!r}: {str(e).removeprefix('lanes: ')}") from None
    for key, ok, rule in RANGES:
        _check(cfg, key, ok, rule)
    if cfg.seed + cfg.num_seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"seed + num_seeds - 1 = {cfg.seed + cfg.num_seeds - 1} exceeds {MAX_SEED} "
            "(seed s is PRNGKey(s), uint32)"
        )
    # choices that a plain str could still hold (a config built in code, not composed)
    for key, kind in (
        ("algorithm.baseline", Baseline),
        ("algorithm.std_eps_mode", StdEpsMode),
        ("algorithm.level", Level),
        ("task.baseline", Baseline),
        ("task.grpo_std_eps_mode", StdEpsMode),
        ("task.target", Target),
        ("task.reward", Reward),
        ("task.match", Match),
        ("hardware.platform", Platform),
        ("hardware.model_kernels", ModelKernels),
    ):
        allowed = [m.value for m in kind]
        _check(cfg, key, lambda v, a=allowed: v in a, f"one of {', '.join(map(repr, allowed))}")
    task, algo = cfg.task, cfg.algorithm
    level = getattr(algo, "level", Level.sequence)
    if level == Level.token and not isinstance(task, ReversalConfig):
        raise ConfigError(
            f"algorithm.level=token ({algo.name}) needs task=reversal, got task={task.name}"
        )
    if isinstance(task, ReversalConfig):
        m = task.model
        if m.d_model % m.num_heads:
            raise ConfigError(
                f"task.model.d_model={m.d_model} must be a multiple of "
                f"task.model.num_heads={m.num_heads}"
            )
        if level == Level.token and task.reward == Reward.terminal:
            raise ConfigError(
                f"algorithm '{algo.name}' (token level) needs a dense reward, "
                "got task.reward=terminal"
            )
    if isinstance(task, MnistConfig) and task.steps % task.eval_every:
        raise ConfigError(
            f"task.steps={task.steps} must be a multiple of task.eval_every={task.eval_every}"
        )
    _group_sizes(cfg)


def _group_sizes(cfg: Config) -> None:
    """K >= 2 where the algorithm scores a group of K candidates (token reversal)."""
    from tpo_sweeps import algorithms as A

    task = cfg.task
    if isinstance(task, ReversalConfig) and A.layout(cfg.algorithm) != "single" and task.K < 2:
        raise ConfigError(
            f"task.K must be >= 2 for {cfg.algorithm.name} (a group of K candidates), got {task.K}"
        )


def _plain(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in items}


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain-JSON view of a typed config (for hashing and storage): a choice is its value."""
    return dataclasses.asdict(cfg, dict_factory=_plain)


def from_dict(stored: dict[str, Any]) -> Config:
    """The typed ``Config`` a stored ``as_dict`` view was written from (``runs.config``,
    a bundle); fields the dict lacks (added since it was stored) take their defaults, and a
    key the schema does not know raises ``ConfigError``. The algorithm option's schema comes
    from the registry, by its ``name``."""
    from tpo_sweeps import algorithms as A

    try:
        options = {
            "algorithm": A.ALGORITHMS[stored["algorithm"]["name"]].schema,
            "task": GROUPS["task"][1][stored["task"]["name"]],
            "optimizer": GROUPS["optimizer"][1][stored["optimizer"]["name"]],
        }
    except KeyError as e:
        raise ConfigError(f"stored config: unknown option {e}") from None
    return _build(Config, stored, options)


def _build(schema: type, values: dict[str, Any], options: dict[str, type] | None = None):
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"stored config: '{key}' is not a field of {schema.__name__}")
        field_type = (options or {}).get(key, hints[key])
        if isinstance(value, dict) and dataclasses.is_dataclass(field_type):
            value = _build(field_type, value)
        elif isinstance(field_type, type) and issubclass(field_type, Choice) and value is not None:
            try:
                value = field_type[value]
            except KeyError:
                raise ConfigError(
                    f"stored config: '{key}'={value!r} is not one of "
                    f"{', '.join(repr(m.value) for m in field_type)}"
                ) from None
        kwargs[key] = value
    return schema(**kwargs)


# --------------------------------------------------------------------------------------------
# One-line errors
# --------------------------------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else ""


def _schema_fields(class_name: str) -> list[str] | None:
    """The fields of the option schema called ``class_name`` (for 'Key x not in Y')."""
    schemas = [Config, HardwareConfig, DBConfig, DebugConfig, CheckpointConfig, ProgressConfig]
    schemas += [TransformerConfig] + [s for _, opts in GROUPS.values() for s in opts.values()]
    for schema in schemas:
        if schema.__name__ == class_name:
            return sorted(f.name for f in dataclasses.fields(schema))
    return None


def error_line(e: BaseException) -> str:
    """One line for an error in a command line or a config: what Hydra and OmegaConf say in
    10-40 lines (with the ``*_schema`` entries of the config store), shortened to the
    override or key and the reason, with the available options or values."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", str(e))
        options = [o for o in (e.options or []) if not o.endswith("_schema") and o[:1] != "_"]
        if found and "/" in found.group(1):
            group, _, option = found.group(1).rpartition("/")
            # `optional scale/task@_global_: ${scale}_${task}` names both choices at once
            text = f"{group}={option}: no such option"
            return f"{text} (available: {', '.join(options)})" if options else text
        return _first_line(str(e))
    if isinstance(e, OverrideParseException):
        return f"cannot parse override '{e.override}': {_first_line(e.message)}"
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
    if cause is None and isinstance(e, OmegaConfBaseException):
        cause = e
    if cause is not None:
        reason = _first_line(str(cause))
        # a resolver's own error (tpo_folder: an unsafe name) says it all
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason)
        full_key = getattr(cause, "full_key", None)
        if full_key and str(full_key).startswith("hydra."):
            full_key = None
        missing = re.match(r"Key '([^']+)' not in '([^']+)'", reason)
        if missing:
            fields = _schema_fields(missing.group(2))
            if fields:
                reason += f" (valid: {', '.join(fields)})"
        merging = re.match(r"Error merging override (.+)", _first_line(str(e)))
        overriding = re.match(r"Could not override '([^']+)'", _first_line(str(e)))
        if merging:
            return f"{merging.group(1)}: {reason}"
        if overriding:
            return f"{overriding.group(1)}: {reason}"
        if full_key and full_key not in reason:
            return f"{full_key}: {reason}"
        return reason
    line = _first_line(str(e))
    return line or type(e).__name__


def is_user_error(e: BaseException) -> bool:
    """An error in what was asked for (a command line, a config, a URL, a file), which one
    line explains, rather than a bug, whose traceback is wanted."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (ConfigError, HydraException, OmegaConfBaseException, UserError))


class UserError(RuntimeError):
    """Base of the errors outside the config that one line explains (``db``: a database
    that cannot be used; a sweep with failed or diverged jobs)."""
