"""The doctor's rules on hand-built metric histories: each must fire on its pattern and stay quiet on a
healthy run; the CLI writes findings.json and exits 0 with findings, 2 on unreadable input."""

from __future__ import annotations

import json
import math

import pytest
import typer
import yaml
from typer.testing import CliRunner

from yololab.commands.doctor import doctor_command
from yololab.diagnostics import DoctorConfig, DoctorInputError, diagnose, diagnose_run

EPOCHS = 6
SCALES = 3
TERMS = ("box", "obj", "noobj", "cls")


def healthy_rows() -> list[dict]:
    """A run that learns: losses fall on both splits, objectness separates, IoU and mAP rise.

    Values are shaped like a real yololab run's metrics.jsonl (3 scales, the default giou preset).
    """
    rows = []
    for e in range(EPOCHS):
        for split in ("train", "val"):
            row = {"epoch": e, "split": split, "step": 10 * (e + 1)}
            for s in range(SCALES):
                for i, term in enumerate(TERMS):
                    row[f"loss/{term}/s{s}"] = (0.5 + 0.1 * i + 0.05 * s) * 0.9 ** e
                    row[f"unweighted/{term}/s{s}"] = row[f"loss/{term}/s{s}"]
                row[f"stat/n_pos/s{s}"] = 10.0 + 10 * s
                row[f"stat/n_ignored/s{s}"] = 1.0
                row[f"stat/iou/s{s}"] = 0.4 + 0.06 * e
                row[f"stat/obj_pos/s{s}"] = 0.4 + 0.08 * e
                row[f"stat/obj_neg/s{s}"] = 0.01 / (e + 1)
                row[f"stat/cls_prob/s{s}"] = 0.5 + 0.05 * e
                row[f"stat/recall50/s{s}"] = 0.3 + 0.1 * e
                row[f"stat/recall75/s{s}"] = 0.05 * e
            if split == "train":
                row["lr"] = 2e-3
                row["warmup"] = 0.5 if e == 0 else 0.0
            else:
                row["mAP50"] = 0.1 + 0.1 * e
                row["mAP50_95"] = 0.05 + 0.05 * e
            rows.append(_retotal(row))
    return rows


HEALTHY_FIT = {
    "mean_best_iou": 0.74, "bpr_iou50": 0.93, "bpr_ratio": 1.0, "share_per_scale": [0.2, 0.35, 0.45],
    "spread_per_scale": [{"area_ratio": 3.5, "aspect_ratio": 1.0}, {"area_ratio": 3.6, "aspect_ratio": 1.01},
                         {"area_ratio": 4.5, "aspect_ratio": 1.01}],
}


def _retotal(row: dict) -> dict:
    terms = [v for k, v in row.items() if k.startswith("loss/") and k != "loss/total"]
    row["loss/total"] = sum(terms) if all(v is not None for v in terms) else None
    return row


def set_values(rows: list[dict], split: str, key: str, values: dict[int, float | None],
               retotal: bool = True) -> list[dict]:
    """Set ``key`` of the ``split`` rows of the given epochs (and recompute loss/total from the terms)."""
    for row in rows:
        if row["split"] == split and row["epoch"] in values:
            row[key] = values[row["epoch"]]
            if retotal and key.startswith("loss/") and key != "loss/total":
                _retotal(row)
    return rows


def only(findings, rule):
    return [f for f in findings if f.rule == rule]


# --------------------------------------------------------------------------------------------- healthy


def test_healthy_history_gives_no_findings():
    assert diagnose(healthy_rows(), HEALTHY_FIT, DoctorConfig()) == []


def test_real_like_tiny_run_gives_no_errors():
    # the shape of a 4-epoch digits run: no positives at s0 in val (stats null, terms 0), objectness not yet
    # separated but IoU 0.3-0.45, a scale that anchor_fit gives no truths
    rows = healthy_rows()
    for s in (1, 2):
        set_values(rows, "val", f"stat/obj_pos/s{s}", {e: 0.004 for e in range(EPOCHS)})
        set_values(rows, "val", f"stat/obj_neg/s{s}", {e: 0.004 for e in range(EPOCHS)})
        set_values(rows, "val", f"stat/iou/s{s}", {e: 0.31 for e in range(EPOCHS)})
    for name in ("iou", "obj_pos", "cls_prob", "recall50", "recall75"):
        set_values(rows, "val", f"stat/{name}/s0", {e: None for e in range(EPOCHS)})
    for term in ("box", "obj", "cls"):
        set_values(rows, "val", f"loss/{term}/s0", {e: 0.0 for e in range(EPOCHS)})
    set_values(rows, "train", "stat/n_pos/s0", {e: 0.0 for e in range(EPOCHS)})
    fit = {**HEALTHY_FIT, "share_per_scale": [0.0, 0.375, 0.625]}
    findings = diagnose(rows, fit, DoctorConfig())
    assert [f for f in findings if f.severity == "error"] == []
    assert [(f.rule, f.scale) for f in findings] == [("scale_without_truths", 0)]


# --------------------------------------------------------------------------------------------- rule 1


def test_targets_not_found_fires_on_unseparated_objectness_and_zero_iou():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s1", {e: 0.02 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s1", {e: 0.015 for e in range(EPOCHS)})  # ratio 1.33 < 2
    set_values(rows, "val", "stat/iou/s1", {e: 0.03 for e in range(EPOCHS)})
    found = only(diagnose(rows, HEALTHY_FIT), "targets_not_found")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("error", 1, "obj", 1)  # epoch 0 is settling
    assert f.numbers == {"obj_pos": 0.02, "obj_neg": 0.015, "iou": 0.03}
    assert "encoding" in f.suggestion


def test_targets_not_found_quiet_when_iou_is_fine():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s1", {e: 0.004 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s1", {e: 0.004 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/iou/s1", {e: 0.43 for e in range(EPOCHS)})
    assert only(diagnose(rows, HEALTHY_FIT), "targets_not_found") == []


def _unseparated_with_prior(iou: float, prior: float) -> list[dict]:
    """Scale 1 with objectness not separated (ratio 1.33) and the given IoU and anchor-prior IoU, in a run whose
    val mAP50 stays near 0 as with x/y-swapped labels (0.004-0.018 in tests/test_doctor_end_to_end.py's set-up)."""
    rows = healthy_rows()
    set_values(rows, "val", "mAP50", {e: 0.01 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_pos/s1", {e: 0.02 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s1", {e: 0.015 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/iou/s1", {e: iou for e in range(EPOCHS)})
    for s in range(SCALES):  # the other scales localise well beyond their prior
        set_values(rows, "val", f"stat/iou_prior/s{s}", {e: prior if s == 1 else 0.2 for e in range(EPOCHS)})
    return rows


def test_targets_not_found_reads_iou_above_the_anchor_prior():
    # x/y-swapped labels: IoU 0.45 looks fine, but the anchors alone give 0.38 (gain 0.07 < 0.1).
    found = only(diagnose(_unseparated_with_prior(iou=0.45, prior=0.38), HEALTHY_FIT), "targets_not_found")
    assert [(f.scale, f.first_epoch) for f in found] == [(1, 1)]
    assert found[0].numbers == {"obj_pos": 0.02, "obj_neg": 0.015, "iou": 0.45, "iou_prior": 0.38}
    assert "0.38 the anchors alone give" in found[0].message


def test_targets_not_found_quiet_when_iou_beats_the_prior():
    # 0.50 - 0.38 = 0.12 above the default gain of 0.1: the network localises, objectness is another problem.
    assert only(diagnose(_unseparated_with_prior(iou=0.50, prior=0.38), HEALTHY_FIT), "targets_not_found") == []
    strict = DoctorConfig(unfound_iou_gain=0.15)
    assert len(only(diagnose(_unseparated_with_prior(iou=0.50, prior=0.38), HEALTHY_FIT, strict),
                    "targets_not_found")) == 1


# --------------------------------------------------------------------------------------------- rule 2


def test_low_but_separated_objectness_suggests_threshold_and_target():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s0", {e: 0.3 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s0", {e: 0.002 for e in range(EPOCHS)})
    found = only(diagnose(rows, HEALTHY_FIT, loss={"obj_target": "iou", "obj_weight": 1.5}),
                 "low_separated_objectness")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("info", 0, "obj", 1)
    assert f.numbers["obj_pos"] == 0.3 and f.numbers["ratio"] == pytest.approx(150.0)
    assert f.changes == {"loss.obj_weight": 3.0, "loss.obj_target": "one"}


def test_low_objectness_not_separated_is_not_this_rule():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s0", {e: 0.3 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s0", {e: 0.2 for e in range(EPOCHS)})  # ratio 1.5
    assert only(diagnose(rows, HEALTHY_FIT), "low_separated_objectness") == []


# --------------------------------------------------------------------------------------------- rule 3


def test_false_positive_objectness_from_the_epoch_it_started():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_neg/s2", {3: 0.3, 4: 0.35, 5: 0.4})
    found = only(diagnose(rows, HEALTHY_FIT, loss={"noobj_weight": 1.5}), "false_positive_objectness")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("warning", 2, "noobj", 3)
    assert f.numbers == {"obj_neg": 0.4, "obj_pos": pytest.approx(0.4 + 0.08 * 5)}
    assert f.changes == {"loss.noobj_weight": 3.0}


def test_false_positive_objectness_quiet_when_it_recovers():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_neg/s2", {2: 0.3, 3: 0.2})  # high for a while, low at the end
    assert only(diagnose(rows, HEALTHY_FIT), "false_positive_objectness") == []


EDGES = [k / 20 for k in range(21)]  # 20 bins like the callback's default; edge 10 is 0.5


def _histograms(fp_at_half: dict[int, int], below_half: int = 30, n_pos: int = 10) -> list[dict]:
    """histograms.jsonl rows where scale 0 has ``n_pos`` responsible predictions and, per epoch,
    ``fp_at_half[e]`` other predictions in the bin [0.5, 0.55) plus ``below_half`` in [0.45, 0.5), which
    must not count; other scales have nothing above 0.5."""
    rows = []
    for e in range(EPOCHS):
        hist = {}
        for s in range(SCALES):
            neg = [1000] + [0] * 19
            if s == 0:
                neg[9], neg[10] = below_half, fp_at_half.get(e, 0)
            hist[f"obj_neg/s{s}"] = {"counts": neg, "num": sum(neg)}
            hist[f"obj_pos/s{s}"] = {"counts": [0] * 19 + [n_pos], "num": n_pos}
        rows.append({"epoch": e, "edges": EDGES, "histograms": hist})
    return rows


def test_false_positives_counted_from_the_histograms():
    # 60 predictions >= 0.5 away from 10 objects = 6 per truth > 5, while the mean obj_neg stays low.
    hist = _histograms({e: 60 for e in range(2, EPOCHS)})
    found = only(diagnose(healthy_rows(), HEALTHY_FIT, loss={"obj_weight": 2500.0, "noobj_weight": 1.0},
                          histograms=hist), "false_positive_objectness")
    assert [(f.scale, f.first_epoch) for f in found] == [(0, 2)]
    assert found[0].numbers["fp_per_truth"] == 6.0
    # 2500:1 is 100x the 25:1 that worked: one change that gets there, not 2500 -> 1250 and noobj x 2 (625:1)
    assert found[0].changes == {"loss.obj_weight": 25.0}
    assert "2.5e+03x noobj, 100x the 25:1" in found[0].suggestion and "loss.noobj_weight=100" in found[0].suggestion
    assert "6 predictions away from objects above 0.5" in found[0].message


def test_false_positives_below_the_limit_or_below_the_confidence_are_quiet():
    # 40 per 10 truths = 4 <= 5; and the 30 at [0.45, 0.5) never count
    hist = _histograms({e: 40 for e in range(EPOCHS)})
    assert only(diagnose(healthy_rows(), HEALTHY_FIT, histograms=hist), "false_positive_objectness") == []
    assert only(diagnose(healthy_rows(), HEALTHY_FIT, histograms=_histograms({}, below_half=1000)),
                "false_positive_objectness") == []
    strict = DoctorConfig(max_fp_per_truth=3.0)
    assert len(only(diagnose(healthy_rows(), HEALTHY_FIT, strict, histograms=hist),
                    "false_positive_objectness")) == 1


# --------------------------------------------------------------------------------------------- rule 4


@pytest.mark.parametrize(("box_loss", "changes"), [("mse", {"loss.box_loss": "giou"}),
                                                   ("giou", {"model.autoanchor": True})])
def test_lagging_scale_iou(box_loss, changes):
    rows = healthy_rows()
    set_values(rows, "val", "stat/iou/s2", {e: 0.15 + 0.005 * e for e in range(EPOCHS)})
    found = only(diagnose(rows, HEALTHY_FIT, loss={"box_loss": box_loss}), "lagging_scale_iou")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("warning", 2, "box", 0)
    assert f.numbers["iou_first"] == 0.15 and f.numbers["iou_last"] == pytest.approx(0.175)
    assert f.numbers["improving_scales"] == [0, 1]
    assert f.changes == changes


def test_lagging_iou_quiet_when_no_scale_improves():
    rows = healthy_rows()
    for s in range(SCALES):  # all flat: a global problem, not one scale's
        set_values(rows, "val", f"stat/iou/s{s}", {e: 0.2 for e in range(EPOCHS)})
    assert only(diagnose(rows, HEALTHY_FIT), "lagging_scale_iou") == []


# --------------------------------------------------------------------------------------------- rule 5


def test_overfitting_names_term_scale_and_start():
    rows = healthy_rows()
    set_values(rows, "val", "loss/obj/s1", {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.85, 4: 0.9, 5: 0.95})
    set_values(rows, "val", "mAP50", {4: 0.45, 5: 0.4})  # mAP50 peaks at epoch 4, before the rise ends
    found = only(diagnose(rows, HEALTHY_FIT), "overfitting")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("warning", 1, "obj", 3)
    train = (0.5 + 0.1 + 0.05) * 0.9 ** 2, (0.5 + 0.1 + 0.05) * 0.9 ** 5
    assert f.numbers == {"val_before": 0.8, "val_now": 0.95, "train_before": pytest.approx(train[0]),
                         "train_now": pytest.approx(train[1]), "epoch_before": 2, "epoch_now": 5,
                         "best_map_epoch": 4, "best_map": 0.45, "map_now": 0.4}
    assert f.changes == {"train.epochs": 5}  # epochs 0-4: up to the mAP peak
    assert "rose from 0.8 (epoch 2) to 0.95 now (epoch 5)" in f.message


def test_overfitting_quiet_while_map_still_rises():
    # the same rise, but mAP50 rises to the last epoch (healthy_rows): nothing has been lost, nothing to say
    rows = healthy_rows()
    set_values(rows, "val", "loss/obj/s1", {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.85, 4: 0.9, 5: 0.95})
    assert only(diagnose(rows, HEALTHY_FIT), "overfitting") == []


@pytest.mark.parametrize(("map50", "kept"), [
    ({2: 0.5, 3: 0.45, 4: 0.4, 5: 0.35}, 2),  # the peak at epoch 2, then falling while train loss falls
    ({2: 0.5, 3: 0.5, 4: 0.4, 5: 0.35}, 2),  # a tie: best.ckpt is replaced only on a higher mAP50, so epoch 2
    ({2: 0.3, 3: 0.5, 4: 0.4, 5: 0.35}, 3),
])
def test_overfitting_names_the_epoch_to_keep_and_its_checkpoint(map50, kept):
    rows = healthy_rows()  # train terms fall every epoch (0.9 ** epoch)
    set_values(rows, "val", "loss/obj/s1", {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.85, 4: 0.9, 5: 0.95})
    set_values(rows, "val", "mAP50", map50)
    (f,) = only(diagnose(rows, HEALTHY_FIT), "overfitting")
    assert f"The epoch to keep is {kept}: checkpoints/best.ckpt holds it (`--weights best`" in f.message
    assert f"peaked at {map50[kept]:.3g} in epoch {kept} and is 0.35 now" in f.message
    assert (f.numbers["best_map_epoch"], f.changes) == (kept, {"train.epochs": kept + 1})


def test_overfitting_without_map_names_no_epoch_to_keep():
    rows = healthy_rows()
    set_values(rows, "val", "loss/obj/s1", {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.85, 4: 0.9, 5: 0.95})
    set_values(rows, "val", "mAP50", {e: None for e in range(EPOCHS)})
    (f,) = only(diagnose(rows, HEALTHY_FIT), "overfitting")
    assert "epoch to keep" not in f.message and f.changes == {"train.epochs": 3}  # the epoch before the rise + 1


def test_overfitting_needs_k_rising_epochs():
    rows = healthy_rows()
    set_values(rows, "val", "loss/obj/s1", {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.7, 4: 0.9, 5: 0.95})  # 2 rises
    set_values(rows, "val", "mAP50", {4: 0.3, 5: 0.3})  # mAP50 peaks at epoch 3
    assert only(diagnose(rows, HEALTHY_FIT), "overfitting") == []
    assert len(only(diagnose(rows, HEALTHY_FIT, DoctorConfig(overfit_epochs=2)), "overfitting")) == 1


# --------------------------------------------------------------------------------------------- rule 6


def _memorising(val_cls: dict[int, float]) -> list[dict]:
    """Healthy rows whose class term at scale 0 goes to 0.008 on training (0.8 * 0.4 ** epoch) with ``val_cls``
    on validation."""
    rows = healthy_rows()
    set_values(rows, "train", "loss/cls/s0", {e: 0.8 * 0.4 ** e for e in range(EPOCHS)})
    return set_values(rows, "val", "loss/cls/s0", val_cls)


STALLED_VAL_CLS = {0: 0.8, 1: 0.7, 2: 0.65, 3: 0.62, 4: 0.61, 5: 0.6}  # kept 75 % of its first value


@pytest.mark.parametrize(("data_config", "changes", "said"), [
    ({"augment": {"enabled": False}}, {"data.augment.enabled": True}, "augmentation (it is off)"),
    ({"augment": {"enabled": True}}, {}, "augmentation:"),
    (None, {}, "augmentation:"),
])
def test_memorised_training_images_when_validation_stalls_while_training_learns(data_config, changes, said):
    (f,) = only(diagnose(_memorising(STALLED_VAL_CLS), HEALTHY_FIT, data_config=data_config),
                "memorised_training_images")
    train = 0.8 * 0.4 ** 5
    assert (f.severity, f.scale, f.term, f.first_epoch) == ("warning", 0, "cls", 5)
    assert f.numbers["train"] == pytest.approx(train) and (f.numbers["val"], f.numbers["val_first"]) == (0.6, 0.8)
    assert f.numbers["ratio"] == pytest.approx(0.6 / train) and list(f.numbers["gaps"]) == ["cls/s0"]
    assert "0.00819 on training and 0.6 on validation (73x), where validation started at 0.8" in f.message
    assert f.changes == changes and said in f.suggestion


@pytest.mark.parametrize(("val_cls", "the_reason"), [
    ({0: 0.8, 1: 0.7, 2: 0.6, 3: 0.5, 4: 0.4, 5: 0.35}, {"gap_val_kept": 0.4}),  # validation learnt: kept 44 %
    ({e: 0.1 for e in range(EPOCHS)}, {"gap_share": 0.0}),  # 12x the train term, a gap of 0.09 in a total of 5
])
def test_memorised_training_images_quiet_when_validation_learns_or_the_gap_is_small(val_cls, the_reason):
    rows = _memorising(val_cls)
    assert only(diagnose(rows, HEALTHY_FIT), "memorised_training_images") == []
    assert len(only(diagnose(rows, HEALTHY_FIT, DoctorConfig(**the_reason)), "memorised_training_images")) == 1


def test_memorised_training_images_quiet_below_the_ratio():
    rows = _memorising(STALLED_VAL_CLS)
    set_values(rows, "train", "loss/cls/s0", {5: 0.07})  # 0.6 / 0.07 = 8.6x
    assert only(diagnose(rows, HEALTHY_FIT), "memorised_training_images") == []


def test_identically_zero_class_term_with_softmax():
    rows = healthy_rows()
    for split in ("train", "val"):
        set_values(rows, split, "loss/cls/s0", {e: 0.0 for e in range(EPOCHS)})
    found = only(diagnose(rows, HEALTHY_FIT, loss={"cls_loss": "softmax_ce"}), "zero_term")
    assert [(f.severity, f.scale, f.term, f.first_epoch) for f in found] == [("warning", 0, "cls", 0)]
    assert found[0].numbers == {"epochs": EPOCHS, "max_abs": 0.0}
    assert found[0].changes == {"loss.cls_loss": "bce"}


def test_zero_terms_at_a_scale_without_truths_are_fine():
    rows = healthy_rows()
    set_values(rows, "train", "stat/n_pos/s0", {e: 0.0 for e in range(EPOCHS)})
    for term in ("box", "obj", "cls"):
        set_values(rows, "train", f"loss/{term}/s0", {e: 0.0 for e in range(EPOCHS)})
    assert only(diagnose(rows, HEALTHY_FIT), "zero_term") == []


def test_negative_and_non_finite_terms():
    rows = healthy_rows()
    set_values(rows, "val", "loss/box/s0", {2: -0.1, 3: -0.2})
    set_values(rows, "train", "loss/obj/s1", {4: None})
    found = only(diagnose(rows, HEALTHY_FIT), "bad_term")
    got = {(f.numbers["split"], f.scale, f.term): f for f in found}
    neg = got[("val", 0, "box")]
    assert (neg.severity, neg.first_epoch, neg.numbers["value"], neg.numbers["epochs"]) == ("error", 2, -0.1, 2)
    nan = got[("train", 1, "obj")]
    assert (nan.first_epoch, nan.numbers["value"]) == (4, None)
    # the total of that row is null too (it cannot be finite when a term is not)
    assert got[("train", None, "total")].first_epoch == 4
    assert len(found) == 3


def test_terms_that_do_not_add_up():
    rows = healthy_rows()
    set_values(rows, "train", "loss/total", {2: 100.0, 3: 100.0})
    found = only(diagnose(rows, HEALTHY_FIT), "terms_do_not_add_up")
    assert len(found) == 1
    f = found[0]
    expected = sum((0.5 + 0.1 * i + 0.05 * s) * 0.9 ** 2 for i in range(4) for s in range(SCALES))
    assert (f.severity, f.first_epoch, f.term) == ("error", 2, "total")
    assert f.numbers["sum_of_terms"] == pytest.approx(expected) and f.numbers["total"] == 100.0
    assert only(diagnose(rows, HEALTHY_FIT, loss={"aggregation": "sqrt"}), "terms_do_not_add_up") == []


# --------------------------------------------------------------------------------------------- rule 7


def test_anchor_rules_fire_on_a_bad_fit():
    fit = {**HEALTHY_FIT, "bpr_ratio": 0.9, "share_per_scale": [0.01, 0.49, 0.5],
           "spread_per_scale": [{"area_ratio": 3.5, "aspect_ratio": 1.0}, {"area_ratio": 20.0, "aspect_ratio": 1.0},
                                {"area_ratio": 4.5, "aspect_ratio": 5.0}]}
    findings = diagnose(healthy_rows(), fit)
    assert [f.numbers for f in only(findings, "anchors_low_recall")] == [{"bpr_ratio": 0.9, "bpr_iou50": 0.93}]
    assert [f.scale for f in only(findings, "anchors_spread")] == [1, 2]
    # the fit's best-anchor share of scale 0 is 1 %, but training assigned it 10 truths per batch: no finding
    assert only(findings, "scale_without_truths") == []
    # without training rows (no measured assignment) the fit's share is what there is
    starved = only(diagnose([r for r in healthy_rows() if r["split"] == "val"], fit), "scale_without_truths")
    assert [(f.scale, f.numbers["share"], f.numbers["source"]) for f in starved] == [(0, 0.01, "anchor_fit")]


def test_anchor_advice_depends_on_what_kmeans_reaches():
    """The same spread and recall: re-fitting is advised when k-means anchors fit clearly better (0.74 ->
    0.80 mean best IoU), not when they fit no better (0.745: the shapes vary more than the anchors cover)."""
    fit = {**HEALTHY_FIT, "anchors": [[1, 1]] * 9, "bpr_iou50": 0.7,
           "spread_per_scale": [{"area_ratio": 17.1, "aspect_ratio": 1.6}, {"area_ratio": 3.2, "aspect_ratio": 1.0},
                                {"area_ratio": 4.5, "aspect_ratio": 1.0}]}
    better = diagnose(healthy_rows(), {**fit, "kmeans": {"mean_best_iou": 0.80, "bpr_iou50": 0.9}})
    assert [(f.rule, f.severity, f.changes) for f in better] == [
        ("anchors_low_recall", "warning", {"model.autoanchor": True}),
        ("anchors_spread", "warning", {"model.autoanchor": True})]
    assert better[0].message == ("The anchors do not fit the boxes: best possible recall 0.700 at shape IoU > 0.5 "
                                 "and 1.000 within the size-ratio limit (shares of the truths with an anchor that "
                                 "close).")
    same = diagnose(healthy_rows(), {**fit, "kmeans": {"mean_best_iou": 0.745, "bpr_iou50": 0.7}})
    assert [(f.rule, f.severity, f.changes) for f in same] == [
        ("anchors_low_recall", "warning", {}), ("anchors_spread", "info", {})]
    assert "9 anchors" in same[0].message and "more anchors per scale" in same[0].suggestion
    assert same[1].numbers["kmeans_mean_best_iou"] == 0.745


KMEANS_PER_SCALE = [[[30.0, 40.0]] * 3, [[15.0, 20.0]] * 3, [[5.0, 6.0]] * 3]


def _recorded(reason: str, pinned: bool = False, enabled: bool = True) -> dict:
    """anchor_fit.json of poorly fitting anchors (k-means: mean best IoU 0.74 -> 0.80) with autoanchor's record."""
    fitted = {"anchors": KMEANS_PER_SCALE, "bpr_ratio": 0.99, "bpr_iou50": 0.9, "mean_best_iou": 0.80}
    return {**HEALTHY_FIT, "bpr_ratio": 0.9, "kmeans": {"mean_best_iou": 0.80, "bpr_iou50": 0.9},
            "autoanchor": {"enabled": enabled, "pinned": pinned, "threshold": 0.98, "applied": reason == "applied",
                           "reason": reason, "fitted": fitted}}


@pytest.mark.parametrize(("record", "changes", "said"), [
    (_recorded("pinned", pinned=True), {"model.anchors": None}, "drop model.anchors (--set model.anchors=null)"),
    (_recorded("off", enabled=False), {"model.autoanchor": True}, "--set model.autoanchor=true"),
    (_recorded("pinned", pinned=True, enabled=False), {"model.anchors": None, "model.autoanchor": True},
     "drop model.anchors (--set model.anchors=null) and --set model.autoanchor=true"),
    (_recorded("fits"), {"model.anchors": KMEANS_PER_SCALE}, "--set 'model.anchors=[[[30.0, 40.0]"),
])
def test_anchor_advice_follows_what_autoanchor_did(record, changes, said):
    """Anchors kept because they were pinned or autoanchor was off: let autoanchor fit them. Kept although
    autoanchor was free to fit (their ratio recall passed its threshold): the recorded k-means anchors."""
    found = only(diagnose(healthy_rows(), record), "anchors_low_recall")
    assert [f.changes for f in found] == [changes]
    assert said in found[0].suggestion and "NEW.cfg" not in found[0].suggestion


def test_no_refit_advice_once_autoanchor_applied_the_fit():
    """After autoanchor the anchors are the k-means ones: low recall is the data's, nothing to re-fit."""
    applied = {**_recorded("applied"), "mean_best_iou": 0.80}
    found = diagnose(healthy_rows(), applied)
    assert [(f.rule, f.changes) for f in found] == [("anchors_low_recall", {})]
    assert "more anchors per scale" in found[0].suggestion
    rows = healthy_rows()
    set_values(rows, "val", "stat/iou/s2", {e: 0.15 + 0.005 * e for e in range(EPOCHS)})
    lagging = only(diagnose(rows, applied, loss={"box_loss": "giou"}), "lagging_scale_iou")
    assert lagging[0].changes == {} and "re-fit" not in lagging[0].suggestion.lower()


def test_scale_without_truths_from_n_pos_when_no_anchor_fit():
    rows = healthy_rows()
    set_values(rows, "train", "stat/n_pos/s0", {e: 0.5 for e in range(EPOCHS)})
    found = only(diagnose(rows, None), "scale_without_truths")
    assert [(f.scale, f.numbers["source"]) for f in found] == [(0, "stat/n_pos")]
    assert found[0].numbers["share"] == pytest.approx(0.5 / (0.5 + 20 + 30))
    assert diagnose(healthy_rows(), None) == []


# --------------------------------------------------------------------------------------------- rule 8


def _scale_terms(rows, epoch, factor):
    for row in rows:
        if row["split"] == "train" and row["epoch"] == epoch:
            for key in [k for k in row if k.startswith("loss/") and k != "loss/total"]:
                row[key] *= factor
            _retotal(row)


def test_loss_spike():
    rows = healthy_rows()
    _scale_terms(rows, 3, 4.0)
    found = only(diagnose(rows, HEALTHY_FIT), "loss_spike")
    assert len(found) == 1
    f = found[0]
    total = sum((0.5 + 0.1 * i + 0.05 * s) for i in range(4) for s in range(SCALES))
    assert (f.severity, f.first_epoch) == ("warning", 3)
    assert f.numbers == {"before": pytest.approx(total * 0.9 ** 2), "after": pytest.approx(4 * total * 0.9 ** 3)}
    assert f.changes == {"optim.lr": pytest.approx(2e-4)}
    assert only(diagnose(rows, HEALTHY_FIT), "divergence") == []  # back to normal afterwards


def test_divergence():
    rows = healthy_rows()
    _scale_terms(rows, 4, 2.0)
    _scale_terms(rows, 5, 4.0)  # lowest at epoch 3 (0.9^3); epoch 5 is 4 * 0.9^5 / 0.9^3 = 3.24x that
    found = only(diagnose(rows, HEALTHY_FIT), "divergence")
    assert len(found) == 1
    assert (found[0].severity, found[0].first_epoch) == ("error", 4)
    assert found[0].numbers["last"] / found[0].numbers["lowest"] == pytest.approx(4 * 0.9 ** 5 / 0.9 ** 3)


def test_collapse_right_after_warmup():
    rows = healthy_rows()
    set_values(rows, "train", "warmup", {0: 1.0, 1: 0.6, 2: 0.0})
    set_values(rows, "val", "mAP50", {1: 0.4, 2: 0.1, 3: 0.1, 4: 0.12, 5: 0.15})
    found = only(diagnose(rows, HEALTHY_FIT), "collapse_after_warmup")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.first_epoch) == ("error", 2)
    assert f.numbers == {"metric": "mAP50", "warmup": "loss warm-up", "before": 0.4, "after": 0.1, "now": 0.15}


def test_no_collapse_when_metrics_keep_rising():
    rows = healthy_rows()
    set_values(rows, "train", "warmup", {0: 1.0, 1: 0.6, 2: 0.0})
    assert only(diagnose(rows, HEALTHY_FIT), "collapse_after_warmup") == []


# --------------------------------------------------------------------------------------------- ordering


def test_findings_sorted_by_severity():
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s0", {e: 0.3 for e in range(EPOCHS)})  # info
    set_values(rows, "val", "stat/obj_neg/s0", {e: 0.002 for e in range(EPOCHS)})
    set_values(rows, "train", "loss/total", {1: 100.0})  # error
    set_values(rows, "val", "stat/obj_neg/s2", {5: 0.5})  # warning
    severities = [f.severity for f in diagnose(rows, HEALTHY_FIT)]  # the total of 100 is also a spike
    assert severities == ["error", "warning", "warning", "info"]


# --------------------------------------------------------------------------------------------- run folder, CLI


def _write_run(path, rows, fit=None, loss=None, doctor=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if fit is not None:
        (path / "anchor_fit.json").write_text(json.dumps(fit))
    if loss is not None or doctor is not None:
        config = {"preset": "keras-yolo3", "loss": loss or {}, **({"doctor": doctor} if doctor else {})}
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def _misencoded_rows():
    rows = healthy_rows()
    for s in range(SCALES):
        set_values(rows, "val", f"stat/obj_pos/s{s}", {e: 0.01 for e in range(EPOCHS)})
        set_values(rows, "val", f"stat/obj_neg/s{s}", {e: 0.01 for e in range(EPOCHS)})
        set_values(rows, "val", f"stat/iou/s{s}", {e: 0.02 for e in range(EPOCHS)})
    return rows


def test_diagnose_run_reads_config_and_writes_findings(tmp_path):
    rows = healthy_rows()
    set_values(rows, "val", "stat/iou/s2", {e: 0.15 for e in range(EPOCHS)})
    run = _write_run(tmp_path / "r", rows, HEALTHY_FIT, {"box_loss": "mse"})
    findings = diagnose_run(run)
    assert [(f.rule, f.changes) for f in findings] == [("lagging_scale_iou", {"loss.box_loss": "giou"})]
    written = json.loads((run / "findings.json").read_text())
    assert written[0]["rule"] == "lagging_scale_iou" and written[0]["scale"] == 2


def test_infinite_ratio_written_as_null(tmp_path):
    rows = healthy_rows()
    set_values(rows, "val", "stat/obj_pos/s0", {e: 0.3 for e in range(EPOCHS)})
    set_values(rows, "val", "stat/obj_neg/s0", {e: 0.0 for e in range(EPOCHS)})
    run = _write_run(tmp_path / "r", rows)
    assert math.isinf(diagnose_run(run)[0].numbers["ratio"])
    assert json.loads((run / "findings.json").read_text())[0]["numbers"]["ratio"] is None


def test_bad_metrics_line_names_file_and_line(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(healthy_rows()[0]) + "\n{not json\n")
    with pytest.raises(DoctorInputError, match=r"metrics\.jsonl:2: not valid JSON"):
        diagnose_run(run)
    (run / "metrics.jsonl").write_text('{"epoch": 0, "split": "test"}\n')
    with pytest.raises(DoctorInputError, match=r"metrics\.jsonl:1: split must be train or val"):
        diagnose_run(run)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(doctor_command)
    return app


def test_cli_reports_findings_and_exits_zero(tmp_path):
    run = _write_run(tmp_path / "r", _misencoded_rows(), HEALTHY_FIT)
    result = CliRunner().invoke(_app(), [str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "error" in result.output and "cannot find its targets" in result.output
    written = json.loads((run / "findings.json").read_text())
    assert {(f["rule"], f["scale"]) for f in written} == {("targets_not_found", s) for s in range(SCALES)}


def test_cli_json_output(tmp_path):
    run = _write_run(tmp_path / "r", _misencoded_rows(), HEALTHY_FIT)
    result = CliRunner().invoke(_app(), [str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert [f["rule"] for f in json.loads(result.output)] == ["targets_not_found"] * SCALES


def test_cli_healthy_run(tmp_path):
    run = _write_run(tmp_path / "r", healthy_rows(), HEALTHY_FIT)
    result = CliRunner().invoke(_app(), [str(run)])
    assert result.exit_code == 0 and "no findings" in result.output
    assert json.loads((run / "findings.json").read_text()) == []


def test_cli_unreadable_input_exits_two(tmp_path):
    result = CliRunner().invoke(_app(), [str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output
    run = _write_run(tmp_path / "r", healthy_rows())
    (run / "anchor_fit.json").write_text("{")
    result = CliRunner().invoke(_app(), [str(run)])
    assert result.exit_code == 2 and "anchor_fit.json" in result.output


def test_thresholds_come_from_the_run_config_then_set(tmp_path):
    """IoU 0.15 at s2 lags (default lagging_iou 0.3); the run's doctor section at 0.1 silences it; --set
    lagging_iou=0.2 brings it back."""
    rows = healthy_rows()
    set_values(rows, "val", "stat/iou/s2", {e: 0.15 for e in range(EPOCHS)})
    default = _write_run(tmp_path / "default", rows, HEALTHY_FIT, {"box_loss": "mse"})
    assert [f.rule for f in diagnose_run(default)] == ["lagging_scale_iou"]
    tuned = _write_run(tmp_path / "tuned", rows, HEALTHY_FIT, {"box_loss": "mse"}, doctor={"lagging_iou": 0.1})
    assert diagnose_run(tuned) == []
    result = CliRunner().invoke(_app(), [str(tuned), "--json", "--set", "lagging_iou=0.2"])
    assert result.exit_code == 0, result.output
    assert [f["rule"] for f in json.loads(result.output)] == ["lagging_scale_iou"]


def test_bad_thresholds_name_their_source(tmp_path):
    run = _write_run(tmp_path / "r", healthy_rows(), HEALTHY_FIT, doctor={"lagging_iou": 2.0})
    with pytest.raises(DoctorInputError, match=r"config\.yaml: doctor thresholds: lagging_iou"):
        diagnose_run(run)
    run = _write_run(tmp_path / "ok", healthy_rows(), HEALTHY_FIT)
    result = CliRunner().invoke(_app(), [str(run), "--set", "no_such_rule=1"])
    assert result.exit_code == 2 and "--set: doctor thresholds: no_such_rule" in result.output


def _lagging_run(path):
    """A run whose scale 2 lags with MSE boxes: one finding whose change is loss.box_loss=giou."""
    rows = healthy_rows()
    set_values(rows, "val", "stat/iou/s2", {e: 0.15 for e in range(EPOCHS)})
    return _write_run(path, rows, HEALTHY_FIT, {"box_loss": "mse"})


def test_cli_piped_prints_plain_complete_lines(tmp_path, monkeypatch):
    from rich.console import Console

    from yololab.commands import doctor

    run = _lagging_run(tmp_path / "a_run_folder_with_a_name_long_enough_to_fill_most_of_an_80_column_line")
    monkeypatch.setattr(doctor, "console", Console(width=80))  # a pipe: not a terminal, 80 columns
    result = CliRunner().invoke(_app(), [str(run)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "…" not in result.output and lines[0] == f"doctor: {run}"
    assert lines[1].startswith("warning lagging_scale_iou s2/box from epoch 0: ")
    assert lines[2].startswith("    try: ") and lines[3] == "    change: --set loss.box_loss=giou"
    assert lines[-1] == f"wrote {run / 'findings.json'}"


def test_cli_in_an_80_column_terminal_folds_the_change(tmp_path, monkeypatch):
    from rich.console import Console

    from yololab.commands import doctor

    run = _lagging_run(tmp_path / "r")
    monkeypatch.setattr(doctor, "console", Console(width=80, force_terminal=True, color_system=None))
    result = CliRunner().invoke(_app(), [str(run)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    last_cells = "".join(line.split("│")[-2].strip() for line in result.output.splitlines() if line.count("│") == 6)
    assert last_cells.replace(" ", "").endswith("--setloss.box_loss=giou")  # cells wrap at spaces, fold in words


def test_anchor_changes_are_suggestions_a_study_can_try():
    """`doctor --try` builds a config from each finding's changes: null anchors and anchor lists included."""
    from yololab.config import build_config
    from yololab.diagnostics.doctor import Finding
    from yololab.study.suggestions import suggestion_levels

    findings = [Finding("anchors_low_recall", "warning", "m", "s", changes={"model.anchors": None,
                                                                           "model.autoanchor": True}),
                Finding("anchors_spread", "warning", "m", "s", changes={"model.anchors": KMEANS_PER_SCALE})]
    pinned = build_config({}, [f"model.anchors={json.dumps(KMEANS_PER_SCALE)}"]).model_dump(mode="json")
    levels, skipped = suggestion_levels(findings, pinned)
    assert skipped == [] and [level["set"] for level in levels] == [f.changes for f in findings]


def test_doctor_try_with_nothing_to_try_says_so_and_writes_nothing(tmp_path):
    """A healthy run (no findings), or one whose only change is a file to write first, has nothing to try:
    `suggestion_study` writes no study and lists what it left out."""
    from yololab.config import build_config, save_config
    from yololab.diagnostics.doctor import Finding
    from yololab.study.suggestions import suggestion_study

    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config({}, []), run / "config.yaml")
    new_cfg = Finding("anchors_spread", "warning", "m", "s", changes={"model.cfg": "NEW.cfg"})
    for findings, skipped in (([], []), ([new_cfg], ["anchors_spread: model.cfg=NEW.cfg (NEW.cfg is a file to "
                                                    "write first)"])):
        study_dir = tmp_path / f"try-{len(findings)}"
        suggestions = suggestion_study(run, findings, study_dir, None, 2)
        assert suggestions.study is None and suggestions.skipped == skipped
        assert not study_dir.exists()
