"""Render a report, written once as a list of blocks, to Markdown, self-contained HTML and PNG.

A report is a title plus a list of blocks (`Heading`, `Paragraph`, `Table`,
`Image`, `Code`). `render_markdown` links the PNG files that sit next to
`report.md`; `render_html` embeds the same PNGs as base64 data URIs and inlines
its CSS, so `report.html` can be mailed or opened offline on its own.

Inline markup in `Paragraph` text and table cells is limited to `` `code` ``
spans and `**bold**`, which both renderers understand.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Heading:
    """A section heading (`level` 2 or 3; the title is level 1)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text with optional `code` and **bold** spans."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table. `numeric` names the columns to right-align."""

    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Image:
    """A PNG that lives in the report directory, under `file_name`."""

    file_name: str
    caption: str


@dataclass(frozen=True)
class Code:
    """A preformatted block, e.g. the command to run next."""

    text: str


Block = Heading | Paragraph | Table | Image | Code

FIGURE_DPI = 110

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { font-size: 1.8rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2rem; border-bottom: 1px solid #d8dee4; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; }
code { background: #eff1f3; padding: .1em .35em; border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .8rem 1rem;
      overflow-x: auto; }
pre code { background: none; padding: 0; }
.table-wrap { overflow-x: auto; margin: .8rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .65rem; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; white-space: normal; vertical-align: bottom; }
tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; border-radius: 6px; }
figcaption { color: #57606a; font-size: .88rem; margin-top: .3rem; }
"""

_CODE_OR_BOLD = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def render_markdown(title: str, blocks: list[Block]) -> str:
    """Render the blocks as GitHub-flavoured Markdown (images linked by file name).

    Args:
        title: The level-1 heading.
        blocks: The report's content, in order.

    Returns:
        The Markdown text, ending in a newline.
    """
    parts = [f"# {title}"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(_markdown_table(block))
        elif isinstance(block, Image):
            parts.append(f"![{block.caption}]({block.file_name})\n\n*{block.caption}*")
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text}\n```")
    return "\n\n".join(parts) + "\n"


def _markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rule = ["---:" if name in table.numeric else "---" for name in table.header]
    lines = [
        "| " + " | ".join(cell(h) for h in table.header) + " |",
        "| " + " | ".join(rule) + " |",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_html(title: str, blocks: list[Block], directory: Path) -> str:
    """Render the blocks as one self-contained HTML page.

    Args:
        title: The page title and level-1 heading.
        blocks: The report's content, in order.
        directory: Where the `Image` blocks' PNG files are; they are embedded
            as `data:image/png;base64,...` URIs.

    Returns:
        The HTML document: inline CSS, no external references.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Image):
            encoded = base64.b64encode((directory / block.file_name).read_bytes()).decode("ascii")
            caption = html.escape(block.caption)
            body.append(
                f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _inline_html(text: str) -> str:
    """Escape `text` for HTML, turning `code` and **bold** spans into tags."""
    pieces, last = [], 0
    for match in _CODE_OR_BOLD.finditer(text):
        pieces.append(html.escape(text[last : match.start()]))
        code, bold = match.groups()
        if code is not None:
            pieces.append(f"<code>{html.escape(code)}</code>")
        else:
            pieces.append(f"<strong>{html.escape(bold)}</strong>")
        last = match.end()
    pieces.append(html.escape(text[last:]))
    return "".join(pieces)


def _html_table(table: Table) -> str:
    def css(name: str) -> str:
        return ' class="num"' if name in table.numeric else ""

    # Long dotted parameter names may wrap after each dot.
    head = "".join(
        f"<th{css(h)}>{_inline_html(h).replace('.', '.<wbr>')}</th>" for h in table.header
    )
    rows = [
        "<tr>"
        + "".join(
            f"<td{css(h)}>{_inline_html(c)}</td>" for h, c in zip(table.header, row, strict=True)
        )
        + "</tr>"
        for row in table.rows
    ]
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def write_report_files(directory: Path, title: str, blocks: list[Block]) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `directory`.

    Args:
        directory: The run or experiment directory (the PNGs must be there already).
        title: The report title.
        blocks: The report's content.

    Returns:
        The paths of `report.md` and `report.html`.
    """
    markdown_path = directory / "report.md"
    html_path = directory / "report.html"
    markdown_path.write_text(render_markdown(title, blocks), encoding="utf-8")
    html_path.write_text(render_html(title, blocks, directory), encoding="utf-8")
    return markdown_path, html_path


def format_step(value: float | None) -> str:
    """Format a step count: whole numbers without a decimal point, `-` when missing."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def is_number(value: object) -> bool:
    """True for ints and floats, False for bools and everything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_number(value: float | None, digits: int = 4) -> str:
    """Format a metric for a table: `digits` significant digits, `-` when missing."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def save_figure(figure: Figure, path: Path) -> Path:
    """Draw `figure` on an Agg canvas (no pyplot, no global backend) into the PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=FIGURE_DPI, format="png")
    return path
