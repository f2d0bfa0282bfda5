"""The ``scale`` config group: one override sizes any preset (``conf/scale/``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from tpo_sweeps import config as C
from tpo_sweeps import sweep as S
from tpo_sweeps.run import config_dir

PRESETS = sorted(
    p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml") if not p.stem.startswith("_")
)
SCALES = sorted(p.stem for p in (Path(config_dir()) / "scale").glob("*.yaml"))


def _typed(*overrides: str) -> C.Config:
    C.register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return C.to_config(compose("config", overrides=list(overrides)))


def test_the_scales():
    assert SCALES == ["paper", "reduced", "smoke"]
    # paper is the default and changes nothing
    assert _typed("experiment=table3_terminal") == _typed(
        "experiment=table3_terminal", "scale=paper"
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_at_every_scale(preset):
    paper = _typed(f"experiment={preset}")
    for scale in ("reduced", "smoke"):
        cfg = _typed(f"experiment={preset}", f"scale={scale}")
        # a scale changes seeds and sizes, never what is computed otherwise
        assert (cfg.name, cfg.algorithm, cfg.optimizer) == (
            paper.name,
            paper.algorithm,
            paper.optimizer,
        )
        assert cfg.task.name == paper.task.name and cfg.campaign == paper.campaign


@pytest.mark.parametrize(
    "preset, sizes",
    [
        ("fig3_tabular_single", {"steps": 20}),
        ("fig4_tabular_multi", {"steps": 50}),
        ("fig5_mnist", {"steps": 100, "eval_every": 20}),
        ("fig5b_mnist_mechanism", {"steps": 100, "eval_every": 20}),
        ("fig1b_terminal", {"steps": 20, "B": 16, "K": 8, "H": 10}),
        ("fig14_grpo_masking", {"steps": 20, "B": 16, "K": 8, "H": 8}),
        ("fig18_dg_epochs", {"steps": 20, "B": 16, "K": 8, "H": 5}),
    ],
)
def test_smoke_sizes_follow_the_presets_task(preset, sizes):
    cfg = _typed(f"experiment={preset}", "scale=smoke")
    assert cfg.num_seeds == 2
    assert {k: getattr(cfg.task, k) for k in sizes} == sizes  # H: the preset's, not shrunk
    paper = _typed(f"experiment={preset}")
    # everything else of the task stays the preset's
    same = {k for k in vars(paper.task) if k not in sizes and k != "model"}
    assert {k: getattr(cfg.task, k) for k in same} == {k: getattr(paper.task, k) for k in same}


def test_reduced_keeps_episodes_with_fewer_seeds():
    paper = _typed("experiment=fig13_k_sweep")
    reduced = _typed("experiment=fig13_k_sweep", "scale=reduced")
    assert (paper.num_seeds, reduced.num_seeds) == (30, 5)
    assert reduced.task == paper.task
    assert _typed("experiment=fig13_k_sweep", "scale=reduced", "num_seeds=3").num_seeds == 3
    # the command line beats the scale, the scale beats the preset
    smoke = _typed("experiment=fig1b_terminal", "scale=smoke", "task.steps=4", "task.B=8")
    assert (smoke.task.steps, smoke.task.B) == (4, 8)


def test_a_presets_own_sweep_wins_over_the_scale():
    cells = S.expand(["experiment=fig13_k_sweep", "scale=smoke", "algorithm=tpo"]).cells
    assert [c.config.task.K for c in cells] == [4, 8, 16, 32, 64]
    assert {(c.config.task.steps, c.config.task.B) for c in cells} == {(20, 16)}


def test_presets_share_cells_at_smoke_scale():
    """Fig 1b's cells are Table 3's at H = 10, at smoke scale as at paper scale."""
    fig1b = S.expand(["experiment=fig1b_terminal", "scale=smoke"]).cells
    table3 = S.expand(["experiment=table3_terminal", "scale=smoke", "task.H=10"]).cells
    assert {c.ident.cell for c in fig1b} <= {c.ident.cell for c in table3}


def test_unknown_scale_fails_naming_it():
    with pytest.raises(HydraException, match="scale"):
        _typed("experiment=fig3_tabular_single", "scale=huge")
