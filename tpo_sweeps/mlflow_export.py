"""Stored runs as MLflow runs, for researchers who browse results in MLflow.

``tpo-sweeps export --to mlflow --tracking-uri URI [filters]`` logs each stored run (one
seed of one cell) that holds results — completed, and diverged ones, whose results are kept
too — as one MLflow run of the experiment ``--experiment`` (default ``tpo-sweeps``):

* params: the run's effective config, flattened to dotted keys (``algorithm.eta``, ...);
* metrics: every stored metric history (``name`` at its episode ``step``) and the run's
  summaries as ``summary.<name>`` (step 0). A value stored as NULL (non-finite, see
  ``db.finish_runs``) is not logged: MLflow's stores would turn NaN into 0 or refuse it;
* tags: ``tpo.run_key``, ``tpo.cell_hash``, ``tpo.seed``, ``tpo.sweep`` (the sweep that
  computed it), ``tpo.sweeps`` (every sweep that asked for it: the artefacts it serves),
  ``tpo.status``, ``tpo.algorithm``, ``tpo.task``, ``tpo.device``, and MLflow's own
  ``mlflow.source.git.commit``; the MLflow status is FINISHED for completed runs and FAILED
  for diverged ones.

Idempotent: a run whose ``tpo.run_key`` is already in the experiment, marked complete
(``tpo.exported``, the last tag written), is skipped; one left half-written by an
interrupted export is deleted and logged again. Needs the optional ``mlflow`` extra
(``pip install -e ".[mlflow]"``, which installs ``mlflow-skinny``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from tpo_sweeps import bundle, db

EXPERIMENT = "tpo-sweeps"
EXPORTED = "tpo.exported"  # written last: a run without it was interrupted mid-export
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAMS = 100  # ... and of params
_PARAM_CHARS = 6000  # the longest param value MLflow's stores accept


class MlflowMissing(db.UserError):
    """The optional ``mlflow`` extra is not installed."""


def _client(tracking_uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowMissing(
            "MLflow export needs the mlflow extra: pip install -e '.[mlflow]'"
        ) from None
    return MlflowClient(tracking_uri=tracking_uri)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, value as text)`` for every leaf of a nested config."""
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from flatten(tree[key], f"{prefix}{key}.")
    else:
        text = tree if isinstance(tree, str) else json.dumps(tree)
        yield prefix[:-1], text[:_PARAM_CHARS]


def _ms(t) -> int | None:
    return None if t is None else int(t.replace(tzinfo=None).timestamp() * 1000)


def _existing(client, experiment_id: str) -> dict[str, tuple[str, bool]]:
    """``run_key -> (MLflow run id, complete)`` of the runs already in the experiment."""
    out: dict[str, tuple[str, bool]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for r in page:
            key = r.data.tags.get("tpo.run_key")
            if key:
                out[key] = (r.info.run_id, r.data.tags.get(EXPORTED) == "1")
        token = page.token
        if not token:
            return out


def _tags(run: Any, sweeps: list[str]) -> dict[str, str]:
    tags = {
        "tpo.run_key": run["run_key"],
        "tpo.cell_hash": run["cell_hash"],
        "tpo.seed": str(run["seed"]),
        "tpo.sweep": run["sweep"],
        "tpo.sweeps": ",".join(sweeps or [run["sweep"]]),
        "tpo.status": run["status"],
        "tpo.algorithm": run["algorithm"],
        "tpo.task": run["task"],
        "tpo.device": run["device"] or "",
        "tpo.git_dirty": str(bool(run["git_dirty"])).lower(),
    }
    if run["git_commit"]:
        tags["mlflow.source.git.commit"] = run["git_commit"]
    return tags


def _log_run(client, experiment_id: str, conn, run: Any, sweeps: list[str]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    name = f"{run['algorithm']}/{run['task']} {run['cell_hash'][:8]} seed {run['seed']}"
    created = client.create_run(
        experiment_id, start_time=_ms(run["started_at"]), tags=_tags(run, sweeps), run_name=name
    )
    run_id = created.info.run_id
    params = [Param(k, v) for k, v in flatten(run["config"] or {})]
    for i in range(0, len(params), _PARAMS):
        client.log_batch(run_id, params=params[i : i + _PARAMS], synchronous=True)
    stamp = _ms(run["finished_at"]) or 0
    M, S = db.Metric, db.Summary
    rows = conn.execute(
        select(M.name, M.step, M.value).where(M.run_id == run["id"]).order_by(M.name, M.step)
    ).all()
    metrics = [
        Metric(r.name, float(r.value), stamp, int(r.step)) for r in rows if r.value is not None
    ]
    summaries = conn.execute(select(S.name, S.value).where(S.run_id == run["id"])).all()
    metrics += [
        Metric(f"summary.{r.name}", float(r.value), stamp, 0)
        for r in summaries
        if r.value is not None
    ]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH], synchronous=True)
    client.log_batch(run_id, tags=[RunTag(EXPORTED, "1")], synchronous=True)
    status = "FINISHED" if run["status"] == db.COMPLETED else "FAILED"
    client.set_terminated(run_id, status=status, end_time=_ms(run["finished_at"]))


def export(
    engine: Engine,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    sweeps: list[str] | None = None,
    algorithms: list[str] | None = None,
    tasks: list[str] | None = None,
    cells: list[str] | None = None,
) -> Counter:
    """Log the matching stored runs to MLflow; counts ``logged``, ``existing`` (already
    there, left alone) and ``redone`` (an interrupted export's run, replaced)."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    existing = _existing(client, experiment_id)
    counts: Counter = Counter()
    with engine.connect() as conn:
        runs = bundle.select_runs(
            conn, sweeps, algorithms, tasks, cells, statuses=(db.COMPLETED, db.DIVERGED)
        )
        links = bundle.sweeps_of(conn, [r["id"] for r in runs])
        for run in runs:
            before = existing.get(run["run_key"])
            if before and before[1]:
                counts["existing"] += 1
                continue
            if before:
                client.delete_run(before[0])
                counts["redone"] += 1
            else:
                counts["logged"] += 1
            _log_run(client, experiment_id, conn, run, links.get(run["id"], []))
    return counts
