"""The published reproduction record (docs/reproduction/) is exactly what `make reproduction`
regenerates from the committed bundles (results/bundles/), and the bundles stay small."""

from __future__ import annotations

import re
from pathlib import Path

from analysis import reproduction

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_BUDGET_BYTES = 30 * 1024 * 1024
TEXT_FILES = ("README.md", "report.md", "verdicts.csv", "claims.csv", "findings.md")


def test_bundles_within_size_budget():
    files = list((ROOT / "results" / "bundles").rglob("*.parquet"))
    assert files, "no published bundles"
    total = sum(f.stat().st_size for f in files)
    assert total <= BUNDLE_BUDGET_BYTES, f"results/bundles is {total / 2**20:.1f} MiB"


def _without_images(html: str) -> str:
    # figures are compared by name: PNG bytes may move with a matplotlib release
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,…", html)


def test_committed_report_is_what_the_bundles_regenerate(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command's paths are relative to the repository root
    committed = ROOT / "docs" / "reproduction"
    out = reproduction.rebuild(
        Path("results/bundles"), tmp_path / "reproduction", tmp_path / "reproduction.sqlite"
    )
    for name in TEXT_FILES:
        assert (out / name).read_text() == (committed / name).read_text(), (
            f"docs/reproduction/{name} is stale: run `make reproduction` and commit it"
        )
    assert _without_images((out / "report.html").read_text()) == _without_images(
        (committed / "report.html").read_text()
    )
    regenerated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    published = sorted(
        p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file()
    )
    assert regenerated == published
