"""Property tests of the label parsers: on any input they return valid boxes or raise DataError.

"Valid" is checked here independently of the parsers: finite values, positive width and height,
inside the image, classes in range. Any other exception type, or an invalid box returned, fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yololab.data import parse_label_file
from yololab.data.errors import DataError
from yololab.data.formats import parse_coco, parse_one_line, parse_voc

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WIDTH, HEIGHT = 64, 48  # the image size the one-line parser is told
NAMES = ["a", "b", "c"]

# Numbers as users and broken tools write them: small, huge, negative, non-finite, integer-valued.
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-5, max_value=80),
    st.integers(min_value=-3, max_value=70),
    st.sampled_from([0, 1, -0.0, 1e-300, 1e308, -1e308, 2**64, 0.5]),
)
number_text = st.one_of(numbers.map(repr), numbers.map(str), st.sampled_from(["nan", "inf", "-inf", "1e999",
                                                                               "", "x", "0x10", "1_0"]))
junk = st.text(max_size=30)
# Plausible values: most generated files should get past the first field so that the box checks and
# the success path are exercised too, not only the first-field errors.
coords = st.one_of(st.integers(min_value=0, max_value=WIDTH), st.floats(min_value=-1, max_value=WIDTH + 1))


# A box from x1, y1, w, h: x2 > x1 by construction, sometimes past the image edge.
xyxy = st.tuples(coords, st.integers(0, HEIGHT // 2), st.floats(0.5, WIDTH / 2), st.floats(0.5, HEIGHT / 2)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))
BAD_ODDS = 8  # one value in this many is bad: a file of ~10 values then parses about a quarter of the time


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` with probability 1 - 1 / BAD_ODDS, else ``bad``."""
    # Hypothesis favours small integers, so the bad branch is the largest one.
    return st.integers(0, BAD_ODDS - 1).flatmap(lambda k: bad if k == BAD_ODDS - 1 else good)


def assert_valid_pixel_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    """Finite, x2 > x1, y2 > y1, inside [0, width] x [0, height]."""
    assert boxes.dtype == np.float64 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert np.isfinite(boxes).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def assert_valid_annotations(ann, num_classes: int | None = None) -> None:
    for records in ann.splits.values():
        for record in records:
            assert isinstance(record.width, int) and isinstance(record.height, int)
            assert record.width >= 1 and record.height >= 1
            assert_valid_pixel_boxes(record.boxes, record.width, record.height)
            assert ((record.classes >= 0) & (record.classes < len(ann.names))).all()
            if num_classes is not None:
                assert len(ann.names) == num_classes


# --- YOLO txt: yololab.data.parse_label_file -------------------------------------------------------------

yolo_value = st.one_of(st.integers(min_value=0, max_value=3), st.floats(min_value=-0.1, max_value=1.1))
yolo_line = st.one_of(
    st.lists(mostly(yolo_value.map(str), number_text), min_size=5, max_size=5).map(" ".join),
    st.lists(st.one_of(number_text, junk), min_size=0, max_size=7).map(" ".join),
)


@FUZZ
@given(lines=st.lists(yolo_line, max_size=6))
def test_parse_label_file_structured(tmp_path, lines):
    check_label_file(tmp_path / "x.txt", "\n".join(lines).encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace"))))
def test_parse_label_file_arbitrary_bytes(tmp_path, data):
    check_label_file(tmp_path / "x.txt", data)


def check_label_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    labels, problems = parse_label_file(path, num_classes=len(NAMES))
    assert all(isinstance(p, DataError) and p.file == str(path) for p in problems)
    assert labels.dtype == np.float32 and labels.shape[1] == 5 and np.isfinite(labels).all()
    cls, cx, cy, w, h = labels.astype(np.float64).T
    assert ((cls == np.round(cls)) & (cls >= 0) & (cls < len(NAMES))).all()
    assert (w > 0).all() and (h > 0).all()
    slack = 1e-6  # float32 rounding of cx +- w/2
    assert (cx - w / 2 >= -slack).all() and (cx + w / 2 <= 1 + slack).all()
    assert (cy - h / 2 >= -slack).all() and (cy + h / 2 <= 1 + slack).all()


@pytest.mark.parametrize("line", ["0 0 0.5 1e-300 0.5", "0 0 0 0.001953125 1.425633519003754e-277"])
def test_parse_label_file_refuses_widths_that_vanish_in_float32(tmp_path, line):
    """A positive width below float32's smallest subnormal (1.4e-45) must be an error, not a zero-width box
    (found by the fuzzer)."""
    path = tmp_path / "x.txt"
    path.write_text(line + "\n")
    labels, problems = parse_label_file(path, num_classes=1)
    assert problems and not len(labels), f"zero-sized box returned: {labels.tolist()}"


# --- one-line ------------------------------------------------------------------------------------------

plausible_box = st.tuples(xyxy, mostly(st.integers(0, len(NAMES) - 1), st.integers(-1, len(NAMES)))).map(
    lambda box: ",".join(map(str, (*box[0], box[1]))))
box_field = mostly(plausible_box, st.lists(number_text, min_size=3, max_size=6).map(",".join))
path_field = mostly(st.sampled_from(["img.png", "my dir/x y.JPG"]), st.one_of(junk, st.just("a.txt")))
one_line = st.tuples(path_field, st.lists(mostly(box_field, junk), max_size=4)).map(
    lambda t: " ".join([t[0], *t[1]]))


def size_of(field: str, lineno: int) -> tuple[int, int]:
    return WIDTH, HEIGHT


@FUZZ
@given(text=st.one_of(st.lists(one_line, max_size=5).map("\n".join), st.text(max_size=200)),
       with_names=st.booleans())
def test_parse_one_line(text, with_names):
    try:
        ann = parse_one_line(text, "ann.txt", size_of, NAMES if with_names else None)
    except DataError as err:
        assert err.file == "ann.txt" and err.line is not None
        return
    assert_valid_annotations(ann, len(NAMES) if with_names else None)


# --- COCO ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
bad_ids = st.one_of(st.integers(min_value=0, max_value=3), st.text(max_size=2), st.none(), st.booleans())
sides = mostly(st.integers(min_value=WIDTH // 2, max_value=WIDTH), numbers)
coco_box = mostly(xyxy.map(lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]),
                  st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values))


@st.composite
def coco_document(draw) -> dict:
    """Categories with ids 1..n, images with ids 1..m and annotations pointing at them. Half of the
    documents are corrupted: any field may then be a bad id or an arbitrary JSON value."""
    corrupt = draw(st.booleans())

    def pick(good: st.SearchStrategy, bad: st.SearchStrategy):
        return draw(mostly(good, bad) if corrupt else good)

    n_cat, n_img = pick(st.integers(1, 3), st.just(0)), pick(st.integers(1, 3), st.just(0))
    categories = [{"id": pick(st.just(i), bad_ids), "name": pick(st.sampled_from(NAMES), json_values)}
                  for i in range(1, n_cat + 1)]
    images = [{"id": pick(st.just(i), bad_ids), "file_name": pick(st.just(f"{i}.png"), junk),
               "width": pick(st.integers(WIDTH // 2, WIDTH), numbers),
               "height": pick(st.integers(HEIGHT // 2, HEIGHT), numbers)} for i in range(1, n_img + 1)]
    annotations = []
    for i in range(draw(st.integers(0, 5))):
        item = {"id": i, "image_id": pick(st.integers(1, max(n_img, 1)), bad_ids),
                "category_id": pick(st.integers(1, max(n_cat, 1)), bad_ids), "bbox": draw(coco_box)}
        crowd = pick(st.sampled_from([None, 0, 1]), json_values)
        if crowd is not None:
            item["iscrowd"] = crowd
        annotations.append(item)
    return {"images": images, "annotations": annotations, "categories": categories}


def check_coco(text) -> None:
    try:
        ann = parse_coco(text, "instances_x.json")
    except DataError as err:
        assert err.file == "instances_x.json"
        return
    assert_valid_annotations(ann)


@FUZZ
@given(doc=coco_document())
def test_parse_coco_structured(doc):
    check_coco(json.dumps(doc))  # json writes nan / inf as NaN / Infinity, which json.loads accepts


@FUZZ
@given(value=json_values, cut=st.integers(min_value=0, max_value=400), raw=st.binary(max_size=100))
def test_parse_coco_arbitrary(value, cut, raw):
    text = json.dumps({"images": value, "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    check_coco(text)
    check_coco(text[:cut])  # truncated JSON
    check_coco(raw)


def test_parse_coco_deep_nesting_and_long_numbers():
    for text in ("[" * 100_000, '{"images": [], "annotations": [], "categories": ' + "9" * 5000 + "}"):
        with pytest.raises(DataError):
            parse_coco(text, "x.json")


# --- VOC -------------------------------------------------------------------------------------------------

xml_junk = st.one_of(number_text, st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8))


def element(tag: str, good: st.SearchStrategy) -> st.SearchStrategy:
    """``<tag>text</tag>`` with mostly ``good`` text (XML-escaped), else junk or no element at all."""
    def wrap(text: str) -> str:
        return f"<{tag}>" + text.replace("&", "&amp;").replace("<", "&lt;") + f"</{tag}>"

    return mostly(good.map(str).map(wrap), st.one_of(xml_junk.map(wrap), st.just("")))


def joined(tag: str, *parts: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(*parts).map(lambda texts: f"<{tag}>" + "".join(texts) + f"</{tag}>")


voc_box = xyxy.flatmap(lambda box: st.tuples(*(element(tag, st.just(v + 1 if tag in ("xmin", "ymin") else v))
                                               for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))))
voc_object = joined("object", element("name", st.sampled_from(NAMES)), element("difficult", st.sampled_from([0, 1])),
                    voc_box.map(lambda parts: "<bndbox>" + "".join(parts) + "</bndbox>"))
voc_document = joined("annotation", element("filename", st.just("a.png")),
                      joined("size", element("width", sides), element("height", sides)),
                      st.lists(voc_object, min_size=1, max_size=3).map("".join))


def check_voc(text) -> None:
    try:
        voc = parse_voc(text, "a.xml")
    except DataError as err:
        assert err.file == "a.xml"
        return
    assert_valid_pixel_boxes(voc.boxes, voc.width, voc.height)
    assert len(voc.names) == len(voc.boxes) and voc.n_difficult >= 0


@FUZZ
@given(doc=voc_document, cut=st.integers(min_value=0, max_value=300))
def test_parse_voc_structured(doc, cut):
    check_voc(doc)
    check_voc(doc[:cut])  # truncated XML


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_voc_arbitrary(text):
    check_voc(text)


def test_parse_voc_entity_expansion_is_bounded():
    """The "billion laughs" document is refused by expat's amplification limit, not expanded."""
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    text = f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">{lol}]><annotation>&l9;</annotation>'
    with pytest.raises(DataError):
        parse_voc(text, "a.xml")

