"""Anchors: k-means with 1 - IoU, the anchor fit report, grouping per scale, box sizes, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from yololab.anchors import (
    AnchorError,
    anchor_fit,
    anchor_fit_report,
    collect_box_sizes,
    group_per_scale,
    kmeans_anchors,
    plot_anchor_fit,
)
from yololab.commands.anchors import anchors_command
from yololab.data import DataError, make_digits
from yololab.model import Darknet

YOLOV3_CFG = Path(__file__).parent / "data" / "darknet-cfg" / "yolov3.cfg"
# yolov3.cfg's anchors line, and the anchors each [yolo] takes by its mask (6,7,8 / 3,4,5 / 0,1,2).
YOLOV3_ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
                  [373, 326]]
YOLOV3_HEADS = [[[116, 90], [156, 198], [373, 326]], [[30, 61], [62, 45], [59, 119]],
                [[10, 13], [16, 30], [33, 23]]]
# The anchors of the seed notes (their coarse scale spans a factor 75 in area).
SEED_ANCHORS = [[[26, 16], [39, 51], [217, 143]], [[6, 6], [9, 12], [13, 33]], [[3, 2], [3, 3], [4, 3]]]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def naive_iou(a, b) -> float:
    """Shape IoU of two (w, h) boxes sharing a centre."""
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


# --- anchor_fit -------------------------------------------------------------------------------------


def test_fit_of_boxes_equal_to_the_anchors_is_perfect():
    anchors = torch.tensor([[10.0, 13.0], [30.0, 61.0], [116.0, 90.0]])
    fit = anchor_fit(anchors.repeat(4, 1), anchors)
    assert fit["mean_best_iou"] == pytest.approx(1.0, abs=1e-6)
    assert fit["bpr_iou50"] == 1.0
    assert fit["bpr_ratio"] == 1.0
    assert fit["share_per_anchor"] == pytest.approx([1 / 3] * 3)
    assert fit["n_truths"] == 12 and fit["n_anchors"] == 3
    assert "share_per_scale" not in fit  # a flat set has no scales


def test_fit_by_hand():
    # 10x10 in a 20x20 anchor: 100 / 400 = 0.25. 5x50 vs 20x20: inter 5*20 = 100, union 250 + 400 - 100.
    wh = [[10.0, 10.0], [5.0, 50.0]]
    fit = anchor_fit(wh, [[20.0, 20.0]])
    assert fit["mean_best_iou"] == pytest.approx((0.25 + 100 / 550) / 2, rel=1e-6)
    assert fit["bpr_iou50"] == 0.0
    # Side ratios: 10x10 -> 2, 5x50 -> max(4, 2.5) = 4, which is not < 4.
    assert fit["bpr_ratio"] == 0.5
    assert fit["anchors_per_truth_ratio"] == 0.5
    assert anchor_fit(wh, [[20.0, 20.0]], anchor_t=4.5)["bpr_ratio"] == 1.0
    assert anchor_fit(wh, [[20.0, 20.0]], anchor_t=2.0)["bpr_ratio"] == 0.0  # 2 is not < 2


def test_fit_per_scale_by_hand():
    wh = [[217, 143], [217, 143], [6, 6], [3, 2]]
    fit = anchor_fit(wh, [torch.tensor(s, dtype=torch.float32) for s in SEED_ANCHORS], strides=[32, 16, 8])
    assert fit["share_per_anchor"] == pytest.approx([0, 0, 0.5, 0.25, 0, 0, 0.25, 0, 0])
    assert fit["share_per_scale"] == pytest.approx([0.5, 0.25, 0.25])
    # Ratio rule: 217x143 only reaches the coarse scale; 6x6 reaches 6x6 and 4x3 (6/3 = 2) but not 26x16
    # (26/6 > 4); 3x2 reaches 6x6 (ratios 2, 3) and 3x2.
    assert fit["ratio_share_per_scale"] == pytest.approx([0.5, 0.5, 0.5])
    coarse = fit["spread_per_scale"][0]
    assert coarse["area_ratio"] == pytest.approx(217 * 143 / (26 * 16))  # 74.6
    assert coarse["aspect_ratio"] == pytest.approx((26 / 16) / (39 / 51))  # 2.125
    assert fit["spread_per_scale"][2]["area_ratio"] == pytest.approx(12 / 6)
    assert fit["mean_best_iou_per_scale"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert fit["anchor_cells_per_scale"][0][0] == pytest.approx((26 * 16) ** 0.5 / 32)
    assert fit["strides"] == [32, 16, 8]
    json.dumps(fit)  # serialisable as it is written to the run folder


def test_fit_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    wh = rng.uniform(2, 300, size=(60, 2))
    anchors = rng.uniform(5, 200, size=(6, 2))
    best = [max(naive_iou(b, a) for a in anchors) for b in wh]
    ratio_ok = [any(max(b[0] / a[0], a[0] / b[0], b[1] / a[1], a[1] / b[1]) < 4 for a in anchors) for b in wh]
    fit = anchor_fit(torch.tensor(wh), torch.tensor(anchors))
    assert fit["mean_best_iou"] == pytest.approx(sum(best) / len(best), rel=1e-6)
    assert fit["bpr_iou50"] == pytest.approx(sum(v > 0.5 for v in best) / len(best))
    assert fit["bpr_ratio"] == pytest.approx(sum(ratio_ok) / len(ratio_ok))


def test_fit_rejects_bad_input():
    with pytest.raises(AnchorError, match="no boxes"):
        anchor_fit(torch.zeros(0, 2), [[10.0, 10.0]])
    with pytest.raises(AnchorError, match="row 1"):
        anchor_fit([[10.0, 10.0], [0.0, 5.0]], [[10.0, 10.0]])
    with pytest.raises(AnchorError, match="strides"):
        anchor_fit([[10.0, 10.0]], [torch.ones(3, 2), torch.ones(3, 2)], strides=[8])


# --- kmeans_anchors ---------------------------------------------------------------------------------


def clusters(shapes, per_cluster=200, spread=0.03, seed=0) -> torch.Tensor:
    """Boxes scattered around ``shapes`` by a factor uniform in [1 - spread, 1 + spread] per side."""
    rng = np.random.default_rng(seed)
    boxes = [np.asarray(s) * rng.uniform(1 - spread, 1 + spread, size=(per_cluster, 2)) for s in shapes]
    return torch.tensor(np.concatenate(boxes)[rng.permutation(per_cluster * len(shapes))])


def test_kmeans_finds_tight_clusters_sorted_by_area():
    true = [[156.0, 198.0], [10.0, 13.0], [62.0, 45.0]]
    anchors = kmeans_anchors(clusters(true), 3, seed=0)
    expected = torch.tensor([[10.0, 13.0], [62.0, 45.0], [156.0, 198.0]])  # by area: 130, 2790, 30888
    assert anchors.shape == (3, 2)
    assert ((anchors - expected).abs() / expected).max() < 0.02


def test_kmeans_is_deterministic_for_a_seed():
    wh = torch.tensor(np.random.default_rng(1).uniform(4, 300, size=(500, 2)))
    first = kmeans_anchors(wh, 9, seed=3)
    assert torch.equal(first, kmeans_anchors(wh, 9, seed=3))
    areas = first[:, 0] * first[:, 1]
    assert bool((areas[1:] >= areas[:-1]).all())


def test_kmeans_has_no_empty_cluster_with_heavy_duplicates():
    # Six distinct sizes, two of them repeated a thousand times. Identical boxes always share a cluster,
    # so six non-empty clusters must be exactly the six sizes.
    sizes = [[10.0, 10.0], [50.0, 50.0], [11.0, 10.0], [10.0, 12.0], [48.0, 52.0], [200.0, 30.0]]
    wh = torch.tensor([sizes[0]] * 1000 + [sizes[1]] * 1000 + sizes[2:])
    for seed in range(5):
        anchors = kmeans_anchors(wh, 6, seed=seed)
        assert sorted(anchors.tolist()) == sorted(sizes)


@pytest.mark.parametrize(
    ("boxes", "centres", "reseeded", "assign"),
    [
        # Nothing prefers 1000x1000; the box farthest from its centre is 100x100 (IoU 0.011 with 10.5x10.5).
        ([[10, 10]] * 5 + [[100, 100]] * 5 + [[11, 11]], [[10, 10], [10.5, 10.5], [1000, 1000]],
         [[10, 10], [10.5, 10.5], [100, 100]], [0] * 5 + [2] * 5 + [1]),
        # Two equal centres: ties go to the first, the second is empty and takes 12x12 (IoU 100/144).
        ([[10, 10], [12, 12], [100, 100], [90, 90]], [[10, 10], [10, 10], [100, 100]],
         [[10, 10], [12, 12], [100, 100]], [0, 1, 2, 2]),
    ],
)
def test_empty_clusters_are_reseeded_with_the_farthest_box(boxes, centres, reseeded, assign):
    from yololab.anchors import _assign

    new_centres, new_assign = _assign(torch.tensor(boxes, dtype=torch.float64),
                                      torch.tensor(centres, dtype=torch.float64))
    assert new_centres.tolist() == reseeded
    assert new_assign.tolist() == assign


def test_kmeans_rejects_too_few_boxes_and_bad_sizes():
    with pytest.raises(AnchorError, match=r"at least 3 distinct box sizes.*got 2"):
        kmeans_anchors([[10.0, 10.0]] * 50 + [[20.0, 20.0]], 3)
    with pytest.raises(AnchorError, match="not positive finite"):
        kmeans_anchors([[10.0, 10.0], [-1.0, 3.0], [20.0, 20.0]], 2)
    with pytest.raises(AnchorError, match="not positive finite"):
        kmeans_anchors([[10.0, float("nan")], [3.0, 3.0], [20.0, 20.0]], 2)
    with pytest.raises(AnchorError, match=r"\[N, 2\]"):
        kmeans_anchors(torch.ones(5, 3), 2)


# --- group_per_scale --------------------------------------------------------------------------------


def test_group_per_scale_follows_the_cfg_masks_and_the_model_takes_it():
    shuffled = torch.tensor(YOLOV3_ANCHORS, dtype=torch.float32)[torch.tensor([4, 8, 0, 6, 2, 7, 1, 5, 3])]
    scaled = shuffled * 1.5
    grouped = group_per_scale(scaled, 3)
    expected = [torch.tensor(head, dtype=torch.float32) * 1.5 for head in YOLOV3_HEADS]
    assert all(torch.equal(g, e) for g, e in zip(grouped, expected, strict=True))
    model = Darknet.from_cfg(YOLOV3_CFG, anchors=grouped)
    assert model.strides == [32, 16, 8]
    assert all(torch.equal(a, e) for a, e in zip(model.anchors, expected, strict=True))


def test_group_per_scale_with_strides_and_errors():
    wh = torch.tensor(YOLOV3_ANCHORS, dtype=torch.float32)
    finest_first = group_per_scale(wh, 3, strides=[8, 16, 32])
    assert [g.tolist() for g in finest_first] == YOLOV3_HEADS[::-1]
    with pytest.raises(AnchorError, match="evenly"):
        group_per_scale(wh[:8], 3)
    with pytest.raises(AnchorError, match="strides"):
        group_per_scale(wh, 3, strides=[8, 16])


# --- box sizes --------------------------------------------------------------------------------------


def write_dataset(root: Path) -> Path:
    """Three images: 200x100 with two boxes, 50x80 with one, 64x64 without a label file."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (200, 100)).save(root / "images" / "a.png")
    Image.new("L", (50, 80)).save(root / "images" / "b.png")
    Image.new("RGB", (64, 64)).save(root / "images" / "c.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.2\n1 0.3 0.5 0.1 0.9\n")
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": ["x", "y"]}))
    return root / "data.yaml"


def test_box_sizes_after_letterbox_by_hand(tmp_path):
    data = write_dataset(tmp_path)
    wh = collect_box_sizes(data, "train", img_size=400)
    # a.png: scale 400 / 200 = 2 -> 0.5*200*2, 0.2*100*2 and 0.1*200*2, 0.9*100*2; b.png: scale 400 / 80 = 5.
    expected = torch.tensor([[200.0, 40.0], [40.0, 180.0], [125.0, 100.0]])
    torch.testing.assert_close(wh, expected)
    with pytest.raises(DataError, match="no 'val' split"):
        collect_box_sizes(data, "val")


def test_box_sizes_raise_on_a_bad_label(tmp_path):
    data = write_dataset(tmp_path)
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match=r"b\.txt:1"):
        collect_box_sizes(data)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"), tiny=True)


def hand_sizes(data_yaml: Path, img_size: int) -> list[list[float]]:
    """Box sizes read straight from the label files and PIL image sizes."""
    root = data_yaml.parent
    sizes = []
    for image in sorted((root / "images" / "train").glob("*.png")):
        w, h = Image.open(image).size
        scale = img_size / max(w, h)
        for line in (root / "labels" / "train" / f"{image.stem}.txt").read_text().splitlines():
            _, _, _, bw, bh = (float(v) for v in line.split())
            sizes.append([bw * w * scale, bh * h * scale])
    return sizes


def test_box_sizes_of_the_digits_dataset(digits):
    expected = torch.tensor(hand_sizes(digits, 416))
    torch.testing.assert_close(collect_box_sizes(digits, img_size=416), expected)
    report = anchor_fit_report(digits, [torch.tensor(h, dtype=torch.float32) for h in YOLOV3_HEADS],
                               [32, 16, 8], 416)
    assert report["n_truths"] == len(expected) and report["img_size"] == 416 and report["split"] == "train"
    best = [max(naive_iou(b, a) for a in YOLOV3_ANCHORS) for b in expected.tolist()]
    assert report["mean_best_iou"] == pytest.approx(sum(best) / len(best), rel=1e-5)
    # what re-fitting could reach: 9 k-means anchors, their mean best IoU by the naive loop, and (fitted to
    # these boxes) no worse than COCO's anchors
    fitted = kmeans_anchors(expected, 9).tolist()
    best_fitted = [max(naive_iou(b, a) for a in fitted) for b in expected.tolist()]
    assert report["kmeans"]["mean_best_iou"] == pytest.approx(sum(best_fitted) / len(best_fitted), rel=1e-5)
    assert report["kmeans"]["mean_best_iou"] >= report["mean_best_iou"]
    assert set(report["kmeans"]) == {"mean_best_iou", "bpr_iou50", "bpr_ratio"}
    json.dumps(report)


def test_plot_writes_a_png(tmp_path):
    wh = clusters([[10.0, 13.0], [62.0, 45.0]], per_cluster=50)
    path = plot_anchor_fit(wh, None, torch.tensor([[10.0, 13.0], [62.0, 45.0]]), tmp_path / "fit.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


# --- CLI --------------------------------------------------------------------------------------------


def cli():
    app = typer.Typer()
    app.command()(anchors_command)
    return app


def test_cli_reports_writes_cfg_plot_and_json(digits, tmp_path):
    out_cfg, plot, report = tmp_path / "new.cfg", tmp_path / "fit.png", tmp_path / "fit.json"
    result = CliRunner().invoke(cli(), [str(digits), "--num", "9", "--img-size", "128", "--cfg",
                                        "yolov3-tiny-3l-small", "--write-cfg", str(out_cfg), "--plot",
                                        str(plot), "--json-out", str(report)])
    assert result.exit_code == 0, result.output
    for text in ("mean best IoU", "BPR (best IoU > 0.5)", "BPR (ratio < 4)", "stride 32: share of truths",
                 "stride 8: area spread", "current (yolov3-tiny-3l-small)", "proposed", "anchors = "):
        assert text in result.output
    record = json.loads(report.read_text())
    proposed = [torch.tensor(a) for a in record["proposed_anchors"]]
    model = Darknet.from_cfg(out_cfg)
    assert model.strides == [32, 16, 8]
    assert all(torch.allclose(a, p) for a, p in zip(model.anchors, proposed, strict=True))
    mean_area = [float((a[:, 0] * a[:, 1]).mean()) for a in model.anchors]
    assert mean_area == sorted(mean_area, reverse=True)  # the coarsest head has the largest anchors
    sizes = hand_sizes(digits, 128)
    best = [max(naive_iou(b, a) for head in record["proposed_anchors"] for a in head) for b in sizes]
    assert record["proposed"]["mean_best_iou"] == pytest.approx(sum(best) / len(best), rel=1e-5)
    assert record["current"]["n_truths"] == len(sizes)
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_cli_errors_exit_non_zero(digits, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli(), [str(digits), "--write-cfg", str(tmp_path / "x.cfg")])
    assert result.exit_code == 2 and "--write-cfg needs --cfg" in result.output
    result = runner.invoke(cli(), [str(digits), "--num", "7"])
    assert result.exit_code == 2 and "cannot be split evenly" in result.output
    result = runner.invoke(cli(), [str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml" in result.output


def test_write_cfg_writes_short_numbers(tmp_path):
    # Six boxes of six sizes at 416 px: the six k-means anchors are the boxes themselves, none a float32 number.
    sizes = [(74.4, 51.1), (22.3, 33.7), (12.9, 18.2), (100.3, 120.6), (40.2, 60.7), (150.9, 90.3)]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (416, 416)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("".join(f"0 0.5 0.5 {w / 416} {h / 416}\n" for w, h in sizes))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": ["x"]}))
    out_cfg, report = tmp_path / "new.cfg", tmp_path / "fit.json"
    result = CliRunner().invoke(cli(), [str(tmp_path / "data.yaml"), "--num", "6", "--img-size", "416", "--cfg",
                                        "yolov3-tiny-small", "--write-cfg", str(out_cfg), "--json-out", str(report)])
    assert result.exit_code == 0, result.output
    line = next(t for t in out_cfg.read_text().splitlines() if t.startswith("anchors="))
    written = sorted(tuple(float(v) for v in pair.split(",")) for pair in
                     re.findall(r"[\d.]+,[\d.]+", line.removeprefix("anchors=")))
    by_area = sorted(sizes, key=lambda s: s[0] * s[1])
    assert line.removeprefix("anchors=") == ",".join(f"{w:g},{h:g}" for w, h in by_area)
    assert written == sorted(sizes)
    proposed = json.loads(report.read_text())["proposed_anchors"]
    assert sorted(tuple(p) for head in proposed for p in head) == sorted(sizes)


def test_cli_proposes_as_many_anchors_as_the_cfg_has(digits, tmp_path):
    report = tmp_path / "fit.json"
    result = CliRunner().invoke(cli(), [str(digits), "--img-size", "128", "--cfg", "yolov3-tiny-4l-small",
                                        "--json-out", str(report)])
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    assert record["num"] == 12 and [len(head) for head in record["proposed_anchors"]] == [3, 3, 3, 3]
    assert "stride 4: share of truths" in result.output
