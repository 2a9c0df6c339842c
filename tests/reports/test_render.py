"""Rendering report blocks to Markdown and HTML."""

from __future__ import annotations

from pathlib import Path

from raycseg.reports.render import (
    Code,
    Heading,
    Image,
    Paragraph,
    Table,
    format_step,
    render_html,
    render_markdown,
)

from .conftest import PNG_MAGIC

BLOCKS = [
    Heading("Errors"),
    Paragraph("`trial_1`: ValueError: expected <tensor> & got **None**"),
    Table(["name", "score"], [["a|b", "0.5"]], numeric=frozenset({"score"})),
    Code("cseg pretrain <dir>/best.yaml"),
]


def test_html_escapes_text_from_trials_and_keeps_inline_markup() -> None:
    html = render_html("t <1>", BLOCKS, Path("."))

    assert "<title>t &lt;1&gt;</title>" in html
    assert (
        "<p><code>trial_1</code>: ValueError: expected &lt;tensor&gt; &amp; got "
        "<strong>None</strong></p>"
    ) in html
    assert "<pre><code>cseg pretrain &lt;dir&gt;/best.yaml</code></pre>" in html
    assert '<td class="num">0.5</td>' in html and "<td>a|b</td>" in html


def test_markdown_escapes_pipes_in_cells_and_right_aligns_numbers() -> None:
    markdown = render_markdown("t", BLOCKS)

    assert markdown.startswith("# t\n\n## Errors\n")
    assert "| name | score |\n| --- | ---: |\n| a\\|b | 0.5 |" in markdown
    assert "```\ncseg pretrain <dir>/best.yaml\n```" in markdown


def test_images_are_embedded_in_html_and_linked_in_markdown(tmp_path: Path) -> None:
    (tmp_path / "plot.png").write_bytes(PNG_MAGIC + b"rest")
    blocks = [Image("plot.png", "a plot")]

    html = render_html("t", blocks, tmp_path)

    assert 'src="data:image/png;base64,iVBORw0KGgpyZXN0"' in html
    assert "![a plot](plot.png)" in render_markdown("t", blocks)


def test_steps_print_as_whole_numbers() -> None:
    assert format_step(12000.0) == "12000"
    assert format_step(2.5) == "2.5"
    assert format_step(None) == "-"
