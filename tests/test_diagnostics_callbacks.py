"""Diagnostics callbacks: validation histograms and gradient shares, checked against numpy and by hand."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from yololab.config import build_config
from yololab.data import YoloDataset, make_digits
from yololab.data.augment import AugmentConfig
from yololab.diagnostics.callbacks import (
    HIST_KINDS,
    DiagnosticsConfig,
    FixedBinHistograms,
    GradientShare,
    ReportCallback,
    ValidationHistograms,
    bin_counts,
    diagnostics_callbacks,
    gradient_shares,
    histogram_values,
    measure_gradient_shares,
)
from yololab.diagnostics.doctor_callback import DoctorCallback
from yololab.engine.datamodule import YoloDataModule
from yololab.engine.train import train
from yololab.loss import YoloLoss, preset
from yololab.loss.assign import Assignment
from yololab.model.build import build_model, read_cfg_text
from yololab.model.coder import BoxCoder

BINS = 10
ANCHORS = [torch.tensor([[10.0, 14.0], [23.0, 27.0]]), torch.tensor([[37.0, 58.0], [81.0, 82.0]])]
STRIDES = [8, 16]
INPUT = 64  # pixels: grids of 8 and 4 cells
CLASSES = 3


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _iou_by_hand(a, b) -> float:
    """a, b: (cx, cy, w, h)."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _hand_batch(seed: int, batch: int = 2):
    """Raw outputs for two scales, a few truths and an assignment of them, all made up by hand."""
    gen = torch.Generator().manual_seed(seed)
    raw = [torch.randn(batch, 2, INPUT // s, INPUT // s, 5 + CLASSES, generator=gen) for s in STRIDES]
    targets = torch.tensor([[0, 1, 0.30, 0.40, 0.20, 0.25],
                            [1, 0, 0.70, 0.60, 0.50, 0.40],
                            [1, 2, 0.10, 0.90, 0.10, 0.12]])
    # The cell holding each centre, truth 1 assigned at two scales (the histograms read only these fields).
    assignment = Assignment(
        scale=torch.tensor([0, 1, 0, 0]), image=torch.tensor([0, 1, 1, 1]), anchor=torch.tensor([1, 0, 1, 0]),
        gy=torch.tensor([3, 2, 4, 7]), gx=torch.tensor([2, 2, 5, 0]), target=torch.tensor([0, 1, 1, 2]),
        shape_iou=torch.ones(4), matched=torch.ones(3, 2, dtype=torch.bool), home_scale=torch.tensor([0, 1, 0]))
    return raw, targets, assignment


def _naive_values(raw, targets, assignment) -> dict[str, list[float]]:
    """The same samples as histogram_values, by explicit loops in plain Python."""
    out = {f"{k}/s{i}": [] for i in range(len(raw)) for k in HIST_KINDS}
    positives = set()
    for s, b, a, gy, gx, t in zip(*(x.tolist() for x in assignment), strict=True):
        p = raw[s][b, a, gy, gx].tolist()
        stride = STRIDES[s]
        pred = ((gx + _sigmoid(p[0])) * stride, (gy + _sigmoid(p[1])) * stride,
                math.exp(p[2]) * float(ANCHORS[s][a, 0]), math.exp(p[3]) * float(ANCHORS[s][a, 1]))
        truth = [v * INPUT for v in targets[t, 2:6].tolist()]
        out[f"obj_pos/s{s}"].append(_sigmoid(p[4]))
        out[f"iou/s{s}"].append(_iou_by_hand(pred, truth))
        positives.add((s, b, a, gy, gx))
    for s, r in enumerate(raw):
        for b, a, gy, gx in np.ndindex(*r.shape[:4]):
            if (s, b, a, gy, gx) not in positives:
                out[f"obj_neg/s{s}"].append(_sigmoid(float(r[b, a, gy, gx, 4])))
    return out


def test_bin_counts_match_numpy_including_the_edges():
    values = torch.cat((torch.rand(1000, generator=torch.Generator().manual_seed(0)), torch.tensor([0.0, 1.0])))
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    expected, _ = np.histogram(values.numpy().astype(np.float64), bins=edges.numpy())
    assert bin_counts(values, edges).tolist() == expected.tolist()


def test_histogram_values_match_a_naive_loop():
    raw, targets, assignment = _hand_batch(0)
    got = histogram_values(raw, targets, assignment, ANCHORS, STRIDES, BoxCoder("yolov3"))
    naive = _naive_values(raw, targets, assignment)
    assert set(got) == set(naive)
    for key, values in naive.items():
        assert got[key].tolist() == pytest.approx(values, rel=1e-5, abs=1e-6), key
    # 2 images x 2 anchors x (64 + 16) cells, minus the 4 responsible predictions.
    assert len(got["obj_neg/s0"]) + len(got["obj_neg/s1"]) == 2 * 2 * (64 + 16) - 4


def _fake_trainer(tmp_path=None, step=0):
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[], current_epoch=0,
                           global_step=step, strategy=SimpleNamespace(root_device=torch.device("cpu")))


def test_validation_histograms_cover_the_full_set_with_bounded_memory(tmp_path):
    loss = SimpleNamespace(anchors=ANCHORS, strides=STRIDES, coder=BoxCoder("yolov3"))
    module = SimpleNamespace(loss=loss)
    callback = ValidationHistograms(tmp_path / "histograms.jsonl", BINS)
    trainer = _fake_trainer()
    callback.on_validation_epoch_start(trainer, module)
    state_size = None
    pooled: dict[str, list[float]] = {}
    for batch_idx in range(6):
        raw, targets, assignment = _hand_batch(batch_idx)
        outputs = {"raw": raw, "breakdown": SimpleNamespace(assignment=assignment)}
        callback.on_validation_batch_end(trainer, module, outputs, (None, targets, None), batch_idx)
        for key, values in _naive_values(raw, targets, assignment).items():
            pooled.setdefault(key, []).extend(values)
        hist = callback._hist
        size = sum(t.numel() * t.element_size() for t in (hist.counts, hist.moments, hist.edges))
        assert state_size in (None, size)  # one batch or six: the same memory
        state_size = size
    callback.on_validation_epoch_end(trainer, module)

    line = json.loads((tmp_path / "histograms.jsonl").read_text())
    edges = np.linspace(0, 1, BINS + 1)
    assert line["edges"] == pytest.approx(edges.tolist())
    assert set(line["histograms"]) == set(pooled)
    for key, values in pooled.items():
        expected, _ = np.histogram(values, bins=edges)
        row = line["histograms"][key]
        assert row["counts"] == expected.tolist(), key
        assert row["num"] == len(values)
        assert row["sum"] == pytest.approx(sum(values), rel=1e-6)
        assert row["min"] == pytest.approx(min(values)) and row["max"] == pytest.approx(max(values))


def test_unknown_histogram_key_is_an_error():
    with pytest.raises(KeyError, match="obj_pos/s9"):
        FixedBinHistograms(["obj_pos/s0"], BINS).update({"obj_pos/s9": torch.rand(3)})


def test_gradient_shares_of_a_hand_made_loss():
    gen = torch.Generator().manual_seed(0)
    raw = [torch.randn(2, 3, generator=gen, requires_grad=True), torch.randn(4, generator=gen, requires_grad=True)]
    terms = {
        "xy/s0": (raw[0] ** 2).sum(),  # gradient 2 r0: norm 2 |r0|
        "obj/s0": 3 * raw[0].sum(),  # gradient 3 everywhere: norm 3 sqrt(6)
        "cls/s0": 0 * raw[0].sum(),  # a zero term: no share
        "noobj/s1": raw[1].sum(),  # the only term of scale 1: norm 2 (4 elements)
        "box/s1": torch.tensor(0.0),  # a constant, no graph at all
    }
    shares = gradient_shares(raw, terms)
    a, b = 2 * float(raw[0].detach().norm()), 3 * math.sqrt(6)
    assert shares["xy/s0"] == pytest.approx(a / (a + b))
    assert shares["obj/s0"] == pytest.approx(b / (a + b))
    assert shares["cls/s0"] == 0.0 and shares["box/s1"] == 0.0
    assert shares["noobj/s1"] == pytest.approx(1.0)
    assert raw[0].grad is None and raw[1].grad is None


def test_gradient_share_callback_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model(read_cfg_text("yolov3-tiny-3l-small"), num_classes=CLASSES).train()
    loss = YoloLoss(preset("yololab"), model.anchors, model.strides, CLASSES)
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logged: dict[str, float] = {}
    module = SimpleNamespace(model=model, loss=loss, log=lambda name, value, **_: logged.__setitem__(name, value))
    images = torch.rand(2, model.channels, INPUT, INPUT)
    targets = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.25], [1, 0, 0.7, 0.6, 0.5, 0.4]])
    callback = GradientShare(every=3)
    for step in (1, 2, 3):  # measured at step 1 only (then 4, 7, ...)
        callback.on_train_batch_end(_fake_trainer(step=step), module, None, (images, targets, None), 0)
        if step == 1:
            assert logged
            first = dict(logged)
    assert logged == first
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    n_scales = len(model.strides)
    for i in range(n_scales):
        scale = {k: v for k, v in logged.items() if k.endswith(f"/s{i}")}
        assert sum(scale.values()) == pytest.approx(1.0)
    assert {k.split("/")[2] for k in logged} == {"box", "obj", "noobj", "cls"}  # the yololab preset's terms


def test_gradient_share_measures_the_data_modules_fixed_batch():
    """With a data module offering fixed_batch(), the shares are those of that batch, not of the batch just
    trained: computed directly with measure_gradient_shares on each for comparison."""
    torch.manual_seed(0)
    model = build_model(read_cfg_text("yolov3-tiny-3l-small"), num_classes=CLASSES).train()
    loss = YoloLoss(preset("yololab"), model.anchors, model.strides, CLASSES)
    fixed = (torch.rand(2, model.channels, INPUT, INPUT), torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.25]]))
    trained = (torch.rand(2, model.channels, INPUT, INPUT), torch.tensor([[1, 0, 0.7, 0.6, 0.5, 0.4]]))
    logged: dict[str, float] = {}
    module = SimpleNamespace(model=model, loss=loss, log=lambda name, value, **_: logged.__setitem__(name, value))
    trainer = _fake_trainer(step=1)
    trainer.datamodule = SimpleNamespace(fixed_batch=lambda: fixed)
    GradientShare(every=1).on_train_batch_end(trainer, module, None, (*trained, None), 0)
    expected = measure_gradient_shares(model, loss, *fixed, step=0)
    other = measure_gradient_shares(model, loss, *trained, step=0)
    assert logged == pytest.approx({f"train/grad_share/{k}": v for k, v in expected.items()})
    assert logged != pytest.approx({f"train/grad_share/{k}": v for k, v in other.items()})


def test_fixed_batch_is_the_first_images_never_augmented(tmp_path):
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    augment = AugmentConfig(enabled=True, fliplr=1.0)
    dm = YoloDataModule(data, img_size=64, batch_size=3, workers=0, channels=3, augment=augment)
    images, targets = dm.fixed_batch()
    again, _ = dm.fixed_batch()
    plain = YoloDataset(dm.spec.splits["train"][:3], dm.spec.num_classes, 64, channels=3)
    assert torch.equal(images, again) and images.shape[0] == 3
    assert not torch.equal(dm.dataset("train")[0][0], plain[0][0])  # training itself flips every image
    for i in range(3):
        assert torch.equal(images[i], plain[i][0])
        rows = targets[targets[:, 0] == i, 1:]
        assert torch.equal(rows, plain[i][1])


def test_config_switches():
    assert [type(c) for c in diagnostics_callbacks(DiagnosticsConfig(), "run")] == [
        ValidationHistograms, GradientShare, DoctorCallback, ReportCallback]
    off = DiagnosticsConfig(histograms=False, grad_share_every=0, doctor=False, report=False)
    assert diagnostics_callbacks(off, "run") == []
    with pytest.raises(ValueError):
        DiagnosticsConfig(typo=1)


def test_training_writes_histograms_and_gradient_shares(tmp_path):
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    cfg = build_config({"project": str(tmp_path), "name": "run", "data": {"data": str(data)}, "train": {"epochs": 1}},
                       ["data.imgsz=64", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"])
    train(cfg, progress="none")
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "histograms.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0]  # the sanity check writes nothing
    hist = lines[0]["histograms"]
    n_preds = sum(3 * (64 // s) ** 2 for s in (8, 16, 32))  # 3 anchors per scale of the tiny-3l cfg
    n_val = sum(1 for _ in (data.parent / "images" / "val").iterdir())
    assert sum(hist[f"{k}/s{i}"]["num"] for k in ("obj_pos", "obj_neg") for i in range(3)) >= n_val * n_preds
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shares = {k: v for k, v in rows[0].items() if k.startswith("grad_share/")}
    assert set(shares) == {f"grad_share/{t}/s{i}" for t in ("box", "obj", "noobj", "cls") for i in range(3)}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    # A histogram without samples (a scale that received no truths) is left out of TensorBoard.
    assert set(events.Tags()["histograms"]) == {f"val/hist/{k}" for k, row in hist.items() if row["num"]}
    assert "val/hist/obj_neg/s0" in events.Tags()["histograms"]
