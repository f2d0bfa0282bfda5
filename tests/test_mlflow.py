"""`tpo-sweeps export --to mlflow`: stored runs as MLflow runs in a real MLflow SQLite store,
with the same numbers, idempotently."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select, update

from tpo_sweeps import db, mlflow_export, transfer

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

FILTERS = ["--sweep", "fig3_tabular_single", "--algorithm", "tpo"]


@pytest.fixture
def source(smoke_db, tmp_path) -> str:
    """A private copy of the smoke database, with one TPO run marked diverged."""
    path = tmp_path / "copy.sqlite"
    shutil.copy(smoke_db.removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    engine = db.connect(url, create=False, migrate=False)
    with engine.begin() as conn:
        first = conn.execute(
            select(db.Run.id).where(db.Run.algorithm == "tpo").order_by(db.Run.id)
        ).scalar()
        conn.execute(update(db.Run).where(db.Run.id == first).values(status=db.DIVERGED))
    engine.dispose()
    return url


def _stored(url: str):
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                select(db.Run.__table__)
                .where(db.Run.algorithm == "tpo", db.Run.status.in_(db.FINAL))
                .where(
                    db.Run.id.in_(
                        select(db.SweepRun.run_id).where(db.SweepRun.sweep == "fig3_tabular_single")
                    )
                )
            ).mappings()
            out = {}
            for run in runs:
                metrics = conn.execute(
                    select(db.Metric.name, db.Metric.step, db.Metric.value).where(
                        db.Metric.run_id == run["id"]
                    )
                ).all()
                out[run["run_key"]] = (run, metrics)
            return out
    finally:
        engine.dispose()


def _mlflow_runs(uri: str) -> dict[str, object]:
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tpo-sweeps"]
    return {
        r.data.tags["tpo.run_key"]: r
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
    }


def test_every_stored_run_becomes_one_mlflow_run_with_its_numbers(source, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--db", source, "--to", "mlflow", "--tracking-uri", uri, *FILTERS]
    assert transfer.export_main(args) == 0
    stored = _stored(source)
    logged = _mlflow_runs(uri)
    assert set(logged) == set(stored) and len(stored) >= 2
    client = MlflowClient(tracking_uri=uri)
    statuses = set()
    for key, (run, metrics) in stored.items():
        got = logged[key]
        assert got.data.params["algorithm.name"] == "tpo"
        assert got.data.params["task.steps"] == str(run["config"]["task"]["steps"])
        assert got.data.tags["tpo.cell_hash"] == run["cell_hash"]
        assert got.data.tags["tpo.status"] == run["status"]
        assert "fig3_tabular_single" in got.data.tags["tpo.sweeps"].split(",")
        assert got.data.tags.get("mlflow.source.git.commit") == run["git_commit"]
        statuses.add((run["status"], got.info.status))
        name = metrics[0].name
        history = client.get_metric_history(got.info.run_id, name)
        want = sorted((m.step, m.value) for m in metrics if m.name == name and m.value is not None)
        got_history = sorted((h.step, h.value) for h in history)
        assert [s for s, _ in got_history] == [s for s, _ in want] and len(want) > 1
        assert [v for _, v in got_history] == pytest.approx([v for _, v in want], rel=1e-12)
    assert statuses == {("completed", "FINISHED"), ("diverged", "FAILED")}


def test_export_again_adds_nothing_and_redoes_an_interrupted_run(source, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--db", source, "--to", "mlflow", "--tracking-uri", uri, *FILTERS]
    assert transfer.export_main(args) == 0
    first = _mlflow_runs(uri)
    capsys.readouterr()
    assert transfer.export_main(args) == 0
    assert "0 logged, 0 redone" in capsys.readouterr().out
    assert {k: r.info.run_id for k, r in _mlflow_runs(uri).items()} == {
        k: r.info.run_id for k, r in first.items()
    }
    # an export killed after creating a run, before its last tag: that run is logged again
    key = sorted(first)[0]
    MlflowClient(tracking_uri=uri).delete_tag(first[key].info.run_id, mlflow_export.EXPORTED)
    assert transfer.export_main(args) == 0
    assert "0 logged, 1 redone" in capsys.readouterr().out
    again = _mlflow_runs(uri)
    assert set(again) == set(first) and again[key].info.run_id != first[key].info.run_id


def test_without_a_tracking_uri_the_export_says_what_is_missing(source, capsys):
    with pytest.raises(SystemExit) as e:
        transfer.export_main(["--db", source, "--to", "mlflow"])
    assert e.value.code == 2
    assert "--to mlflow needs --tracking-uri" in capsys.readouterr().err
