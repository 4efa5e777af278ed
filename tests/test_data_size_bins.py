"""The optional size_bins block of a data.yaml: parsing, errors naming file and line, letterbox scaling."""

from __future__ import annotations

import pytest
import yaml

from yololab.data import DataError, load_data_yaml
from yololab.data.size_bins import SizeBins, input_area_ranges


def _dataset(tmp_path, extra: str = "") -> str:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "a.png").write_bytes(b"")
    path = tmp_path / "data.yaml"
    path.write_text(f"path: .\ntrain: images/train\nnames: [a, b]\n{extra}")
    return path


def test_ultralytics_yaml_without_bins_loads(tmp_path):
    assert load_data_yaml(_dataset(tmp_path)).size_bins is None


def test_bins_are_read(tmp_path):
    extra = "size_bins:\n  image_size: 480\n  areas:\n    tiny: [6, 20]\n    big: [1200, 30000.5]\n"
    bins = load_data_yaml(_dataset(tmp_path, extra)).size_bins
    assert bins == SizeBins(480, {"tiny": (6.0, 20.0), "big": (1200.0, 30000.5)})
    written = {"image_size": 480, "areas": {"tiny": [6.0, 20.0], "big": [1200.0, 30000.5]}}
    assert yaml.safe_load(yaml.safe_dump(bins.to_yaml())) == written


def test_areas_scale_with_the_letterbox_factor_squared():
    bins = SizeBins(480, {"tiny": (6.0, 20.0), "big": (1200.0, 30000.0)})
    # 480 -> 240: every side halves, every area quarters.
    assert input_area_ranges(bins, 240) == {"tiny": (1.5, 5.0), "big": (300.0, 7500.0)}
    assert input_area_ranges(bins, 480) == bins.areas
    assert input_area_ranges(None, 256) == {}


@pytest.mark.parametrize(("block", "match"), [
    ("size_bins: [1, 2]", "expected a mapping with keys image_size"),
    ("size_bins:\n  image_size: 0\n  areas: {a: [1, 2]}", "image_size must be a positive integer"),
    ("size_bins:\n  image_size: 64\n  areas: {}", "areas must be a non-empty mapping"),
    ("size_bins:\n  image_size: 64\n  areas: {a: [5, 1]}", "bin 'a' must be \\[lo, hi\\]"),
    ("size_bins:\n  image_size: 64\n  areas: {a: [1, .inf]}", "bin 'a' must be"),
    ("size_bins:\n  image_size: 64\n  areas: {a/b: [1, 2]}", "bin name 'a/b'"),
    ("size_bins:\n  image_size: 64\n  areas: {a: [1, 2]}\n  unit: px", "expected a mapping with keys"),
])
def test_bad_bins_name_file_and_line(tmp_path, block, match):
    path = _dataset(tmp_path, block + "\n")
    with pytest.raises(DataError, match=match) as info:
        load_data_yaml(path)
    assert f"{path}:4:" in str(info.value)  # the size_bins key is on line 4
