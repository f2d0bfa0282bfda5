"""The one command line: `tpo-sweeps <verb>` for every verb, each with a help a user can read,
and each reading db.url from the same composition as a run (command line > conf/local >
conf/config.yaml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tpo_sweeps import db, settings
from tpo_sweeps.run import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "results" / "bundles"
SCRIPT = Path(sys.executable).with_name("tpo-sweeps")  # the installed console script
# the verbs that read or write a results database
DB_VERBS = ("status", "plan", "merge", "migrate", "export", "import", "analysis", "report")


def _call(verb: str, args: list[str]) -> int:
    import importlib

    module, func_name, _ = COMMANDS[verb]
    try:
        return getattr(importlib.import_module(module), func_name)(args)
    except SystemExit as e:  # argparse's --help and usage errors
        return int(e.code or 0)


@pytest.fixture
def through_cli(monkeypatch):
    monkeypatch.setattr(settings, "_entry", "tpo-sweeps")


def test_the_script_lists_every_verb_and_no_schema_internals():
    out = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.startswith("usage: tpo-sweeps")
    block = out.split("commands:")[1].split("\n\n")[0]
    listed = {line.split()[0] for line in block.strip().splitlines()}
    assert listed == set(COMMANDS)
    assert "_schema" not in out and "powered by Hydra" not in out
    for group in ("algorithm=", "task=", "optimizer=", "hardware=", "experiment=", "scale="):
        assert group in out
    # --help after overrides (where Hydra would print its own page) gives the same page
    later = subprocess.run(
        [str(SCRIPT), "-m", "experiment=fig3_tabular_single", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert later == out


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_has_its_own_help(verb, capsys, through_cli):
    assert _call(verb, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tpo-sweeps {verb}")
    description = out.split("\n\n")[1]  # argparse: usage, blank line, description
    assert len(description.split()) >= 5 and "usage" not in description
    if verb in DB_VERBS:
        assert "--db" in out
    if verb in ("merge", "migrate", "export", "import", "analysis", "report"):
        assert "conf/local/default.yaml" in " ".join(out.split())


def test_data_verb_checks_the_mnist_files(tmp_path):
    proc = subprocess.run(
        [str(SCRIPT), "data", "mnist", "--check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"python -m tpo_sweeps data mnist --dir {tmp_path}" in proc.stderr


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site config: a copy of conf/ whose conf/local/default.yaml alone names db.url."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    (conf / "local" / "default.yaml").write_text(f"# @package _global_\ndb:\n  url: {url}\n")
    monkeypatch.setenv(settings.CONFIG_DIR_ENV, str(conf))
    monkeypatch.chdir(tmp_path)  # the built-in default would be ./results/tpo.sqlite
    return tmp_path, url


def _count_runs(url: str) -> int:
    engine = db.connect(url, create=False, migrate=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(db.Run)).scalar()
    finally:
        engine.dispose()


def test_a_db_url_set_only_in_conf_local_serves_every_verb(site, capsys, through_cli):
    tmp, url = site
    assert settings.db_url() == url and settings.db_url("sqlite:///x.sqlite") != url
    site_file = tmp / "site.sqlite"

    assert _call("migrate", []) == 0 and site_file.exists()
    from tpo_sweeps import sweep as S

    # two published seeds of Fig 3's TPO cell
    (tpo,) = S.expand(["experiment=fig3_tabular_single", "algorithm=tpo"]).cells
    cell = BUNDLES / tpo.config_hash
    picked = tmp / "picked" / cell.name
    picked.mkdir(parents=True)
    for f in sorted(cell.glob("*.parquet"))[:2]:
        shutil.copy(f, picked)
    assert _call("import", [str(tmp / "picked")]) == 0
    assert _count_runs(url) == 2

    capsys.readouterr()
    assert _call("export", ["--out", str(tmp / "out")]) == 0
    assert len(list((tmp / "out").rglob("*.parquet"))) == 2
    assert _call("merge", [str(tmp / "picked")]) == 0
    assert str(site_file) in capsys.readouterr().out
    assert _call("analysis", ["list"]) == 0
    assert str(site_file) in capsys.readouterr().out
    sweep = ["experiment=fig3_tabular_single", "algorithm=tpo"]
    assert _call("status", sweep) == 1  # 98 of its 100 seeds are missing
    assert "2/100" in capsys.readouterr().out
    assert _call("plan", sweep) == 0
    assert str(site_file) in capsys.readouterr().out
    assert _call("report", ["--out", str(tmp / "report")]) == 0
    assert str(site_file) in (tmp / "report" / "report.md").read_text()
    assert not (tmp / "results").exists()  # nothing went to the built-in default
