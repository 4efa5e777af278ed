"""The photo-like generator: layout, labels, boxes re-derived from the pixels, determinism, JPEG colour images,
the command and a study that makes the data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from generated_data import files_and_bytes, pixel_boxes
from yololab.commands import data_tools
from yololab.data import load_data_yaml, make_photo, validate_split
from yololab.data.photo import MAX_IOU, MIN_VISIBLE, SIZE_RANGE, PhotoParams, render_photo_image
from yololab.study import load_study
from yololab.study.data import study_data

NAMES = ["ball", "box", "cone", "ring"]
SIZE = 96
# Anti-aliased edges: a pixel the object covers by less than half still changes, and one it covers by more can
# keep its value when the colours are close; a cone's apex tapers below half a pixel over up to 2 pixels.
EDGE_PX = 2


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # A long temporary path would wrap the command's one-line summary.
    monkeypatch.setattr(data_tools, "console", Console(width=400))


def invoke(command, *args):
    app = typer.Typer()
    app.command()(command)
    return CliRunner().invoke(app, [str(a) for a in args])


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 (exclusive) of the True pixels."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_layout_yaml_and_label_lines(tmp_path):
    yaml_path = make_photo(tmp_path / "ds", n_train=4, n_val=2, n_test=1, img_size=SIZE, seed=1)
    raw = yaml.safe_load(yaml_path.read_text())
    assert list(raw)[:6] == ["path", "train", "val", "test", "nc", "names"]
    assert raw["path"] == str((tmp_path / "ds").resolve()) and raw["nc"] == 4 and raw["names"] == NAMES
    spec = load_data_yaml(yaml_path)
    assert {split: len(images) for split, images in spec.splits.items()} == {"train": 4, "val": 2, "test": 1}
    # COCO's 32 and 96 px at 320 px, scaled to 96 px: sides 9.6 -> 10 and 28.8 -> 29, areas by hand.
    assert spec.size_bins.image_size == SIZE
    assert spec.size_bins.areas == {"small": (0, 100), "medium": (100, 841), "large": (841, 9216)}
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        assert sorted(p.name for p in (tmp_path / "ds/images" / split).iterdir()) == [f"{i:06d}.jpg" for i in range(n)]
        assert sorted(p.name for p in (tmp_path / "ds/labels" / split).iterdir()) == [f"{i:06d}.txt" for i in range(n)]
        assert validate_split(spec.splits[split], 4).ok
    n_lines = 0
    for label_file in (tmp_path / "ds/labels").rglob("*.txt"):
        for line in label_file.read_text().splitlines():
            cls, *box = line.split()
            cx, cy, w, h = (float(v) for v in box)
            assert cls in {"0", "1", "2", "3"} and w > 0 and h > 0
            assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
            n_lines += 1
    assert n_lines >= 7  # at least one object per image by default
    with pytest.raises(FileExistsError):
        make_photo(tmp_path / "ds", n_train=1, n_val=0, n_test=0, img_size=SIZE)


def test_images_are_colour_jpeg_of_the_requested_size_on_varied_backgrounds(tmp_path):
    yaml_path = make_photo(tmp_path / "bg", n_train=6, n_val=0, n_test=0, img_size=80, objects_per_image=(0, 0))
    assert "val" not in yaml.safe_load(yaml_path.read_text())  # an empty split is left out
    means = []
    for image_file in sorted((tmp_path / "bg/images/train").glob("*.jpg")):
        with Image.open(image_file) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (80, 80))
            pixels = np.asarray(image, dtype=np.float64)
        assert pixels.std(axis=(0, 1)).min() > 5  # textured, not a flat fill
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 2  # colour, not grey
        means.append(pixels.mean(axis=(0, 1)))
        assert (tmp_path / "bg/labels/train" / f"{image_file.stem}.txt").read_text() == ""
    assert np.ptp(np.array(means), axis=0).max() > 10  # the backgrounds differ from image to image


def test_same_arguments_same_bytes(tmp_path):
    args = {"n_train": 3, "n_val": 1, "n_test": 1, "img_size": 64, "seed": 5}
    one = files_and_bytes(make_photo(tmp_path / "a", **args).parent)
    two = files_and_bytes(make_photo(tmp_path / "b", **args).parent)
    assert one.keys() == two.keys() and len([k for k in one if k.endswith(".jpg")]) == 5
    assert all(one[k] == two[k] for k in one if k != "data.yaml")

    def without_path(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if not line.startswith("path:")]

    assert without_path(one["data.yaml"]) == without_path(two["data.yaml"])
    other = files_and_bytes(make_photo(tmp_path / "c", **{**args, "seed": 6}).parent)
    assert other["images/train/000000.jpg"] != one["images/train/000000.jpg"]


def test_label_boxes_are_the_pixels_each_object_changed_and_later_ones_left(tmp_path):
    """Each object's box, re-derived from renders of the same image with 0, 1, ... objects: the pixels object j
    changes (render j against render j-1) that no later object changes (the full render against render j)."""
    seed, size, count = 3, 128, 5
    yaml_path = make_photo(tmp_path / "ds", n_train=8, n_val=0, n_test=0, img_size=size, seed=seed,
                           objects_per_image=(count, count), shadow=0.0, blur=0.0)
    occluded = 0
    for index in range(8):
        renders = [render_photo_image((seed, 0, index), PhotoParams(
            size, (j, j), SIZE_RANGE, MAX_IOU, MIN_VISIBLE, shadow=0.0, blur=0.0, noise=0.5))[0].astype(np.int64)
            for j in range(count + 1)]
        with Image.open(yaml_path.parent / f"images/train/{index:06d}.jpg") as image:
            decoded = np.asarray(image, dtype=np.int64)
        # The file is the full render up to JPEG and noise (a different scene differs by tens of levels).
        assert np.abs(decoded - renders[-1]).mean() < 8
        changes = [np.abs(renders[j + 1] - renders[j]).max(axis=2) > 0 for j in range(count)]
        placed = [j for j in range(count) if changes[j].any()]  # an object left out changes nothing
        labels = pixel_boxes(yaml_path.parent / f"labels/train/{index:06d}.txt", size)
        assert len(labels) == len(placed) >= 1
        for (_, *box), j in zip(labels, placed, strict=True):
            later = np.abs(renders[-1] - renders[j + 1]).max(axis=2) > 0
            derived = bounding_box(changes[j] & ~later)
            assert np.abs(np.subtract(derived, box)).max() <= EDGE_PX, (index, j, derived, box)
            whole = bounding_box(changes[j])
            occluded += np.abs(np.subtract(whole, box)).max() > EDGE_PX
    assert occluded >= 1  # some box was cut by a later object: the check above sees occlusion


def test_sizes_classes_and_objects_per_image(tmp_path):
    yaml_path = make_photo(tmp_path / "sizes", n_train=30, n_val=0, n_test=0, img_size=SIZE, seed=2)
    per_image, sides, classes = [], [], set()
    for label_file in sorted((tmp_path / "sizes/labels/train").glob("*.txt")):
        boxes = pixel_boxes(label_file, SIZE)
        per_image.append(len(boxes))
        for cls, x1, y1, x2, y2 in boxes:
            classes.add(cls)
            sides.append(max(x2 - x1, y2 - y1))
    assert yaml.safe_load(yaml_path.read_text())["generator"]["objects_per_image"] == [1, 6]
    assert min(per_image) >= 1 and max(per_image) <= 6 and max(per_image) >= 3
    assert classes == {0, 1, 2, 3}
    sides = np.array(sides)
    assert sides.max() <= 0.6 * SIZE + 1  # an object's longer side is at most 60 % of the image (+ its edge)
    assert (sides >= 0.15 * SIZE).mean() > 0.7  # mostly medium and large objects


def test_no_box_for_a_hidden_object_even_without_occlusion_limits(tmp_path):
    yaml_path = make_photo(tmp_path / "crowd", n_train=6, n_val=0, n_test=0, img_size=64, seed=8,
                           objects_per_image=(6, 6), size_range=(0.3, 0.6), max_iou=1.0, min_visible=0.0)
    for label_file in (yaml_path.parent / "labels/train").glob("*.txt"):
        boxes = pixel_boxes(label_file, 64)
        assert 1 <= len(boxes) <= 6 and all(x2 > x1 and y2 > y1 for _, x1, y1, x2, y2 in boxes)


def test_bad_arguments_are_one_clear_line(tmp_path):
    for kwargs, words in (({"n_train": 0}, "n_train"), ({"img_size": 32}, "img_size"),
                          ({"objects_per_image": (3, 2)}, "objects_per_image"),
                          ({"size_range": (0.0, 0.5)}, "size_range"), ({"max_iou": 1.5}, "max_iou")):
        with pytest.raises(ValueError, match=words):
            make_photo(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    bad = invoke(data_tools.make_photo_command, "--out", tmp_path / "x", "--imgsz", 32)
    assert bad.exit_code == 2 and "img_size must be >= 64" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    bad = invoke(data_tools.make_photo_command, "--out", tmp_path / "x", "--n-train", 0)
    assert bad.exit_code == 2 and "n_train" in bad.output


def test_command_writes_the_dataset(tmp_path):
    out = tmp_path / "photo"
    result = invoke(data_tools.make_photo_command, "--out", out, "--n-train", 2, "--n-val", 1, "--n-test", 1,
                    "--imgsz", 64, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert "4 images" in result.output
    generator = yaml.safe_load((out / "data.yaml").read_text())["generator"]
    assert generator["seed"] == 4 and generator["img_size"] == 64
    assert generator["n_images"] == {"train": 2, "val": 1, "test": 1}
    with Image.open(io.BytesIO((out / "images/val/000000.jpg").read_bytes())) as image:
        assert image.size == (64, 64)


def test_study_can_make_photo_data(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text("""\
data: {make: photo, options: {n_train: 2, n_val: 1, n_test: 0, img_size: 64}}
budget: {epochs: 1}
seeds: 1
factors:
  loss.obj_weight: [1.0, 2.0]
""")
    study = load_study(study_file)
    assert study.spec.data.make == "photo"
    data_yaml = study_data(study.spec, tmp_path / "run")
    assert data_yaml == (tmp_path / "run/data/photo/data.yaml").resolve()
    spec = load_data_yaml(data_yaml)
    assert spec.names == NAMES and {k: len(v) for k, v in spec.splits.items()} == {"train": 2, "val": 1}


def test_photo_is_exported_lazily():
    import yololab.data

    assert "make_photo" in yololab.data.__all__
    assert Path(yololab.data.make_photo.__code__.co_filename).name == "photo.py"
