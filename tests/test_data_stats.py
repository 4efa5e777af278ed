"""Dataset statistics against hand counts on a hand-made three-image dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from yololab.data import DataError
from yololab.data.stats import PLOT_FILES, dataset_stats, nonzero_fraction, plot_stats


@pytest.fixture
def three(tmp_path) -> Path:
    """a.png: grey 10x8 with 4 non-zero pixels, two boxes; b.png: RGB 20x10 with 3 non-zero pixels, one box;
    c.png (val): grey 4x4, all zero, no label file."""
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "images/val").mkdir(parents=True)
    (tmp_path / "labels/train").mkdir(parents=True)

    a = np.zeros((8, 10), np.uint8)
    a[0, 0], a[3, 4], a[7, 9], a[5, 1] = 5, 200, 1, 255
    Image.fromarray(a).save(tmp_path / "images/train/a.png")
    (tmp_path / "labels/train/a.txt").write_text("0 0.5 0.5 0.4 0.25\n1 0.25 0.5 0.5 0.5\n")  # 4x2 px, 5x4 px

    b = np.zeros((10, 20, 3), np.uint8)
    b[0, 0] = (0, 7, 0)  # one channel lit is a non-zero pixel
    b[5, 3] = (1, 1, 1)
    b[9, 19] = (255, 0, 0)
    Image.fromarray(b).save(tmp_path / "images/train/b.png")
    (tmp_path / "labels/train/b.txt").write_text("1 0.5 0.5 0.2 0.6\n")  # 4x6 px

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images/val/c.png")
    data = {"path": str(tmp_path), "train": "images/train", "val": "images/val", "names": ["a", "b"]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "data.yaml"


def test_all_splits_against_hand_counts(three):
    stats = dataset_stats(three)
    assert stats["splits"] == ["train", "val"]
    assert (stats["n_images"], stats["n_objects"], stats["n_backgrounds"]) == (3, 3, 1)
    assert stats["objects_per_image"] == {"mean": 1.0, "max": 2, "histogram": {"0": 1, "1": 1, "2": 1}}
    assert stats["per_class"] == {"a": 1, "b": 2}
    assert stats["per_box"]["class"] == [0, 1, 1]
    assert stats["per_box"]["width_px"] == [4.0, 5.0, 4.0]
    assert stats["per_box"]["height_px"] == [2.0, 4.0, 6.0]
    assert stats["box_width_px"] == pytest.approx({"min": 4, "median": 4, "mean": 13 / 3, "max": 5})
    assert stats["box_height_px"] == pytest.approx({"min": 2, "median": 4, "mean": 4, "max": 6})
    # Non-zero pixels: a 4 of 80, b 3 of 200, c 0 of 16.
    assert stats["per_image"]["nonzero_fraction"] == pytest.approx([0.05, 0.015, 0.0])
    expected = {"min": 0, "median": 0.015, "mean": 0.065 / 3, "max": 0.05}
    assert stats["nonzero_fraction"] == pytest.approx(expected)
    assert stats["image_sizes"] == {"10x8": 1, "20x10": 1, "4x4": 1}
    assert stats["image_width_px"] == pytest.approx({"min": 4, "median": 10, "mean": 34 / 3, "max": 20})
    assert stats["image_height_px"] == pytest.approx({"min": 4, "median": 8, "mean": 22 / 3, "max": 10})
    assert stats["sparse"] is True  # median 0.015 of the pixels non-zero
    assert [Path(p).name for p in stats["per_image"]["path"]] == ["a.png", "b.png", "c.png"]
    assert stats["per_image"]["objects"] == [2, 1, 0]


def test_one_split(three):
    stats = dataset_stats(three, "val")
    assert (stats["n_images"], stats["n_objects"], stats["n_backgrounds"]) == (1, 0, 1)
    assert stats["per_class"] == {"a": 0, "b": 0}
    assert stats["box_width_px"] == {"min": None, "median": None, "mean": None, "max": None}
    assert stats["objects_per_image"]["histogram"] == {"0": 1}
    with pytest.raises(DataError, match="no split 'test'"):
        dataset_stats(three, "test")


def test_bad_label_names_file_and_line(three):
    label = three.parent / "labels/train/b.txt"
    label.write_text("1 0.5 0.5 0.2 0.6\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"b\.txt:2: class 7 out of range"):
        dataset_stats(three)


def test_palette_image_counts_black_entries_as_zero(tmp_path):
    # Palette index 1 is black too: a pixel is non-zero by its colour, not by its index.
    image = Image.new("P", (2, 2))
    image.putdata([0, 1, 2, 2])
    image.putpalette([0, 0, 0, 0, 0, 0, 9, 0, 0])
    image.save(tmp_path / "p.png")
    assert nonzero_fraction(tmp_path / "p.png") == 0.5
    (tmp_path / "broken.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        nonzero_fraction(tmp_path / "broken.png")


def photos(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """RGB images of random pixels (as in photos, nearly all non-zero) of the given (width, height) sizes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "names": ["a"]}))
    return root / "data.yaml"


def test_photos_get_no_sparsity_and_a_summary_of_many_sizes(tmp_path):
    from typer.testing import CliRunner

    from yololab.cli import app

    sizes = [(30, 20), (30, 20), (30, 20), (24, 18), (24, 18), (40, 10), (12, 12), (50, 25), (16, 9)]
    data = photos(tmp_path / "ds", sizes)
    stats = dataset_stats(data)
    assert stats["sparse"] is False and stats["nonzero_fraction"]["min"] == 1.0
    assert list(stats["image_sizes"].items())[:2] == [("30x20", 3), ("24x18", 2)]  # most frequent first
    assert stats["image_width_px"]["median"] == 30 and stats["image_height_px"]["max"] == 25
    result = CliRunner().invoke(app, ["data", "stats", str(data), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "non-zero" not in text and not (tmp_path / "st" / "nonzero_fraction.png").exists()
    assert "6 different; most frequent 30x20: 3, 24x18: 2, 12x12: 1" in text
    assert "image width px min 12, median 30, mean 28.4444, max 50" in text
    assert "40x10" not in text  # not every size in one row


def test_plots_are_written(three, tmp_path):
    for stats in (dataset_stats(three), dataset_stats(three, "val")):  # with boxes, and without any
        paths = plot_stats(stats, tmp_path / "plots")
        assert [p.name for p in paths] == list(PLOT_FILES)
        for path in paths:
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size == (640, 480)
