"""Typed configuration: one dataclass schema per config group, one subclass per option.

Hydra composes ``conf/``; every option file starts from the schema registered here
(``defaults: [<name>_schema, _self_]``), so a key that does not belong to the chosen option
fails at composition. ``to_config`` converts the composed ``DictConfig`` once, at the entry
point, and additionally rejects keys added with ``+`` that the dataclass does not declare
(OmegaConf would drop them silently).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot be run; the message names the culprit."""


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
    level: str = "sequence"  # sequence: K full rollouts | token: K next-token candidates
    std_threshold: float = 1e-6  # σ ≤ this → u = centred scores (App. A; code tpo_skill)


@dataclass
class ClippedConfig(AlgorithmConfig):
    """PPO and GRPO: clipped importance-ratio surrogate."""

    clip_eps: float = 0.2  # ε, ratio clip range [1-ε, 1+ε]
    kl_beta: float = 0.0  # β, weight of the k3 KL estimator to the rollout snapshot (App. F)
    log_ratio_clamp: float | None = None  # clamp of log r before exp (GRPO code: 20); None = off


@dataclass
class PPOConfig(ClippedConfig):
    baseline: str = "batch_mean"  # b: constant | batch_mean | expected | none (task protocol)
    baseline_value: float = 0.0  # b when baseline == constant


@dataclass
class GRPOConfig(ClippedConfig):
    std_eps: float = 1e-8  # ε of the group z-score A = (s - mean)/(std + ε)
    std_eps_mode: str = "add"  # add: std + ε (code default) | sqrt: sqrt(var + ε) (tabular code)
    mask_zero_variance: bool = False  # "GRPO (zv-masked)": drop zero-variance groups (§4.2)
    level: str = "sequence"  # sequence: K full rollouts | token: K next-token candidates
    std_threshold: float = 1e-6  # σ ≤ this marks a zero-variance group for the mask


@dataclass
class PGConfig(AlgorithmConfig):
    baseline: str = "batch_mean"  # b: constant | batch_mean | expected | none (task protocol)
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
    baseline: str = "batch_mean"  # baseline single-sample methods use in this task's protocol
    baseline_value: float = 0.0  # its value when baseline == constant
    grpo_std_eps_mode: str = "add"  # GRPO z-score guard in this task's protocol (add | sqrt)


@dataclass
class TabularSingleConfig(TaskConfig):
    name: str = "tabular_single"
    steps: int = 150  # paper Fig 3
    num_actions: int = 100  # K actions of the single context; correct action y* = 0
    batch_size: int = 100  # B actions sampled per step
    baseline: str = "constant"  # code: A = r - 0.5 for PG and DG
    baseline_value: float = 0.5
    grpo_std_eps_mode: str = "sqrt"  # code: (r - mean)/sqrt(var + 1e-8)


@dataclass
class TabularMultiConfig(TaskConfig):
    name: str = "tabular_multi"
    steps: int = 1000  # paper Fig 4
    num_contexts: int = 100  # N contexts
    num_actions: int = 10  # A actions per context; correct action y = 0
    init_std: float = 1.0  # logits ~ N(0, init_std²) per seed
    baseline: str = "none"  # exact population PG, b = 0
    grpo_std_eps_mode: str = "sqrt"


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
    target: str = "reverse_copy"  # copy | flip | reverse_copy | reverse_flip
    reward: str = "bag_of_tokens"  # bag_of_tokens | sequential | terminal
    match: str = "prompts"  # prompts | interactions: single-sample methods get B·K, lr·√K (§5)
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
    baseline: str = "expected"  # b = Σ_a π(a)² for PG/DG (and the sign of TPO/Group PG's A)
    data_dir: str = "~/.cache/tpo_sweeps/mnist"  # the four IDX files (python -m tpo_sweeps.data)
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
    platform: str = "cpu"  # JAX platform: cpu | gpu | "" (JAX's own choice)
    compilation_cache: str = ""  # directory for JAX's persistent compilation cache; "" = off
    # seeds run in lockstep (vmap) per group, groups one after another (lax.map) inside the
    # same compiled program; 0 = all seeds in one vmap. On a CPU the transformer tasks run
    # 20-40% faster per seed with 1 (vmapped weights make batched GEMMs slower than plain ones)
    seed_batch: int = 0
    # with seed_batch > 0: this many seed groups run side by side as independent
    # computations, which XLA overlaps on the cores (small ops leave a core idle)
    seed_streams: int = 1
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
    every: int = 0  # a run reports progress every n points (scan runs in chunks); 0 = off
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


def validate(cfg: Config) -> None:
    """Value checks that a schema type cannot express."""
    if cfg.num_seeds < 1:
        raise ConfigError(f"num_seeds must be >= 1, got {cfg.num_seeds}")
    if cfg.log_every < 1:
        raise ConfigError(f"log_every must be >= 1, got {cfg.log_every}")
    if cfg.algorithm.epochs < 1:
        raise ConfigError(f"algorithm.epochs must be >= 1, got {cfg.algorithm.epochs}")
    if cfg.task.steps < 1:
        raise ConfigError(f"task.steps must be >= 1, got {cfg.task.steps}")
    for key, value in (
        ("checkpoint.every", cfg.checkpoint.every),
        ("progress.every", cfg.progress.every),
    ):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = off), got {value}")
    baseline = getattr(cfg.algorithm, "baseline", None)
    if baseline is not None and baseline not in ("constant", "batch_mean", "expected", "none"):
        raise ConfigError(
            f"algorithm.baseline='{baseline}' is not one of constant, batch_mean, expected, none"
        )
    mode = getattr(cfg.algorithm, "std_eps_mode", None)
    if mode is not None and mode not in ("add", "sqrt"):
        raise ConfigError(f"algorithm.std_eps_mode='{mode}' is not one of add, sqrt")


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain-JSON view of a typed config (for hashing and storage)."""
    return dataclasses.asdict(cfg)


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
        kwargs[key] = value
    return schema(**kwargs)
