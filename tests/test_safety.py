"""Nothing wrong is computed or stored silently (issue 10).

* ``test_bad_input``: a table of bad inputs (configs, URLs, files, command-line arguments),
  each run through the real entry point ``tpo_sweeps.run.main`` in this process (its
  ``sys.exit`` caught), in a working folder as a user has it: for each, a non-zero exit, one
  ``error:`` line naming the culprit, no traceback, and the folder (its results database,
  outputs, everything in it) byte for byte unchanged. ``test_bad_input_in_a_process`` runs a
  few of them as real processes, for the exit status and the stream they print on.
* divergence: a NaN run is stored ``diverged`` with its first non-finite step, the sweep goes
  on and exits non-zero, ``status`` shows it; ``train.divergence`` unit cases.
* contention: a lock held past the busy timeout loses nothing (retried; or, held past
  ``db.retry_s``, staged in the job's folder and merged later).
* secrets: a password planted in ``db.url`` is in no file or table a run writes, nor in
  what it prints.
* paths: ``name=../x`` is refused; an unreadable checkpoint is moved aside; PPO's KL term is
  finite where a log-prob drops by ~100 nats.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import hydra._internal.hydra as hydra_main
import hydra.core.utils as hydra_utils
import pytest
from hydra._internal.core_plugins import basic_launcher
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import compose_config
from tpo_sweeps import db
from tpo_sweeps import run as R

REPO = Path(__file__).resolve().parent.parent
TINY = ["task.steps=4", "task.num_actions=6", "task.batch_size=8"]  # a tabular_single cell
SWEEP = ["experiment=fig3_tabular_single", "scale=smoke"]


def _sqlite(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A working folder as a user has it: ``results/tpo.sqlite`` with one completed run,
    another application's SQLite file, a file that is no database, a results database of a
    newer schema, a folder, a plain file, a file that is no bundle."""
    d = tmp_path_factory.mktemp("template")
    (d / "results").mkdir()
    url = f"sqlite:///{d / 'results' / 'tpo.sqlite'}"
    out = R.run_job(compose_config([*TINY, f"db.url={url}", "hardware.compilation_cache="]), [])
    assert out["status"] == "completed"
    _sqlite(d / "foreign.sqlite", "CREATE TABLE users (id INTEGER, name TEXT)")
    (d / "garbage.sqlite").write_bytes(bytes(range(256)) * 16)
    shutil.copy(d / "results" / "tpo.sqlite", d / "newer.sqlite")
    _sqlite(d / "newer.sqlite", f"UPDATE schema_info SET version = {db.SCHEMA_VERSION + 1}")
    (d / "afolder").mkdir()
    (d / "afile").write_text("not a folder\n")
    (d / "bad.parquet").write_bytes(b"PAR1" + bytes(range(200)))
    return d


def _snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# (id, arguments of `python -m tpo_sweeps`, what the one line must name); {d} is the folder
BAD = [
    # configs: choices, ranges, keys, options
    ("level typo", ["algorithm=tpo_token", "task=reversal", "algorithm.level=tokn"], "tokn"),
    ("target typo", ["task=reversal", "task.target=fllip"], "task.target"),
    ("reward typo", ["task=reversal", "task.reward=dense"], "task.reward"),
    ("match typo", ["task=reversal", "task.match=interaction"], "task.match"),
    ("baseline typo", ["algorithm=dg", "algorithm.baseline=foo"], "algorithm.baseline"),
    ("std_eps_mode typo", ["algorithm=grpo", "algorithm.std_eps_mode=sqr"], "std_eps_mode"),
    ("platform typo", ["hardware.platform=gpuu"], "hardware.platform"),
    ("unknown algorithm", ["algorithm=nope"], "algorithm=nope"),
    ("unknown task", ["task=nowhere"], "task=nowhere"),
    ("unknown preset", ["experiment=no_such_preset"], "experiment=no_such_preset"),
    ("unknown scale", ["scale=huge"], "scale=huge"),
    ("key of another option", ["algorithm=grpo", "algorithm.eta=2"], "algorithm.eta"),
    ("appended unknown key", ["+algorithm.bogus=1"], "algorithm.bogus"),
    ("unknown top-level key", ["+bogus_top=1"], "bogus_top"),
    ("not an integer", ["task.num_actions=abc"], "task.num_actions"),
    ("unparsable override", ["a=b=c"], "a=b=c"),
    ("seed past uint32", ["seed=1099511627776"], "seed"),
    ("negative seed", ["seed=-5"], "seed"),
    ("seeds run past uint32", ["seed=4294967295", "num_seeds=2"], "num_seeds"),
    ("no seeds", ["num_seeds=0"], "num_seeds"),
    ("eta negative", ["algorithm.eta=-1"], "algorithm.eta"),
    ("eta zero", ["algorithm=dg", "algorithm.eta=0"], "algorithm.eta"),
    ("clip eps zero", ["algorithm=ppo", "algorithm.clip_eps=0"], "algorithm.clip_eps"),
    ("K of one for a group", ["task=reversal", "task.K=1"], "task.K"),
    ("no prompts", ["task=reversal", "task.B=0"], "task.B"),
    ("heads do not divide", ["task=reversal", "task.model.num_heads=3"], "num_heads"),
    ("no actions", ["task.num_actions=0"], "task.num_actions"),
    ("no steps", ["task.steps=0"], "task.steps"),
    ("log every zero", ["log_every=0"], "log_every"),
    ("lr nan", ["optimizer=adam", "optimizer.lr=nan"], "optimizer.lr"),
    ("alpha inf", ["optimizer.alpha=inf"], "optimizer.alpha"),
    ("adam beta 1", ["optimizer=adam", "optimizer.b1=1.0"], "optimizer.b1"),
    ("seed streams zero", ["hardware.seed_streams=0"], "hardware.seed_streams"),
    ("seed batch below auto", ["hardware.seed_batch=-2"], "hardware.seed_batch"),
    ("busy timeout negative", ["db.busy_timeout_s=-1"], "db.busy_timeout_s"),
    ("heartbeat negative", ["db.heartbeat_s=-1"], "db.heartbeat_s"),
    ("token level off reversal", ["algorithm=tpo_token"], "algorithm.level"),
    (
        "token level, terminal",
        ["task=reversal", "algorithm=grpo_token", "task.reward=terminal"],
        "task.reward=terminal",
    ),
    ("labels on reversal", ["task=reversal", "algorithm=ce"], "'ce'"),
    (
        "interactions without lr",
        ["task=reversal", "algorithm=pg", "optimizer=normalized_step", "task.match=interactions"],
        "task.match",
    ),
    (
        "mnist eval does not divide",
        ["task=mnist", "optimizer=adam", "task.steps=150"],
        "task.eval_every",
    ),
    ("campaign without -m", ["experiment=paper"], "campaign"),
    # names and paths
    ("empty name", ["name="], "name"),
    ("name up the tree", ["name=../../x"], "../../x"),
    ("name with a separator", ["name=a/b"], "a/b"),
    # database URLs
    ("not a URL", ["db.url=notaurl"], "notaurl"),
    ("unknown dialect", ["db.url=nosuchdb://x/y"], "nosuchdb"),
    ("SQLite folder missing", ["db.url=sqlite:///{d}/nowhere/dir/x.sqlite"], "{d}/nowhere/dir"),
    ("SQLite path is a folder", ["db.url=sqlite:///{d}/afolder"], "afolder"),
    ("another application's SQLite", ["db.url=sqlite:///{d}/foreign.sqlite"], "foreign.sqlite"),
    ("SQLite file no database", ["db.url=sqlite:///{d}/garbage.sqlite"], "garbage.sqlite"),
    ("results of a newer schema", ["db.url=sqlite:///{d}/newer.sqlite"], "newer"),
    ("PostgreSQL unreachable", ["db.url=postgresql+psycopg://u@127.0.0.1:1/x"], "127.0.0.1:1"),
    # a multirun: every cell composed and the database opened before anything is made
    ("multirun unknown option", ["-m", "algorithm=tpo,nope"], "algorithm=nope"),
    ("multirun bad value", ["-m", *SWEEP, "algorithm.eta=-1"], "algorithm.eta"),
    ("multirun unsafe name", ["-m", "name=../y", "algorithm=tpo,pg"], "../y"),
    (
        "multirun SQLite folder missing",
        ["-m", "algorithm=tpo,pg", "db.url=sqlite:///{d}/nowhere/x.sqlite"],
        "{d}/nowhere",
    ),
    (
        "multirun foreign SQLite",
        ["-m", "algorithm=tpo,pg", "db.url=sqlite:///{d}/foreign.sqlite"],
        "foreign.sqlite",
    ),
    # the commands
    (
        "status of a mistyped --db",
        ["status", *SWEEP, "--db", "sqlite:///{d}/typo.sqlite"],
        "typo.sqlite",
    ),
    ("status of an unknown preset", ["status", "experiment=nope"], "experiment=nope"),
    ("status of a bad value", ["status", *SWEEP, "algorithm.eta=0"], "algorithm.eta"),
    ("status of missing staged stores", ["status", *SWEEP, "--staged", "{d}/nowhere"], "nowhere"),
    (
        "plan of an unknown scale",
        ["plan", "experiment=fig3_tabular_single", "scale=huge"],
        "scale=huge",
    ),
    (
        "merge of a missing path",
        ["merge", "{d}/nowhere", "--db", "sqlite:///{d}/results/tpo.sqlite"],
        "nowhere",
    ),
    (
        "merge of another application's SQLite",
        ["merge", "{d}/foreign.sqlite", "--db", "sqlite:///{d}/results/tpo.sqlite"],
        "foreign.sqlite",
    ),
    (
        "merge of a file no database",
        ["merge", "{d}/garbage.sqlite", "--db", "sqlite:///{d}/results/tpo.sqlite"],
        "garbage.sqlite",
    ),
    (
        "import of a missing path",
        ["import", "{d}/nowhere", "--db", "sqlite:///{d}/x.sqlite"],
        "nowhere",
    ),
    (
        "import of a file no bundle",
        ["import", "{d}/bad.parquet", "--db", "sqlite:///{d}/x.sqlite"],
        "bad.parquet",
    ),
    (
        "export of a mistyped --db",
        ["export", "--db", "sqlite:///{d}/typo.sqlite", "--out", "{d}/b"],
        "typo.sqlite",
    ),
    (
        "export into a file",
        ["export", "--db", "sqlite:///{d}/results/tpo.sqlite", "--out", "{d}/afile"],
        "afile",
    ),
    (
        "migrate into a missing folder",
        ["migrate", "--db", "sqlite:///{d}/nowhere/x.sqlite"],
        "{d}/nowhere",
    ),
    (
        "migrate another application's SQLite",
        ["migrate", "--db", "sqlite:///{d}/foreign.sqlite"],
        "foreign.sqlite",
    ),
]


def test_the_table_is_long_enough():
    assert len(BAD) >= 40 and len({b[0] for b in BAD}) == len(BAD)


def _main(args: list[str], capsys) -> tuple[int, list[str]]:
    """``python -m tpo_sweeps args`` in this process: (exit status, printed lines)."""
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = ["tpo_sweeps", *args]
    code: object = 0
    try:
        R.main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    if isinstance(code, str):  # SystemExit("error: ...") prints it and exits 1
        lines.append(code)
        code = 1
    return int(code or 0), lines


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input(case, template, tmp_path, monkeypatch, capsys):
    name, args, culprit = case
    d = tmp_path / "work"
    shutil.copytree(template, d)
    monkeypatch.chdir(d)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it to 1 for itself
    # Hydra's multirun configures logging anew, which closes pytest's capturing handlers
    for module in (hydra_main, basic_launcher, hydra_utils):
        monkeypatch.setattr(module, "configure_log", lambda *a, **k: None)
    before = _snapshot(d)
    code, lines = _main([a.replace("{d}", str(d)) for a in args], capsys)
    assert code != 0, lines
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("error: ") and culprit.replace("{d}", str(d)) in lines[0], lines
    assert "Traceback" not in lines[0]
    assert _snapshot(d) == before  # no output folder, no database, nothing changed


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["algorithm=tpo_token", "task=reversal", "algorithm.level=tokn"], "tokn"),
        (["-m", "algorithm=tpo,nope"], "algorithm=nope"),
        (["status", *SWEEP, "--db", "sqlite:///typo.sqlite"], "typo.sqlite"),
    ],
)
def test_bad_input_in_a_process(args, culprit, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SLURM_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "tpo_sweeps", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert culprit in done.stderr and not list(tmp_path.iterdir())


def test_help_lists_the_commands_and_groups(capsys):
    code, lines = _main(["--help"], capsys)
    text = "\n".join(lines)
    assert code == 0
    for word in ("status", "plan", "merge", "migrate", "export", "import", "experiment="):
        assert word in text
    assert "tpo_token" in text and "_schema" not in text and "_reversal_base" not in text
