"""The doctor: rules over a run's ``metrics.jsonl`` and anchor fit that name what is wrong and what to change.

Input rows are those of ``metrics.jsonl`` (``engine/metrics_log.py``): one dict per (epoch, split) with
``loss/total``, ``loss/<term>/s<i>`` (weighted), ``unweighted/<term>/s<i>``, ``stat/<name>/s<i>`` (``None``
when a scale had no samples), ``mAP50`` on val rows and ``lr``, ``warmup`` on train rows. The anchor fit is
the dict of ``yololab.anchors.anchor_fit`` (``anchor_fit.json``).

Each rule is a small function ``rule(ctx) -> list[Finding]`` registered in ``RULES``. Rules read the
separation of objectness (responsible vs other predictions) and the localisation (IoU of responsible
predictions), not one absolute level: on sparse synthetic data a BCE objectness averaged over all cells gave
responsible-prediction objectness of only 0.15-0.4 yet the best mAP, because objectness elsewhere was 50-250x
lower; a real collapse (objectness no higher than elsewhere and IoU near 0) came only from mis-encoded
targets. Every threshold is a ``DoctorConfig`` field.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from yololab.diagnostics.runfiles import BEST_METRIC, ROW_KEYS, read_histograms, read_jsonl
from yololab.errors import FileProblem

SEVERITIES = ("error", "warning", "info")  # sort order of findings: most serious first
TERM_KEY = re.compile(r"^loss/(?P<term>[a-z]+)/s(?P<scale>\d+)$")
SCALE_KEY = re.compile(r"/s(?P<scale>\d+)$")
EDGE_TOL = 1e-9  # histogram edges are sums of float steps: 0.5 may be stored as 0.49999999999999994
FINDINGS_FILE = "findings.json"
BPR_NAMES = {"bpr_ratio": "by size ratio", "bpr_iou50": "at shape IoU 0.5"}  # anchor_fit keys, as said


class DoctorInputError(FileProblem):
    """A metrics.jsonl, anchor_fit.json or config.yaml the doctor cannot read (``file:line: problem``)."""


class DoctorConfig(BaseModel):
    """Thresholds of the doctor's rules. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    settle_epochs: int = Field(
        1, ge=0, description="Epochs at the start that rules on objectness and IoU ignore: a fresh head has "
        "no separation yet.")
    unfound_separation: float = Field(
        2.0, gt=0, description="Targets not found: obj_pos / obj_neg below this counts as 'not separated'.")
    unfound_iou_gain: float = Field(
        0.1, ge=0, le=1, description="Targets not found: responsible-prediction IoU less than this above "
        "iou_prior (the IoU the anchors alone give) counts as 'nothing localised' (on x/y-swapped labels the "
        "network still gained 0.06-0.07 by learning the usual box sizes; on the same labels written right, "
        "0.19-0.25 within 6 epochs).")
    unfound_iou: float = Field(
        0.1, ge=0, le=1, description="Targets not found, for runs logged without iou_prior: responsible-"
        "prediction IoU below this counts as 'near 0'.")
    low_obj_pos: float = Field(
        0.5, gt=0, le=1, description="Low objectness: obj_pos below this drops most true objects at the "
        "usual 0.5 confidence threshold.")
    separated_ratio: float = Field(
        10.0, gt=1, description="Well separated: obj_pos / obj_neg at or above this (the BCE trial reached "
        "50-250).")
    high_obj_neg: float = Field(
        0.1, gt=0, le=1, description="False positives: mean objectness away from objects (obj_neg) above "
        "this.")
    fp_conf: float = Field(
        0.5, gt=0, lt=1, description="False positives: the confidence at which predictions away from objects "
        "are counted (from the validation histograms).")
    max_fp_per_truth: float = Field(
        5.0, gt=0, description="False positives: more predictions away from objects above fp_conf per true "
        "object than this (sparse images, 8 epochs: keras-yolo3 with obj_scale 50 gave 20-22 at the coarse "
        "scales, with obj_scale 5 2-4, ultralytics under 0.1).")
    weight_step: float = Field(
        2.0, gt=1, description="Factor by which a suggested change multiplies a loss weight.")
    lagging_iou: float = Field(
        0.3, gt=0, le=1, description="Lagging scale: last IoU of responsible predictions below this (the MSE "
        "finest-scale trial stayed at 0.12-0.2; GIoU reached 0.7).")
    iou_gain_min: float = Field(
        0.05, ge=0, description="Improving scale: IoU gain from the first to the last epoch at least this.")
    min_epochs: int = Field(
        3, ge=2, description="Trend rules (lagging IoU) need at least this many epochs.")
    overfit_epochs: int = Field(
        3, ge=1, description="Overfitting: val term rising while train falls for this many epochs in a row "
        "(k).")
    rise_rel_tol: float = Field(
        0.01, ge=0, description="Overfitting: a val rise must exceed this share of the previous value (below "
        "it is the epoch-to-epoch noise of a small validation set).")
    zero_tol: float = Field(
        1e-12, ge=0, description="A term with |value| at or below this counts as zero; below -zero_tol as "
        "negative.")
    sum_rel_tol: float = Field(
        1e-3, gt=0, description="Terms must add up to loss/total within this relative error (epoch means "
        "of float32 sums).")
    min_bpr_ratio: float = Field(
        0.98, ge=0, le=1, description="Anchors: ultralytics' best possible recall (size-ratio rule) below "
        "this is poor (its check_anchors re-fits under 0.98).")
    min_bpr_iou50: float = Field(
        0.8, ge=0, le=1, description="Anchors: share of truths with a best shape IoU > 0.5 below this.")
    max_area_ratio: float = Field(
        16.0, gt=1, description="Anchors: largest / smallest anchor area within a scale above this (YOLOv3's "
        "COCO anchors reach 11.6 at the coarsest scale).")
    max_aspect_ratio: float = Field(
        4.0, gt=1, description="Anchors: largest / smallest aspect within a scale above this (YOLOv3's COCO "
        "anchors reach 2.8).")
    refit_gain: float = Field(
        0.02, ge=0, le=1, description="Anchors: re-fitting is advised only when k-means anchors (anchor_fit.json "
        "'kmeans') raise the mean best IoU by at least this.")
    min_scale_share: float = Field(
        0.02, ge=0, le=1, description="A scale receiving less than this share of the truths gets almost "
        "none.")
    spike_factor: float = Field(
        3.0, gt=1, description="Loss spike: train loss/total jumping by this factor from one epoch to the "
        "next.")
    divergence_factor: float = Field(
        2.0, gt=1, description="Divergence: last train loss/total above this factor times its lowest value.")
    lr_step: float = Field(
        10.0, gt=1, description="Factor by which a suggested change divides the learning rate.")
    collapse_drop: float = Field(
        0.5, gt=0, le=1, description="Collapse after warm-up: mAP50 or mean obj_pos falling by this share "
        "in the epoch warm-up ends.")


@dataclass
class Finding:
    """One thing the doctor found. ``numbers`` are the values that triggered it; ``changes`` maps config
    keys (``loss.box_loss``) to values to try."""

    rule: str
    severity: str
    message: str
    suggestion: str
    scale: int | None = None
    term: str | None = None
    first_epoch: int | None = None
    numbers: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Context:
    """What rules read: rows per split sorted by epoch, the anchor fit, the run's loss config (may be {}), the
    thresholds and the validation histograms (histograms.jsonl rows; [] when not recorded)."""

    train: list[dict]
    val: list[dict]
    anchor_fit: dict | None
    loss: dict
    cfg: DoctorConfig
    histograms: list[dict] = field(default_factory=list)

    @property
    def scales(self) -> list[int]:
        found = {int(m["scale"]) for row in self.train + self.val for k in row if (m := SCALE_KEY.search(k))}
        return sorted(found)

    @property
    def terms(self) -> list[tuple[str, int]]:
        found = {(m["term"], int(m["scale"])) for row in self.train + self.val for k in row
                 if (m := TERM_KEY.match(k))}
        return sorted(found, key=lambda ts: (ts[1], ts[0]))

    def stat_rows(self) -> list[dict]:
        """Val rows when the run validated (the full validation set), else train rows."""
        return self.val or self.train


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(epoch, value) of ``key`` over ``rows``, skipping rows where it is missing or null."""
    return [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]


def _ratio(pos: float, neg: float) -> float:
    return pos / neg if neg > 0 else math.inf


def _tail_start(epochs: list[tuple[int, bool]]) -> int | None:
    """First epoch of the final run of True flags, or None when the last flag is False."""
    start = None
    for epoch, flag in epochs:
        start = (epoch if start is None else start) if flag else None
    return start


# --------------------------------------------------------------------------------------------- rules


def rule_targets_not_found(ctx: Context) -> list[Finding]:
    """Objectness at responsible predictions not above the rest AND no localisation learned, to the last epoch.

    Localisation is the IoU of responsible predictions above ``iou_prior`` (what the anchors alone give at the
    cell centre): on x/y-swapped labels the IoU stays at that prior, which can be 0.3-0.5 with fitted anchors.
    Runs logged without ``iou_prior`` fall back to an absolute IoU near 0.
    """
    c, out = ctx.cfg, []
    for s in ctx.scales:
        pos = dict(series(ctx.stat_rows(), f"stat/obj_pos/s{s}"))
        neg = dict(series(ctx.stat_rows(), f"stat/obj_neg/s{s}"))
        iou = dict(series(ctx.stat_rows(), f"stat/iou/s{s}"))
        prior = dict(series(ctx.stat_rows(), f"stat/iou_prior/s{s}"))
        epochs = sorted(e for e in pos if e in neg and e in iou and e >= c.settle_epochs)
        unlocalised = {e: iou[e] - prior[e] < c.unfound_iou_gain if e in prior else iou[e] < c.unfound_iou
                       for e in epochs}
        flags = [(e, _ratio(pos[e], neg[e]) < c.unfound_separation and unlocalised[e]) for e in epochs]
        start = _tail_start(flags)
        if start is None:
            continue
        last = epochs[-1]
        numbers = {"obj_pos": pos[last], "obj_neg": neg[last], "iou": iou[last]}
        if last in prior:
            numbers["iou_prior"] = prior[last]
            where = f"{iou[last]:.3g}, no better than the {prior[last]:.3g} the anchors alone give"
        else:
            where = f"{iou[last]:.3g}"
        out.append(Finding(
            "targets_not_found", "error", scale=s, term="obj", first_epoch=start, numbers=numbers,
            message=f"At scale {s} the network cannot find its targets: objectness at responsible predictions "
                    f"({pos[last]:.3g}) is not above objectness elsewhere ({neg[last]:.3g}) and their IoU with "
                    f"the truth is {where}.",
            suggestion="Check the target encoding: label column order (class cx cy w h), normalised units "
                       "(0-1 of the image, not pixels), x/y not swapped, and the anchors/strides of that scale. "
                       "If the labels are right, the run is too short to have learned anything yet.",
        ))
    return out


def rule_low_separated_objectness(ctx: Context) -> list[Finding]:
    """obj_pos low but far above obj_neg: ranking is fine, a 0.5 threshold drops most true objects."""
    c, out = ctx.cfg, []
    for s in ctx.scales:
        pos = dict(series(ctx.stat_rows(), f"stat/obj_pos/s{s}"))
        neg = dict(series(ctx.stat_rows(), f"stat/obj_neg/s{s}"))
        epochs = sorted(e for e in pos if e in neg and e >= c.settle_epochs)
        flags = [(e, pos[e] < c.low_obj_pos and _ratio(pos[e], neg[e]) >= c.separated_ratio) for e in epochs]
        start = _tail_start(flags)
        if start is None:
            continue
        last = epochs[-1]
        changes = {"loss.obj_weight": ctx.loss.get("obj_weight", 1.0) * c.weight_step}
        if ctx.loss.get("obj_target") == "iou":
            changes["loss.obj_target"] = "one"
        out.append(Finding(
            "low_separated_objectness", "info", scale=s, term="obj", first_epoch=start,
            numbers={"obj_pos": pos[last], "obj_neg": neg[last], "ratio": _ratio(pos[last], neg[last])},
            message=f"At scale {s} objectness at true objects is low ({pos[last]:.3g}) but "
                    f"{_ratio(pos[last], neg[last]):.3g}x higher than elsewhere: the ranking is fine, yet a 0.5 "
                    f"confidence threshold would drop most true objects.",
            suggestion="Use a lower confidence threshold at detection (--conf), or raise the objectness target "
                       "or weight at responsible predictions.",
            changes=changes,
        ))
    return out


def false_positives_per_truth(histograms: list[dict], scale: int, conf: float) -> dict[int, float]:
    """epoch -> predictions away from objects with objectness >= ``conf`` per responsible prediction, over the
    whole validation set, from histograms.jsonl rows (bins whose lower edge is >= ``conf``; before NMS, so a
    neighbour of a true object counts too). Epochs without samples at that scale are left out."""
    out = {}
    for row in histograms:
        neg, pos = (row["histograms"].get(f"{kind}/s{scale}") for kind in ("obj_neg", "obj_pos"))
        if not neg or not pos or not pos["num"]:
            continue
        first = next((k for k, edge in enumerate(row["edges"][:-1]) if edge >= conf - EDGE_TOL), None)
        out[row["epoch"]] = sum(neg["counts"][first:]) / pos["num"] if first is not None else 0.0
    return out


def rule_false_positive_objectness(ctx: Context) -> list[Finding]:
    """Objectness high away from objects to the last epoch: the mean (obj_neg) above ``high_obj_neg``, or,
    from the validation histograms, more than ``max_fp_per_truth`` predictions away from objects above
    ``fp_conf`` for each true object."""
    c, out = ctx.cfg, []
    for s in ctx.scales:
        neg = {e: v for e, v in series(ctx.stat_rows(), f"stat/obj_neg/s{s}") if e >= c.settle_epochs}
        fp = {e: v for e, v in false_positives_per_truth(ctx.histograms, s, c.fp_conf).items()
              if e >= c.settle_epochs}
        epochs = sorted(set(neg) | set(fp))
        start = _tail_start([(e, neg.get(e, 0.0) > c.high_obj_neg or fp.get(e, 0.0) > c.max_fp_per_truth)
                             for e in epochs])
        if start is None:
            continue
        pos = dict(series(ctx.stat_rows(), f"stat/obj_pos/s{s}"))
        last = epochs[-1]
        numbers = {k: v for k, v in (("obj_neg", neg.get(last)), ("obj_pos", pos.get(last)),
                                     ("fp_per_truth", fp.get(last))) if v is not None}
        said = [f"{neg[last]:.3g} on average"] if last in neg else []
        if last in fp:
            said.append(f"{fp[last]:.3g} predictions away from objects above {c.fp_conf:g} for each true object "
                        f"(before NMS)")
        obj_weight, noobj_weight = ctx.loss.get("obj_weight", 1.0), ctx.loss.get("noobj_weight", 1.0)
        changes = {"loss.noobj_weight": noobj_weight * c.weight_step}
        suggestion = "Weight objectness elsewhere (noobj) more relative to objectness at objects (obj)"
        if obj_weight > noobj_weight:
            changes["loss.obj_weight"] = obj_weight / c.weight_step
            suggestion += f": obj is weighted {obj_weight / noobj_weight:.3g}x noobj"
        out.append(Finding(
            "false_positive_objectness", "warning", scale=s, term="noobj", first_epoch=start, numbers=numbers,
            message=f"At scale {s} objectness away from objects is high ({'; '.join(said)}): many false "
                    f"positives.",
            suggestion=suggestion + ".", changes=changes,
        ))
    return out


def rule_lagging_scale_iou(ctx: Context) -> list[Finding]:
    """A scale whose responsible-prediction IoU stays low and flat while another scale improves."""
    c = ctx.cfg
    trend = {}
    for s in ctx.scales:
        iou = series(ctx.stat_rows(), f"stat/iou/s{s}")
        if len(iou) >= c.min_epochs:
            trend[s] = (iou[0][1], iou[-1][1], iou[0][0])
    improving = [s for s, (first, last, _) in trend.items() if last - first >= c.iou_gain_min
                 and last >= c.lagging_iou]
    out = []
    for s, (first, last, first_epoch) in trend.items():
        if last >= c.lagging_iou or last - first >= c.iou_gain_min or not [o for o in improving if o != s]:
            continue
        mse = ctx.loss.get("box_loss") == "mse"
        out.append(Finding(
            "lagging_scale_iou", "warning", scale=s, term="box", first_epoch=first_epoch,
            numbers={"iou_first": first, "iou_last": last, "improving_scales": improving},
            message=f"At scale {s} the IoU of responsible predictions stays low ({first:.3g} -> {last:.3g}) "
                    f"while scale(s) {', '.join(map(str, improving))} improve.",
            suggestion="Use an IoU-family box loss (GIoU) for this scale's small boxes." if mse else
                       "Check this scale's anchors: run `yololab anchors DATA --cfg CFG --write-cfg NEW.cfg` "
                       "and train with the new cfg.",
            changes={"loss.box_loss": "giou"} if mse else {"model.cfg": "NEW.cfg"},
        ))
    return out


def rule_overfitting(ctx: Context) -> list[Finding]:
    """Per term and scale: the val term rises for k epochs in a row while the train term falls.

    When val mAP50 is still at its best at the end of that rise, it has not cost accuracy yet: an info
    without a change to make (early in training a term such as noobj can rise on val while objectness learns
    to fire, and stopping there would be wrong).
    """
    k, out = ctx.cfg.overfit_epochs, []
    map50 = dict(series(ctx.val, BEST_METRIC))
    best_map_epoch = max(map50, key=lambda e: (map50[e], e)) if map50 else None
    for term, s in ctx.terms:
        key = f"loss/{term}/s{s}"
        train, val = dict(series(ctx.train, key)), dict(series(ctx.val, key))
        epochs = sorted(e for e in val if e in train)
        run = 0
        for prev, e in itertools.pairwise(epochs):
            rising = val[prev] > 0 and val[e] > val[prev] * (1 + ctx.cfg.rise_rel_tol) and train[e] < train[prev]
            run = run + 1 if rising else 0
            if run == k:
                start = epochs[epochs.index(e) - k + 1]
                best = epochs[epochs.index(start) - 1]
                numbers = {"val_before": val[best], "val_after": val[e], "train_before": train[best],
                           "train_after": train[e], "epochs": k}
                message = (f"The {term} term at scale {s} overfits from epoch {start}: validation rose "
                           f"{val[best]:.3g} -> {val[e]:.3g} while training fell {train[best]:.3g} -> "
                           f"{train[e]:.3g}")
                if best_map_epoch is not None and best_map_epoch >= e:
                    out.append(Finding(
                        "overfitting", "info", scale=s, term=term, first_epoch=start,
                        numbers={**numbers, "best_map_epoch": best_map_epoch},
                        message=message + f", but val {BEST_METRIC} is still at its best (epoch "
                                          f"{best_map_epoch}): it has not cost accuracy yet.",
                        suggestion=f"Watch it: if {BEST_METRIC} stops rising, stop at the epoch it peaks or add "
                                   "data or augmentation."))
                else:
                    out.append(Finding(
                        "overfitting", "warning", scale=s, term=term, first_epoch=start, numbers=numbers,
                        message=message + ".",
                        suggestion="Stop earlier, add data or augmentation, or lower that term's weight.",
                        changes={"train.epochs": start},
                    ))
                break
    return out


def rule_term_sanity(ctx: Context) -> list[Finding]:
    """Terms identically zero, negative or non-finite, and terms that do not add up to loss/total."""
    return _zero_terms(ctx) + _bad_terms(ctx) + _sum_mismatch(ctx)


def _zero_terms(ctx: Context) -> list[Finding]:
    out = []
    for term, s in ctx.terms:
        values = [v for _, v in series(ctx.train, f"loss/{term}/s{s}")]
        had_pos = any(v > 0 for _, v in series(ctx.train, f"stat/n_pos/s{s}"))
        if not values or not had_pos or any(abs(v) > ctx.cfg.zero_tol for v in values):
            continue
        cls_zero = term == "cls" and ctx.loss.get("cls_loss") in ("softmax_ce", "mse_softmax")
        out.append(Finding(
            "zero_term", "warning", scale=s, term=term, first_epoch=ctx.train[0]["epoch"],
            numbers={"epochs": len(values), "max_abs": max(abs(v) for v in values)},
            message=f"The {term} term at scale {s} is identically zero over {len(values)} epochs although the "
                    f"scale had truths: it trains nothing.",
            suggestion="A softmax class loss is 0 with one class: use BCE." if cls_zero else
                       f"Check that the {term} term's weight and inputs are not zero.",
            changes={"loss.cls_loss": "bce"} if cls_zero else {},
        ))
    return out


def _bad_terms(ctx: Context) -> list[Finding]:
    out = []
    for split, rows in (("train", ctx.train), ("val", ctx.val)):
        keys = sorted({k for row in rows for k in row if TERM_KEY.match(k) or k == "loss/total"})
        for key in keys:
            bad = [(row["epoch"], row.get(key)) for row in rows
                   if key in row and (row[key] is None or not math.isfinite(row[key]) or row[key] < -ctx.cfg.zero_tol)]
            if not bad:
                continue
            m = TERM_KEY.match(key)
            epoch, value = bad[0]
            kind = "non-finite" if value is None or not math.isfinite(value) else "negative"
            out.append(Finding(
                "bad_term", "error", scale=int(m["scale"]) if m else None, term=m["term"] if m else "total",
                first_epoch=epoch, numbers={"split": split, "value": value, "epochs": len(bad)},
                message=f"{split} {key} is {kind} ({value}) from epoch {epoch}, in {len(bad)} epoch(s).",
                suggestion="A non-finite loss usually means divergence (lower the learning rate) or a bad box "
                           "(zero size); a negative loss means a term written with the wrong sign or target.",
            ))
    return out


def _sum_mismatch(ctx: Context) -> list[Finding]:
    if ctx.loss.get("aggregation") == "sqrt":
        return []  # keras-yolo3's per-scale sqrt: the total is not the plain sum of the terms
    out = []
    for split, rows in (("train", ctx.train), ("val", ctx.val)):
        for row in rows:
            terms = [v for k, v in row.items() if TERM_KEY.match(k)]
            total = row.get("loss/total")
            if total is None or not terms or any(v is None for v in terms):
                continue
            summed = sum(terms)
            if abs(summed - total) > ctx.cfg.sum_rel_tol * max(abs(total), abs(summed)):
                out.append(Finding(
                    "terms_do_not_add_up", "error", term="total", first_epoch=row["epoch"],
                    numbers={"split": split, "sum_of_terms": summed, "total": total},
                    message=f"{split} terms add up to {summed:.6g} but loss/total is {total:.6g} at epoch "
                            f"{row['epoch']}: a term is missing from the log or the total.",
                    suggestion="Log every term that enters the total, with its weight applied.",
                ))
                break
    return out


def rule_anchor_fit(ctx: Context) -> list[Finding]:
    """Best possible recall low, a scale's anchors spread widely, a scale receiving almost no truths.

    When ``anchor_fit.json`` holds the k-means fit (``kmeans``) and it is no better than the configured
    anchors, re-fitting cannot help: low recall then says the boxes vary more than the anchors can cover, and
    a wide spread is the data's own (info only).
    """
    c, fit, out = ctx.cfg, ctx.anchor_fit or {}, []
    anchors_change = {"model.cfg": "NEW.cfg"}
    anchors_advice = "Re-fit the anchors: `yololab anchors DATA --cfg CFG --write-cfg NEW.cfg`, then train with it."
    kmeans = fit.get("kmeans") or {}
    refit_gain = kmeans.get("mean_best_iou", math.inf) - fit.get("mean_best_iou", 0.0)
    refit_helps = refit_gain >= c.refit_gain
    kmeans_numbers = {f"kmeans_{k}": v for k, v in kmeans.items()}
    bpr = {k: fit[k] for k in ("bpr_ratio", "bpr_iou50") if fit.get(k) is not None}
    bpr_text = ", ".join(f"{BPR_NAMES[k]} {v:.3g}" for k, v in bpr.items())
    if bpr.get("bpr_ratio", 1.0) < c.min_bpr_ratio or bpr.get("bpr_iou50", 1.0) < c.min_bpr_iou50:
        if refit_helps:
            message = f"The anchors do not fit the boxes: best possible recall {bpr_text}."
            suggestion, changes = anchors_advice, anchors_change
        else:
            message = (f"Best possible recall is low ({bpr_text}) although the anchors fit as well as k-means "
                       f"anchors do: the boxes vary more than {len(fit.get('anchors') or []) or 'these'} "
                       f"anchors can cover.")
            suggestion = ("Use more anchors per scale (the [yolo] sections' mask/num) or another scale; or "
                          "accept it when the missed shapes are rare.")
            changes = {}
        out.append(Finding("anchors_low_recall", "warning", numbers={**bpr, **kmeans_numbers}, message=message,
                           suggestion=suggestion, changes=changes))
    for s, spread in enumerate(fit.get("spread_per_scale") or []):
        if spread["area_ratio"] > c.max_area_ratio or spread["aspect_ratio"] > c.max_aspect_ratio:
            message = (f"The anchors of scale {s} are far apart (area ratio {spread['area_ratio']:.3g}, aspect "
                       f"ratio {spread['aspect_ratio']:.3g}): one scale serves very different shapes")
            if refit_helps:
                finding = Finding("anchors_spread", "warning", scale=s, numbers=dict(spread), message=message + ".",
                                  suggestion=anchors_advice, changes=anchors_change)
            else:
                finding = Finding(
                    "anchors_spread", "info", scale=s, numbers={**spread, **kmeans_numbers},
                    message=message + ", as the k-means anchors of this data do: the spread is the data's.",
                    suggestion="Nothing to change unless this scale's IoU lags (see lagging_scale_iou).")
            out.append(finding)
    shares = fit.get("share_per_scale")
    source = "anchor_fit"
    if shares is None:
        mean_pos = [sum(v) / len(v) if (v := [x for _, x in series(ctx.train, f"stat/n_pos/s{s}")]) else 0.0
                    for s in ctx.scales]
        total = sum(mean_pos)
        shares = [m / total for m in mean_pos] if total > 0 else []
        source = "stat/n_pos"
    for s, share in enumerate(shares):
        if share < c.min_scale_share:
            out.append(Finding(
                "scale_without_truths", "warning", scale=s, numbers={"share": share, "source": source},
                message=f"Scale {s} receives almost no truths ({share:.1%}): its head learns nothing about "
                        f"objects.",
                suggestion="Re-fit the anchors to the data, or use a cfg with fewer scales.",
                changes=anchors_change))
    return out


def rule_training_dynamics(ctx: Context) -> list[Finding]:
    """Loss spikes, divergence, and a collapse in the epoch warm-up ends."""
    c, out = ctx.cfg, []
    total = series(ctx.train, "loss/total")
    lr = dict(series(ctx.train, "lr"))
    for (prev, a), (e, b) in itertools.pairwise(total):
        if a > 0 and b > c.spike_factor * a:
            out.append(Finding(
                "loss_spike", "warning", term="total", first_epoch=e, numbers={"before": a, "after": b},
                message=f"The training loss jumped {b / a:.3g}x from epoch {prev} to {e} ({a:.4g} -> {b:.4g}).",
                suggestion="Lower the learning rate or clip gradients harder.",
                changes={"optim.lr": lr[e] / c.lr_step} if e in lr else {}))
            break
    if total:
        low_epoch, low = min(total, key=lambda ev: ev[1])
        last_epoch, last = total[-1]
        if low > 0 and last > c.divergence_factor * low:
            out.append(Finding(
                "divergence", "error", term="total", first_epoch=low_epoch + 1,
                numbers={"lowest": low, "last": last},
                message=f"The training loss diverges: {last:.4g} at epoch {last_epoch}, "
                        f"{last / low:.3g}x its lowest ({low:.4g} at epoch {low_epoch}).",
                suggestion="Lower the learning rate or lengthen the warm-up.",
                changes={"optim.lr": lr[low_epoch] / c.lr_step} if low_epoch in lr else {}))
    out += _warmup_collapse(ctx)
    return out


def _warmup_collapse(ctx: Context) -> list[Finding]:
    c = ctx.cfg
    warm = series(ctx.train, "warmup")
    ends = [e for (_, a), (e, b) in itertools.pairwise(warm) if a > 0 and b == 0]
    if not ends:
        return []
    end = ends[0]
    watched = {"mAP50": dict(series(ctx.val, "mAP50"))}
    obj = {}
    for s in ctx.scales:
        for e, v in series(ctx.stat_rows(), f"stat/obj_pos/s{s}"):
            obj.setdefault(e, []).append(v)
    watched["obj_pos"] = {e: sum(v) / len(v) for e, v in obj.items()}
    for name, values in watched.items():
        before, after = values.get(end - 1), values.get(end)
        if before and after is not None and after < (1 - c.collapse_drop) * before:
            return [Finding(
                "collapse_after_warmup", "error", first_epoch=end,
                numbers={"metric": name, "before": before, "after": after},
                message=f"{name} collapsed from {before:.3g} to {after:.3g} in epoch {end}, when warm-up ended.",
                suggestion="The full learning rate is too high for this run: lengthen the warm-up or lower "
                           "the learning rate.",
                changes={"optim.lr": v / c.lr_step} if (v := dict(series(ctx.train, "lr")).get(end)) else {},
            )]
    return []


RULES = [
    rule_targets_not_found,
    rule_low_separated_objectness,
    rule_false_positive_objectness,
    rule_lagging_scale_iou,
    rule_overfitting,
    rule_term_sanity,
    rule_anchor_fit,
    rule_training_dynamics,
]


# --------------------------------------------------------------------------------------------- entry points


def diagnose(rows: list[dict], anchor_fit: dict | None = None, cfg: DoctorConfig | None = None,
             loss: dict | None = None, histograms: list[dict] | None = None) -> list[Finding]:
    """Run every rule in ``RULES`` over metrics rows; findings sorted by severity, then epoch.

    ``loss``: the run's loss config section (``config.yaml``'s ``loss``) for context such as ``box_loss``,
    ``aggregation`` and the current weights; None when unknown. ``histograms``: the histograms.jsonl rows
    (validation objectness and IoU per scale), None when not recorded.
    """
    cfg = cfg or DoctorConfig()
    by_split = {split: sorted((r for r in rows if r.get("split") == split), key=lambda r: r["epoch"])
                for split in ("train", "val")}
    ctx = Context(by_split["train"], by_split["val"], anchor_fit, dict(loss or {}), cfg, list(histograms or []))
    findings = [f for rule in RULES for f in rule(ctx)]
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity),
                                           -1 if f.first_epoch is None else f.first_epoch, f.rule))


@dataclass
class RunFiles:
    """What the doctor reads from a run folder."""

    rows: list[dict]  # metrics.jsonl
    anchor_fit: dict | None  # anchor_fit.json, None if absent
    config: dict  # config.yaml, {} if absent
    histograms: list[dict]  # histograms.jsonl, [] if absent


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run folder's metrics, anchor fit, config and histograms.

    Raises DoctorInputError naming the file and line for a missing metrics.jsonl or an unreadable file.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise DoctorInputError(metrics, None, "no metrics.jsonl: is this a run folder?")
    rows = read_jsonl(metrics, ROW_KEYS, DoctorInputError)
    for number, row in enumerate(rows, start=1):
        if row["split"] not in ("train", "val"):
            raise DoctorInputError(metrics, number, f"split must be train or val, got {row['split']!r}")
    fit_path, fit = run_dir / "anchor_fit.json", None
    if fit_path.is_file():
        try:
            fit = json.loads(fit_path.read_text())
        except json.JSONDecodeError as err:
            raise DoctorInputError(fit_path, err.lineno, f"not JSON ({err.msg})") from None
    config_path, config = run_dir / "config.yaml", {}
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise DoctorInputError(config_path, None, f"not YAML ({err})") from None
        if not isinstance(config, dict):
            raise DoctorInputError(config_path, None, "expected a mapping at the top level")
    return RunFiles(rows, fit, config, read_histograms(run_dir, DoctorInputError))


def run_doctor_config(config: dict, overrides: dict | None = None, source: Path | None = None) -> DoctorConfig:
    """The thresholds of a run: its config's ``doctor`` section, then ``overrides`` (field -> value) on top.

    Raises DoctorInputError naming ``source`` (the config.yaml) for a bad field there, or ``--set`` for a
    bad override.
    """
    cfg = _thresholds(config.get("doctor") or {}, str(source or "config.yaml"))
    return _thresholds({**cfg.model_dump(), **overrides}, "--set") if overrides else cfg


def _thresholds(values: dict, where: str) -> DoctorConfig:
    try:
        return DoctorConfig(**values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise DoctorInputError(where, None, f"doctor thresholds: {problems}") from None


def diagnose_run(run_dir: str | Path, cfg: DoctorConfig | None = None, overrides: dict | None = None) -> list[Finding]:
    """``diagnose`` a run folder and write its findings to ``<run_dir>/findings.json``.

    ``cfg``: the thresholds; None takes the ``doctor`` section of the run's config.yaml (defaults if absent)
    with ``overrides`` (field -> value, e.g. from ``yololab doctor --set``) on top.
    """
    run = read_run(run_dir)
    cfg = cfg or run_doctor_config(run.config, overrides, source=Path(run_dir) / "config.yaml")
    findings = diagnose(run.rows, run.anchor_fit, cfg, run.config.get("loss") or {}, run.histograms)
    path = Path(run_dir) / FINDINGS_FILE
    path.write_text(json.dumps([_finite(f.to_dict()) for f in findings], indent=2) + "\n")
    return findings


def _finite(value):
    """JSON has no NaN or infinity (a ratio over a zero denominator): written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
