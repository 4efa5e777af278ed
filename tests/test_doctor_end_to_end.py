"""The doctor on real training: brief runs on sparse images, once with correct labels and once with the labels
written y-first (``class cy cx h w``, x and y swapped). The doctor must name the mis-encoded targets in the
second run and not in the first, which had the same data, model and budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from yololab.config import build_config
from yololab.data import make_sparse
from yololab.data.sparse import SizeBin
from yololab.diagnostics import DoctorConfig
from yololab.engine.train import train

N_IMAGES = 64
IMGSZ = 96
EPOCHS = 6
MIN_RIGHT_MAP50 = 0.3  # the run on right labels must have learned (0.74 when measured), or the contrast is void
# Solid blobs of 10-30 px on a clean background, 2-4 per image: easy enough for objectness to separate within
# the budget when the labels are right. Validation reads the training images: this is about whether the
# network finds its targets at all, not about generalisation.
SIZES = [SizeBin(1.0, (10, 10), (30, 30))]
OVERRIDES = [f"data.imgsz={IMGSZ}", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small",
             "optim.lr=0.01", "diagnostics.report=false", "diagnostics.grad_share_every=0"]


def _swap_xy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    data_yaml = dst / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace(str(src.resolve()), str(dst.resolve())))
    for label in (dst / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        label.write_text("".join(f"{c} {y} {x} {h} {w}\n" for c, x, y, w, h in rows))
    return dst


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sparse")
    right = root / "right"
    make_sparse(right, N_IMAGES, 0, 0, img_size=IMGSZ, classes=["blob"], objects_per_image=(2, 4), size_mix=SIZES,
                noise=0.0, hit_density=1.0, seed=3, workers=1)
    data_yaml = right / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace("train: images/train", "train: images/train\nval: images/train"))
    return {"right": right, "swapped": _swap_xy(right, root / "swapped")}


def _train(data: Path, project: Path) -> tuple[list[dict], float]:
    """The run's findings.json and its last val mAP50."""
    cfg = build_config({"project": str(project), "name": data.name, "data": {"data": str(data / "data.yaml")},
                        "train": {"epochs": EPOCHS}}, OVERRIDES)
    result = train(cfg, progress="none")
    val = [row for row in result.metrics if row["split"] == "val"]
    return json.loads((result.run_dir / "findings.json").read_text()), val[-1]["mAP50"]


def test_doctor_names_swapped_labels_and_not_right_ones(datasets, tmp_path):
    swapped, _ = _train(datasets["swapped"], tmp_path)
    named = [f for f in swapped if f["rule"] == "targets_not_found"]
    assert named, [f["rule"] for f in swapped]
    assert all(f["severity"] == "error" and "x/y not swapped" in f["suggestion"] for f in named)
    limits = DoctorConfig()
    for f in named:  # the numbers it gives are the ones it judged: not separated, nothing localised
        assert f["numbers"]["obj_pos"] < limits.unfound_separation * f["numbers"]["obj_neg"]
        assert f["numbers"]["iou"] - f["numbers"]["iou_prior"] < limits.unfound_iou_gain

    right, right_map50 = _train(datasets["right"], tmp_path)
    assert right_map50 >= MIN_RIGHT_MAP50
    assert [f for f in right if f["rule"] == "targets_not_found"] == []
