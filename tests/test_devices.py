"""The one place that resolves ``auto`` hardware settings by platform (``tpo_sweeps.devices``),
and that a job runs what it resolves."""

from __future__ import annotations

import pytest

from tests.test_identity import REV, TAB, job
from tpo_sweeps import devices, train
from tpo_sweeps.run import run_job


def test_auto_kernels_are_the_fused_ones_on_a_cpu_only():
    assert devices.model_kernels("auto", "cpu") == "cpu_fused"
    assert devices.model_kernels("auto", "gpu") == "flax"
    assert devices.model_kernels("auto", "tpu") == "flax"
    assert devices.model_kernels("flax", "cpu") == "flax"


def test_auto_seed_batch_runs_the_transformer_one_run_at_a_time_on_a_cpu_only():
    assert devices.seed_batch(-1, "reversal", "cpu") == 1
    assert devices.seed_batch(-1, "tabular_single", "cpu") == 0
    assert devices.seed_batch(-1, "mnist", "cpu") == 0
    assert devices.seed_batch(-1, "reversal", "gpu") == 0
    assert devices.seed_batch(4, "reversal", "cpu") == 4
    assert devices.seed_batch(0, "reversal", "cpu") == 0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([*REV, "algorithm=dg"], 1),  # this machine is a CPU
        ([*TAB, "algorithm=pg"], 0),
        ([*REV, "algorithm=dg", "hardware.seed_batch=0"], 0),
    ],
)
def test_a_job_runs_with_the_resolved_seed_batch(tmp_path, monkeypatch, overrides, expected):
    seen = []
    real = train.run

    def spy(*args, **kwargs):
        seen.append(args[6])  # (program, seeds, log_every, chunk, on_chunk, start, seed_batch)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "run", spy)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    assert run_job(job(url, *overrides, "num_seeds=2"), [])["status"] == "completed"
    assert seen == [expected]
