"""Autoanchor at train start and the heads' initial biases (model.head_prior).

Expected numbers come from hand counts and naive loops over hand-made boxes, not from the code under test.
Training itself is skipped where only the start of a run matters (``_fit`` replaced by a recorder).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from yololab.anchors import APPLIED, FITS, NOT_BETTER, OFF, PINNED, autoanchor, kmeans_anchors
from yololab.config import ConfigError, build_config, load_config
from yololab.engine import train as train_module
from yololab.engine.checkpoint import load_module
from yololab.engine.train import make_module, train
from yololab.model.build import read_cfg_text
from yololab.model.cfg import parse_cfg
from yololab.model.darknet import Darknet, yolo_anchors
from yololab.model.priors import HeadPriors, label_priors
from yololab.model.weights import load_darknet_weights, save_darknet_weights

IMG = 64  # image size = data.imgsz: the letterbox scale is 1, box pixels are normalised sizes x 64
CFG = "yolov3-tiny-small"  # 2 heads, strides 32 and 16
CFG_ANCHORS = [[[40.0, 50.0], [60.0, 76.0], [92.0, 116.0]], [[10.0, 13.0], [17.0, 22.0], [26.0, 34.0]]]
TINY = [f"data.imgsz={IMG}", "data.batch=4", "data.workers=0", f"model.cfg={CFG}", "diagnostics.report=false",
        "diagnostics.doctor=false", "diagnostics.grad_share_every=0", "data.validation_cache=false"]
# Needles: 1-2 px wide, 45-61 px tall. Every anchor of the cfg is >= 10 px wide, a factor > 4 too wide: none
# of these boxes has an anchor under the ratio rule (best possible recall 0).
THIN = [[(0, 0.02, 0.70), (1, 0.025, 0.80)], [(0, 0.03, 0.90), (1, 0.02, 0.95)], [(0, 0.025, 0.75)],
        [(1, 0.03, 0.85), (0, 0.02, 0.80)], [(0, 0.03, 0.70)], [(1, 0.025, 0.95), (0, 0.02, 0.85)], [], []]
# Boxes of the cfg's own anchor shapes: (12.8, 16) px and (19.2, 25.6) px are within a factor 4 of (10, 13).
FITTING = [[(0, 0.2, 0.25)], [(1, 0.3, 0.4)], [(0, 0.2, 0.25), (1, 0.3, 0.4)], [(0, 0.3, 0.4)]]


def _dataset(root: Path, images: list[list[tuple[int, float, float]]]) -> Path:
    """A two-class dataset of grey 64 px images with boxes (class, w, h) side by side; val = train."""
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
    for i, boxes in enumerate(images):
        Image.new("RGB", (IMG, IMG), (i * 20, 0, 0)).save(root / "images" / "train" / f"{i}.png")
        lines = [f"{c} {0.1 + 0.1 * k + w / 2:.4f} 0.5 {w} {h}\n" for k, (c, w, h) in enumerate(boxes)]
        (root / "labels" / "train" / f"{i}.txt").write_text("".join(lines))
    spec = {"path": str(root), "train": "images/train", "val": "images/train", "names": ["a", "b"]}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


@pytest.fixture(scope="module")
def thin(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("thin"), THIN)


@pytest.fixture(scope="module")
def fitting(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("fitting"), FITTING)


def _config(data: Path, project: Path, name: str, extra=(), epochs: int = 1):
    return build_config({"project": str(project), "name": name, "data": {"data": str(data)},
                         "train": {"epochs": epochs}}, [*TINY, *extra])


@pytest.fixture
def no_training(monkeypatch) -> list:
    """train() up to the fit: the modules it would train are collected instead."""
    modules = []
    monkeypatch.setattr(train_module, "_fit", lambda trainer, module, *args: modules.append(module))
    return modules


def _start(cfg, caplog) -> tuple[dict, str]:
    """Start a run (no training): its anchor_fit.json and the anchor line it logged."""
    with caplog.at_level(logging.INFO):
        train(cfg, progress="none")
    lines = [r.getMessage() for r in caplog.records if "anchor" in r.getMessage() and "anchor_fit.json" in
             r.getMessage()]
    assert len(lines) == 1, lines
    return json.loads((cfg.run_dir / "anchor_fit.json").read_text()), lines[0]


# --------------------------------------------------------------------------------------------- decision


def _as_held(anchors: list) -> list:
    """Anchors as the model holds them (float32 buffers)."""
    return [torch.tensor(scale, dtype=torch.float32).tolist() for scale in anchors]


def _naive_bpr(wh: list[tuple[float, float]], anchors: list[tuple[float, float]], t: float) -> float:
    hits = sum(any(max(w / aw, aw / w, h / ah, ah / h) < t for aw, ah in anchors) for w, h in wh)
    return hits / len(wh)


def test_decision_on_hand_made_boxes():
    """Ten boxes, two anchors per scale: 8 boxes have an anchor within a factor 4 (hand count), 2 do not."""
    anchors = [[[40.0, 40.0], [60.0, 60.0]], [[10.0, 10.0], [20.0, 20.0]]]
    wh = [(10, 10), (12, 12), (15, 15), (20, 20), (25, 25), (40, 40), (50, 50), (60, 60),  # within 4x
          (2, 100), (100, 2)]  # needles: far from every anchor
    flat = [tuple(a) for scale in anchors for a in scale]
    assert _naive_bpr(wh, flat, 4.0) == 0.8
    boxes = torch.tensor(wh, dtype=torch.float32)

    kept = autoanchor(boxes, anchors, [32, 16], 4.0, 0.75)
    assert (kept.reason, kept.applied) == (FITS, False) and kept.configured["bpr_ratio"] == pytest.approx(0.8)
    assert [a.tolist() for a in kept.anchors] == anchors

    fitted = autoanchor(boxes, anchors, [32, 16], 4.0, 0.98)
    assert (fitted.reason, fitted.applied) == (APPLIED, True)
    new = [a.tolist() for a in fitted.anchors]
    assert _naive_bpr(wh, [tuple(a) for scale in new for a in scale], 4.0) == fitted.fitted["bpr_ratio"] > 0.8
    # the larger anchors go to the stride-32 head, the first in cfg order
    assert min(w * h for w, h in new[0]) >= max(w * h for w, h in new[1])
    assert fitted.record()["fitted"]["anchors"] == new and fitted.record()["configured"]["anchors"] == anchors

    assert autoanchor(boxes, anchors, [32, 16], 4.0, 0.98, pinned=True).reason == PINNED
    off = autoanchor(boxes, anchors, [32, 16], 4.0, 0.98, enabled=False)
    assert (off.reason, off.applied, [a.tolist() for a in off.anchors]) == (OFF, False, anchors)
    # seeded: the same seed gives the same anchors
    again = autoanchor(boxes, anchors, [32, 16], 4.0, 0.98)
    assert [a.tolist() for a in again.anchors] == new


def test_anchors_within_the_ratio_but_of_another_shape_are_refitted_under_the_iou_rule():
    """Boxes 10x40 and 11x42 and a 20x20 anchor: within a size ratio of 4 (42 / 20 = 2.1), so ultralytics' rule
    passes (recall 1), but their shape IoUs are 10 * 20 / (400 + 400 - 200) = 1/3 and 11 * 20 / (462 + 400 - 220)
    = 0.343 < 0.5 (recall at IoU 0.5: 0)."""
    wh = torch.tensor([[10.0, 40.0]] * 4 + [[11.0, 42.0]] * 4)
    square = [[[20.0, 20.0]]]
    ratio_only = autoanchor(wh, square, [32], 4.0, 0.98)
    assert (ratio_only.reason, ratio_only.configured["bpr_ratio"]) == (FITS, 1.0)
    assert ratio_only.configured["bpr_iou50"] == 0.0
    assert ratio_only.configured["mean_best_iou"] == pytest.approx((1 / 3 + 220 / 642) / 2)
    both = autoanchor(wh, square, [32], 4.0, 0.98, iou_threshold=0.8)
    assert (both.reason, both.applied) == (APPLIED, True) and both.fitted["bpr_iou50"] == 1.0
    w, h = both.anchors[0][0].tolist()
    assert 10 <= w <= 11 and 40 <= h <= 42  # the k-means anchor has the boxes' shape
    assert both.record()["iou_threshold"] == 0.8


def test_kmeans_no_better_keeps_the_anchors():
    """One anchor for a needle lying down and one standing up: no single anchor is within 4x of both, so the
    k-means anchor itself has recall 0.5 and is no better than itself."""
    wh = torch.tensor([[1.0, 100.0], [100.0, 1.0], [2.0, 90.0]])
    anchor = kmeans_anchors(wh, 1, seed=0).double().round(decimals=2)
    result = autoanchor(wh, [anchor], [32], 4.0, 0.98)
    assert (result.reason, result.applied) == (NOT_BETTER, False)


# --------------------------------------------------------------------------------------------- train start


def test_autoanchor_applied_at_train_start(thin, tmp_path, caplog, no_training):
    cfg = _config(thin, tmp_path, "auto")
    fit, line = _start(cfg, caplog)
    auto = fit["autoanchor"]
    assert (auto["applied"], auto["reason"], auto["pinned"], auto["enabled"]) == (True, APPLIED, False, True)
    assert auto["configured"]["anchors"] == CFG_ANCHORS and auto["configured"]["bpr_ratio"] == 0.0
    fitted = auto["fitted"]["anchors"]
    boxes = [(w * IMG, h * IMG) for image in THIN for _, w, h in image]
    assert auto["fitted"]["bpr_ratio"] == _naive_bpr(boxes, [tuple(a) for s in fitted for a in s], 4.0) == 1.0
    assert fit["bpr_ratio"] == 1.0 and fit["anchors"] == [a for s in fitted for a in s]  # the fit of what trains
    assert line.startswith("autoanchor: k-means anchors replace the cfg's: best possible recall 0.000 -> 1.000")
    saved = load_config(cfg.run_dir / "config.yaml")
    assert saved.model.anchors == fitted
    module = no_training[0]
    assert [a.tolist() for a in module.model.anchors] == _as_held(fitted)
    assert yolo_anchors(parse_cfg(module.hparams["cfg_text"])) == fitted  # the text the checkpoint stores


def test_pinned_and_off_keep_poor_anchors_and_say_how_to_fit(thin, tmp_path, caplog, no_training):
    pinned, line = _start(_config(thin, tmp_path, "pinned", [f"model.anchors={json.dumps(CFG_ANCHORS)}"]), caplog)
    assert (pinned["autoanchor"]["applied"], pinned["autoanchor"]["reason"]) == (False, PINNED)
    assert pinned["anchors"] == [a for s in CFG_ANCHORS for a in s] and pinned["bpr_ratio"] == 0.0
    assert "the anchors of model.anchors fit the training boxes poorly" in line
    assert "drop model.anchors to let yololab fit them" in line
    assert [a.tolist() for a in no_training[-1].model.anchors] == CFG_ANCHORS

    caplog.clear()
    off, line = _start(_config(thin, tmp_path, "off", ["model.autoanchor=false"]), caplog)
    assert (off["autoanchor"]["applied"], off["autoanchor"]["reason"]) == (False, OFF)
    assert "--set model.autoanchor=true to let yololab fit them" in line
    assert load_config(tmp_path / "off" / "config.yaml").model.anchors is None
    assert [a.tolist() for a in no_training[-1].model.anchors] == CFG_ANCHORS


def test_fitting_anchors_are_kept(fitting, tmp_path, caplog, no_training):
    fit, line = _start(_config(fitting, tmp_path, "fits"), caplog)
    assert (fit["autoanchor"]["applied"], fit["autoanchor"]["reason"]) == (False, FITS)
    assert fit["bpr_ratio"] == 1.0 and line.startswith("anchor fit: mean best IoU")
    assert load_config(tmp_path / "fits" / "config.yaml").model.anchors is None


def test_config_repeats_the_anchors_and_resume_does_not_refit(thin, tmp_path, caplog, monkeypatch):
    first = train(_config(thin, tmp_path, "run"), progress="none")
    fitted = json.loads((first.run_dir / "anchor_fit.json").read_text())["autoanchor"]["fitted"]["anchors"]
    # config.yaml alone rebuilds the model with the fitted anchors; so does the checkpoint
    saved = load_config(first.run_dir / "config.yaml")
    assert [a.tolist() for a in make_module(saved, ["a", "b"]).model.anchors] == _as_held(fitted)
    assert [a.tolist() for a in load_module(first.last_checkpoint).model.anchors] == _as_held(fitted)

    # A resume with a config that names no anchors keeps the checkpoint's and never fits.
    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must not fit anchors")

    monkeypatch.setattr(train_module, "autoanchor", refuse)
    record = (first.run_dir / "anchor_fit.json").read_text()
    resumed = train(_config(thin, tmp_path, "run", epochs=2), resume=True, progress="none")
    assert (first.run_dir / "anchor_fit.json").read_text() == record
    assert [a.tolist() for a in load_module(resumed.last_checkpoint).model.anchors] == _as_held(fitted)
    with pytest.raises(ConfigError, match="a resumed run keeps its anchors"):
        train(_config(thin, tmp_path, "run", [f"model.anchors={json.dumps(CFG_ANCHORS)}"], epochs=3), resume=True,
              progress="none")


def test_anchors_that_do_not_fit_the_cfg_are_refused(thin, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.anchors do not fit yolov3-tiny-small: 1 anchor sets given for 2"):
        train(_config(thin, tmp_path, "bad", ["model.anchors=[[[10,13],[16,30],[33,23]]]"]), progress="none")
    with pytest.raises(ConfigError, match="not a positive"):
        _config(thin, tmp_path, "bad", ["model.anchors=[[[10,0]]]"])


# --------------------------------------------------------------------------------------------- head priors


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _naive_label_priors(images, anchors, strides, num_classes) -> tuple[list[float], list[float]]:
    """Per scale logit((n_s + 1) / (images x cells x anchors + 2)) with n_s the boxes whose best shape-IoU anchor
    is there; per class logit((n_c + 1) / (boxes + 2)). Boxes and anchors share their centre."""
    n_scale = [0] * len(anchors)
    n_class = [0] * num_classes
    boxes = [(c, w * IMG, h * IMG) for image in images for c, w, h in image]
    for c, w, h in boxes:
        best, best_scale = -1.0, None
        for s, scale in enumerate(anchors):
            for aw, ah in scale:
                inter = min(w, aw) * min(h, ah)
                iou = inter / (w * h + aw * ah - inter)
                if iou > best:
                    best, best_scale = iou, s
        n_scale[best_scale] += 1
        n_class[c] += 1
    objectness = [_logit((n_scale[s] + 1) / (len(images) * (IMG / strides[s]) ** 2 * len(anchors[s]) + 2))
                  for s in range(len(anchors))]
    return objectness, [_logit((n + 1) / (len(boxes) + 2)) for n in n_class]


def _head_biases(model: Darknet) -> list[torch.Tensor]:
    """[A, 5 + C] bias of each head convolution."""
    out = []
    for h, yolo in enumerate(model.yolo_layers):
        conv = model.layers[model.head_indices[h]]
        out.append((conv.bn.bias if conv.bn is not None else conv.conv.bias).detach().view(yolo.num_anchors, -1))
    return out


def test_label_priors_match_a_naive_loop(thin, tmp_path, no_training):
    # the run's anchors are autoanchor's: they decide which scale each box goes to
    train(_config(thin, tmp_path, "labels", ["model.head_prior=labels"]), progress="none")
    model = no_training[0].model
    anchors = [a.tolist() for a in model.anchors]
    objectness, classes = _naive_label_priors(THIN, anchors, [32, 16], 2)
    for h, bias in enumerate(_head_biases(model)):
        torch.testing.assert_close(bias[:, 4], torch.full((3,), objectness[h]))
        torch.testing.assert_close(bias[:, 5:], torch.tensor([classes] * 3))
        assert (bias[:, :4] == 0).all()
    # the same numbers from the function, on the same boxes
    wh = torch.tensor([(w * IMG, h * IMG) for image in THIN for _, w, h in image])
    cls = torch.tensor([c for image in THIN for c, _, _ in image])
    direct = label_priors(wh, cls, len(THIN), model.anchors, [32, 16], IMG, 2)
    assert direct.objectness == pytest.approx(objectness) and direct.classes == pytest.approx(classes)


def test_label_priors_by_hand():
    """Two images of 64 px, one scale of stride 32 (2 x 2 cells) with one anchor: 3 boxes, classes 0, 0, 1.
    p = (3 + 1) / (2 x 4 x 1 + 2) = 0.4; class 0: (2 + 1) / (3 + 2) = 0.6, class 1: 2 / 5 = 0.4."""
    priors = label_priors(torch.tensor([[10.0, 10.0], [20.0, 20.0], [5.0, 8.0]]), torch.tensor([0, 0, 1]), 2,
                          [torch.tensor([[10.0, 10.0]])], [32], 64, 2)
    assert priors.objectness == pytest.approx((math.log(0.4 / 0.6),))
    assert priors.classes == pytest.approx((math.log(0.6 / 0.4), math.log(0.4 / 0.6)))


def test_no_head_prior_starts_objectness_at_one_half(tmp_path):
    model = Darknet.from_cfg(read_cfg_text(CFG), num_classes=2, head_priors="none")
    for h in range(len(model.yolo_layers)):
        model.layers[model.head_indices[h]].conv.weight.data.zero_()  # the output is the bias alone
    raw = model.eval()(torch.rand(1, 3, IMG, IMG))
    for out in raw:
        assert torch.equal(torch.sigmoid(out[..., 4:]), torch.full_like(out[..., 4:], 0.5))


def test_reinitialised_heads_of_darknet_weights_take_the_priors(tmp_path):
    """Weights of a 3-class model loaded into a 2-class one: the heads start again from the model's priors."""
    path = save_darknet_weights(Darknet.from_cfg(read_cfg_text(CFG), num_classes=3), tmp_path / "three.weights")
    priors = HeadPriors((-3.0, -5.0), (-1.0, -2.0))
    model = Darknet.from_cfg(read_cfg_text(CFG), num_classes=2, head_priors=priors)
    for bias in _head_biases(model):
        bias.fill_(7.0)
    report = load_darknet_weights(model, path)
    assert report.reinitialised
    for h, bias in enumerate(_head_biases(model)):
        assert (bias[:, 4] == priors.objectness[h]).all()
        assert (bias[:, 5:] == torch.tensor([[-1.0, -2.0]] * 3)).all()
