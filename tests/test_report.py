"""The reproduction report (``python -m analysis.report``): on an empty database, on the
fig3/fig4 smoke database (``smoke_db``), byte-identical rebuilds, the self-contained page, and
the page rendered in headless Chromium (``tests/browser_check.py``)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from services.require import service_or_skip

from analysis import report, verdicts

LABEL = "smoke-fixture"
# a 1x1 PNG
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def _build(url: str, out: Path, label: str = LABEL) -> int:
    return report.main(["--db", url, "--out", str(out), "--scale", "smoke", "--label", label])


@pytest.fixture(scope="module")
def built(smoke_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "smoke"
    assert _build(smoke_db, out) == 0
    return out


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


# --------------------------------------------------------------------------------------------
# Markdown -> HTML
# --------------------------------------------------------------------------------------------


def test_html_embeds_images_and_renders_tables(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.png").write_bytes(PIXEL)
    md = "\n".join(
        [
            "# Title <script>alert(1)</script>",
            "",
            "Some `code <b>` and **agrees** and *italic* text; a pipe \\| stays.",
            "",
            "| a | b \\| c |",
            "|:--|--:|",
            "| 1 | **differs** |",
            "",
            "- one",
            "- two [link](f/a.png)",
            "",
            "![fig](f/a.png)",
            "",
            "![missing](f/none.png)",
        ]
    )
    page = report.to_html(md, tmp_path, "t")
    assert "<script" not in page.replace("&lt;script&gt;", "")
    assert "<h1>Title &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page
    assert "<code>code &lt;b&gt;</code>" in page
    assert '<strong class="v-agrees">agrees</strong>' in page
    assert '<strong class="v-differs">differs</strong>' in page
    assert "<em>italic</em>" in page
    assert "<th>b | c</th>" in page and "<td>1</td>" in page
    assert '<li>two <a href="f/a.png">link</a></li>' in page
    assert f'src="data:image/png;base64,{base64.b64encode(PIXEL).decode()}"' in page
    assert 'src="f/none.png"' in page  # not found: left as a link, which the check flags


# --------------------------------------------------------------------------------------------
# Empty and partial databases
# --------------------------------------------------------------------------------------------


def test_empty_database_every_artefact_not_run(tmp_path):
    from tpo_sweeps import db

    url = f"sqlite:///{tmp_path}/empty.sqlite"
    db.connect(url).dispose()
    out = tmp_path / "rep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.report",
            "--db",
            url,
            "--out",
            str(out),
            "--scale",
            "smoke",
            "--label",
            "empty",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from analysis import artifacts

    needs_runs = [i for i, b in artifacts.ARTIFACTS.items() if b.needs_runs]
    for i in needs_runs:
        assert f"{i}_smoke: not run" in proc.stdout
    assert "appendix_b: computed" in proc.stdout  # needs no runs
    md = (out / "report.md").read_text()
    assert f"{len(needs_runs)} not run" in md
    assert md.count("**Not run**: no completed runs") == len(needs_runs)
    v = pd.read_csv(out / "verdicts.csv", keep_default_na=False)
    assert list(v.columns) == verdicts.VERDICT_COLUMNS
    assert set(v.loc[v["artifact"] != "appendix_b", "verdict"]) == {"not run"}
    assert set(v.loc[v["artifact"] == "appendix_b", "verdict"]) == {"agrees"}
    assert (out / "report.html").is_file()
    assert str(tmp_path) not in md and str(tmp_path) not in (out / "report.html").read_text()


def test_bad_database_exits_2(tmp_path, capsys):
    assert report.main(["--db", f"sqlite:///{tmp_path}/nope.sqlite", "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_smoke_report_has_sections_with_figures(built):
    md = (built / "report.md").read_text()
    # the partial database: fig3/fig4 built with figures, the rest not run
    for stem in ("fig3_tabular_single_smoke", "fig4_tabular_multi_smoke"):
        assert "## " in md and f"(`{stem}`)" in md
        png = f"artefacts/{stem}/{stem}.png"
        assert f"]({png})" in md and (built / png).is_file()
    assert "(`table3_terminal_smoke`)" in md and "**Not run**" in md
    # verdict rule, summary, scale table, claims, provenance
    assert verdicts.RULE in md
    assert "| numbers |" in md and "| claims |" in md
    assert "| [fig3_tabular_single](#a-fig3-tabular-single) |" in md
    assert "TPO and DG end below GRPO and PG" in md
    assert "- git commits: `" in md and "- package versions (" in md
    assert f"`{LABEL}`" in md
    v = pd.read_csv(built / "verdicts.csv", keep_default_na=False)
    fig3 = v[v["artifact"] == "fig3_tabular_single"]
    assert len(fig3) == 4 and set(fig3["verdict"]) == {"reduced"}  # 2 seeds, 20 steps
    assert set(fig3["reading"]) <= {"consistent", "inconsistent"}


def test_html_is_self_contained(built):
    page = (built / "report.html").read_text()
    assert "<script" not in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) >= 3  # fig3, fig4, appendix_b
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page


def test_rebuild_is_byte_identical(smoke_db, built, tmp_path):
    copy = tmp_path / "elsewhere" / "copy.sqlite"
    copy.parent.mkdir()
    shutil.copy(_sqlite_path(smoke_db), copy)
    again = tmp_path / "again"
    assert _build(f"sqlite:///{copy}", again) == 0
    for name in ("report.md", "verdicts.csv", "report.html", "claims.csv"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    for name in ("report.md", "report.html", "verdicts.csv"):
        text = (built / name).read_text()
        assert str(_sqlite_path(smoke_db).parent) not in text and "/tmp/" not in text


# --------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------


def test_report_renders_in_chromium(built, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import browser_check

    try:
        browser_check.browser()
        have = True
    except browser_check.NoBrowser:
        have = False
    service_or_skip("Chromium", have, "install it: apt-get install -y chromium (Debian)")
    shot = tmp_path / "report.png"
    result = browser_check.check(built / "report.html", screenshot=shot, width=1280)
    assert result["problems"] == [], result
    assert result["images"] >= 3 and result["scrollWidth"] <= result["innerWidth"]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_check_catches_a_broken_image_and_overflow(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import browser_check

    try:
        browser_check.browser()
    except browser_check.NoBrowser:
        service_or_skip("Chromium", False, "install it: apt-get install -y chromium (Debian)")
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><img src='missing.png' alt='gone'>"
        "<div style='width:3000px'>wide</div></body></html>"
    )
    problems = browser_check.check(page, width=1000)["problems"]
    assert any("broken image: gone" in p for p in problems)
    assert any("horizontal overflow" in p for p in problems)
