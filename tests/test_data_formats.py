"""Dataset formats: reading YOLO / one-line / COCO / VOC into pixel boxes, writing YOLO, COCO and VOC,
round trips, error messages and the `data convert` command.

Expected boxes are worked out by hand in the comments next to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from yololab.commands.convert import convert_command
from yololab.commands.messages import EXIT_ERROR
from yololab.data.errors import DataError
from yololab.data.formats import (
    Annotations,
    ImageRecord,
    convert,
    detect_format,
    read_coco,
    read_one_line,
    read_voc,
    read_yolo,
    write_coco,
    write_voc,
    write_yolo,
)

# Image sizes (width, height) chosen odd and non-square so that x/y and w/h mix-ups show.
SIZE_A, SIZE_B, SIZE_C = (40, 20), (16, 16), (37, 23)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def png(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def label_rows(path: Path) -> np.ndarray:
    """A YOLO label file as float64 [M, 5], read naively."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(lines, dtype=np.float64).reshape(-1, 5)


# --- fixtures: one tiny dataset in each format ----------------------------------------------------------


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    png(root / "images/train/a.png", SIZE_A)
    png(root / "images/train/b.png", SIZE_B)
    png(root / "images/val/c.png", SIZE_C)
    # a: cx 0.5 w 0.5 of 40 -> x 10..30; cy 0.5 h 0.5 of 20 -> y 5..15.
    # a: cx 0.125 w 0.25 -> x 0..10; cy 0.75 h 0.5 -> y 10..20.
    write(root / "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n1 0.125 0.75 0.25 0.5\n")
    # b has no label file: a background image. c: a box with awkward decimals.
    write(root / "labels/val/c.txt", "1 0.4123456789 0.6 0.3333333333 0.2173913043\n")
    write(root / "data.yaml", yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                              "names": ["cat", "dog"]}))
    return root


@pytest.fixture
def coco_json(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    png(root / "train2017/a.png", SIZE_A)
    png(root / "train2017/c.png", SIZE_C)
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20},
                   {"id": 9, "file_name": "c.png", "width": 37, "height": 23}],
        # Category ids 3 and 1: ordered by id, dog (1) is class 0 and cat (3) class 1.
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [1.25, 2.5, 10.123456, 7.75]},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1},
        ],
    }
    return write(root / "annotations/instances_train2017.json", json.dumps(data))


VOC_XML = """<annotation>
  <filename>{name}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>
"""
VOC_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult>"
              "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")


def voc_xml(name: str, size, objects) -> str:
    return VOC_XML.format(name=name, w=size[0], h=size[1], objects="".join(
        VOC_OBJECT.format(name=n, difficult=d, b=b) for n, d, b in objects))


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    png(root / "JPEGImages/a.png", SIZE_A)
    png(root / "JPEGImages/b.png", SIZE_B)
    # 1-based inclusive: xmin 11 .. xmax 30 is 0-based columns 10..29 -> x1 10, x2 30.
    write(root / "Annotations/a.xml", voc_xml("a.png", SIZE_A, [("person", 0, (11, 6, 30, 15)),
                                                                ("dog", 1, (1, 1, 5, 5))]))
    write(root / "Annotations/b.xml", voc_xml("b.png", SIZE_B, [("dog", 0, (1, 1, 16, 16))]))
    return root


@pytest.fixture
def one_line_txt(tmp_path: Path) -> Path:
    root = tmp_path / "oneline"
    png(root / "imgs/a.png", SIZE_A)
    png(root / "my imgs/b 2.png", SIZE_B)
    write(root / "mnist.names", "zero\none\ntwo\n")
    return write(root / "mnist_train.txt", "imgs/a.png 10,5,30,15,2 0,10,10.5,20,0\n\nmy imgs/b 2.png\n")


# --- readers ------------------------------------------------------------------------------------------


def test_read_yolo_gives_pixel_boxes(yolo_dir):
    ann = read_yolo(yolo_dir / "data.yaml")
    assert ann.names == ["cat", "dog"]
    a, b = ann.splits["train"]
    assert (a.path.name, a.width, a.height) == ("a.png", 40, 20)
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 15], [0, 10, 10, 20]], atol=1e-12)
    assert a.classes.tolist() == [0, 1]
    assert b.boxes.shape == (0, 4)
    (c,) = ann.splits["val"]
    # cx 0.4123456789 * 37 = 15.2567901193, w/2 = 0.16666666665 * 37 = 6.16666666605
    np.testing.assert_allclose(c.boxes, [[15.2567901193 - 6.16666666605, 0.6 * 23 - 2.5, 15.2567901193
                                          + 6.16666666605, 0.6 * 23 + 2.5]], atol=1e-8)


def test_read_one_line_with_names_and_spaces(one_line_txt):
    ann = read_one_line(one_line_txt, names=one_line_txt.parent / "mnist.names")
    assert ann.names == ["zero", "one", "two"]
    assert list(ann.splits) == ["train"]  # from the file name mnist_train.txt
    a, b = ann.splits["train"]
    assert a.path == one_line_txt.parent / "imgs/a.png" and (a.width, a.height) == SIZE_A
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15], [0, 10, 10.5, 20]])
    assert a.classes.tolist() == [2, 0]
    assert b.path.name == "b 2.png" and b.boxes.shape == (0, 4)


def test_read_one_line_without_names_counts_classes(one_line_txt):
    assert read_one_line(one_line_txt).names == ["0", "1", "2"]


def test_read_coco_maps_categories_and_counts_crowd(coco_json):
    ann = read_coco(coco_json)
    assert ann.names == ["dog", "cat"]
    assert ann.skipped == {"train2017": {"crowd": 1}}
    a, c = ann.splits["train2017"]
    assert a.path == coco_json.parent.parent / "train2017/a.png"
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15]])
    assert a.classes.tolist() == [1]
    np.testing.assert_allclose(c.boxes, [[1.25, 2.5, 11.373456, 10.25]], atol=1e-12)
    assert c.classes.tolist() == [0]


def test_read_voc_shifts_one_based_indices(voc_dir):
    ann = read_voc(voc_dir)
    assert ann.names == ["dog", "person"]  # sorted
    assert ann.skipped == {"train": {"difficult": 1}}
    a, b = ann.splits["train"]
    assert a.path == voc_dir / "JPEGImages/a.png"
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15]])
    assert a.classes.tolist() == [1]
    np.testing.assert_array_equal(b.boxes, [[0, 0, 16, 16]])  # the whole 16x16 image
    assert read_voc(voc_dir / "Annotations/b.xml", names=["cat", "dog"]).splits["train"][0].classes.tolist() == [1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("yolo/data.yaml", "yolo"), ("yolo", "yolo"), ("coco/annotations/instances_train2017.json", "coco"),
     ("coco", "coco"), ("VOC2007", "voc"), ("VOC2007/Annotations/a.xml", "voc"),
     ("oneline/mnist_train.txt", "one-line")],
)
def test_detect_format(tmp_path, yolo_dir, coco_json, voc_dir, one_line_txt, name, expected):
    assert detect_format(tmp_path / name) == expected


# --- writers and round trips ---------------------------------------------------------------------------


def test_yolo_to_coco_writes_hand_computed_json(yolo_dir, tmp_path):
    jsons = write_coco(read_yolo(yolo_dir / "data.yaml"), tmp_path / "out")
    assert [p.name for p in jsons] == ["instances_train.json", "instances_val.json"]
    data = json.loads(jsons[0].read_text())
    assert data["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                  {"id": 2, "name": "dog", "supercategory": ""}]
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [("a.png", 40, 20),
                                                                                    ("b.png", 16, 16)]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"]] == [
        (1, 1, [10, 5, 20, 10]), (1, 2, [0, 10, 10, 10])]
    assert (tmp_path / "out/images/train/a.png").is_file()
    from pycocotools.coco import COCO

    assert len(COCO(str(jsons[0])).getAnnIds()) == 2  # the reference loader accepts the file


def test_yolo_coco_yolo_round_trip(yolo_dir, tmp_path):
    write_coco(read_yolo(yolo_dir / "data.yaml"), tmp_path / "coco")
    assert_same_yolo(yolo_dir, write_yolo(read_coco(tmp_path / "coco"), tmp_path / "yolo2"))


def assert_same_yolo(original_dir, yaml_path):
    """The YOLO dataset at ``yaml_path`` has the classes, splits and label rows of ``original_dir``."""
    spec = yaml.safe_load(yaml_path.read_text())
    assert spec["names"] == ["cat", "dog"] and spec["train"] == "images/train" and spec["val"] == "images/val"
    for name in ("train/a", "train/b", "val/c"):
        original, final = original_dir / f"labels/{name}.txt", yaml_path.parent / f"labels/{name}.txt"
        expected = label_rows(original) if original.exists() else np.zeros((0, 5))
        # 1e-9 of a <= 40-pixel side: under 1e-7 px.
        np.testing.assert_allclose(label_rows(final), expected, rtol=0, atol=1e-9)


def coco_boxes_by_file(json_path: Path) -> list[tuple[str, str, list[float]]]:
    """(file_name, category name, bbox) of each non-crowd annotation, sorted: independent of ids."""
    data = json.loads(json_path.read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    cats = {c["id"]: c["name"] for c in data["categories"]}
    return sorted((files[a["image_id"]], cats[a["category_id"]], a["bbox"]) for a in data["annotations"]
                  if not a.get("iscrowd"))


def test_coco_yolo_coco_round_trip(coco_json, tmp_path):
    write_yolo(read_coco(coco_json), tmp_path / "yolo")
    (final,) = write_coco(read_yolo(tmp_path / "yolo/data.yaml"), tmp_path / "coco2")
    before, after = coco_boxes_by_file(coco_json), coco_boxes_by_file(final)
    assert [b[:2] for b in after] == [b[:2] for b in before] == [("a.png", "cat"), ("c.png", "dog")]
    np.testing.assert_allclose([b[2] for b in after], [b[2] for b in before], rtol=0, atol=1e-6)


# The VOC file write_voc gives for a grey 40x20 image a.png with one dog box, worked out by hand:
# YOLO "1 0.3125 0.5 0.25 0.5" -> x 0.3125*40 -/+ 0.25*40/2 = 12.5 -/+ 5 = 7.5..17.5, y 10 -/+ 5 = 5..15.
# VOC adds 1 to the left and top edges only: xmin 7.5+1 = 8.5, ymin 5+1 = 6, xmax 17.5, ymax 15.
EXPECTED_VOC_XML = """<annotation>
  <folder>voc</folder>
  <filename>a.png</filename>
  <size>
    <width>40</width>
    <height>20</height>
    <depth>1</depth>
  </size>
  <object>
    <name>dog</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox>
      <xmin>8.5</xmin>
      <ymin>6</ymin>
      <xmax>17.5</xmax>
      <ymax>15</ymax>
    </bndbox>
  </object>
</annotation>
"""


def test_write_voc_hand_computed_xml(tmp_path):
    root = tmp_path / "yolo"
    root.joinpath("images/train").mkdir(parents=True)
    Image.new("L", SIZE_A, 128).save(root / "images/train/a.png")  # grey: depth 1
    write(root / "labels/train/a.txt", "1 0.3125 0.5 0.25 0.5\n")
    write(root / "data.yaml", yaml.safe_dump({"path": str(root), "train": "images/train", "names": ["cat", "dog"]}))
    written = write_voc(read_yolo(root / "data.yaml"), tmp_path / "voc")
    assert written == [tmp_path / "voc/Annotations/a.xml"]
    assert written[0].read_text() == EXPECTED_VOC_XML
    assert (tmp_path / "voc/ImageSets/Main/train.txt").read_text() == "a\n"
    placed = tmp_path / "voc/JPEGImages/a.png"
    assert os.stat(placed).st_ino == os.stat(root / "images/train/a.png").st_ino  # hard-linked
    (record,) = read_voc(tmp_path / "voc").splits["train"]
    np.testing.assert_array_equal(record.boxes, [[7.5, 5, 17.5, 15]])  # read back: 8.5-1, 6-1, 17.5, 15


def test_yolo_voc_yolo_round_trip(yolo_dir, tmp_path):
    ann = read_yolo(yolo_dir / "data.yaml")
    write_voc(ann, tmp_path / "voc")
    assert (tmp_path / "voc/ImageSets/Main/train.txt").read_text() == "a\nb\n"
    assert (tmp_path / "voc/ImageSets/Main/val.txt").read_text() == "c\n"
    back = read_voc(tmp_path / "voc")  # names: those found, sorted; here the same as the source's
    assert back.names == ann.names and list(back.splits) == list(ann.splits) == ["train", "val"]
    for split, records in ann.splits.items():
        assert [r.path.name for r in back.splits[split]] == [r.path.name for r in records]
        for before, after in zip(records, back.splits[split], strict=True):
            assert (after.width, after.height) == (before.width, before.height)
            assert after.classes.tolist() == before.classes.tolist()
            np.testing.assert_allclose(after.boxes, before.boxes, rtol=0, atol=1e-8)  # 10 digits of <= 41 px
    _, (yaml_path,) = convert(tmp_path / "voc", tmp_path / "yolo2", to="yolo")
    assert_same_yolo(yolo_dir, yaml_path)


def test_coco_voc_coco_round_trip(coco_json, tmp_path):
    _, xmls = convert(coco_json, tmp_path / "voc", to="voc")
    assert [p.name for p in xmls] == ["a.xml", "c.xml"]
    # c: bbox [1.25, 2.5, 10.123456, 7.75] -> x1 1.25, y1 2.5, x2 11.373456, y2 10.25 -> xmin 2.25, ymin 3.5.
    assert "<xmin>2.25</xmin>" in xmls[1].read_text() and "<xmax>11.373456</xmax>" in xmls[1].read_text()
    assert (tmp_path / "voc/ImageSets/Main/train2017.txt").read_text() == "a\nc\n"
    back = read_voc(tmp_path / "voc")
    assert list(back.splits) == ["train2017"] and back.names == ["cat", "dog"]  # VOC has no class order
    (final,) = write_coco(back, tmp_path / "coco2")
    before, after = coco_boxes_by_file(coco_json), coco_boxes_by_file(final)
    assert [b[:2] for b in after] == [b[:2] for b in before] == [("a.png", "cat"), ("c.png", "dog")]
    np.testing.assert_allclose([b[2] for b in after], [b[2] for b in before], rtol=0, atol=1e-8)


def test_read_voc_split_lists_as_in_the_devkit(voc_dir):
    main = voc_dir / "ImageSets/Main"
    write(main / "train.txt", "a\n")
    write(main / "val.txt", "b\n\n")
    write(main / "trainval.txt", "a\nb\n")  # the union of train and val: not a split of its own
    write(main / "dog_train.txt", "a -1\n")  # a per-class list: not a split
    write(voc_dir / "Annotations/z.xml", "<annotation>")  # in no list: never read (it would not parse)
    ann = read_voc(voc_dir)
    assert list(ann.splits) == ["train", "val"]
    assert [r.path.name for r in ann.splits["train"]] == ["a.png"]
    assert [r.path.name for r in ann.splits["val"]] == ["b.png"]
    assert ann.skipped == {"train": {"difficult": 1}, "val": {"difficult": 0}}
    np.testing.assert_array_equal(ann.splits["val"][0].boxes, [[0, 0, 16, 16]])


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [("a\nx\n", ":2:", "no Annotations/x.xml for the listed image 'x'"),
     ("a\nb\na\n", ":3:", "image 'a' is listed again (first on line 1)")],
)
def test_voc_split_list_errors(voc_dir, text, where, problem):
    path = write(voc_dir / "ImageSets/Main/train.txt", text)
    with pytest.raises(DataError) as info:
        read_voc(voc_dir)
    assert f"{path}{where}" in str(info.value) and problem in str(info.value)


def test_write_voc_same_stem_in_two_splits_is_an_error(tmp_path):
    first, second = png(tmp_path / "x/a.png", SIZE_A), png(tmp_path / "y/a.jpg", SIZE_B)
    box = [[1, 1, 5, 5]]
    ann = Annotations(names=["cat"], splits={"train": [ImageRecord(first, *SIZE_A, box, [0])],
                                             "val": [ImageRecord(second, *SIZE_B, box, [0])]})
    with pytest.raises(DataError) as info:
        write_voc(ann, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{second}: split val: name stem 'a' is also that of {first} (split train)")
    assert not (tmp_path / "out").exists()  # raised before anything was written


def test_write_voc_refuses_split_names_that_read_back_as_other_lists(tmp_path):
    record = ImageRecord(png(tmp_path / "a.png", SIZE_A), *SIZE_A, np.zeros((0, 4)), [])
    ann = Annotations(names=["cat"], splits={"train": [record], "val": [], "trainval": []})
    with pytest.raises(ValueError, match=r"\['trainval'\] would read back as VOC's trainval"):
        write_voc(ann, tmp_path / "out")


def test_voc_to_yolo(voc_dir, tmp_path):
    ann, (yaml_path,) = convert(voc_dir, tmp_path / "out", to="yolo")
    assert yaml.safe_load(yaml_path.read_text())["names"] == ["dog", "person"]
    assert ann.skipped == {"train": {"difficult": 1}}
    # x 10..30 of 40 -> cx 0.5 w 0.5; y 5..15 of 20 -> cy 0.5 h 0.5; class person = 1
    np.testing.assert_allclose(label_rows(tmp_path / "out/labels/train/a.txt"), [[1, 0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(label_rows(tmp_path / "out/labels/train/b.txt"), [[0, 0.5, 0.5, 1, 1]])


def test_one_line_to_yolo_links_images(one_line_txt, tmp_path):
    convert(one_line_txt, tmp_path / "out", to="yolo", names=one_line_txt.parent / "mnist.names")
    # 0,10,10.5,20 on 40x20 -> cx 5.25/40, cy 15/20, w 10.5/40, h 10/20
    np.testing.assert_allclose(label_rows(tmp_path / "out/labels/train/a.txt"),
                               [[2, 0.5, 0.5, 0.5, 0.5], [0, 0.13125, 0.75, 0.2625, 0.5]], atol=1e-12)
    assert (tmp_path / "out/labels/train/b 2.txt").read_text() == ""  # background: empty label file
    source, placed = one_line_txt.parent / "imgs/a.png", tmp_path / "out/images/train/a.png"
    assert placed.read_bytes() == source.read_bytes()
    assert os.stat(placed).st_ino == os.stat(source).st_ino  # hard-linked, same file system


def test_written_yolo_reads_back_with_load_data_yaml(voc_dir, tmp_path):
    from yololab.data import load_data_yaml, validate_split

    _, (yaml_path,) = convert(voc_dir, tmp_path / "out", to="yolo")
    spec = load_data_yaml(yaml_path)
    report = validate_split(spec.splits["train"], spec.num_classes)
    assert report.ok and report.n_boxes == 2


def test_file_name_collision_is_an_error(tmp_path):
    png(tmp_path / "x/a.png", SIZE_A)
    png(tmp_path / "y/a.jpg", SIZE_A)
    txt = write(tmp_path / "ann.txt", "x/a.png 1,1,5,5,0\ny/a.jpg 1,1,5,5,0\n")
    with pytest.raises(DataError, match="collides with"):
        convert(txt, tmp_path / "out", to="coco")


def test_split_names_map_to_data_yaml_keys(coco_json, tmp_path):
    ann = read_coco(coco_json)  # split train2017 -> key train
    assert yaml.safe_load(write_yolo(ann, tmp_path / "a").read_text())["train"] == "images/train"
    ann.splits["minival"] = ann.splits.pop("train2017")
    with pytest.raises(ValueError, match=r"'minival' has no data\.yaml key"):
        write_yolo(ann, tmp_path / "b")


def test_output_folder_must_be_empty(one_line_txt, tmp_path):
    write(tmp_path / "out/keep.txt", "x")
    with pytest.raises(FileExistsError):
        convert(one_line_txt, tmp_path / "out")


# --- errors name the file and the line or element ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("a.png 1,2,3", ":1:", "expected x1,y1,x2,y2,cls, got '1,2,3'"),
        ("a.png 1,2,3,4,0 7", ":1:", "expected x1,y1,x2,y2,cls, got '7'"),
        ("a.png 1,2,3,4,0,9", ":1:", "got '1,2,3,4,0,9'"),
        ("a.png\na.png 30,5,10,15,0", ":2:", "x2 <= x1"),
        ("a.png -3,5,10,15,0", ":1:", "negative coordinate"),
        ("a.png nan,5,10,15,0", ":1:", "non-finite value"),
        ("a.png 1,5,10,15,x", ":1:", "not a number"),
        ("a.png 1,5,41,15,0", ":1:", "outside the 40x20 image"),
        ("a.png 1,5,10,15,3", ":1:", "class 3 is not one of the classes 0..2"),
        ("a.png 1,5,10,15,0.5", ":1:", "class 0.5"),
        ("a.png 1,2,3,4,0\nmissing.png 1,2,3,4,0", ":2:", "image not found"),
        ("1,2,3,4,0", ":1:", "must start with an image path"),
    ],
)
def test_one_line_errors(tmp_path, text, where, problem):
    png(tmp_path / "a.png", SIZE_A)
    txt = write(tmp_path / "ann.txt", text + "\n")
    with pytest.raises(DataError) as info:
        read_one_line(txt, names=["a", "b", "c"])
    assert f"{txt}{where}" in str(info.value) and problem in str(info.value)


def coco_text(**changes) -> str:
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 20}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]}
    for key, value in changes.items():
        data[key] = value
    return json.dumps(data, indent=1)


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('{"images": [\n  {"id": 1,\n  }]}', ":3:", "invalid JSON at column 3"),
        (coco_text(annotations=[{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}]), ": ",
         "annotation id 5: image_id 2 is not the id of an image"),
        (coco_text(annotations=[{"id": 6, "image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4]}]), ": ",
         "annotation id 6: category_id 4"),
        (coco_text(annotations=[{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4]}]), ": ",
         "annotation id 7: box x1=1 y1=2 x2=-2 y2=6 has x2 <= x1"),
        (coco_text(annotations=[{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]), ": ",
         "annotation id 8: bbox must be a list"),
        (coco_text(annotations=[{"image_id": 1, "category_id": 1, "bbox": [30, 2, 30, 4]}]), ": ",
         "annotations[0]: box x1=30 y1=2 x2=60 y2=6 lies outside the 40x20 image"),
        (coco_text(images=[{"id": 1, "file_name": "a.png", "width": 0, "height": 20}]), ": ", "image id 1: width"),
        (coco_text(categories=[]), ": ", "no categories"),
        ("[]", ": ", "expected an object"),
    ],
)
def test_coco_errors(tmp_path, text, where, problem):
    png(tmp_path / "a.png", SIZE_A)
    path = write(tmp_path / "instances_train.json", text)
    with pytest.raises(DataError) as info:
        read_coco(path)
    assert f"{path}{where}" in str(info.value) and problem in str(info.value)


def test_coco_size_mismatch_with_image(tmp_path):
    png(tmp_path / "a.png", (41, 20))
    path = write(tmp_path / "instances_train.json", coco_text())
    with pytest.raises(DataError, match="is 41x20 but the JSON says 40x20"):
        read_coco(path)


@pytest.mark.parametrize(
    ("xml", "where", "problem"),
    [
        ("<annotation>\n<filename>a.png</filename>\n<size><width>40</width>\n</annotation>", ":4:",
         "invalid XML"),
        ("<annotation><filename>a.png</filename></annotation>", ": ", "annotation/size/width: missing element"),
        (voc_xml("a.png", SIZE_A, []).replace("<width>40", "<width>forty"), ": ", "annotation/size/width"),
        (voc_xml("a.png", SIZE_A, [("cat", 0, (1, 1, 5, 5))]).replace("<xmax>5</xmax>", ""), ": ",
         "annotation/object[1]/bndbox/xmax: missing element"),
        (voc_xml("a.png", SIZE_A, [("cat", 0, (1, 1, 5, 5)), ("cat", 0, (9, 1, 5, 5))]), ": ",
         "annotation/object[2]/bndbox: box x1=8 y1=0 x2=5 y2=5 has x2 <= x1"),
        (voc_xml("a.png", SIZE_A, [("cat", 0, (1, 1, 5, 25))]), ": ", "object[1]/bndbox: box x1=0 y1=0 x2=5 "
                                                                      "y2=25 lies outside the 40x20 image"),
        (voc_xml("a.png", SIZE_A, [("cat", 2, (1, 1, 5, 5))]), ": ", "object[1]/difficult: expected 0 or 1"),
        (voc_xml("a.png", SIZE_A, [("cow", 0, (1, 1, 5, 5))]), ": ", "object name 'cow' is not one of"),
        (voc_xml("a.png", (30, 20), [("cat", 0, (1, 1, 5, 5))]), ": ", "<size> says 30x20 but image"),
    ],
)
def test_voc_errors(tmp_path, xml, where, problem):
    png(tmp_path / "a.png", SIZE_A)
    path = write(tmp_path / "a.xml", xml)
    with pytest.raises(DataError) as info:
        read_voc(path, names=["cat", "dog"])
    assert f"{path}{where}" in str(info.value) and problem in str(info.value)


def test_yolo_label_error_names_line(yolo_dir):
    write(yolo_dir / "labels/train/b.txt", "0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")
    with pytest.raises(DataError, match=r"b\.txt:2: expected 5 fields"):
        read_yolo(yolo_dir / "data.yaml")


# --- the command -------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    app = typer.Typer()
    app.command()(convert_command)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_cli_converts_and_prints_summary(cli, coco_json, tmp_path):
    result = cli(coco_json.parent.parent, tmp_path / "out", "--to", "yolo")
    assert result.exit_code == 0, result.output
    assert "train2017" in result.output and "skipped crowd" in result.output
    row = next(line for line in result.output.splitlines() if "train2017" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["train2017", "2", "2", "0", "1", "0"]
    assert "2 classes: dog, cat" in result.output
    assert (tmp_path / "out/data.yaml").is_file()


def test_cli_writes_voc(cli, yolo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("yololab.commands.convert.MAX_LISTED_FILES", 2)  # 3 XML files: summed up by folder
    result = cli(yolo_dir, tmp_path / "out", "--to", "voc")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out/Annotations").iterdir()) == ["a.xml", "b.xml", "c.xml"]
    assert f"wrote 3 files in {tmp_path / 'out/Annotations'}" in result.output.replace("\n", "")
    assert "yolo | coco | voc" in " ".join(cli("--help").output.replace("│", " ").split())


def test_cli_forced_source_format_and_errors(cli, tmp_path):
    png(tmp_path / "a.png", SIZE_A)
    txt = write(tmp_path / "list.dat", "a.png 1,2,3,4,0\na.png 1,2,3\n")
    result = cli(txt, tmp_path / "out", "--from", "one-line", "--to", "coco")
    assert result.exit_code == EXIT_ERROR
    assert "list.dat:2" in result.output.replace("\n", "") and "1,2,3" in result.output
    assert cli(txt, tmp_path / "out2", "--to", "pascal").exit_code == EXIT_ERROR
    assert cli(tmp_path / "nothing", tmp_path / "out3").exit_code == EXIT_ERROR


# --- VOC images beside the annotations, and splitting while converting --------------------------------


def labelimg_dir(tmp_path: Path, n: int = 10) -> Path:
    """labelImg's layout: photos/<i>.png and annotations/<i>.xml whose <folder> names the photos folder."""
    root = tmp_path / "shots"
    for i in range(n):
        png(root / f"photos/{i}.png", SIZE_A)
        xml = voc_xml(f"{i}.png", SIZE_A, [("cat" if i % 2 else "dog", 0, (11, 6, 30, 15))])
        write(root / f"annotations/{i}.xml", xml.replace("<annotation>", "<annotation><folder>photos</folder>", 1))
    return root


def test_voc_images_in_the_sibling_folder_named_by_folder(tmp_path):
    root = labelimg_dir(tmp_path, 2)
    ann = read_voc(root / "annotations")
    assert [r.path for r in ann.splits["train"]] == [root / "photos/0.png", root / "photos/1.png"]


def test_voc_missing_image_fails_at_the_first_file_and_names_image_root(cli, tmp_path):
    root = labelimg_dir(tmp_path, 2)
    (root / "photos/0.png").unlink()
    write(root / "annotations/1.xml", "<annotation><filename>")  # never read: the first file already fails
    result = cli(root / "annotations", tmp_path / "out", "--to", "yolo")
    text = " ".join(result.output.split())
    assert result.exit_code == EXIT_ERROR
    assert "0.xml" in text and "image '0.png' not found" in text and "--image-root" in text
    assert str(root / "photos") in text  # the folders tried are named


def test_convert_split_writes_each_image_to_its_split_folder(cli, tmp_path):
    root = labelimg_dir(tmp_path, 10)
    result = cli(root / "annotations", tmp_path / "out", "--to", "yolo", "--split", "0.6,0.2,0.2", "--seed", "3")
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load((tmp_path / "out/data.yaml").read_text())
    assert (spec["train"], spec["val"], spec["test"]) == ("images/train", "images/val", "images/test")
    # The same images as `split_indices` picks for 10 images, in source order (0.xml .. 9.xml).
    from yololab.data.splits import split_indices
    expected = [sorted(f"{i}.png" for i in part) for part in split_indices(10, [0.6, 0.2, 0.2], 3)]
    found = [sorted(p.name for p in (tmp_path / f"out/images/{key}").iterdir()) for key in ("train", "val", "test")]
    assert found == expected and [len(f) for f in found] == [6, 2, 2]
    for key in ("train", "val", "test"):  # every image has its label beside the split's labels
        assert sorted(p.stem for p in (tmp_path / f"out/labels/{key}").iterdir()) == [
            Path(n).stem for n in expected[("train", "val", "test").index(key)]]
    assert cli(root / "annotations", tmp_path / "bad", "--split", "0.5").exit_code == EXIT_ERROR


def test_resplit_keeps_skipped_counts_with_their_images(voc_dir):
    from yololab.data.formats.convert import resplit

    ann = resplit(read_voc(voc_dir), [0.5, 0.5], seed=0)
    by_split = {key: [Path(r.path).name for r in records] for key, records in ann.splits.items()}
    assert sorted(by_split) == ["train", "val"]
    assert sorted(n for names in by_split.values() for n in names) == ["a.png", "b.png"]
    # a.png holds the one difficult object.
    assert ann.skipped == {key: ({"difficult": 1} if "a.png" in names else {}) for key, names in by_split.items()}
