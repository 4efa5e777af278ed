"""Darknet cfg grammar: hand-written cases, official cfgs, write/parse round trip, packaged cfgs."""

import warnings
from pathlib import Path

import pytest

from yololab.model import CfgError, CfgWarning, packaged_cfg, packaged_cfgs, parse_cfg, write_cfg
from yololab.model.cfg import format_cfg

DARKNET_CFGS = Path(__file__).parent / "data" / "darknet-cfg"
OFFICIAL = sorted(DARKNET_CFGS.glob("*.cfg"))

GRAMMAR = """\
# a whole-line comment
; another comment style
[net]
width = 416
  height=416   # trailing comment
channels=3;trailing semicolon comment
steps=400000,450000

[convolutional]
filters=16
filters=32
size=3
activation=leaky

[yolo]
mask = 0, 1,2
anchors = 10,14,  23,27,  37,58
classes=2
num=3
ignore_thresh = .7
"""


def _parse_quiet(source):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # official cfgs must parse without a single warning
        return parse_cfg(source)


def test_grammar_by_hand():
    with pytest.warns(CfgWarning, match=r"<string>:11: .*'filters' repeats line 10"):
        sections = parse_cfg(GRAMMAR)
    assert [s.type for s in sections] == ["net", "convolutional", "yolo"]
    net, conv, yolo = sections
    assert net.values() == {"width": 416, "height": 416, "channels": 3, "steps": [400000, 450000]}
    assert (net.line, net.options["height"].line, net.options["channels"].line) == (3, 5, 6)
    assert conv["filters"] == 16  # darknet keeps the first of a repeated key
    assert conv.options["filters"].line == 10 and conv.line == 9
    assert conv.value("stride") == 1 and conv.value("activation") == "leaky"
    assert conv.value("batch_normalize") == 0
    assert yolo["mask"] == [0, 1, 2]
    assert yolo["anchors"] == [10.0, 14.0, 23.0, 27.0, 37.0, 58.0]
    assert yolo["ignore_thresh"] == 0.7 and yolo.line == 15


def test_defaults_follow_darknet():
    sections = parse_cfg("[net]\nwidth=32\n[convolutional]\n[yolo]\n")
    conv, yolo = sections[1], sections[2]
    assert conv.value("activation") == "logistic"  # parse_convolutional's default
    assert (conv.value("filters"), conv.value("size")) == (1, 1)
    assert (yolo.value("classes"), yolo.value("num")) == (20, 1)


def test_aliases():
    sections = parse_cfg("[network]\nwidth=32\n[conv]\nfilters=2\n[max]\nsize=2\n")
    assert [s.type for s in sections] == ["net", "convolutional", "maxpool"]


def test_unknown_key_warns_with_line():
    with pytest.warns(CfgWarning, match=r"<string>:4: \[convolutional\] unused field 'filterz'"):
        sections = parse_cfg("[net]\nwidth=32\n[convolutional]\nfilterz=3\n")
    assert sections[1]["filterz"] == "3"  # kept as text, written back as is


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[net]\nwidth=32\n\n[deconvolutional]\n", 4, "not implemented here"),
        ("[net]\nwidth=32\n[convolutionl]\n", 3, "unknown section type"),
        ("[net]\nwidth=32\n[route\n", 3, "no closing"),
        ("width=32\n[net]\n", 1, "before any"),
        ("[net]\nwidth\n", 2, "key=value"),
        ("[net]\nwidth=\n", 2, "no value"),
        ("[net]\nwidth=abc\n", 2, "is not int"),
        ("[net]\n[yolo]\nmask=1,,2\n", 3, "empty item"),
        ("[net]\n[convolutional]\nsize=3\ndilation=2\n", 4, "dilation"),
        ("[net]\n[convolutional]\n\nxnor=1\n", 4, "xnor"),
        ("[net]\n[convolutional]\nbinary=1\n", 3, "binary"),
        ("[net]\n[convolutional]\nantialiasing=1\n", 3, "antialiasing"),
        ("[net]\n[convolutional]\nshare_index=-2\n", 3, "sharing"),
        ("[net]\n[convolutional]\nbatch_normalize=2\n", 3, "batch_normalize"),
        ("[net]\n[shortcut]\nfrom=-3\nweights_type=per_feature\n", 4, "weighted"),
        ("[net]\n[upsample]\nstride=-2\n", 3, "downsampling"),
        ("[net]\n[yolo]\nnew_coords=1\n", 3, "new_coords"),
        ("[net]\n[maxpool]\nmaxpool_depth=1\n", 3, "maxpool_depth"),
        ("[net]\n[route]\nlayers=-1\ndontload=1\n", 4, "dontload"),
    ],
)
def test_errors_name_file_and_line(text, line, message):
    with pytest.raises(CfgError, match=message) as info:
        parse_cfg(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"<string>:{line}: ")


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nwidth=32\n[convolutional]\nxnor=1\n")
    with pytest.raises(CfgError, match=rf"^{path}:4: "):
        parse_cfg(path)
    with pytest.raises(CfgError, match="cannot read"):
        parse_cfg(tmp_path / "missing.cfg")


def test_known_keys_at_neutral_values_are_accepted():
    text = "[net]\nwidth=32\n[convolutional]\ndilation=1\nxnor=0\nstream=2\n[yolo]\nnew_coords=0\n"
    sections = _parse_quiet(text)
    assert sections[1]["dilation"] == 1


def test_training_keys_are_typed():
    text = ("[net]\nlearning_rate=0.001\nmosaic=1\npolicy=steps\nscales=.1,.1\n"
            "[yolo]\niou_loss=ciou\niou_normalizer=0.07\nscale_x_y=1.05\ncounters_per_class=100,2000\n"
            "max_delta=5\nnms_kind=diounms\nbeta_nms=0.6\n")
    net, yolo = _parse_quiet(text)
    assert net["scales"] == [0.1, 0.1] and net["mosaic"] == 1 and net["policy"] == "steps"
    assert yolo["iou_loss"] == "ciou" and yolo["iou_normalizer"] == 0.07 and yolo["scale_x_y"] == 1.05
    assert yolo["counters_per_class"] == [100, 2000] and yolo["max_delta"] == 5.0


@pytest.mark.parametrize("path", OFFICIAL, ids=lambda p: p.name)
def test_official_cfgs_parse_and_round_trip(path, tmp_path):
    sections = _parse_quiet(path)
    assert sections[0].type == "net"
    written = parse_cfg(write_cfg(sections, tmp_path / path.name))
    assert [(s.type, s.values()) for s in written] == [(s.type, s.values()) for s in sections]


def test_yolov3_section_counts():
    # Counted by hand from darknet's yolov3.cfg: 75 conv, 23 shortcut, 4 route, 2 upsample, 3 yolo.
    sections = _parse_quiet(DARKNET_CFGS / "yolov3.cfg")
    counts = {t: sum(s.type == t for s in sections) for t in {s.type for s in sections}}
    assert counts == {"net": 1, "convolutional": 75, "shortcut": 23, "route": 4, "upsample": 2, "yolo": 3}


def test_round_trip_keeps_floats_exact():
    sections = parse_cfg("[net]\nwidth=32\n[yolo]\nanchors=10,14.123456789,23.5,1e-3\nignore_thresh=0.7\n")
    again = parse_cfg(format_cfg(sections))
    assert again[1]["anchors"] == [10.0, 14.123456789, 23.5, 0.001]
    assert "anchors=10,14.123456789,23.5,0.001" in format_cfg(sections)


def test_packaged_cfgs():
    names = packaged_cfgs()
    assert {"yolov3-tiny-small", "yolov3-tiny-3l-small", "yolov3-tiny-4l-small"} <= set(names)
    for name in names:
        path = packaged_cfg(name)
        assert path.is_file() and path.name == f"{name}.cfg"
        _parse_quiet(path)
    assert packaged_cfg("yolov3-tiny-small") == packaged_cfg("yolov3-tiny-small.cfg")
    with pytest.raises(FileNotFoundError, match="available"):
        packaged_cfg("nope")


@pytest.mark.parametrize("name", packaged_cfgs())
def test_packaged_cfgs_round_trip(name, tmp_path):
    sections = _parse_quiet(packaged_cfg(name))
    written = parse_cfg(write_cfg(sections, tmp_path / f"{name}.cfg"))
    assert [(s.type, s.values()) for s in written] == [(s.type, s.values()) for s in sections]
    for yolo in (s for s in sections if s.type == "yolo"):  # masks index the anchors; num counts them
        assert len(yolo["anchors"]) == 2 * yolo["num"] and max(yolo["mask"]) < yolo["num"]
