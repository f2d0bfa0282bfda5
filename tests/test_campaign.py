"""Each (cell, seed) launched once: the sweeper's deduplication, campaigns, and the plan."""

from __future__ import annotations

import re
import sqlite3

from tests.helpers import multirun
from tpo_sweeps import campaign, plan
from tpo_sweeps import sweep as S


def _jobs(*arg_lists: list[str]) -> tuple[list[S.Cell], list[campaign.Job]]:
    cells = [c for args in arg_lists for c in S.expand(list(args)).cells]
    return cells, campaign.unique_jobs(cells)


def test_grouped_methods_launch_once_across_match_values():
    # Table 3 at H = 10: TPO/GRPO/GRPO-no-KL are the same cell under both match values;
    # PPO and DG are not (interaction matching gives them B·K prompts and lr·√K)
    cells, jobs = _jobs(["experiment=table3_terminal", "task.H=10", "scale=smoke"])
    assert len(cells) == 10
    assert len(jobs) == 7
    served = sorted(sorted(c.config.algorithm.name for c in j.cells) for j in jobs)
    assert ["grpo", "grpo"] in served and ["tpo", "tpo"] in served
    assert served.count(["ppo"]) == 2 and served.count(["dg"]) == 2


def test_one_job_serves_every_request_seeds_and_extras():
    # Fig 11's TPO (10 seeds, diagnostics) is Fig 16's TPO at E = 4 (30 seeds, none): one job
    # over seeds 0..29 with diagnostics serves both
    cells, jobs = _jobs(
        ["experiment=fig11_diagnostics", "algorithm=tpo"],
        ["experiment=fig16_epoch_sweep", "algorithm=tpo", "algorithm.epochs=4"],
    )
    assert len(cells) == 2 and len(jobs) == 1
    (job,) = jobs
    assert job.seeds == list(range(30))
    assert "num_seeds=30" in job.overrides and "seed=0" in job.overrides
    assert job.cells[0].ident.extras["diagnostics"]  # Fig 11's request came first: kept

    # the other order: Fig 16's overrides, widened to Fig 11's diagnostics
    _, (job,) = _jobs(
        ["experiment=fig16_epoch_sweep", "algorithm=tpo", "algorithm.epochs=4", "log_every=4"],
        ["experiment=fig11_diagnostics", "algorithm=tpo", "log_every=6"],
    )
    assert "task.diagnostics=true" in job.overrides and "log_every=2" in job.overrides
    assert "num_seeds=30" not in job.overrides  # Fig 16 asked for 30 seeds itself


def test_set_override_replaces_the_key():
    assert campaign.set_override(["a=1", "b=2", "+a=3"], "a", 5) == ["b=2", "a=5"]


def test_plan_counts_naive_and_deduplicated_seed_episodes(tmp_path, capsys):
    # Fig 1b (TPO, GRPO, DG at H = 10, prompt-matched) inside Table 3 (5 methods x H 7..10 x
    # both match values), 20 seeds x 2000 episodes each. Naive: (3 + 40) cells. Distinct:
    # Table 3's 40 cells less the 12 grouped-method duplicates = 28, which hold Fig 1b's 3.
    url = f"sqlite:///{tmp_path}/empty.sqlite"
    rc = plan.main(["campaign=[fig1b_terminal,table3_terminal]", f"db.url={url}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["fig1b_terminal"][1:4] == ["3", "60", "120,000"]
    assert rows["fig1b_terminal"][5] == "120,000"  # all of Fig 1b is shared with Table 3
    assert rows["table3_terminal"][1:4] == ["40", "800", "1,600,000"]
    assert rows["table3_terminal"][6] == "1,000,000"  # what Table 3 adds to Fig 1b's
    naive = re.search(r"naive \(each preset alone\)\s+(\d+)\s+(\d+)\s+([\d,]+)", out)
    assert naive.groups() == ("43", "860", "1,720,000")
    assert rows["deduplicated"][1:4] == ["28", "560", "1,120,000"]
    assert "(34.9% saved)" in out


def test_plan_refuses_unknown_preset_and_scale_in_one_line(capsys):
    assert plan.main(["experiment=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    assert plan.main(["experiment=fig1b_terminal", "scale=huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "huge" in err


def _runs(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT id, cell_hash, seed, algorithm, match, started_at FROM runs "
            "WHERE status = 'completed' ORDER BY id"
        ).fetchall()


def test_fig1b_then_table3_computes_only_what_fig1b_did_not(tmp_path):
    """The issue's acceptance run, at smoke scale (a few episodes, one seed, H = 10)."""
    path = tmp_path / "r.sqlite"
    small = ["scale=smoke", "task.steps=2", "num_seeds=1", f"db.url=sqlite:///{path}"]
    cache = f"hardware.compilation_cache={tmp_path}/jax"
    multirun(tmp_path, "experiment=fig1b_terminal", "algorithm=tpo,dg", cache, *small)
    fig1b = _runs(path)
    assert len(fig1b) == 2
    out = multirun(
        tmp_path, "experiment=table3_terminal", "task.H=10", "algorithm=tpo,ppo,dg", cache, *small
    )
    # 6 requested cells: TPO once (match drops out), PPO and DG twice; TPO and prompt-matched
    # DG were stored by Fig 1b
    assert "6 requested cells -> 5 distinct cells -> 5 jobs" in out
    after = _runs(path)
    assert after[: len(fig1b)] == fig1b  # not recomputed, not rewritten
    assert len(after) == 5
    new = sorted((a, m) for _, _, _, a, m, _ in after[len(fig1b) :])
    assert new == [("dg", "interactions"), ("ppo", "interactions"), ("ppo", "prompts")]
    with sqlite3.connect(path) as conn:
        links = conn.execute(
            "SELECT sweep, COUNT(*) FROM sweep_runs GROUP BY sweep ORDER BY sweep"
        ).fetchall()
    assert links == [("fig1b_terminal", 2), ("table3_terminal", 5)]


def test_campaign_runs_the_union_once_and_resumes(tmp_path):
    path = tmp_path / "c.sqlite"
    args = [
        "campaign=[fig3_tabular_single,fig4_tabular_multi]",
        "algorithm=tpo,pg",
        "scale=smoke",
        f"db.url=sqlite:///{path}",
    ]
    multirun(tmp_path, *args)
    first = _runs(path)
    assert len(first) == 2 * 2 * 2  # 2 presets x 2 methods x 2 seeds
    out = multirun(tmp_path, *args, "num_seeds=3")  # relaunched, asking for one more seed
    after = _runs(path)
    assert after[: len(first)] == first and len(after) == 2 * 2 * 3
    assert out.count("1 seed(s), compile") == 4  # each job computed only the new seed


def test_plan_estimates_from_stored_runs_of_the_same_cell_then_shape_then_reference(
    tmp_path, capsys
):
    url = f"sqlite:///{tmp_path}/m.sqlite"
    multirun(
        tmp_path, "experiment=fig3_tabular_single", "algorithm=tpo", "scale=smoke", f"db.url={url}"
    )
    capsys.readouterr()

    def source(*args: str) -> str:
        assert (
            plan.main(
                [
                    "experiment=fig3_tabular_single",
                    "scale=smoke",
                    "num_seeds=3",
                    f"db.url={url}",
                    *args,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        (line,) = [x for x in out.splitlines() if x.startswith("deduplicated")]
        return line

    assert "this cell, measured" in source("algorithm=tpo")  # seed 2 of a stored cell
    assert "same shape, measured" in source("algorithm=pg")  # a bandit cell never run
    # stored runs of another device say nothing about this one
    assert source("algorithm=pg", "--device", "gpu:elsewhere").endswith("ref")
