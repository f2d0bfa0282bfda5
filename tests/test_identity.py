"""The run identity (``tpo_sweeps.identity``): one test per rule of its docstring, each failing
if two configs that compute differently collide or two that compute the same do not, then
the behaviour it buys, through ``run_job`` on real SQLite files.

Configs are composed through Hydra from ``conf/``, so the presets and options are the real
ones. Transformer programs are tiny (H = 3, one layer of width 16, a few episodes) so that a
compile costs seconds.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
import pytest
from hydra import compose
from sqlalchemy import select

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import db, store, tasks, train
from tpo_sweeps import identity as I
from tpo_sweeps.run import run_job
from tpo_sweeps.sweep import _with_hydra
from tpo_sweeps.tasks import reversal as R

TAB = ["task=tabular_single", "task.steps=5", "task.num_actions=6", "task.batch_size=8"]
REV = [
    "task=reversal",
    "optimizer=muon",
    "task.H=3",
    "task.V=2",
    "task.B=4",
    "task.K=4",
    "task.steps=3",
    "task.reward=bag_of_tokens",
    "task.model.d_model=16",
    "task.model.num_layers=1",
    "task.model.ffn_mult=2",
]
MNIST = ["task=mnist", "optimizer=adam", "algorithm=dg", "task.steps=4", "task.eval_every=2"]

# float32 tolerance for a seed's numbers when the seeds of a program run in one vmap: XLA
# may vectorise and fuse a batched reduction differently from a smaller batch, so the last
# bits of a sum can differ (and grow a little over a few steps); anything beyond this is a
# real dependence on the other seeds
VMAP_RTOL, VMAP_ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module", autouse=True)
def jax_cache(pytestconfig):
    """Reruns skip XLA compiles: JAX's persistent cache in pytest's cache folder (as the
    suite's subprocess tests do), unless JAX_COMPILATION_CACHE_DIR already names one."""
    where = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not where:
        where = str(pytestconfig.cache.mkdir("jax_compilation_cache"))
        jax.config.update("jax_compilation_cache_dir", where)
    return where


def compose_cfg(*overrides: str) -> C.Config:
    C.register_configs()
    return _with_hydra(lambda: C.to_config(compose("config", overrides=list(overrides))))


def ident(*overrides: str) -> I.Identity:
    return I.identify(compose_cfg(*overrides))


def cell(*overrides: str) -> str:
    return ident(*overrides).cell


# --------------------------------------------------------------------------------------------
# Rule 1: where and how a run executes is not part of it
# --------------------------------------------------------------------------------------------

NOT_SEMANTIC = {
    "name": ["name=another_sweep"],
    "seed": ["seed=7"],
    "num_seeds": ["num_seeds=9"],
    "hardware": ["hardware=slurm_gpu"],
    "seed_batch": ["hardware.seed_batch=1", "hardware.seed_streams=2"],
    "db": ["db.url=sqlite:////elsewhere/r.sqlite", "db.heartbeat_s=1", "db.stage=true"],
    "checkpoint": ["checkpoint.every=2", "checkpoint.dir=/elsewhere", "checkpoint.keep=true"],
    "progress": ["progress.every=2", "progress.sweep_every_s=1"],
    "skip_completed": ["skip_completed=false"],
    "debug": ["debug.fail=true", "debug.crash_at=3", "debug.pause_in_write_s=1"],
}
SEMANTIC = {
    "task.steps": TAB + ["task.steps=6"],
    "task.num_actions": TAB + ["task.num_actions=7"],
    "task.batch_size": TAB + ["task.batch_size=9"],
    "algorithm": TAB + ["algorithm=pg"],
    "algorithm.eta": TAB + ["algorithm.eta=2"],
    "algorithm.epochs": TAB + ["algorithm.epochs=2"],
    "optimizer.alpha": TAB + ["optimizer.alpha=0.2"],
    "x64": TAB + ["x64=true"],
}
SEMANTIC_REV = {
    "task.H": ["task.H=4"],
    "task.V": ["task.V=3"],
    "task.B": ["task.B=5"],
    "task.reward": ["task.reward=terminal"],
    "task.target": ["task.target=copy"],
    "optimizer.lr": ["optimizer.lr=0.001"],
    "task.model.d_model": ["task.model.d_model=32"],
}


@pytest.mark.parametrize("what", list(NOT_SEMANTIC))
def test_rule1_where_and_how_a_run_executes_is_not_part_of_the_cell(what):
    base = ident(*TAB)
    moved = ident(*TAB, *NOT_SEMANTIC[what])
    assert moved.cell == base.cell
    assert moved.run_key(3) == base.run_key(3)  # the same stored run at the same seed
    assert base.run_key(3) != base.run_key(4)  # ... and the seed is the identity's second half


def test_rule1_the_data_location_is_not_part_of_the_cell():
    assert cell(*MNIST, "task.data_dir=/data/mnist") == cell(*MNIST)
    # unchecked files (synthetic test data) must not serve a request for the real MNIST
    assert cell(*MNIST, "task.check_md5=false") != cell(*MNIST)
    assert cell(*MNIST, "optimizer.lr=0.01") != cell(*MNIST)
    assert cell(*MNIST, "task.hidden=20") != cell(*MNIST)


@pytest.mark.parametrize("what", list(SEMANTIC))
def test_rule1_what_a_run_computes_is_part_of_the_cell(what):
    assert cell(*SEMANTIC[what]) != cell(*TAB)


@pytest.mark.parametrize("what", list(SEMANTIC_REV))
def test_rule1_what_a_transformer_run_computes_is_part_of_the_cell(what):
    assert cell(*REV, *SEMANTIC_REV[what]) != cell(*REV)


def test_rule1_every_config_field_is_either_semantic_or_listed():
    """A new top-level field is part of the cell unless rule 1 or 5 lists it: adding one to
    ``Config`` without deciding fails here."""
    fields = {f.name for f in dataclasses.fields(C.Config)}
    listed = set(I.NOT_IDENTITY) | {"log_every"}
    assert listed <= fields
    assert fields - listed == {"algorithm", "task", "optimizer", "x64"}


def test_rule1_every_leaf_left_in_the_cell_changes_its_hash():
    """Changing any single semantic value of a resolved config, at any depth, changes the cell
    hash; the hash is canonical (key order does not matter)."""
    for overrides in (TAB, REV, MNIST):
        resolved = C.as_dict(ident(*overrides).resolved)
        base = I.cell_hash(resolved)
        semantic = I.semantic(resolved)
        assert not {"name", "seed", "num_seeds", "hardware", "db"} & set(semantic)
        reordered = {k: resolved[k] for k in reversed(list(resolved))}
        assert I.cell_hash(reordered) == base

        def leaves(d, path=()):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from leaves(v, (*path, k))
                else:
                    yield (*path, k), v

        checked = 0
        for path, v in leaves(semantic):
            changed = _perturb(v)
            mutated = _set(resolved, path, changed)
            assert I.cell_hash(mutated) != base, path
            checked += 1
        assert checked >= 8


def _perturb(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if v is None:
        return 0
    if isinstance(v, list):
        return [*v, "x"]
    return f"{v}_x"


def _set(d: dict, path: tuple, value) -> dict:
    out = dict(d)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set(d[path[0]], path[1:], value)
    return out


# --------------------------------------------------------------------------------------------
# Rule 2: an algorithm alias is stored under its canonical name
# --------------------------------------------------------------------------------------------

# every registry alias and the algorithm it is stored as
ALIASES = {
    "tpo_no_anchor": "tpo",
    "tpo_token": "tpo",
    "tpo_1ep": "tpo",
    "grpo_no_kl": "grpo",
    "grpo_masked": "grpo",
    "grpo_token": "grpo",
    "grpo_token_no_kl": "grpo",
    "reinforce": "pg",
    "dg_4ep": "dg",
}


def test_rule2_the_registry_aliases():
    assert {n: A.canonical_name(n) for n in A.ALGORITHMS if A.canonical_name(n) != n} == ALIASES
    assert all(A.canonical_name(c) == c for c in set(ALIASES.values()))


def _field_overrides(hp: C.AlgorithmConfig) -> list[str]:
    out = []
    for k, v in dataclasses.asdict(hp).items():
        if k != "name":
            out.append(f"algorithm.{k}={'null' if v is None else v}")
    return out


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_rule2_an_alias_is_its_canonical_algorithm_with_its_fields(alias):
    """``algorithm=<alias>`` and ``algorithm=<canonical>`` with the alias's field values are one
    cell (the fields then say what differs), and not the canonical algorithm's own cell."""
    canonical = ALIASES[alias]
    base = REV if A.ALGORITHMS[alias].family != "supervised" else TAB
    if "token" in alias:
        base = [*REV, "task.reward=sequential"]
    aliased = ident(*base, f"algorithm={alias}")
    spelled = ident(*base, f"algorithm={canonical}", *_field_overrides(aliased.config.algorithm))
    assert aliased.cell == spelled.cell
    assert aliased.resolved.algorithm.name == canonical
    assert aliased.resolved.algorithm == spelled.resolved.algorithm
    assert aliased.cell != ident(*base, f"algorithm={canonical}").cell
    # the promoted column keeps the label the request used
    assert store.run_row(aliased, 0, [])["algorithm"] == alias


def test_rule2_the_paper_aliases():
    assert cell(*REV, "algorithm=tpo_1ep") == cell(*REV, "algorithm=tpo", "algorithm.epochs=1")
    assert cell(*TAB, "algorithm=tpo_1ep") == cell(*TAB, "algorithm=tpo", "algorithm.epochs=1")
    assert cell(*REV, "algorithm=dg_4ep") == cell(*REV, "algorithm=dg", "algorithm.epochs=4")
    assert cell(*REV, "algorithm=reinforce") == cell(*REV, "algorithm=pg", "algorithm.epochs=4")
    dense = [*REV, "task.reward=sequential"]
    assert cell(*dense, "algorithm=tpo_token") != cell(*dense, "algorithm=tpo")
    assert cell(*dense, "algorithm=tpo_token") == cell(
        *dense, "algorithm=tpo", "algorithm.level=token"
    )
    assert cell(*REV, "algorithm=tpo_1ep") != cell(*REV, "algorithm=tpo")
    assert cell(*REV, "algorithm=dg_4ep") != cell(*REV, "algorithm=dg")
    # different algorithms with equal fields stay apart
    assert cell(*REV, "algorithm=pg") != cell(*REV, "algorithm=dg", "algorithm.epochs=1")


# --------------------------------------------------------------------------------------------
# Rule 3: interaction matching is resolved into the batch and learning rate
# --------------------------------------------------------------------------------------------

K8 = [*REV, "task.K=8", "optimizer.lr=0.0001"]


@pytest.mark.parametrize("algorithm", ["tpo", "grpo", "grpo_no_kl", "group_pg"])
def test_rule3_match_drops_out_of_a_sequence_grouped_cell(algorithm):
    prompts = ident(*K8, f"algorithm={algorithm}", "task.match=prompts")
    inter = ident(*K8, f"algorithm={algorithm}", "task.match=interactions")
    assert inter.cell == prompts.cell
    assert (inter.resolved.task.B, inter.resolved.optimizer.lr) == (4, 1e-4)
    # the label the request used is kept for the promoted column
    assert store.run_row(inter, 0, [])["match"] == "interactions"


@pytest.mark.parametrize("algorithm", ["ppo", "dg", "pg", "tpo_token"])
def test_rule3_interaction_matching_is_the_bigger_batch_and_lr(algorithm):
    base = [*K8, f"algorithm={algorithm}", "task.reward=sequential"]
    inter = ident(*base, "task.match=interactions")
    lr = 1e-4 * math.sqrt(8)
    assert inter.resolved.task.B == 4 * 8
    assert inter.resolved.optimizer.lr == pytest.approx(lr, rel=1e-15)
    assert inter.resolved.task.match == "prompts"
    assert inter.config.task.B == 4 and inter.config.optimizer.lr == 1e-4  # request untouched
    # the same numbers asked for by hand are the same cell ...
    by_hand = ident(*base, "task.B=32", f"optimizer.lr={lr!r}")
    assert by_hand.cell == inter.cell
    # ... and the prompt-matched run of the same method is not
    assert ident(*base).cell != inter.cell
    assert ident(*base, "task.B=32").cell != inter.cell  # the lr counts too


# --------------------------------------------------------------------------------------------
# Rule 4: a field a method does not use is dropped
# --------------------------------------------------------------------------------------------


def _tiny_run(cfg: C.Config, build=tasks.build, seeds=(0,)) -> dict[str, np.ndarray]:
    return train.run(build(cfg), np.asarray(seeds)).metrics


def test_rule4_single_sample_methods_do_not_depend_on_K():
    k8, k32 = ident(*REV, "algorithm=ppo", "task.K=8"), ident(*REV, "algorithm=ppo", "task.K=32")
    assert k8.cell == k32.cell and k8.resolved.task.K is None
    assert cell(*REV, "algorithm=dg", "task.K=8") == cell(*REV, "algorithm=dg", "task.K=32")
    # sequence- and token-grouped methods sample K rollouts or candidates: K is theirs
    assert cell(*REV, "algorithm=tpo", "task.K=8") != cell(*REV, "algorithm=tpo", "task.K=32")
    dense = [*REV, "task.reward=sequential", "algorithm=grpo_token"]
    assert cell(*dense, "task.K=8") != cell(*dense, "task.K=32")
    # the proof that the collision is right: the program built from the request itself (K
    # unresolved) trains bitwise the same numbers at K = 8 and K = 32, and the same as the
    # resolved program the job runs
    raw8 = _tiny_run(k8.config, build=R.reversal)
    raw32 = _tiny_run(k32.config, build=R.reversal)
    job = _tiny_run(k32.config)
    for name in raw8:
        np.testing.assert_array_equal(raw8[name], raw32[name])
        np.testing.assert_array_equal(raw8[name], job[name])


@pytest.mark.slow
def test_rule4_a_grouped_method_computes_differently_at_another_K():
    """The other half of the proof: TPO's numbers do depend on K (why its cells stay apart)."""
    k8 = compose_cfg(*REV, "algorithm=tpo", "task.K=8", "task.steps=5")
    k32 = compose_cfg(*REV, "algorithm=tpo", "task.K=32", "task.steps=5")
    assert not np.array_equal(_tiny_run(k8)["error"], _tiny_run(k32)["error"])


# --------------------------------------------------------------------------------------------
# Rule 5: extras are not identity; a run with more extras satisfies a request with fewer
# --------------------------------------------------------------------------------------------


def test_rule5_extras_leave_the_cell_but_not_the_run_key():
    plain, diag = ident(*REV), ident(*REV, "task.diagnostics=true")
    assert plain.cell == diag.cell and plain.run_key(0) != diag.run_key(0)
    assert I.satisfies(diag.extras, plain.extras)
    assert not I.satisfies(plain.extras, diag.extras)

    mech = ident(*MNIST, "task.mechanism=true")
    assert mech.cell == cell(*MNIST)
    assert I.satisfies(mech.extras, ident(*MNIST).extras)
    assert not I.satisfies(ident(*MNIST).extras, mech.extras)

    every1, every10 = ident(*TAB, "log_every=1"), ident(*TAB, "log_every=10")
    assert every1.cell == every10.cell and every1.run_key(0) != every10.run_key(0)
    assert I.satisfies(every1.extras, every10.extras)  # a thinning of the stored curve
    assert not I.satisfies(every10.extras, every1.extras)
    assert I.satisfies(ident(*TAB, "log_every=5").extras, every10.extras)
    assert not I.satisfies(ident(*TAB, "log_every=3").extras, every10.extras)
    both = ident(*REV, "task.diagnostics=true", "log_every=1")
    assert I.satisfies(both.extras, ident(*REV, "log_every=10").extras)
    assert not I.satisfies(ident(*REV, "log_every=10").extras, both.extras)


def test_rule5_the_store_serves_a_request_only_from_runs_that_satisfy_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    every10 = ident(*TAB, "log_every=10", "num_seeds=2")
    with store.RunStore(url) as st:
        st.start(every10, [0, 1], [], {})
        metrics = {"error": np.zeros((2, 1))}
        st.finish(train.Result(np.arange(2), metrics, {"error": np.arange(1)}, {}))
        ids = dict(st.run_ids)
        assert st.stored(ident(*TAB, "log_every=20", "num_seeds=2")) == ids
        assert st.stored(ident(*TAB, "log_every=10", "num_seeds=3")) == ids  # seed 2 missing
        assert st.stored(ident(*TAB, "log_every=1", "num_seeds=2")) == {}
        assert st.stored(ident(*TAB, "log_every=20", "task.steps=6")) == {}  # another cell


# --------------------------------------------------------------------------------------------
# What the identity buys, through run_job on real SQLite
# --------------------------------------------------------------------------------------------


def job(url: str, *overrides: str) -> C.Config:
    return compose_cfg(
        *overrides,
        f"db.url={url}",
        "db.heartbeat_s=0",
        "hardware.compilation_cache=''",  # keep the module's cache (jax_cache)
    )


def _runs(url: str) -> dict[int, dict]:
    engine = db.connect(url, create=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(db.Run.__table__)).mappings().all()
            metrics = conn.execute(
                select(db.Metric.run_id, db.Metric.name, db.Metric.step, db.Metric.value)
            ).all()
            links = conn.execute(select(db.SweepRun.sweep, db.SweepRun.run_id)).all()
    finally:
        engine.dispose()
    out = {r["id"]: {**r, "metrics": {}, "sweeps": set()} for r in rows}
    for m in metrics:
        out[m.run_id]["metrics"].setdefault(m.name, {})[m.step] = m.value
    for link in links:
        out[link.run_id]["sweeps"].add(link.sweep)
    return out


def _curve(run: dict, name: str) -> np.ndarray:
    return np.array([v for _, v in sorted(run["metrics"][name].items())])


def test_three_seeds_then_five_computes_two(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    first = run_job(job(url, *TAB, "num_seeds=3"))
    assert first["status"] == "completed" and first["seeds"] == [0, 1, 2]
    before = _runs(url)
    assert sorted(r["seed"] for r in before.values()) == [0, 1, 2]

    second = run_job(job(url, *TAB, "num_seeds=5"))
    assert second["status"] == "completed" and second["seeds"] == [3, 4]
    assert set(second["run_ids"]) == {0, 1, 2, 3, 4}
    after = _runs(url)
    assert len(after) == 5
    for run_id, row in before.items():  # seeds 0-2: not rewritten
        assert after[run_id] == row
    new = [r for i, r in after.items() if i not in before]
    assert sorted(r["seed"] for r in new) == [3, 4]
    assert {r["job_seeds"] for r in new} == {2} and {r["job_seeds"] for r in before.values()} == {3}
    assert len({r["job_id"] for r in new}) == 1 and not {r["job_id"] for r in new} & {
        r["job_id"] for r in before.values()
    }
    # a third request for the same seeds computes nothing
    assert run_job(job(url, *TAB, "num_seeds=5"))["status"] == "skipped"
    assert len(_runs(url)) == 5
    # seeds 3 and 4, computed in a program of two, equal those of one five-seed program
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    run_job(job(fresh, *TAB, "num_seeds=5"))
    together = {r["seed"]: r for r in _runs(fresh).values()}
    for r in new:
        for name in r["metrics"]:
            np.testing.assert_allclose(
                _curve(r, name), _curve(together[r["seed"]], name), VMAP_RTOL, VMAP_ATOL
            )


def test_a_run_belongs_to_every_sweep_that_asked_for_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    a = run_job(job(url, *TAB, "num_seeds=2", "name=fig_a"))
    b = run_job(job(url, *TAB, "num_seeds=2", "name=fig_b", "hardware.seed_batch=1"))
    assert b["status"] == "skipped" and b["run_ids"] == a["run_ids"]
    runs = _runs(url)
    assert len(runs) == 2
    assert all(r["sweeps"] == {"fig_a", "fig_b"} for r in runs.values())
    assert {r["sweep"] for r in runs.values()} == {"fig_a"}  # the computing sweep's label


def test_an_interaction_matched_grouped_cell_is_served_by_the_prompt_matched_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    grpo = [*REV, "algorithm=grpo", "num_seeds=2"]
    prompts = run_job(job(url, *grpo, "task.match=prompts", "name=fig1b"))
    assert prompts["status"] == "completed"
    inter = run_job(job(url, *grpo, "task.match=interactions", "name=table3"))
    assert inter["status"] == "skipped" and inter["run_ids"] == prompts["run_ids"]  # 0 computed
    runs = _runs(url)
    assert len(runs) == 2 and all(r["sweeps"] == {"fig1b", "table3"} for r in runs.values())
    # a single-sample method under interaction matching is another cell: it computes
    ppo = [*REV, "algorithm=ppo", "num_seeds=2", "name=table3"]
    assert run_job(job(url, *ppo, "task.match=interactions"))["status"] == "completed"
    assert len(_runs(url)) == 4


def test_a_diagnostics_run_serves_a_plain_request_not_the_reverse(tmp_path):
    seeds = [*REV, "algorithm=tpo", "num_seeds=2"]
    a = f"sqlite:///{tmp_path / 'a.sqlite'}"
    diag = run_job(job(a, *seeds, "task.diagnostics=true"))
    assert diag["status"] == "completed"
    plain = run_job(job(a, *seeds))
    assert plain["status"] == "skipped" and plain["run_ids"] == diag["run_ids"]  # 0 computed
    assert len(_runs(a)) == 2

    b = f"sqlite:///{tmp_path / 'b.sqlite'}"
    plain = run_job(job(b, *seeds))
    assert plain["status"] == "completed"
    diag_b = run_job(job(b, *seeds, "task.diagnostics=true"))
    assert diag_b["status"] == "completed" and diag_b["seeds"] == [0, 1]  # computed
    runs = _runs(b)
    assert len(runs) == 4
    by = {(r["seed"], bool(r["diagnostics"])): r for r in runs.values()}
    assert len({r["cell_hash"] for r in runs.values()}) == 1
    for s in (0, 1):
        # diagnostics only add metrics: the error curve is the plain run's, bit for bit
        np.testing.assert_array_equal(_curve(by[s, True], "error"), _curve(by[s, False], "error"))
        assert set(by[s, True]["metrics"]) > set(by[s, False]["metrics"]) == {"error"}
    # the plain request is now served by either; it computes nothing
    assert run_job(job(b, *seeds))["status"] == "skipped"


# --------------------------------------------------------------------------------------------
# Seed s's numbers do not depend on which other seeds share its program
# --------------------------------------------------------------------------------------------


def _seed_runs(cfg: C.Config, seed_batch: int) -> tuple[dict, dict]:
    program = tasks.build(cfg)
    alone = train.run(program, np.array([3]), seed_batch=seed_batch).metrics
    shared = train.run(program, np.array([1, 2, 3]), seed_batch=seed_batch).metrics
    return {k: v[0] for k, v in alone.items()}, {k: v[2] for k, v in shared.items()}


@pytest.mark.parametrize("task", ["tabular", "reversal"])
def test_a_seed_alone_equals_the_seed_among_others(task):
    overrides = TAB if task == "tabular" else [*REV, "algorithm=tpo", "task.steps=4"]
    cfg = compose_cfg(*overrides)
    # seed_batch=1: the three seeds run unbatched one after another (lax.map), the lone seed
    # as the program's only one -> bitwise identical
    alone, shared = _seed_runs(cfg, seed_batch=1)
    assert alone.keys() == shared.keys()
    for name in alone:
        np.testing.assert_array_equal(alone[name], shared[name], err_msg=name)
    # seed_batch=0 (the default): one vmap over the seeds -> equal to float32 tolerance
    valone, vshared = _seed_runs(cfg, seed_batch=0)
    for name in alone:
        np.testing.assert_allclose(valone[name], vshared[name], VMAP_RTOL, VMAP_ATOL, err_msg=name)
        np.testing.assert_allclose(valone[name], alone[name], VMAP_RTOL, VMAP_ATOL, err_msg=name)
    # and the seed's numbers are its own: another seed's differ
    other = train.run(tasks.build(cfg), np.array([4]), seed_batch=1).metrics
    assert not np.array_equal(other[next(iter(alone))][0], alone[next(iter(alone))])
