"""Markdown (the subset the report writes) -> one self-contained HTML page.

Headings, paragraphs, bullet lists, GitHub pipe tables and images; every image is embedded
as a base64 PNG and the style is inline, so the page needs no other file, no script and no
network. Used by ``analysis.report``.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from analysis import verdicts

# --------------------------------------------------------------------------------------------
# Markdown -> one self-contained HTML page
# --------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
  max-width: 1180px; margin: 0 auto; padding: 16px 24px; overflow-wrap: break-word; }
h1 { font-size: 1.7em; border-bottom: 2px solid #333; padding-bottom: 4px; }
h2 { font-size: 1.35em; border-bottom: 1px solid #bbb; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.4em; }
h4, h5, h6 { font-size: 1em; }
code { font: 0.9em ui-monospace, "DejaVu Sans Mono", monospace; background: #f2f2f2;
  padding: 0 3px; border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.85em; width: 100%;
  table-layout: auto; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left;
  overflow-wrap: break-word; }
th { background: #eef1f5; }
tr:nth-child(even) td { background: #fafafa; }
.tablewrap { max-width: 100%; overflow-x: auto; }
figure { margin: 10px 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
ul { padding-left: 1.4em; }
strong.v-agrees { color: #1a7f37; }
strong.v-differs { color: #c0262d; }
strong.v-reduced { color: #9a6700; }
strong.v-not-run { color: #6e7781; }
"""


def _inline(text: str) -> str:
    """Inline Markdown (code spans, images, links, bold, italics) to HTML, the rest escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = s.replace("\\|", "|")
        s = re.sub(
            r"\[([^\]]*)\]\(([^)\s]+)\)",
            lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>',
            s,
        )
        s = re.sub(r"\*\*([^*]+)\*\*", _strong, s)
        s = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _strong(m: re.Match) -> str:
    """Bold text; a verdict ("agrees", "reduced (consistent)", ...) gets its colour."""
    text = m.group(1)
    for v in verdicts.VERDICTS:
        if text == v or text.startswith(v + " ("):
            return f'<strong class="v-{v.replace(" ", "-")}">{text}</strong>'
    return f"<strong>{text}</strong>"


def _split_row(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _image(src: str, alt: str, root: Path) -> str:
    path = root / src
    if path.is_file() and path.suffix.lower() == ".png":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src_attr = f"data:image/png;base64,{data}"
    else:
        src_attr = html.escape(src)
    return f'<figure><img src="{src_attr}" alt="{html.escape(alt)}"></figure>'


def to_html(md: str, root: Path, title: str) -> str:
    """The report's Markdown as one HTML page; local PNG images under ``root`` embedded."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
    ]
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        m = re.match(r"^(#{1,6}) (.*)$", stripped)
        if m:
            flush()
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
            continue
        m = re.match(r'^<a id="([A-Za-z0-9_-]+)"></a>$', stripped)
        if m:
            flush()
            out.append(f'<a id="{m.group(1)}"></a>')
            i += 1
            continue
        m = re.match(r"^!\[([^\]]*)\]\(([^)\s]+)\)$", stripped)
        if m:
            flush()
            out.append(_image(m.group(2), m.group(1), root))
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        if re.match(r"^[-*] ", stripped):
            flush()
            out.append("<ul>")
            while i < len(lines) and re.match(r"^[-*] ", lines[i].strip()):
                item = [lines[i].strip()[2:]]
                i += 1
                # continuation lines of a list item are indented
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    item.append(lines[i].strip())
                    i += 1
                out.append("<li>" + _inline(" ".join(item)) + "</li>")
            out.append("</ul>")
            continue
        para.append(stripped)
        i += 1
    flush()
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _table(block: Sequence[str]) -> str:
    rows = [_split_row(r) for r in block]
    sep = len(rows) > 1 and all(re.fullmatch(r":?-{1,}:?", c) for c in rows[1] if c)
    head, body = (rows[0], rows[2:]) if sep else ([], rows)
    out = ['<div class="tablewrap"><table>']
    if head:
        out.append(
            "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>"
        )
    out.append("<tbody>")
    for r in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
