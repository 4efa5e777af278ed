"""`data make sparse | check | stats | split`, the validation cache, the skip policy and stratified splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from yololab.commands import data_tools
from yololab.data import DataError, load_data_yaml, validate_split
from yololab.data import validation_cache as vc
from yololab.data.stratify import BACKGROUND, dominant_class, stratified_split_indices

NAMES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # Long temporary paths would wrap in an 80-column table; the tests read whole file:line cells.
    monkeypatch.setattr(data_tools, "console", Console(width=400))


def invoke(command, *args):
    app = typer.Typer()
    app.command()(command)
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with runs of white space made one space: table cells are padded to their column's width."""
    return " ".join(text.split())


def make_dataset(root: Path, labels: dict[str, str | None], side: int = 16, channels: int = 1,
                 seed: int = 0) -> Path:
    """Images ``images/<split>/<name>.png`` (random pixels) with the given label texts (``None``: no label
    file), and a data.yaml with classes a, b, c. Keys are ``"<split>/<name>"``."""
    rng = np.random.default_rng(seed)
    shape = (side, side) if channels == 1 else (side, side, 3)
    for key, text in labels.items():
        image = root / "images" / f"{key}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(image)
        if text is not None:
            label = root / "labels" / f"{key}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    splits = sorted({key.split("/")[0] for key in labels})
    data = {"path": str(root), **{s: f"images/{s}" for s in splits}, "names": NAMES}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


GOOD = {
    "train/img0": "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.3\n",
    "train/img1": "2 0.5 0.5 0.9 0.9\n",
    "train/img2": None,  # background: no label file
    "train/img3": "",  # background: empty label file
    "val/img4": "1 0.1 0.1 0.2 0.2\n",
}


# --- check ---------------------------------------------------------------------------------------------


def test_check_good_dataset_exits_zero(tmp_path):
    data = make_dataset(tmp_path, GOOD)
    result = invoke(data_tools.check_command, data, "--channels", "1")
    assert result.exit_code == 0, result.output
    assert "0 errors, 0 warnings" in result.output
    # train: 4 images, 3 boxes, 2 background of which 1 without a label file.
    assert (f"{data} [train]: 4 images, 3 boxes, 2 background, 1 without label file, 0 errors, 0 warnings"
            in result.output.splitlines())


def test_check_bad_dataset_lists_file_and_line(tmp_path):
    data = make_dataset(tmp_path, {
        "train/img0": "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n",  # line 2: class 5 of 3
        "train/img1": "0 nan 0.5 0.1 0.1\n",  # line 1: NaN
        "train/img2": "1 0.5 0.5 0.1 0.1\n",  # its image becomes a zero-byte file below
        "train/img3": "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.50 0.5 0.2 0.200\n",  # line 3 repeats line 1
    })
    (tmp_path / "images/train/img2.png").write_bytes(b"")
    result = invoke(data_tools.check_command, data)
    assert result.exit_code == 1, result.output
    out = result.output
    labels = tmp_path / "labels/train"
    assert f"\n{labels / 'img0.txt'}:2: error: class 5 out of range 0..2\n" in out
    assert f"\n{labels / 'img1.txt'}:1: error: non-finite value" in out
    assert f"\n{tmp_path / 'images/train/img2.png'}: error: cannot decode image" in out
    assert f"\n{labels / 'img3.txt'}:3: warning: duplicate of line 1" in out
    assert "3 errors, 1 warnings" in out


def test_check_duplicates_alone_are_warnings_and_channels_are_checked(tmp_path):
    data = make_dataset(tmp_path, {"train/img0": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n"})
    result = invoke(data_tools.check_command, data)
    assert result.exit_code == 0 and "0 errors, 1 warnings" in result.output
    result = invoke(data_tools.check_command, data, "--channels", "3")
    assert result.exit_code == 1
    assert "image has 1 channel (mode L), expected 3" in result.output


LONG = "a_folder_name_long_enough_that_no_80_column_table_could_show_the_whole_path"


def test_check_piped_prints_complete_lines_each_problem_once(tmp_path, monkeypatch):
    # train and val are one folder: its bad label is one problem, and the sharing is said.
    root = tmp_path / LONG
    data = make_dataset(root, {"train/badclass": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n",
                               "train/ok": "1 0.5 0.5 0.1 0.1\n"})
    spec = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**spec, "val": "images/train"}))
    monkeypatch.setattr(data_tools, "console", Console(width=80))  # a pipe: not a terminal, 80 columns
    result = invoke(data_tools.check_command, data)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    bad = f"{root / 'labels/train/badclass.txt'}:2: error: class 7 out of range 0..2"
    assert lines.count(bad) == 1 and "…" not in result.output
    assert f"{data} [train]: 2 images, 2 boxes, 0 background, 0 without label file, 1 errors, 0 warnings" in lines
    assert f"{data} [val]: 2 images, 2 boxes, 0 background, 0 without label file, 1 errors, 0 warnings" in lines
    assert f"note: {data} [train] and {data} [val] share 2 images" in result.output
    assert lines[-1].endswith("1 errors, 0 warnings")


def test_check_in_a_terminal_folds_long_names_instead_of_cutting_them(tmp_path, monkeypatch):
    root = tmp_path / LONG
    data = make_dataset(root, {"train/badclass": "7 0.5 0.5 0.1 0.1\n"})
    monkeypatch.setattr(data_tools, "console", Console(width=80, force_terminal=True, color_system=None))
    result = invoke(data_tools.check_command, data)
    assert result.exit_code == 1
    assert "…" not in result.output and "badclass.txt:1" in result.output
    cells = "".join(line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 4)
    assert str(root / "labels/train/badclass.txt:1") in cells  # the folded cell joins back to the whole name


def test_check_folder_and_unreadable_yaml(tmp_path):
    make_dataset(tmp_path, {"train/img0": "2 0.5 0.5 0.2 0.2\n"})
    folder = tmp_path / "images/train"
    assert invoke(data_tools.check_command, folder).exit_code == 0  # without --nc any class >= 0 passes
    result = invoke(data_tools.check_command, folder, "--nc", "2")
    assert result.exit_code == 1 and "img0.txt:1: error: class 2 out of range 0..1" in result.output
    (tmp_path / "bad.yaml").write_text("names: [a\n")
    assert invoke(data_tools.check_command, tmp_path / "bad.yaml").exit_code == 2


# --- validation cache and skip policy ------------------------------------------------------------------


def counting_validate_split(monkeypatch) -> list[int]:
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return validate_split(*args, **kwargs)

    monkeypatch.setattr(vc, "validate_split", counted)
    return calls


def same_report(a, b) -> bool:
    return ((a.n_images, a.n_boxes, a.n_backgrounds, a.n_missing_labels, a.full_decode, a.image_sizes)
            == (b.n_images, b.n_boxes, b.n_backgrounds, b.n_missing_labels, b.full_decode, b.image_sizes)
            and [str(p) for p in a.problems] == [str(p) for p in b.problems]
            and all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels, strict=True)))


def test_cache_second_call_is_served_from_the_cache_and_equal(tmp_path, monkeypatch):
    labels = {f"train/{i:03d}": f"{i % 3} 0.5 0.5 0.{i % 9 + 1} 0.3\n" for i in range(60)}
    labels["train/bad"] = "0 0.5 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\n"
    labels["train/none"] = None
    images = load_data_yaml(make_dataset(tmp_path / "ds", labels, side=128)).splits["train"]
    calls = counting_validate_split(monkeypatch)

    first = vc.validate_cached(images, 3, tmp_path / "cache")
    second = vc.validate_cached(images, 3, tmp_path / "cache")

    # The second report came from the cache: validation itself ran once. (How much faster that is belongs in
    # benchmarks/data.py, not in a timed assertion on a shared machine.)
    assert len(calls) == 1
    assert same_report(first, second)
    assert same_report(first, validate_split(images, 3))
    bad = tmp_path / "ds/labels/train/bad.txt"
    assert [str(p) for p in second.problems] == [f"{bad}:2: class 9 out of range 0..2"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1


def test_cache_is_invalidated_by_a_changed_label_or_image(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "ds", GOOD)
    images = load_data_yaml(data).splits["train"]
    calls = counting_validate_split(monkeypatch)
    assert vc.validate_cached(images, 3, tmp_path / "cache").ok
    label = tmp_path / "ds/labels/train/img1.txt"
    label.write_text("7 0.5 0.5 0.9 0.9\n")  # same size, new content
    report = vc.validate_cached(images, 3, tmp_path / "cache")
    assert len(calls) == 2
    assert [str(p) for p in report.problems] == [f"{label}:1: class 7 out of range 0..2"]
    label.write_text("2 0.5 0.5 0.9 0.9\n")  # back as it was: the first report is found again
    assert vc.validate_cached(images, 3, tmp_path / "cache").ok and len(calls) == 2
    (tmp_path / "ds/labels/train/img2.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # a label file appears
    assert vc.validate_cached(images, 3, tmp_path / "cache").n_boxes == 4 and len(calls) == 3
    image = tmp_path / "ds/images/train/img0.png"
    stat = image.stat()
    image.write_bytes(b"")
    report = vc.validate_cached(images, 3, tmp_path / "cache")
    assert len(calls) == 4 and "cannot decode image" in str(report.problems[0])
    assert stat.st_size > 0


def test_filter_bad_skips_and_lists_bad_images(tmp_path):
    data = make_dataset(tmp_path, {**GOOD, "train/img1": "2 0.5 0.5 0.9 0.9\n0 0.5 0.5 0 0.1\n"})
    (tmp_path / "images/train/img3.png").write_bytes(b"")
    images = load_data_yaml(data).splits["train"]
    good, skipped = vc.filter_bad(images, validate_split(images, 3))
    assert [p.name for p in good] == ["img0.png", "img2.png"]
    assert [(p.name, reason) for p, reason in skipped] == [
        ("img1.png", f"{tmp_path / 'labels/train/img1.txt'}:2: box width and height must be > 0, "
                     "got w=0 h=0.1"),
        ("img3.png", f"{tmp_path / 'images/train/img3.png'}: cannot decode image: "
                     f"cannot identify image file {str(tmp_path / 'images/train/img3.png')!r}"),
    ]
    with pytest.raises(DataError, match=r"split has no images.*cannot fix"):
        vc.filter_bad([], validate_split([], 3, source="empty"))


def test_duplicate_lines_compare_values(tmp_path):
    label = tmp_path / "x.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\nbad line\n0 .5 0.50 0.1 0.1\n"
                     "\n1 0.5 0.5 0.1 0.1\n")
    assert [(d.line, d.problem) for d in vc.find_duplicate_lines(label)] == [
        (4, "duplicate of line 1"), (6, "duplicate of line 2")]
    assert vc.find_duplicate_lines(tmp_path / "missing.txt") == []


# --- stratified splits ---------------------------------------------------------------------------------


def test_dominant_class():
    assert dominant_class([1, 1, 0]) == 1
    assert dominant_class(np.array([2, 0, 2, 0])) == 0  # a tie goes to the smaller id
    assert dominant_class([]) == BACKGROUND


def hand_labels() -> list[list[int]]:
    """40 images: 20 mostly class 0, 10 mostly class 1 (some also hold class 0), 6 of class 2, 4 empty."""
    return [[0]] * 16 + [[0, 0, 1]] * 4 + [[1]] * 6 + [[1, 1, 0]] * 4 + [[2, 2]] * 6 + [[]] * 4


def test_stratified_split_keeps_class_shares():
    labels = hand_labels()
    fractions = (0.5, 0.3, 0.2)
    parts = stratified_split_indices(labels, fractions, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))  # disjoint and covering
    groups = {0: range(0, 20), 1: range(20, 30), 2: range(30, 36), BACKGROUND: range(36, 40)}
    for members in groups.values():
        for part, fraction in zip(parts, fractions, strict=True):
            assert abs(len(set(part.tolist()) & set(members)) - len(members) * fraction) <= 1
    again = stratified_split_indices(labels, fractions, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = stratified_split_indices(labels, fractions, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    with pytest.raises(ValueError, match="fractions"):
        stratified_split_indices(labels, (0.5, 0.6))


# --- split command -------------------------------------------------------------------------------------


def label_text(classes: list[int]) -> str:
    return "".join(f"{c} 0.5 0.5 0.1 0.1\n" for c in classes)


@pytest.fixture
def forty(tmp_path) -> Path:
    labels = {f"train/{i:02d}": label_text(c) for i, c in enumerate(hand_labels())}
    return make_dataset(tmp_path / "ds", labels, side=8)


def read_split(out: Path, names: list[str] = NAMES) -> dict[str, list[Path]]:
    spec = load_data_yaml(out / "data.yaml")
    assert spec.names == names
    return spec.splits


def test_split_command_stratified(forty, tmp_path):
    result = invoke(data_tools.split_command, forty, "--out", tmp_path / "s1", "--fractions", "0.5,0.3,0.2",
                    "--seed", "3", "--stratify")
    assert result.exit_code == 0, result.output
    splits = read_split(tmp_path / "s1")
    originals = sorted((forty.parent / "images/train").glob("*.png"))
    together = [p.resolve() for part in splits.values() for p in part]
    assert sorted(together) == [p.resolve() for p in originals]  # disjoint, covering, images left in place
    assert not (tmp_path / "s1/images").exists()
    dominant = {f"{i:02d}.png": dominant_class(c) for i, c in enumerate(hand_labels())}
    totals = Counter(dominant.values())
    for part, fraction in zip(("train", "val", "test"), (0.5, 0.3, 0.2), strict=True):
        counts = Counter(dominant[p.name] for p in splits[part])
        assert all(abs(counts[c] - totals[c] * fraction) <= 1 for c in totals), (part, counts)
    again = invoke(data_tools.split_command, forty, "--out", tmp_path / "s2", "--fractions", "0.5,0.3,0.2",
                   "--seed", "3", "--stratify")
    assert again.exit_code == 0
    for part in ("train", "val", "test"):
        assert (tmp_path / f"s1/{part}.txt").read_text() == (tmp_path / f"s2/{part}.txt").read_text()
    refused = invoke(data_tools.split_command, forty, "--out", tmp_path / "s1")
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_split_command_plain_and_from_folder(forty, tmp_path):
    result = invoke(data_tools.split_command, forty, "--out", tmp_path / "plain")
    assert result.exit_code == 0, result.output
    sizes = {k: len(v) for k, v in read_split(tmp_path / "plain").items()}
    assert sizes == {"train": 32, "val": 4, "test": 4}
    # A folder: class names come from the largest class id; two fractions give train and val only.
    folder = invoke(data_tools.split_command, forty.parent / "images/train", "--out", tmp_path / "f",
                    "--fractions", "0.75,0.25")
    assert folder.exit_code == 0, folder.output
    splits = read_split(tmp_path / "f", names=["0", "1", "2"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "val": 10}
    bad = invoke(data_tools.split_command, forty, "--out", tmp_path / "bad", "--fractions", "0.5,0.4")
    assert bad.exit_code == 2 and "sum to 1" in bad.output


def test_split_command_keeps_the_size_bins(forty, tmp_path):
    text = forty.read_text() + "size_bins:\n  image_size: 8\n  areas:\n    tiny: [0, 4]\n    rest: [4, 64]\n"
    forty.write_text(text)
    result = invoke(data_tools.split_command, forty, "--out", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    assert load_data_yaml(tmp_path / "kept" / "data.yaml").size_bins.areas == {"tiny": (0, 4), "rest": (4, 64)}


# --- make sparse and stats commands --------------------------------------------------------------------


def test_make_sparse_command(tmp_path):
    out = tmp_path / "sparse"
    result = invoke(data_tools.make_sparse_command, "--out", out, "--n-train", 3, "--n-val", 1, "--n-test", 1,
                    "--imgsz", 64, "--classes", 4, "--objects", 0, 2, "--size-mix", "1:3x2-10x8",
                    "--workers", 1)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == ["track", "shower", "blob", "track1"]
    assert data["generator"]["objects_per_image"] == [0, 2]
    assert data["generator"]["size_mix"] == [{"weight": 1.0, "min_wh": [3, 2], "max_wh": [10, 8]}]
    assert len(list((out / "images/train").glob("*.png"))) == 3
    bad = invoke(data_tools.make_sparse_command, "--out", tmp_path / "x", "--size-mix", "1:3x2")
    assert bad.exit_code == 2 and "size mix" in bad.output


def test_stats_command_writes_json_and_plots(tmp_path):
    data = make_dataset(tmp_path, GOOD)
    result = invoke(data_tools.stats_command, data, "--split", "train", "--out", tmp_path / "st")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "st/stats.json").read_text())
    assert (stats["n_images"], stats["n_objects"], stats["n_backgrounds"]) == (4, 3, 2)
    assert stats["per_class"] == {"a": 1, "b": 1, "c": 1}
    # Random pixels, as in a photo: ~255/256 of them non-zero, so no sparsity row and no sparsity plot.
    assert stats["sparse"] is False and stats["nonzero_fraction"]["median"] > 0.99
    assert "non-zero" not in result.output
    assert sorted(p.name for p in (tmp_path / "st").glob("*.png")) == [
        "box_wh.png", "objects_per_image.png", "per_class.png"]
    assert "16x16: 4" in flat(result.output)  # one size: listed with its count
    missing = invoke(data_tools.stats_command, data, "--split", "test")
    assert missing.exit_code == 2 and "no split 'test'" in missing.output
