"""Run identity is pinned: every cell of every experiment preset, at paper and smoke scale,
keeps the ``cell_hash`` (and run keys) it had when ``tests/data/cell_hashes.json`` was
recorded, and the stored config keeps its plain-JSON values (an ``Enum`` field serialises to
the same string its ``str`` field did). A change here re-keys every stored run and bundle:
ship it with an Alembic revision that recomputes the keys (``tpo_sweeps/identity.py``).

Regenerate (only together with such a revision): ``python tests/test_identity_pinned.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "data" / "cell_hashes.json"
SCALES = ("paper", "smoke")
# one cell per task and kind of option, whose whole stored config is pinned value by value
SAMPLES = {
    "fig3_tabular_single": 0,
    "fig4_tabular_multi": 1,
    "fig5_mnist": 0,
    "table2_variations": 5,
    "fig9_ablations": 2,
    "table3_terminal": 3,
}


def presets() -> list[str]:
    from tpo_sweeps.run import config_dir

    names = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
    return [n for n in names if not n.startswith("_") and n not in ("paper", "paper_core")]


def current(which: tuple[str, ...] | None = None, scales: tuple[str, ...] = SCALES) -> dict:
    """``{preset: {scale: [[overrides, cell_hash, run_key of the first seed], ...]}}`` and the
    stored configs of ``SAMPLES``, as the code computes them now (every preset, or ``which``)."""
    from tpo_sweeps import sweep as S
    from tpo_sweeps.store import stored_config

    cells: dict[str, dict[str, list]] = {}
    configs: dict[str, dict] = {}
    for preset in which or presets():
        for scale in scales:
            sweep = S.expand([f"experiment={preset}", f"scale={scale}"])
            cells.setdefault(preset, {})[scale] = [
                [" ".join(c.overrides), c.ident.cell, c.ident.run_key(c.ident.seeds[0])]
                for c in sweep.cells
            ]
            if preset in SAMPLES and scale == "paper":
                cell = sweep.cells[SAMPLES[preset]]
                configs[f"{preset}[{SAMPLES[preset]}]"] = json.loads(
                    json.dumps(stored_config(cell.ident), sort_keys=True)
                )
    return {"cells": cells, "configs": configs}


# the fast check: the presets of SAMPLES, one per task and kind of sweep (every cell, both
# scales); the others under -m slow (composing all 390 cells takes ~2 min on 2 cores)


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def fast() -> dict:
    return current(tuple(SAMPLES))


def test_every_preset_is_pinned(pinned):
    assert sorted(presets()) == sorted(pinned["cells"])
    assert sum(len(v) for s in pinned["cells"].values() for v in s.values()) > 300


@pytest.mark.parametrize("preset", sorted(SAMPLES))
def test_cell_hashes_unchanged(fast, pinned, preset):
    for scale in SCALES:
        assert fast["cells"][preset][scale] == pinned["cells"][preset][scale], (preset, scale)


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in presets() if p not in SAMPLES])
def test_cell_hashes_unchanged_every_preset(pinned, preset):
    now = current((preset,))
    for scale in SCALES:
        assert now["cells"][preset][scale] == pinned["cells"][preset][scale], (preset, scale)


def _subset(have, want, path=""):
    """Every key of ``want`` is in ``have`` with the same value (new fields may be added)."""
    if isinstance(want, dict):
        assert isinstance(have, dict), path
        for k, v in want.items():
            assert k in have, f"{path}.{k} missing"
            _subset(have[k], v, f"{path}.{k}")
    else:
        assert have == want and type(have) is type(want), f"{path}: {have!r} != {want!r}"


def test_stored_config_values_unchanged(fast, pinned):
    now = fast
    assert sorted(now["configs"]) == sorted(pinned["configs"])
    for name, want in pinned["configs"].items():
        _subset(now["configs"][name], want, name)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    FIXTURE.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
