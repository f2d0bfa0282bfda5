"""Hydra composition of conf/ into the typed config: every option, every preset, every error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from tpo_sweeps import config as C

CONF = Path(__file__).resolve().parent.parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    C.register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _typed(overrides: list[str]) -> C.Config:
    return C.to_config(_compose(overrides))


def test_conf_has_the_expected_groups():
    # guards the parametrisations below against an empty or moved conf/
    assert {"tpo", "grpo", "dg", "pg", "ce"} <= set(_options("algorithm"))
    assert {"tabular_single", "tabular_multi"} <= set(_options("task"))
    assert {"normalized_step", "adam", "muon"} <= set(_options("optimizer"))
    assert {"cpu", "slurm_gpu"} <= set(_options("hardware"))
    assert {"fig3_tabular_single", "fig4_tabular_multi"} <= set(_options("experiment"))


def test_default_config():
    cfg = _typed([])
    assert isinstance(cfg, C.Config)
    assert isinstance(cfg.algorithm, C.TPOConfig)
    assert isinstance(cfg.task, C.TabularSingleConfig)
    assert isinstance(cfg.optimizer, C.NormalizedStepConfig)
    assert cfg.hardware.name == "cpu" and cfg.hardware.platform == "cpu"
    assert (cfg.name, cfg.seed, cfg.num_seeds, cfg.skip_completed) == ("default", 0, 1, True)
    assert cfg.debug.fail is False


# --------------------------------------------------------------------------------------------
# Every option of every group
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", _options("algorithm"))
def test_every_algorithm_option_composes(option):
    # the task-dependent values are checked below; one task suffices for the schema (token
    # reversal for the token-level options, which no other task has)
    task = "task=reversal" if option.endswith(("_token", "_token_no_kl")) else "task=tabular_multi"
    cfg = _typed([f"algorithm={option}", task])
    assert cfg.algorithm.name == option
    assert type(cfg.algorithm) is not C.AlgorithmConfig  # an option schema, not the base
    assert cfg.algorithm.epochs >= 1
    # nothing is left as an unresolved interpolation or missing value
    assert "${" not in repr(C.as_dict(cfg))


@pytest.mark.parametrize("option", _options("task"))
def test_every_task_option_composes(option):
    cfg = _typed([f"task={option}"])
    assert cfg.task.name == option
    assert type(cfg.task) is C.GROUPS["task"][1][option]
    assert cfg.task.steps >= 1


@pytest.mark.parametrize("option", _options("optimizer"))
def test_every_optimizer_option_composes(option):
    cfg = _typed([f"optimizer={option}"])
    assert cfg.optimizer.name == option
    assert type(cfg.optimizer) is C.GROUPS["optimizer"][1][option]


@pytest.mark.parametrize("option", _options("hardware"))
def test_every_hardware_option_composes(option):
    cfg = _typed([f"hardware={option}"])
    assert cfg.hardware.name == option


def test_hardware_selects_the_launcher():
    cpu = _compose(["hardware=cpu"], hydra=True)
    slurm = _compose(["hardware=slurm_gpu"], hydra=True)
    assert "BasicLauncher" in cpu.hydra.launcher._target_
    assert "submitit" in slurm.hydra.launcher._target_
    assert slurm.hydra.launcher.gpus_per_node == 1
    assert slurm.hardware.platform == ""


def test_protocol_defaults_of_the_tabular_tasks():
    single = _typed(["task=tabular_single"]).task
    assert (single.num_actions, single.batch_size, single.steps) == (100, 100, 150)
    multi = _typed(["task=tabular_multi"]).task
    assert (multi.num_contexts, multi.num_actions, multi.steps) == (100, 10, 1000)
    assert multi.init_std == 1.0
    step = _typed(["optimizer=normalized_step"]).optimizer
    assert (step.alpha, step.eps) == (0.1, 1e-30)
    muon = _typed(["optimizer=muon"]).optimizer
    assert muon.effective_lr == pytest.approx(1e-3)


def test_algorithm_protocol_values():
    grpo = _typed(["algorithm=grpo"]).algorithm
    assert (grpo.clip_eps, grpo.kl_beta, grpo.log_ratio_clamp, grpo.epochs) == (0.2, 0.04, 20.0, 4)
    assert _typed(["algorithm=grpo_no_kl"]).algorithm.kl_beta == 0.0
    assert _typed(["algorithm=grpo_masked"]).algorithm.mask_zero_variance is True
    ppo = _typed(["algorithm=ppo"]).algorithm
    assert (ppo.kl_beta, ppo.log_ratio_clamp) == (0.0, None)
    assert _typed(["algorithm=dg"]).algorithm.epochs == 1  # DG: one step per batch (code)
    tpo = _typed(["algorithm=tpo"]).algorithm
    assert (tpo.eta, tpo.anchor, tpo.epochs) == (1.0, True, 4)
    assert _typed(["algorithm=tpo_no_anchor"]).algorithm.anchor is False


# --------------------------------------------------------------------------------------------
# Experiment presets
# --------------------------------------------------------------------------------------------


def _swept(dcfg: DictConfig) -> dict[str, list[str]]:
    """The preset's sweep grid: key -> list of values (comma lists only)."""
    params = OmegaConf.select(dcfg, "hydra.sweeper.params") or {}
    return {str(k): [v.strip() for v in str(val).split(",")] for k, val in params.items()}


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_experiment_preset_composes(preset):
    dcfg = _compose([f"experiment={preset}"], hydra=True)
    grid = _swept(dcfg)
    with open_dict(dcfg):
        del dcfg["hydra"]  # what the job sees
    cfg = C.to_config(dcfg)
    if preset.startswith("_"):
        assert not grid  # a shared base, not a sweep of its own
    elif cfg.campaign:  # a campaign launches its member presets' grids, none of its own
        assert not grid and cfg.name == preset
        unknown = set(cfg.campaign) - set(_options("experiment"))
        assert not unknown, f"{preset}: unknown member presets {sorted(unknown)}"
        assert len(set(cfg.campaign)) == len(cfg.campaign), f"{preset} lists a member twice"
    else:
        assert grid, f"{preset} sweeps nothing"
        assert cfg.name == preset  # the sweep id is the preset's name
    for key, values in grid.items():
        if key == "algorithm":
            for value in values:
                assert value in _options("algorithm"), f"{preset} sweeps unknown '{value}'"
            continue
        # every swept value of a plain key is a valid, typed value of this preset's config
        assert OmegaConf.select(dcfg, key, default=None) is not None, f"{preset}: no key {key}"
        for value in values:
            cell = dcfg.copy()
            OmegaConf.update(cell, key, value)
            C.to_config(cell)


def test_fig3_and_fig4_presets_follow_the_protocol():
    fig3 = _typed(["experiment=fig3_tabular_single"])
    assert fig3.task.name == "tabular_single"
    assert (fig3.task.steps, fig3.num_seeds, fig3.algorithm.epochs) == (150, 100, 1)
    assert fig3.optimizer.name == "normalized_step"
    fig4 = _typed(["experiment=fig4_tabular_multi", "algorithm=ce"])
    assert fig4.task.name == "tabular_multi"
    assert (fig4.task.steps, fig4.num_seeds, fig4.algorithm.epochs) == (1000, 100, 1)
    smoke = _typed(["experiment=fig3_tabular_single", "scale=smoke"])
    assert (smoke.name, smoke.num_seeds, smoke.task.steps) == ("fig3_tabular_single", 2, 20)
    # the smoke scale keeps everything else of the preset
    assert (smoke.task.num_actions, smoke.task.batch_size) == (100, 100)
    # a preset's values win over the root defaults, and the command line wins over the preset
    over = _typed(["experiment=fig3_tabular_single", "num_seeds=3", "task.steps=7"])
    assert (over.num_seeds, over.task.steps) == (3, 7)


# --------------------------------------------------------------------------------------------
# Wrong keys and values fail, naming the culprit
# --------------------------------------------------------------------------------------------


def test_key_of_another_option_fails_at_composition():
    with pytest.raises(HydraException, match="eta"):
        _compose(["algorithm=grpo", "algorithm.eta=2"])
    with pytest.raises(HydraException, match="clip_eps"):
        _compose(["algorithm=tpo", "algorithm.clip_eps=0.1"])
    with pytest.raises(HydraException, match="batch_size"):
        _compose(["task=tabular_multi", "task.batch_size=3"])


def test_appended_key_of_another_option_fails_in_to_config():
    dcfg = _compose(["algorithm=grpo", "+algorithm.eta=2"])
    with pytest.raises(C.ConfigError, match=r"algorithm\.eta"):
        C.to_config(dcfg)
    with pytest.raises(C.ConfigError, match=r"task\.bogus"):
        C.to_config(_compose(["+task.bogus=1"]))
    with pytest.raises(C.ConfigError, match="bogus_top"):
        C.to_config(_compose(["+bogus_top=1"]))


def test_unknown_option_fails_naming_it():
    with pytest.raises(HydraException, match="nope"):
        _compose(["algorithm=nope"])
    with pytest.raises(HydraException, match="nowhere"):
        _compose(["task=nowhere"])
    with pytest.raises(HydraException, match="no_such_preset"):
        _compose(["experiment=no_such_preset"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(HydraException, match="num_seeds"):
        _compose(["num_seeds=many"])
    with pytest.raises(HydraException, match="eta"):
        _compose(["algorithm=tpo", "algorithm.eta=hot"])


@pytest.mark.parametrize(
    "overrides,culprit",
    [
        (["num_seeds=0"], "num_seeds"),
        (["log_every=0"], "log_every"),
        (["algorithm.epochs=0"], "algorithm.epochs"),
        (["task.steps=0"], "task.steps"),
    ],
)
def test_bad_values_raise_config_error(overrides, culprit):
    dcfg = _compose(overrides)
    with pytest.raises(C.ConfigError) as info:
        C.to_config(dcfg)
    assert culprit in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides,culprit",
    [
        (["algorithm=pg", "algorithm.baseline=foo"], "algorithm.baseline=foo"),
        (["algorithm=dg", "algorithm.baseline=foo"], "algorithm.baseline"),
        (["algorithm=grpo", "algorithm.std_eps_mode=bogus"], "bogus"),
        (["algorithm=tpo_token", "algorithm.level=tokn"], "algorithm.level"),
        (["task=reversal", "task.target=fllip"], "task.target"),
        (["hardware.platform=gpuu"], "hardware.platform"),
    ],
)
def test_a_choice_outside_its_enum_fails_at_composition(overrides, culprit):
    # fixed choices are Enums: a typo fails when the config is composed (before any job is
    # queued), and the one-line message names the key and the allowed values
    with pytest.raises(HydraException) as info:
        _compose(overrides)
    line = C.error_line(info.value)
    assert culprit in line and "expected one of" in line and "\n" not in line


def test_choices_store_and_hash_as_their_plain_strings():
    cfg = _typed(["task=reversal", "algorithm=grpo_token", "task.reward=sequential"])
    assert isinstance(cfg.task.target, C.Target) and cfg.task.target == "reverse_copy"
    d = C.as_dict(cfg)
    assert type(d["task"]["target"]) is str and d["task"]["target"] == "reverse_copy"
    assert type(d["algorithm"]["level"]) is str and d["algorithm"]["level"] == "token"
    assert f"{cfg.task.reward}" == str(cfg.task.reward) == "sequential"
    back = C.from_dict(d)
    assert back.task.reward is C.Reward.sequential and back == cfg
    # '' (JAX's own choice) and auto are one member, stored as ''
    auto = _typed(["hardware=slurm_gpu"]).hardware.platform
    assert auto is C.Platform.auto is _typed(["hardware.platform=auto"]).hardware.platform
    assert C.as_dict(_typed(["hardware=slurm_gpu"]))["hardware"]["platform"] == ""


def test_schema_option_without_name_is_rejected():
    # the `<name>_schema` entries are selectable in Hydra but leave name MISSING
    dcfg = _compose(["algorithm=tpo_schema"])
    with pytest.raises(C.ConfigError):
        C.to_config(dcfg)


# --------------------------------------------------------------------------------------------
# Protocol values interpolated from the task
# --------------------------------------------------------------------------------------------


def test_single_sample_baseline_follows_the_task():
    pg_single = _typed(["algorithm=pg", "task=tabular_single"]).algorithm
    assert (pg_single.baseline, pg_single.baseline_value) == ("constant", 0.5)
    pg_multi = _typed(["algorithm=pg", "task=tabular_multi"]).algorithm
    assert (pg_multi.baseline, pg_multi.baseline_value) == ("none", 0.0)
    for option in ("dg", "ppo", "reinforce"):
        single = _typed([f"algorithm={option}", "task=tabular_single"]).algorithm
        multi = _typed([f"algorithm={option}", "task=tabular_multi"]).algorithm
        assert (single.baseline, single.baseline_value) == ("constant", 0.5), option
        assert multi.baseline == "none", option
    # the task's protocol value is what the algorithm sees, and an explicit override wins
    moved = _typed(["algorithm=pg", "task.baseline_value=0.25"]).algorithm
    assert moved.baseline_value == 0.25
    explicit = _typed(["algorithm=pg", "algorithm.baseline=batch_mean"]).algorithm
    assert explicit.baseline == "batch_mean"


def test_grpo_std_eps_mode_follows_the_task():
    for task in ("tabular_single", "tabular_multi"):
        for option in ("grpo", "grpo_no_kl", "grpo_masked"):
            cfg = _typed([f"algorithm={option}", f"task={task}"])
            assert cfg.algorithm.std_eps_mode == cfg.task.grpo_std_eps_mode == "sqrt"
    add = _typed(["algorithm=grpo", "task.grpo_std_eps_mode=add"])
    assert add.algorithm.std_eps_mode == "add"


def test_config_is_plain_data():
    cfg = _typed(["algorithm=grpo", "task=tabular_multi"])
    d = C.as_dict(cfg)
    assert d["algorithm"]["name"] == "grpo"
    assert d["task"]["num_contexts"] == 100
    assert d["db"]["url"].startswith("sqlite:///")
