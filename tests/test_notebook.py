"""examples/query_runs.ipynb runs, top to bottom, against a real results database, and what
it prints is what the database holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _final_errors(url: str, algorithm: str) -> list[float]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.value FROM summaries v JOIN runs r ON r.id = v.run_id "
                "JOIN sweep_runs s ON s.run_id = r.id WHERE s.sweep = 'fig3_tabular_single' "
                "AND v.name = 'final_error' AND r.algorithm = :a AND r.status = 'completed'"
            ),
            {"a": algorithm},
        ).scalars()
        values = list(rows)
    engine.dispose()
    return values


def test_the_example_notebook_runs_and_reports_the_database(smoke_db, monkeypatch):
    monkeypatch.setenv("TPO_DB_URL", smoke_db)
    nb = nbformat.read(EXAMPLES / "query_runs.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the curve was drawn
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    tpo, grpo = _final_errors(smoke_db, "tpo"), _final_errors(smoke_db, "grpo")
    assert tpo and grpo
    difference = sum(tpo) / len(tpo) - sum(grpo) / len(grpo)
    assert f"TPO - GRPO final error: {difference:.6f} over {len(tpo)} and {len(grpo)} seeds" in (
        printed
    )
