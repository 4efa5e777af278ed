"""YOLO txt labels, data.yaml loading and split validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yololab.data import (
    DataError,
    label_path,
    load_data_yaml,
    parse_label_file,
    read_label_file,
    validate_split,
)

NC = 10
GOOD_LINES = "0 0.5 0.5 0.2 0.4\n3 0.25 0.75 0.1 0.1\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_png(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


# --- DataError --------------------------------------------------------------------------------------


def test_data_error_message_and_fields():
    err = DataError("a/b.txt", 3, "class 12 out of range")
    assert str(err) == "a/b.txt:3: class 12 out of range"
    assert (err.file, err.line, err.problem) == ("a/b.txt", 3, "class 12 out of range")
    assert isinstance(err, ValueError)
    assert str(DataError("x.png", None, "cannot decode")) == "x.png: cannot decode"


# --- label paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("/d/images/train/a.png", "/d/labels/train/a.txt"),
        ("/d/images/x/images/b.jpg", "/d/images/x/labels/b.txt"),  # only the last `images` folder
        ("/d/imgs/c.png", "/d/imgs/c.txt"),  # no `images` folder: next to the image
        ("/d/images/images.v1.png", "/d/labels/images.v1.txt"),  # the file name is not a folder
    ],
)
def test_label_path_follows_ultralytics_rule(image, label):
    assert label_path(image) == Path(label)


# --- label files ------------------------------------------------------------------------------------


def test_read_label_file_values(tmp_path):
    path = write(tmp_path / "a.txt", GOOD_LINES + "\n   \n")  # blank lines are skipped
    labels = read_label_file(path, NC)
    assert labels.dtype == np.float32
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.2, 0.4], [3, 0.25, 0.75, 0.1, 0.1]])


def test_missing_label_file_is_background(tmp_path):
    labels = read_label_file(tmp_path / "none.txt", NC)
    assert labels.shape == (0, 5)


def test_box_within_rounding_tolerance_is_clipped(tmp_path):
    # x1 = 0.0005 - 0.001 = -0.0005 (inside the 1e-3 tolerance) -> clipped to 0, so x2 = 0.0015,
    # cx = 0.00075, w = 0.0015.
    labels = read_label_file(write(tmp_path / "a.txt", "1 0.0005 0.5 0.002 0.2\n"), NC)
    np.testing.assert_allclose(labels, [[1, 0.00075, 0.5, 0.0015, 0.2]], atol=1e-7)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("0 0.5 0.5 0.1", "got 4"),
        ("0 0.5 0.5 0.1 0.1 0.9", "got 6"),
        ("10 0.5 0.5 0.1 0.1", "class 10 out of range 0..9"),
        ("-1 0.5 0.5 0.1 0.1", "class -1 out of range"),
        ("1.5 0.5 0.5 0.1 0.1", "not an integer"),
        ("1 nan 0.5 0.1 0.1", "non-finite"),
        ("1 0.5 inf 0.1 0.1", "non-finite"),
        ("1 0.5 0.5 abc 0.1", "not a number"),
        ("1 0.5 0.5 0 0.1", "width and height must be > 0"),
        ("1 0.5 0.5 0.1 -0.2", "width and height must be > 0"),
        ("1 0.99 0.5 0.1 0.1", "outside the image"),  # x2 = 1.04
        ("1 0.5 0.0 0.1 0.1", "outside the image"),  # y1 = -0.05
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, line, words):
    path = write(tmp_path / "labels" / "img7.txt", GOOD_LINES + line + "\n")
    with pytest.raises(DataError) as info:
        read_label_file(path, NC)
    err = info.value
    assert (err.file, err.line) == (str(path), 3)
    assert words in err.problem
    assert str(err).startswith(f"{path}:3: ")


def test_parse_label_file_collects_every_bad_line(tmp_path):
    path = write(tmp_path / "a.txt", "0 0.5 0.5 0.1 0.1\n11 0.5 0.5 0.1 0.1\n0 0.5\n2 0.5 0.5 0.2 0.2\n")
    labels, problems = parse_label_file(path, NC)
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.1, 0.1], [2, 0.5, 0.5, 0.2, 0.2]])
    assert [p.line for p in problems] == [2, 3]


# --- data.yaml ----------------------------------------------------------------------------------------


def make_dataset(root: Path) -> dict[str, list[Path]]:
    """Two train images in a folder (one nested), three val images listed in a .txt."""
    train = [write_png(root / "images/train/a.png"), write_png(root / "images/train/sub/b.jpg")]
    val = [write_png(root / f"images/val/{n}.png") for n in ("v1", "v2", "v3")]
    write(root / "val.txt", "images/val/v2.png\n\n" + "\n".join(str(p) for p in (val[0], val[2])) + "\n")
    return {"train": train, "val": [val[1], val[0], val[2]]}


def test_load_data_yaml_folder_and_list(tmp_path):
    expected = make_dataset(tmp_path / "ds")
    # `path` is relative to the yaml's folder; names as a {id: name} mapping.
    yaml_path = write(tmp_path / "cfg/data.yaml", "path: ../ds\ntrain: images/train\nval: val.txt\n"
                                                  "test: null\nnames: {0: cat, 1: dog}\n")
    spec = load_data_yaml(yaml_path)
    assert spec.root.resolve() == (tmp_path / "ds").resolve()
    assert spec.names == ["cat", "dog"]
    assert spec.num_classes == 2
    assert set(spec.splits) == {"train", "val"}
    assert [p.resolve() for p in spec.splits["train"]] == [p.resolve() for p in expected["train"]]
    assert [p.resolve() for p in spec.splits["val"]] == [p.resolve() for p in expected["val"]]


def test_load_data_yaml_default_root_and_list_of_entries(tmp_path):
    make_dataset(tmp_path)
    yaml_path = write(tmp_path / "data.yaml", "train: [images/train, val.txt]\nnames: [a, b, c]\n")
    spec = load_data_yaml(yaml_path)
    assert spec.root == tmp_path
    assert len(spec.splits["train"]) == 2 + 3
    assert spec.names == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("names: [a]\ntrain: images/nothere\n", 2, "neither a folder nor a .txt"),
        ("train: images/train\nnames: {0: a, 2: b}\n", 2, "ids must be 0..1"),
        ("train: images/train\nnc: 3\nnames: [a, b]\n", 2, "'nc' is 3"),
        ("train: images/train\nnames: []\n", 2, "non-empty"),
        ("names: [a]\nval: images/train\n", None, "no 'train' split"),
        ("train: [images/train\nnames: [a]\n", 2, "invalid YAML"),
        ("path: nowhere\ntrain: images/train\nnames: [a]\n", 1, "not a folder"),
    ],
)
def test_bad_data_yaml_names_file_and_line(tmp_path, text, line, words):
    make_dataset(tmp_path)
    yaml_path = write(tmp_path / "data.yaml", text)
    with pytest.raises(DataError) as info:
        load_data_yaml(yaml_path)
    assert (info.value.file, info.value.line) == (str(yaml_path), line)
    assert words in info.value.problem


def test_missing_image_in_list_names_list_line(tmp_path):
    make_dataset(tmp_path)
    write(tmp_path / "bad.txt", "images/val/v1.png\nimages/val/gone.png\n")
    yaml_path = write(tmp_path / "data.yaml", "train: bad.txt\nnames: [a]\n")
    with pytest.raises(DataError) as info:
        load_data_yaml(yaml_path)
    assert (info.value.file, info.value.line) == (str(tmp_path / "bad.txt"), 2)
    assert "not found" in info.value.problem


# --- validate_split -----------------------------------------------------------------------------------


def test_validate_split_counts(tmp_path):
    images = [write_png(tmp_path / f"images/{n}.png") for n in ("a", "b", "c", "d")]
    write(tmp_path / "labels/a.txt", GOOD_LINES)  # 2 boxes
    write(tmp_path / "labels/b.txt", "5 0.5 0.5 0.5 0.5\n")  # 1 box
    write(tmp_path / "labels/c.txt", "")  # empty file: background
    # d has no label file: background
    report = validate_split(images, NC)
    assert report.ok, report.problems
    assert (report.n_images, report.n_boxes, report.n_backgrounds, report.n_missing_labels) == (4, 3, 2, 1)
    assert report.image_sizes == [(6, 8)] * 4  # (h, w) of an 8x6 PIL image
    assert [len(x) for x in report.labels] == [2, 1, 0, 0]
    report.raise_if_errors()  # no problems: no error


def test_validate_split_reports_every_bad_file(tmp_path):
    good = write_png(tmp_path / "images/good.png", size=(64, 64))
    zero = tmp_path / "images/zero.png"
    zero.write_bytes(b"")
    # A noisy image so the compressed data is long; cutting it leaves a valid header but no pixels.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    truncated = tmp_path / "images/truncated.png"
    Image.fromarray(noise).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text = write(tmp_path / "images/text.png", "not an image at all\n")
    missing = tmp_path / "images/missing.png"
    write(tmp_path / "labels/good.txt", "0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n12 0.5 0.5 0.1 0.1\n")

    report = validate_split([good, zero, truncated, text, missing], NC)
    found = {(Path(p.file).name, p.line) for p in report.problems}
    assert found == {("zero.png", None), ("truncated.png", None), ("text.png", None),
                     ("missing.png", None), ("good.txt", 2), ("good.txt", 3)}
    assert report.n_images == 5
    assert report.n_boxes == 1  # the good line of good.txt

    # The header of the truncated file is fine: only the full decode notices.
    header_only = validate_split([truncated], NC, full_decode=False)
    assert header_only.ok

    with pytest.raises(DataError) as info:
        report.raise_if_errors(max_listed=2)
    message = str(info.value)
    assert "6 problems in 5 images" in message
    assert "... and 4 more" in message
    assert str(report.problems[0]) in message and str(report.problems[2]) not in message


def test_validate_empty_split_is_a_problem():
    assert not validate_split([], NC).ok
