"""tpo-sweeps' Hydra sweeper (Hydra loads sweepers only from the ``hydra_plugins`` namespace).

The logic lives in ``tpo_sweeps.campaign``; this class only plugs it into Hydra. It is
imported whenever Hydra scans for plugins, so it imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class TpoSweeper(BasicSweeper):
    """Hydra's basic sweeper, launching one job per distinct cell (and campaign presets)."""

    def sweep(self, arguments: list[str]) -> Any:
        from tpo_sweeps.campaign import launch

        return launch(self, list(arguments))
