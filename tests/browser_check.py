"""Render a report page in headless Chromium and check that it displays.

    python tests/browser_check.py DIR/report.html [--screenshot out.png] [--width 1280]

The page itself needs no JavaScript. The check works on a copy with one small script added
before ``</body>``: once the page has loaded it records every ``<img>`` that is not
``complete`` with a ``naturalWidth`` > 0 (a broken or missing image), whether the document is
wider than the window (``scrollWidth > innerWidth``: horizontal overflow, a layout break),
and every table that needs horizontal scrolling inside its box, and writes the result as JSON
into a ``<pre id="browser-check">``. Chromium prints the DOM after the page settles
(``--dump-dom --virtual-time-budget``) and the JSON is read back from it. ``--screenshot``
also saves a PNG of the page (window ``width`` wide, as tall as the page up to
``--max-height``, default ``MAX_SCREENSHOT_HEIGHT``) for a person to look at.

Exit status 0 when the page passes, 1 when it does not (the problems on stderr), 2 when no
Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_SCREENSHOT_HEIGHT = 16000
TIMEOUT_S = 180

_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
    .map(function (i) { return i.alt || i.getAttribute("src").slice(0, 80); });
  var wideTables = Array.prototype.slice.call(document.querySelectorAll(".tablewrap"))
    .filter(function (w) { return w.scrollWidth > w.clientWidth + 1; })
    .map(function (w) {
      var h = w.querySelector("th, td");
      return (h ? h.textContent : "").slice(0, 60) + " (" + w.scrollWidth + " > " +
        w.clientWidth + ")";
    });
  var result = {
    images: imgs.length,
    broken: broken,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    scrollHeight: document.documentElement.scrollHeight,
    wideTables: wideTables
  };
  var pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.style.whiteSpace = "pre-wrap";
  pre.style.display = "none";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>
"""


class NoBrowser(RuntimeError):
    pass


def browser() -> str:
    """The path of an installed Chromium; ``NoBrowser`` if there is none."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise NoBrowser("no Chromium found (tried " + ", ".join(BROWSERS) + ")")


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def _flags(width: int, height: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--allow-file-access-from-files",
        f"--window-size={width},{height}",
        "--virtual-time-budget=20000",
    ]


def check(
    page: Path,
    screenshot: Path | None = None,
    width: int = 1280,
    max_height: int = MAX_SCREENSHOT_HEIGHT,
) -> dict:
    """Render ``page`` and return the probe's result plus ``problems`` (a list of strings,
    empty when the page passes). ``screenshot``: also save the page as a PNG, ``width``
    wide and as tall as the page up to ``max_height``. Raises ``NoBrowser`` without
    Chromium."""
    exe = browser()
    page = Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    if "</body>" not in text:
        return {"problems": ["the page has no </body>"]}
    with tempfile.TemporaryDirectory(prefix="browser_check_") as tmp:
        # the copy sits beside the original so relative links resolve as they would
        probe = page.parent / f".browser_check_{Path(tmp).name}.html"
        probe.write_text(text.replace("</body>", _PROBE + "</body>", 1), encoding="utf-8")
        try:
            dom = _run(
                [
                    exe,
                    *_flags(width, 900),
                    f"--user-data-dir={tmp}/profile",
                    "--dump-dom",
                    probe.as_uri(),
                ]
            )
        finally:
            probe.unlink(missing_ok=True)
        m = re.search(r'<pre id="browser-check"[^>]*>(.*?)</pre>', dom, re.S)
        if m is None:
            return {"problems": ["the probe did not run (no result in the rendered DOM)"]}
        result = json.loads(
            m.group(1)
            .replace("&quot;", '"')
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
        )
        problems = [f"broken image: {b}" for b in result["broken"]]
        if result["scrollWidth"] > result["innerWidth"]:
            problems.append(
                f"horizontal overflow: page is {result['scrollWidth']} px wide in a "
                f"{result['innerWidth']} px window"
            )
        problems += [f"table wider than the page: {t}" for t in result["wideTables"]]
        result["problems"] = problems
        if screenshot is not None:
            height = max(600, min(int(result["scrollHeight"]), max_height))
            _run(
                [
                    exe,
                    *_flags(width, height),
                    f"--user-data-dir={tmp}/profile2",
                    f"--screenshot={Path(screenshot).resolve()}",
                    page.as_uri(),
                ]
            )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("page", type=Path)
    p.add_argument("--screenshot", type=Path, default=None)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument(
        "--max-height", type=int, default=MAX_SCREENSHOT_HEIGHT, help="screenshot height cap (px)"
    )
    args = p.parse_args(argv)
    try:
        result = check(args.page, args.screenshot, args.width, args.max_height)
    except NoBrowser as e:
        print(f"error: {e}; install it (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}))
    for problem in result["problems"]:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
