"""The run report's picture of the saved validation images, and the data that was scored.

The fixture run has eval.json with its `data` record and `pixels_scored`, and an
`eval_samples/` folder written by `raycseg.eval.samples.write_eval_samples`:
five 12x16 samples, each cell one solid class, so that every (row, column) of
the picture has its own palette colour and can be found in the rendered PNG.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cseg.main import app
from PIL import Image
from typer.testing import CliRunner

from raycseg.eval.samples import write_eval_samples
from raycseg.eval.scoring import EvalSample
from raycseg.reports import RunSummary, write_report

from .conftest import PNG_MAGIC, section, write_run

HEIGHT, WIDTH = 12, 16
SAMPLES = 5  # one more than the picture shows
IMAGE_RGB = (10, 200, 30)  # off the palette: VOC channels are multiples of 32
CLASSES = ["background", *(f"thing{index}" for index in range(1, 16))]
DATA = {"shards": "/data/voc/shards", "split": "val", "images": 1449, "classes": CLASSES}
PIXELS = {"linear_probe": 1234567, "kmeans": 1234567}
# The PASCAL VOC colour map as published with the devkit (VOC's 21 classes, and 255 = void).
VOC_COLOURS = {
    0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
    5: (128, 0, 128), 6: (0, 128, 128), 7: (128, 128, 128), 8: (64, 0, 0), 9: (192, 0, 0),
    10: (64, 128, 0), 11: (192, 128, 0), 12: (64, 0, 128), 13: (192, 0, 128),
    14: (64, 128, 128), 15: (192, 128, 128), 16: (0, 64, 0), 17: (128, 64, 0),
    18: (0, 192, 0), 19: (128, 192, 0), 20: (0, 64, 128), 255: (224, 224, 192),
}  # fmt: skip


def cell_ids(sample: int) -> dict[str, int]:
    """The one class each id cell of sample `sample` holds, by column."""
    return {"label": 1 + sample, "linear_probe": 6 + sample, "kmeans": 11 + sample}


def fake_samples() -> dict[str, list[EvalSample]]:
    """Per protocol, the same five images; sample 0's label ignores its lower right quarter."""
    image = torch.tensor(IMAGE_RGB, dtype=torch.uint8).view(3, 1, 1).expand(3, HEIGHT, WIDTH)
    samples: dict[str, list[EvalSample]] = {"linear_probe": [], "kmeans": []}
    for index in range(SAMPLES):
        ids = cell_ids(index)
        label = torch.full((HEIGHT, WIDTH), ids["label"], dtype=torch.uint8)
        if index == 0:
            label[HEIGHT // 2 :, WIDTH // 2 :] = 255
        for protocol, kept in samples.items():
            prediction = torch.full((HEIGHT, WIDTH), ids[protocol], dtype=torch.uint8)
            kept.append(EvalSample(f"val/{index:04d}", image.clone(), label, prediction))
    return samples


def add_eval_data(root: Path) -> None:
    """Give the fixture run's eval.json the `data` record and `pixels_scored`."""
    scores = json.loads((root / "eval.json").read_text())
    for protocol, pixels in PIXELS.items():
        scores[protocol]["pixels_scored"] = pixels
        scores["baseline_random"][protocol]["pixels_scored"] = pixels
    scores["data"] = DATA
    (root / "eval.json").write_text(json.dumps(scores, indent=2))


@pytest.fixture(scope="module")
def pictured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary]:
    """A run with eval.json (+ data) and eval_samples/, its report written once."""
    root = write_run(tmp_path_factory.mktemp("pictured") / "run", steps_per_stage=5)
    add_eval_data(root)
    write_eval_samples(root, fake_samples(), CLASSES)
    return root, write_report(root)


def colour_centre(pixels: np.ndarray, rgb) -> tuple[int, float, float]:
    """How many pixels have exactly `rgb`, and their median row and column."""
    where = np.argwhere((pixels[..., :3] == np.asarray(rgb, dtype=np.uint8)).all(axis=-1))
    if len(where) == 0:
        return 0, float("nan"), float("nan")
    return len(where), float(np.median(where[:, 0])), float(np.median(where[:, 1]))


def test_voc_palette_is_the_standard_colour_map() -> None:
    from raycseg.reports.pictures import voc_palette

    palette = voc_palette()

    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert {index: tuple(palette[index].tolist()) for index in VOC_COLOURS} == VOC_COLOURS
    assert len({tuple(colour) for colour in palette.tolist()}) == 256  # ADE20K's 151 fit too


def test_picture_is_a_grid_of_image_truth_and_each_protocol_in_palette_colours(
    pictured: tuple[Path, RunSummary],
) -> None:
    root, summary = pictured
    picture = root / "eval_samples.png"

    assert picture in summary.files
    assert picture.read_bytes().startswith(PNG_MAGIC)
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    rows = []
    for sample in range(4):
        colours = [IMAGE_RGB] + [VOC_COLOURS[i] for i in cell_ids(sample).values()]
        cells = [colour_centre(pixels, colour) for colour in colours]
        # each cell is drawn pixel for pixel in its exact colour, and is big
        assert all(count > 2000 for count, _, _ in cells), (sample, cells)
        # columns left to right: image | ground truth | linear_probe | kmeans
        xs = [x for _, _, x in cells]
        assert xs == sorted(xs) and xs[-1] - xs[0] > pixels.shape[1] / 2, xs
        ys = [y for _, y, _ in cells[1:]]  # (the image colour is in every row)
        assert max(ys) - min(ys) < pixels.shape[0] / 20, ys
        rows.append(ys[0])
    assert rows == sorted(rows) and rows[-1] - rows[0] > pixels.shape[0] / 2, rows
    # the fifth sample is left out (up to 4 rows), and sample 0's ignore pixels are light grey
    assert all(colour_centre(pixels, VOC_COLOURS[i])[0] == 0 for i in cell_ids(4).values())
    assert colour_centre(pixels, VOC_COLOURS[255])[0] > 300


def test_report_embeds_and_links_the_picture_with_a_legend_caption(
    pictured: tuple[Path, RunSummary],
) -> None:
    root, _ = pictured
    encoded = base64.b64encode((root / "eval_samples.png").read_bytes()).decode("ascii")
    html = (root / "report.html").read_text()
    evaluation = section((root / "report.md").read_text(), "Evaluation")

    assert f'src="data:image/png;base64,{encoded}"' in html
    assert "](eval_samples.png)" in evaluation
    caption = re.search(r"!\[([^\]]*)\]\(eval_samples\.png\)", evaluation).group(1)
    assert "image | ground truth | linear_probe | kmeans" in caption
    shown = [i for sample in range(4) for i in cell_ids(sample).values()]
    for index in shown:
        assert f"{index} {CLASSES[index]}" in caption
    assert f"{cell_ids(4)['label']} {CLASSES[cell_ids(4)['label']]}," not in caption
    assert "ignore (255)" in caption
    assert caption in html  # the same caption under the embedded picture


def test_eval_section_names_the_scored_data_and_pixels(
    pictured: tuple[Path, RunSummary],
) -> None:
    root, _ = pictured
    evaluation = section((root / "report.md").read_text(), "Evaluation")
    html = (root / "report.html").read_text()

    assert (
        "Scored data: shards `/data/voc/shards`, split `val`, 1449 images, 16 classes."
        in evaluation
    )
    assert "<code>/data/voc/shards</code>, split <code>val</code>, 1449 images" in html
    assert "| linear_probe | 0.41 | 0.12 | +0.2900 | 1,234,567 |" in evaluation
    assert "| 0 background | 0.9 | 0.3 | 0.7 | 0.2 |" in evaluation  # class names


def test_run_with_data_but_no_samples_renders_without_a_picture(tmp_path: Path) -> None:
    root = write_run(tmp_path / "run", steps_per_stage=5)
    add_eval_data(root)

    summary = write_report(root)

    assert not (root / "eval_samples.png").exists()
    assert {path.name for path in summary.files} == {
        "report.md", "report.html", "loss.png", "lr_throughput.png", "validation.png", "eval.png",
    }  # fmt: skip
    markdown = (root / "report.md").read_text()
    assert "Scored data: shards `/data/voc/shards`" in markdown
    assert "eval_samples" not in markdown and "Validation images" not in markdown


def test_cli_prints_the_scored_data_and_writes_the_picture(tmp_path: Path) -> None:
    root = write_run(tmp_path / "run", steps_per_stage=5)
    add_eval_data(root)
    write_eval_samples(root, fake_samples(), CLASSES)

    result = CliRunner().invoke(app, ["report", str(root)], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "Scored data: shards /data/voc/shards, split val, 1449 images" in result.stdout
    assert "pixels scored" in result.stdout and "1,234,567" in result.stdout
    assert f"wrote {root.resolve() / 'eval_samples.png'}" in result.stderr
