"""The per-scale keys "<name>/s<i>" and their logged "<group>/<name>/s<i>" form: built and parsed in keys.py."""

from pathlib import Path

import pytest

from yololab import keys

SRC = Path(__file__).resolve().parents[1] / "src" / "yololab"


def test_builders_write_the_logged_names():
    assert keys.key("obj", 2) == "obj/s2"
    assert keys.key("noobj", 0, keys.UNWEIGHTED) == "unweighted/noobj/s0"
    assert keys.loss_key("box", 1) == "loss/box/s1"
    assert keys.stat_key("recall50", 10) == "stat/recall50/s10"
    assert keys.grad_share_key("cls", 2) == "grad_share/cls/s2"


@pytest.mark.parametrize(("text", "parts"), [
    ("obj/s2", (None, "obj", 2)),
    ("n_pos/s0", (None, "n_pos", 0)),
    ("loss/box/s1", ("loss", "box", 1)),
    ("stat/iou_prior/s12", ("stat", "iou_prior", 12)),
    ("grad_share/wh/s0", ("grad_share", "wh", 0)),
    ("loss/total", None),
    ("obj/s", None),
    ("obj/sx", None),
    ("obj/s2/", None),
    ("val/loss/obj/s2", None),  # the split prefix is Lightning's, not a group: rows drop it
    ("obj-s2", None),
    ("", None),
])
def test_split(text, parts):
    assert keys.split(text) == parts
    assert keys.scale_of(text) == (None if parts is None else parts[2])


def test_match_parse_and_is_key_take_the_group():
    assert keys.match("loss/obj/s2", keys.LOSS) == ("obj", 2)
    assert keys.match("loss/obj/s2") is None  # a grouped key is not a plain one
    assert keys.match("stat/obj_pos/s1", keys.LOSS) is None
    assert keys.match("obj/s2") == ("obj", 2)
    assert keys.parse("stat/iou/s0", keys.STAT) == ("iou", 0)
    assert keys.is_key("grad_share/box/s3", keys.GRAD_SHARE) and not keys.is_key("grad_share/box/s3")
    with pytest.raises(ValueError, match=r"not a per-scale key '<name>/s<i>': 'loss/obj/s2'"):
        keys.parse("loss/obj/s2")
    with pytest.raises(ValueError, match=r"'loss/<name>/s<i>': 'obj/s2'"):
        keys.parse("obj/s2", keys.LOSS)


@pytest.mark.parametrize("name", [*keys.TERMS, *keys.STATS])
@pytest.mark.parametrize("group", [None, *keys.LOSS_GROUPS, keys.GRAD_SHARE])
def test_round_trip(name, group):
    for scale in (0, 2, 17):
        assert keys.split(keys.key(name, scale, group)) == (group, name, scale)


def test_no_other_module_parses_the_keys_with_its_own_pattern():
    patterns = ('/s(\\d', '/s(?P', 'rsplit("/s"', '"/s" +')
    offenders = [f"{path.relative_to(SRC)}: {p}" for path in SRC.rglob("*.py") if path.name != "keys.py"
                 for p in patterns if p in path.read_text()]
    assert offenders == []
