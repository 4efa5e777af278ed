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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from yololab import keys as scale_keys
from yololab.diagnostics.runfiles import (
    BEST_CHECKPOINT,
    BEST_METRIC,
    ROW_KEYS,
    best_epoch,
    read_histograms,
    read_jsonl,
)
from yololab.errors import FileProblem

# anchor_fit.json's autoanchor reasons for keeping anchors that k-means beats (yololab.anchors.PINNED, OFF).
AUTOANCHOR_WITHHELD = ("pinned", "off")
AUTOANCHOR_TEXT = ("autoanchor then trains with k-means anchors when the anchors' best possible recall is under "
                   "model.autoanchor_bpr or model.autoanchor_bpr_iou50 and k-means fits better")
SEVERITIES = ("error", "warning", "info")  # sort order of findings: most serious first
EDGE_TOL = 1e-9  # histogram edges are sums of float steps: 0.5 may be stored as 0.49999999999999994
FINDINGS_FILE = "findings.json"
LR_DIGITS = 3  # significant digits of a suggested learning rate


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
    found_map: float = Field(
        0.1, ge=0, le=1, description="Targets not found is not raised at a scale whose IoU ends above iou_prior "
        "once val mAP50 reached this: the run detects its objects, so its labels are read right (x/y-swapped "
        "labels stayed at 0.004-0.018 in 6 epochs where the same labels written right reached 0.19-0.74, "
        "tests/test_doctor_end_to_end.py's set-up; a tf2-yolov3 run on photo-like data reached 0.29 with a scale "
        "whose focal objectness separated slowly).")
    low_obj_pos: float = Field(
        0.5, gt=0, le=1, description="Low objectness: mean obj_pos below this (the message then says the measured "
        "share of responsible predictions reaching detect_conf and 0.5, from the validation histograms).")
    detect_conf: float = Field(
        0.25, gt=0, lt=1, description="The confidence messages count objects at: `yololab detect --conf`'s "
        "default (0.25, as ultralytics' predict).")
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
    working_obj_ratio: float = Field(
        25.0, gt=0, description="False positives: the obj_weight / noobj_weight the suggested change aims at "
        "(keras-yolo3's obj_scale 5, i.e. 25:1, detected well on the sparse case study where obj_scale 50, "
        "2500:1, flooded it with false positives).")
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
    gap_ratio: float = Field(
        10.0, gt=1, description="Memorised training images: a term's val value at the last epoch at least this "
        "many times its train value (at 375 steps on 200 digit images the class term was 105-115x; in 77 other runs "
        "of the shipped studies, on 200 to 2,000 images, at most 6x).")
    gap_share: float = Field(
        0.05, ge=0, le=1, description="Memorised training images: ... and the gap (val minus train) at least this "
        "share of val loss/total, so that a term too small to matter is not named.")
    gap_val_kept: float = Field(
        0.5, gt=0, le=1, description="Memorised training images: ... and the val term still at least this share "
        "of its first validated value: training learnt the term, validation hardly did (the 200-image runs kept "
        "61-67 % of their class term; the demo's 2,000-image run, whose class term is 27x lower on training at "
        "the end, kept 16 % and reached val mAP50 0.93).")
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
        "within collapse_epochs of the end of a warm-up (learning rate or loss).")
    collapse_epochs: int = Field(
        2, ge=1, description="Collapse after warm-up: epochs from the first one after warm-up in which a fall "
        "counts.")
    collapse_min_map: float = Field(
        0.005, ge=0, description="Collapse after warm-up: mAP50 at the end of warm-up below this is noise, "
        "not a level that can collapse (the 140-photo run fell 0.010 -> 0.003).")
    bn_loss_ratio: float = Field(
        1.5, gt=1, description="Stale batch norm: validation not trusted while, on the first validation batch, "
        "the loss with the running statistics is above this factor times the loss with the batch's own "
        "statistics (docs/diagnostics.md, 'Batch-norm statistics').")
    bn_obj_ratio: float = Field(
        2.0, gt=1, description="Stale batch norm: ... or the objectness at true objects with the batch's own "
        "statistics above this factor times the one with the running statistics (the lagging digits run: "
        "16x at epoch 0 while the losses differed by 7%).")
    diverged_iou_share: float = Field(
        0.25, gt=0, lt=1, description="Diverged optimiser: IoU of responsible predictions below this share of "
        "iou_prior (the anchors alone): the boxes were pushed away from even the anchors' guess (a learning "
        "rate ~150x too high gave 0.0001 against 0.42; mis-encoded labels stay at the prior).")
    val_blowup: float = Field(
        10.0, gt=1, description="Diverged optimiser: val loss/total above this factor times the train loss/total "
        "of the same epoch.")
    stuck_map: float = Field(
        0.01, ge=0, description="Diverged optimiser: val mAP50 at or below this at every validated epoch counts "
        "as stuck at 0.")


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
    thresholds, the validation histograms (histograms.jsonl rows; [] when not recorded) and the run's train and
    data configs (may be {})."""

    train: list[dict]
    val: list[dict]
    anchor_fit: dict | None
    loss: dict
    cfg: DoctorConfig
    histograms: list[dict] = field(default_factory=list)
    train_cfg: dict = field(default_factory=dict)
    data_cfg: dict = field(default_factory=dict)

    @property
    def scales(self) -> list[int]:
        found = {s for row in self.train + self.val for k in row if (s := scale_keys.scale_of(k)) is not None}
        return sorted(found)

    @property
    def terms(self) -> list[tuple[str, int]]:
        found = {m for row in self.train + self.val for k in row if (m := scale_keys.match(k, scale_keys.LOSS))}
        return sorted(found, key=lambda ts: (ts[1], ts[0]))

    def stat_rows(self) -> list[dict]:
        """Val rows when the run validated (the full validation set), else train rows."""
        return self.val or self.train

    @property
    def best_map(self) -> float | None:
        """The highest val ``BEST_METRIC`` of the run; None when no validation logged it."""
        return max((v for _, v in series(self.val, BEST_METRIC)), default=None)


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


def _localisation(ctx: Context, rows: list[dict], s: int) -> tuple[dict, dict]:
    """(epoch -> IoU of responsible predictions, epoch -> iou_prior) at scale ``s`` over ``rows``."""
    return dict(series(rows, scale_keys.stat_key("iou", s))), dict(series(rows, scale_keys.stat_key("iou_prior", s)))


def _diverged(iou: float, prior: float | None, cfg: DoctorConfig) -> bool:
    """IoU far below what the anchors alone give: the optimiser moved boxes away, labels cannot do that."""
    return prior is not None and iou < cfg.diverged_iou_share * prior


def _localised(iou: float, prior: float | None, cfg: DoctorConfig) -> bool:
    """IoU above the anchors' prior by unfound_iou_gain (or, logged without a prior, above unfound_iou)."""
    return iou - prior >= cfg.unfound_iou_gain if prior is not None else iou >= cfg.unfound_iou


def rule_targets_not_found(ctx: Context) -> list[Finding]:
    """Objectness at responsible predictions not above the rest AND no localisation learned, to the last epoch.

    Localisation is the IoU of responsible predictions above ``iou_prior`` (what the anchors alone give at the
    cell centre): on x/y-swapped labels the IoU stays at that prior, which can be 0.3-0.5 with fitted anchors.
    Runs logged without ``iou_prior`` fall back to an absolute IoU near 0. A scale enters the state when it is
    neither separated nor localised and leaves it only once it localises: objectness creeping past the
    separation limit while the IoU stays at the prior does not clear it. An IoU far *below* the prior is a
    diverged optimiser, not labels (``rule_diverged_optimiser``), and clears it too. In a run whose val mAP50
    reached ``found_map`` (it detects its objects, so its labels are read right) a scale whose IoU ends above the
    prior is learning slowly, not lost, and is left out.
    """
    c, out = ctx.cfg, []
    best_map = ctx.best_map
    detects = best_map is not None and best_map >= c.found_map
    for s in ctx.scales:
        pos = dict(series(ctx.stat_rows(), scale_keys.stat_key("obj_pos", s)))
        neg = dict(series(ctx.stat_rows(), scale_keys.stat_key("obj_neg", s)))
        iou, prior = _localisation(ctx, ctx.stat_rows(), s)
        epochs = sorted(e for e in pos if e in neg and e in iou and e >= c.settle_epochs)
        state, flags = False, []
        for e in epochs:
            if _localised(iou[e], prior.get(e), c) or _diverged(iou[e], prior.get(e), c):
                state = False
            elif _ratio(pos[e], neg[e]) < c.unfound_separation:
                state = True
            flags.append((e, state))
        start = _tail_start(flags)
        if start is None:
            continue
        last = epochs[-1]
        if detects and last in prior and iou[last] > prior[last]:
            continue
        numbers = {"obj_pos": pos[last], "obj_neg": neg[last], "iou": iou[last]}
        if last in prior:
            numbers["iou_prior"] = prior[last]
            where = f"{iou[last]:.3g}, no better than the {prior[last]:.3g} the anchors alone give"
        else:
            where = f"{iou[last]:.3g}"
        ratio = _ratio(pos[last], neg[last])
        separation = ("is not above objectness elsewhere" if ratio < c.unfound_separation else
                      f"is only {ratio:.3g}x objectness elsewhere")
        out.append(Finding(
            "targets_not_found", "error", scale=s, term="obj", first_epoch=start, numbers=numbers,
            message=f"At scale {s} the network cannot find its targets: objectness at responsible predictions "
                    f"({pos[last]:.3g}) {separation} ({neg[last]:.3g}) and their IoU with the truth is {where}"
                    f" (since epoch {start}).",
            suggestion="Check the target encoding: label column order (class cx cy w h), normalised units "
                       "(0-1 of the image, not pixels), x/y not swapped, and the anchors/strides of that scale. "
                       "If the labels are right, the run is too short to have learned anything yet.",
        ))
    return out


def _share_at_or_above(hist: dict, edges: list[float], conf: float) -> int:
    """Samples of one histogram (``{"counts": [...]}``) in the bins whose lower edge is >= ``conf``."""
    first = next((k for k, edge in enumerate(edges[:-1]) if edge >= conf - EDGE_TOL), None)
    return sum(hist["counts"][first:]) if first is not None else 0


def recall_at(histograms: list[dict], scale: int, conf: float) -> dict[int, float]:
    """epoch -> share of responsible predictions whose objectness is >= ``conf`` (histograms.jsonl rows, bins
    whose lower edge is >= ``conf``): the objects a detector thresholded at ``conf`` can still find, before
    class probabilities and NMS. Epochs without responsible predictions at that scale are left out."""
    out = {}
    for row in histograms:
        pos = row["histograms"].get(scale_keys.key("obj_pos", scale))
        if pos and pos["num"]:
            out[row["epoch"]] = _share_at_or_above(pos, row["edges"], conf) / pos["num"]
    return out


def rule_low_separated_objectness(ctx: Context) -> list[Finding]:
    """obj_pos low but far above obj_neg at a scale that localises (IoU not near 0, not below the anchors'
    prior): objects are ranked above the background, but a confidence threshold drops many of them. The
    message gives the measured share of responsible predictions reaching detect's default confidence and 0.5."""
    c, out = ctx.cfg, []
    for s in ctx.scales:
        pos = dict(series(ctx.stat_rows(), scale_keys.stat_key("obj_pos", s)))
        neg = dict(series(ctx.stat_rows(), scale_keys.stat_key("obj_neg", s)))
        iou, prior = _localisation(ctx, ctx.stat_rows(), s)
        epochs = sorted(e for e in pos if e in neg and e >= c.settle_epochs)
        flags = [(e, pos[e] < c.low_obj_pos and _ratio(pos[e], neg[e]) >= c.separated_ratio and e in iou
                  and iou[e] >= c.unfound_iou and not _diverged(iou[e], prior.get(e), c)) for e in epochs]
        start = _tail_start(flags)
        if start is None:
            continue
        last = epochs[-1]
        ratio = _ratio(pos[last], neg[last])
        numbers = {"obj_pos": pos[last], "obj_neg": neg[last], "ratio": ratio}
        recalls = {conf: recall_at(ctx.histograms, s, conf).get(last) for conf in (c.detect_conf, c.fp_conf)}
        if None not in recalls.values():
            numbers.update({f"recall_at_{conf:g}": r for conf, r in recalls.items()})
            measured = (f"{recalls[c.detect_conf]:.0%} of the true objects' predictions reach {c.detect_conf:g} "
                        f"(detect's default --conf) and {recalls[c.fp_conf]:.0%} reach {c.fp_conf:g}")
        else:
            measured = "how many reach a confidence threshold is not known (no validation histograms)"
        changes = {"loss.obj_weight": ctx.loss.get("obj_weight", 1.0) * c.weight_step}
        if ctx.loss.get("obj_target") == "iou":
            changes["loss.obj_target"] = "one"
        out.append(Finding(
            "low_separated_objectness", "info", scale=s, term="obj", first_epoch=start, numbers=numbers,
            message=f"At scale {s} objectness at true objects is low ({pos[last]:.3g} on average) but {ratio:.3g}x "
                    f"higher than elsewhere, and their IoU is {iou[last]:.3g}: objects are ranked above the "
                    f"background; {measured}.",
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
        neg, pos = (row["histograms"].get(scale_keys.key(kind, scale)) for kind in ("obj_neg", "obj_pos"))
        if not neg or not pos or not pos["num"]:
            continue
        out[row["epoch"]] = _share_at_or_above(neg, row["edges"], conf) / pos["num"]
    return out


def _weight_fix(ctx: Context) -> tuple[dict, str]:
    """The change of loss weights that brings obj : noobj to ``working_obj_ratio``, and how it is said."""
    c = ctx.cfg
    obj, noobj = ctx.loss.get("obj_weight", 1.0), ctx.loss.get("noobj_weight", 1.0)
    ratio = obj / noobj
    if ratio > c.working_obj_ratio:
        target = noobj * c.working_obj_ratio
        return {"loss.obj_weight": target}, (
            f"obj is weighted {ratio:.3g}x noobj, {ratio / c.working_obj_ratio:.3g}x the {c.working_obj_ratio:g}:1 "
            f"that detected well in the sparse case study: set loss.obj_weight={target:g} (or "
            f"loss.noobj_weight={obj / c.working_obj_ratio:g})")
    return {"loss.noobj_weight": noobj * c.weight_step}, (
        f"obj is weighted {ratio:.3g}x noobj, already within the {c.working_obj_ratio:g}:1 that worked: weight "
        f"noobj {c.weight_step:g}x more")


def rule_false_positive_objectness(ctx: Context) -> list[Finding]:
    """Objectness high away from objects to the last epoch: the mean (obj_neg) above ``high_obj_neg``, or,
    from the validation histograms, more than ``max_fp_per_truth`` predictions away from objects above
    ``fp_conf`` for each true object. The suggested weights reach ``working_obj_ratio``."""
    c, out = ctx.cfg, []
    for s in ctx.scales:
        neg = {e: v for e, v in series(ctx.stat_rows(), scale_keys.stat_key("obj_neg", s)) if e >= c.settle_epochs}
        fp = {e: v for e, v in false_positives_per_truth(ctx.histograms, s, c.fp_conf).items()
              if e >= c.settle_epochs}
        epochs = sorted(set(neg) | set(fp))
        start = _tail_start([(e, neg.get(e, 0.0) > c.high_obj_neg or fp.get(e, 0.0) > c.max_fp_per_truth)
                             for e in epochs])
        if start is None:
            continue
        pos = dict(series(ctx.stat_rows(), scale_keys.stat_key("obj_pos", s)))
        last = epochs[-1]
        at_detect = false_positives_per_truth(ctx.histograms, s, c.detect_conf).get(last)
        numbers = {k: v for k, v in (("obj_neg", neg.get(last)), ("obj_pos", pos.get(last)),
                                     ("fp_per_truth", fp.get(last)), ("fp_per_truth_at_detect_conf", at_detect))
                   if v is not None}
        said = [f"{neg[last]:.3g} on average"] if last in neg else []
        if last in fp:
            said.append(f"{fp[last]:.3g} predictions away from objects above {c.fp_conf:g} for each true object, "
                        f"{at_detect:.3g} above {c.detect_conf:g} (detect's default --conf), before NMS")
        changes, said_fix = _weight_fix(ctx)
        out.append(Finding(
            "false_positive_objectness", "warning", scale=s, term="noobj", first_epoch=start, numbers=numbers,
            message=f"At scale {s} objectness away from objects is high ({'; '.join(said)}): many false "
                    f"positives.",
            suggestion=f"Weight objectness elsewhere (noobj) more relative to objectness at objects (obj): "
                       f"{said_fix}.",
            changes=changes,
        ))
    return out


def rule_lagging_scale_iou(ctx: Context) -> list[Finding]:
    """A scale whose responsible-prediction IoU stays low and flat while another scale improves."""
    c = ctx.cfg
    trend = {}
    for s in ctx.scales:
        iou = series(ctx.stat_rows(), scale_keys.stat_key("iou", s))
        if len(iou) >= c.min_epochs:
            trend[s] = (iou[0][1], iou[-1][1], iou[0][0])
    improving = [s for s, (first, last, _) in trend.items() if last - first >= c.iou_gain_min
                 and last >= c.lagging_iou]
    out = []
    for s, (first, last, first_epoch) in trend.items():
        if last >= c.lagging_iou or last - first >= c.iou_gain_min or not [o for o in improving if o != s]:
            continue
        mse = ctx.loss.get("box_loss") == "mse"
        anchors = _anchor_advice(ctx.anchor_fit or {})
        out.append(Finding(
            "lagging_scale_iou", "warning", scale=s, term="box", first_epoch=first_epoch,
            numbers={"iou_first": first, "iou_last": last, "improving_scales": improving},
            message=f"At scale {s} the IoU of responsible predictions stays low ({first:.3g} -> {last:.3g}) "
                    f"while scale(s) {', '.join(map(str, improving))} improve.",
            suggestion="Use an IoU-family box loss (GIoU) for this scale's small boxes." if mse else
                       f"Check this scale's anchors (anchor_fit.json). {anchors[0]}" if anchors else
                       "Check this scale's boxes: its anchors are the ones k-means fitted to them (anchor_fit.json).",
            changes={"loss.box_loss": "giou"} if mse else anchors[1] if anchors else {},
        ))
    return out


def _last_rise(val: dict[int, float], train: dict[int, float], k: int, tol: float) -> int | None:
    """The epoch before the most recent run of ``k`` epochs in a row where ``val`` rose (by more than ``tol`` of
    its previous value) while ``train`` fell; None when there was none."""
    epochs = sorted(e for e in val if e in train)
    run, found = 0, None
    for i, (prev, e) in enumerate(itertools.pairwise(epochs)):
        rising = val[prev] > 0 and val[e] > val[prev] * (1 + tol) and train[e] < train[prev]
        run = run + 1 if rising else 0
        if run >= k:
            found = epochs[i + 1 - run]
    return found


def rule_overfitting(ctx: Context) -> list[Finding]:
    """Per term and scale: the val term rose for k epochs in a row while the train term fell, and it still is
    where that left it: above its value before the rise and above the train term, with val mAP50 past its best.

    What is said is the current state: a rise that validation has since recovered from (as after early
    batch-norm lag) or a val term at or below the train term is no overfitting, and while val mAP50 is still
    at its best at the last epoch, a rising term (early on, noobj rises on val while objectness learns to
    fire) has cost nothing: no finding.
    """
    c, out = ctx.cfg, []
    map50 = dict(series(ctx.val, BEST_METRIC))
    latest_peak = max(map50, key=lambda e: (map50[e], e)) if map50 else None  # last epoch at the best mAP50
    kept = best_epoch(ctx.val)
    best_map_epoch = kept["epoch"] if kept is not None else None  # the epoch best.ckpt holds (first on ties)
    for term, s in ctx.terms:
        key = scale_keys.loss_key(term, s)
        train, val = dict(series(ctx.train, key)), dict(series(ctx.val, key))
        before = _last_rise(val, train, c.overfit_epochs, c.rise_rel_tol)
        if before is None:
            continue
        last = max(e for e in val if e in train)
        start = min(e for e in val if e > before)
        if val[last] <= val[before] * (1 + c.rise_rel_tol) or val[last] <= train[last]:
            continue
        if latest_peak is not None and latest_peak >= last:
            continue
        numbers = {"val_before": val[before], "val_now": val[last], "train_before": train[before],
                   "train_now": train[last], "epoch_before": before, "epoch_now": last}
        peak = keep = ""
        if best_map_epoch is not None:
            numbers.update(best_map_epoch=best_map_epoch, best_map=map50[best_map_epoch], map_now=map50[last]
                           if last in map50 else None)
            peak = (f"; val {BEST_METRIC} peaked at {map50[best_map_epoch]:.3g} in epoch {best_map_epoch}"
                    + (f" and is {map50[last]:.3g} now" if last in map50 else ""))
            keep = (f" The epoch to keep is {best_map_epoch}: checkpoints/{BEST_CHECKPOINT} holds it "
                    f"(`--weights best`, the default of yololab detect, eval and export).")
        out.append(Finding(
            "overfitting", "warning", scale=s, term=term, first_epoch=start, numbers=numbers,
            message=f"The {term} term at scale {s} overfits: on validation it rose from {val[before]:.3g} "
                    f"(epoch {before}) to {val[last]:.3g} now (epoch {last}), above training's {train[last]:.3g}, "
                    f"while training fell from {train[before]:.3g}{peak}.{keep}",
            suggestion="Stop earlier, add data or augmentation, or lower that term's weight.",
            changes={"train.epochs": (best_map_epoch if best_map_epoch is not None else before) + 1},
        ))
    return out


AUGMENT_KEY = "data.augment.enabled"  # the setting the memorised-images finding suggests when it is off
GAPS_SHOWN = 3  # terms the memorised-images message names after the widest


def rule_memorised_training_images(ctx: Context) -> list[Finding]:
    """At the last epoch validated, terms whose val value is ``gap_ratio`` times their train value or more, with
    a gap that is a real part of the val loss, while on validation the term kept ``gap_val_kept`` of its first
    value: training learnt the term and validation hardly did, so the model fits its training images far better
    than new ones (too few images for the steps trained). One finding, the widest gap first. Unlike
    ``overfitting`` it needs no rise of the val term: a val term that stalls while the train term goes to 0 is
    the same memorising."""
    c = ctx.cfg
    common = sorted({r["epoch"] for r in ctx.train} & {r["epoch"] for r in ctx.val})
    if not common:
        return []
    last = common[-1]
    train = next(r for r in ctx.train if r["epoch"] == last)
    val = next(r for r in ctx.val if r["epoch"] == last)
    total = val.get("loss/total")
    gaps = []
    for term, s in ctx.terms:
        key = scale_keys.loss_key(term, s)
        t, v = train.get(key), val.get(key)
        first = next((value for _, value in series(ctx.val, key)), None)
        if t is None or v is None or total is None or first is None or t <= 0 or v < c.gap_ratio * t \
                or v - t < c.gap_share * total or v < c.gap_val_kept * first:
            continue
        gaps.append((v / t, term, s, t, v, first))
    if not gaps:
        return []
    gaps.sort(reverse=True)
    ratio, term, s, t, v, first = gaps[0]
    others = ", ".join(f"{g[1]} s{g[2]} {g[0]:.0f}x" for g in gaps[1:1 + GAPS_SHOWN])
    augment = ctx.data_cfg.get("augment", {}).get("enabled")
    return [Finding(
        "memorised_training_images", "warning", scale=s, term=term, first_epoch=last,
        numbers={"epoch": last, "train": t, "val": v, "val_first": first, "ratio": ratio,
                 "gaps": {f"{g[1]}/s{g[2]}": {"train": g[3], "val": g[4], "val_first": g[5]} for g in gaps}},
        message=f"The model fits its training images far better than new ones: at epoch {last} the {term} term at "
                f"scale {s} is {t:.3g} on training and {v:.3g} on validation ({ratio:.0f}x), where validation "
                f"started at {first:.3g}" + (f"; also {others}" if others else "")
                + ". It has learnt these images more than the objects in them.",
        suggestion="More training images, or augmentation" + (" (it is off)" if augment is False else "")
                   + ": what carries over to new images is what val mAP50 measures, not the training loss.",
        changes={AUGMENT_KEY: True} if augment is False else {},
    )]


def rule_term_sanity(ctx: Context) -> list[Finding]:
    """Terms identically zero, negative or non-finite, and terms that do not add up to loss/total."""
    return _zero_terms(ctx) + _bad_terms(ctx) + _sum_mismatch(ctx)


def _zero_terms(ctx: Context) -> list[Finding]:
    out = []
    for term, s in ctx.terms:
        values = [v for _, v in series(ctx.train, scale_keys.loss_key(term, s))]
        had_pos = any(v > 0 for _, v in series(ctx.train, scale_keys.stat_key("n_pos", s)))
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
        keys = sorted({k for row in rows for k in row if scale_keys.is_key(k, scale_keys.LOSS) or k == "loss/total"})
        for key in keys:
            bad = [(row["epoch"], row.get(key)) for row in rows
                   if key in row and (row[key] is None or not math.isfinite(row[key]) or row[key] < -ctx.cfg.zero_tol)]
            if not bad:
                continue
            m = scale_keys.match(key, scale_keys.LOSS)  # (term, scale)
            epoch, value = bad[0]
            kind = "non-finite" if value is None or not math.isfinite(value) else "negative"
            out.append(Finding(
                "bad_term", "error", scale=m[1] if m else None, term=m[0] if m else "total",
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
            terms = [v for k, v in row.items() if scale_keys.is_key(k, scale_keys.LOSS)]
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


def _lower_lr(lr: float, c: DoctorConfig) -> dict[str, float]:
    """The change to a learning rate ``c.lr_step`` times lower than ``lr`` (a logged float32 value), to
    ``LR_DIGITS`` significant digits: ``optim.lr=0.001``, not ``0.0009999999776482583``."""
    return {"optim.lr": float(f"{lr / c.lr_step:.{LR_DIGITS}g}")}


def rule_anchor_fit(ctx: Context) -> list[Finding]:
    """Best possible recall low, a scale's anchors spread widely, a scale receiving almost no truths.

    When ``anchor_fit.json`` holds the k-means fit (``kmeans``) and it is no better than the configured
    anchors, re-fitting cannot help: low recall then says the boxes vary more than the anchors can cover, and
    a wide spread is the data's own (info only). Nor can it when autoanchor already trained with the k-means
    anchors. Otherwise the advice is how to train with fitted anchors (``_anchor_advice``).
    """
    c, fit, out = ctx.cfg, ctx.anchor_fit or {}, []
    advice = _anchor_advice(fit)
    anchors_advice, anchors_change = advice or ("", {})
    kmeans = fit.get("kmeans") or {}
    refit_gain = kmeans.get("mean_best_iou", math.inf) - fit.get("mean_best_iou", 0.0)
    refit_helps = refit_gain >= c.refit_gain and advice is not None
    kmeans_numbers = {f"kmeans_{k}": v for k, v in kmeans.items()}
    bpr = {k: fit[k] for k in ("bpr_ratio", "bpr_iou50") if fit.get(k) is not None}
    bpr_text = _bpr_text(bpr, fit.get("anchor_t"))
    if bpr.get("bpr_ratio", 1.0) < c.min_bpr_ratio or bpr.get("bpr_iou50", 1.0) < c.min_bpr_iou50:
        if refit_helps:
            message = f"The anchors do not fit the boxes: best possible recall {bpr_text}."
            suggestion, changes = anchors_advice, anchors_change
        else:
            message = (f"Best possible recall is low, {bpr_text}, although the anchors fit as well as k-means "
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
    return out + _scales_without_truths(ctx, advice)


def _anchor_advice(fit: dict) -> tuple[str, dict] | None:
    """How to train with anchors fitted to the data, from anchor_fit.json's ``autoanchor`` record: (suggestion,
    changes), or None when the run already trained with the k-means anchors (autoanchor applied them).

    Anchors kept because they were pinned (``model.anchors``) or autoanchor was off: let autoanchor fit them.
    Kept because their best possible recalls passed ``model.autoanchor_bpr`` and ``model.autoanchor_bpr_iou50``
    (the advice then comes from thresholds of the doctor's own, or from the spread): the k-means anchors the
    record holds, as ``model.anchors``. A run from before
    autoanchor (no record): turn it on.
    """
    auto = fit.get("autoanchor")
    if auto is None:
        return (f"Let yololab fit the anchors at train start (--set model.autoanchor=true: {AUTOANCHOR_TEXT}).",
                {"model.autoanchor": True})
    if auto.get("applied"):
        return None
    if auto.get("reason") in AUTOANCHOR_WITHHELD:
        steps, changes = [], {}
        if auto.get("pinned"):
            steps.append("drop model.anchors (--set model.anchors=null)")
            changes["model.anchors"] = None
        if not auto.get("enabled", True):
            steps.append("--set model.autoanchor=true")
            changes["model.autoanchor"] = True
        return f"Let yololab fit the anchors at train start: {' and '.join(steps)} ({AUTOANCHOR_TEXT}).", changes
    fitted = (auto.get("fitted") or {}).get("anchors")
    if fitted is None:
        return None
    return (f"Train with the k-means anchors of anchor_fit.json (autoanchor kept these, as their best possible "
            f"recalls reached model.autoanchor_bpr and model.autoanchor_bpr_iou50): --set "
            f"'model.anchors={json.dumps(fitted)}'.", {"model.anchors": fitted})


def _bpr_text(bpr: dict, anchor_t: float | None) -> str:
    """'0.715 at shape IoU > 0.5 and 1.000 within a size ratio of 4 (shares of the truths with an anchor that
    close)'."""
    said = []
    if "bpr_iou50" in bpr:
        said.append(f"{bpr['bpr_iou50']:.3f} at shape IoU > 0.5")
    if "bpr_ratio" in bpr:
        said.append(f"{bpr['bpr_ratio']:.3f} within a size ratio of {anchor_t:g}" if anchor_t else
                    f"{bpr['bpr_ratio']:.3f} within the size-ratio limit")
    return " and ".join(said) + " (shares of the truths with an anchor that close)"


def _scales_without_truths(ctx: Context, advice: tuple[str, dict] | None) -> list[Finding]:
    """A scale given almost none of the truths. Read from the truths the loss assigned in training
    (``stat/n_pos``: whatever the preset's assignment, one truth may go to several anchors and scales); the
    anchor fit's best-anchor share only for a run without those rows."""
    c = ctx.cfg
    mean_pos = {s: sum(v) / len(v) for s in ctx.scales
                if (v := [x for _, x in series(ctx.train, scale_keys.stat_key("n_pos", s))])}
    total = sum(mean_pos.values())
    if mean_pos and total > 0:
        shares = {s: m / total for s, m in mean_pos.items()}
        source, said = "stat/n_pos", {s: f"{mean_pos[s]:.3g} truths per training batch, {shares[s]:.1%} of those "
                                         f"assigned at all scales" for s in shares}
    else:
        shares = dict(enumerate((ctx.anchor_fit or {}).get("share_per_scale") or []))
        source, said = "anchor_fit", {s: f"{share:.1%} of the truths have their best-fitting anchor there"
                                      for s, share in shares.items()}
    return [Finding("scale_without_truths", "warning", scale=s, numbers={"share": share, "source": source},
                    message=f"Scale {s} receives almost no truths ({said[s]}): its head learns nothing about objects.",
                    suggestion=f"{advice[0]} Or use a cfg with fewer scales." if advice else
                    "The anchors were fitted to the data (autoanchor): use a cfg with fewer scales.",
                    changes=advice[1] if advice else {})
            for s, share in shares.items() if share < c.min_scale_share]


def rule_training_dynamics(ctx: Context) -> list[Finding]:
    """Loss spikes, divergence of the training loss, and a collapse right after a warm-up."""
    c, out = ctx.cfg, []
    total = series(ctx.train, "loss/total")
    lr = dict(series(ctx.train, "lr"))
    for (prev, a), (e, b) in itertools.pairwise(total):
        if a > 0 and b > c.spike_factor * a:
            out.append(Finding(
                "loss_spike", "warning", term="total", first_epoch=e, numbers={"before": a, "after": b},
                message=f"The training loss jumped {b / a:.3g}x from epoch {prev} to {e} ({a:.4g} -> {b:.4g}).",
                suggestion="Lower the learning rate or clip gradients harder.",
                changes=_lower_lr(lr[e], c) if e in lr else {}))
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
                changes=_lower_lr(lr[low_epoch], c) if low_epoch in lr else {}))
    return out


def _warmup_ends(ctx: Context) -> dict[str, int]:
    """warm-up name -> the first epoch after it. The learning-rate warm-up from ``lr_warmup`` (share of the
    epoch's steps inside it), or for runs logged without it, from ``lr`` (the last step's value) starting to
    fall; the loss's anchor-prior warm-up from ``warmup``."""
    ends = {}
    for name, key in (("learning-rate warm-up", "lr_warmup"), ("loss warm-up", "warmup")):
        flags = series(ctx.train, key)
        end = next((e for (_, a), (e, b) in itertools.pairwise(flags) if a > 0 and b == 0), None)
        if end is not None:
            ends[name] = end
    if "learning-rate warm-up" not in ends and not series(ctx.train, "lr_warmup"):
        lr = series(ctx.train, "lr")
        end = next((e for (_, a), (e, b) in itertools.pairwise(lr) if b < a), None)
        if end is not None and end > lr[0][0]:
            ends["learning-rate warm-up"] = end
    return ends


def rule_collapse_after_warmup(ctx: Context) -> list[Finding]:
    """Val mAP50 (or mean obj_pos) at the end of a warm-up falling by ``collapse_drop`` within
    ``collapse_epochs`` after it, and not recovered by the last epoch."""
    c = ctx.cfg
    watched = {"mAP50": dict(series(ctx.val, "mAP50"))}
    obj: dict[int, list[float]] = {}
    for s in ctx.scales:
        for e, v in series(ctx.stat_rows(), scale_keys.stat_key("obj_pos", s)):
            obj.setdefault(e, []).append(v)
    watched["obj_pos"] = {e: sum(v) / len(v) for e, v in obj.items()}
    lr = dict(series(ctx.train, "lr"))
    for warmup, end in sorted(_warmup_ends(ctx).items(), key=lambda we: we[1]):
        for name, values in watched.items():
            ends_at = [e for e in values if e < end]
            if not ends_at:
                continue
            before_epoch = max(ends_at)
            before = values[before_epoch]
            after = {e: v for e, v in values.items() if end <= e < end + c.collapse_epochs}
            if not after or before <= (c.collapse_min_map if name == "mAP50" else 0):
                continue
            low_epoch = min(after, key=after.get)
            now_epoch = max(values)
            if after[low_epoch] >= (1 - c.collapse_drop) * before or values[now_epoch] >= before:
                continue
            return [Finding(
                "collapse_after_warmup", "error", first_epoch=low_epoch,
                numbers={"metric": name, "warmup": warmup, "before": before, "after": after[low_epoch],
                         "now": values[now_epoch]},
                message=f"Val {name} collapsed from {before:.3g} (epoch {before_epoch}) to {after[low_epoch]:.3g} "
                        f"(epoch {low_epoch}) right after the {warmup} ended, and is {values[now_epoch]:.3g} now "
                        f"(epoch {now_epoch}).",
                suggestion="The full learning rate is too high for this run: lengthen the warm-up or lower "
                           "the learning rate.",
                changes=_lower_lr(max(lr.values()), c) if lr else {},
            )]
    return []


def rule_diverged_optimiser(ctx: Context) -> list[Finding]:
    """A learning rate far too high, told apart from mis-encoded labels.

    Mis-encoded labels leave the IoU of responsible predictions at the anchors' prior while the train loss
    falls normally (``targets_not_found``). A diverged optimiser pushes boxes *away* from even the anchors'
    guess: the train IoU ends below ``diverged_iou_share`` of ``iou_prior``, and validation shows it as a val
    loss far above the train loss (``val_blowup``) or an mAP50 that never left 0 (``stuck_map``). Reads train
    rows (batch statistics, no lag) for the IoU, val rows for the rest.
    """
    c = ctx.cfg
    if not ctx.train or ctx.train[-1]["epoch"] < c.settle_epochs:
        return []
    last = ctx.train[-1]
    pairs = [(last.get(scale_keys.stat_key("iou", s)), last.get(scale_keys.stat_key("iou_prior", s)))
             for s in ctx.scales]
    pairs = [(i, p) for i, p in pairs if i is not None and p]
    if not pairs:
        return []
    iou, prior = (sum(v) / len(pairs) for v in zip(*pairs, strict=True))
    if not _diverged(iou, prior, c):
        return []
    train_total = dict(series(ctx.train, "loss/total"))
    blowups = {e: v / train_total[e] for e, v in series(ctx.val, "loss/total") if train_total.get(e, 0) > 0}
    worst = max(blowups, key=blowups.get) if blowups else None
    best_map = ctx.best_map
    stuck = best_map is not None and best_map <= c.stuck_map
    blown = worst is not None and blowups[worst] > c.val_blowup
    if not (stuck or blown):
        return []
    said = [f"the IoU of responsible predictions on training images is {iou:.3g}, far below the {prior:.3g} the "
            f"anchors alone give"]
    numbers = {"iou": iou, "iou_prior": prior}
    if blown:
        val_total = dict(series(ctx.val, "loss/total"))[worst]
        said.append(f"val loss/total reached {val_total:.4g} at epoch {worst} ({blowups[worst]:.3g}x the train loss)")
        numbers.update(val_loss=val_total, val_blowup=blowups[worst], blowup_epoch=worst)
    if stuck:
        said.append(f"val {BEST_METRIC} has stayed at or below {best_map:.3g}")
        numbers["best_map"] = best_map
    lr = [v for _, v in series(ctx.train, "lr")]
    return [Finding(
        "diverged_optimiser", "error", first_epoch=ctx.train[0]["epoch"], numbers=numbers,
        message="The learning rate is far too high: " + "; ".join(said) + ". Wrong labels leave the IoU at the "
                "anchors' prior; only an optimiser that overshoots pushes boxes away from it.",
        suggestion=f"Lower the learning rate {c.lr_step:g}x (or more) and keep the warm-up.",
        changes={"optim.lr": max(lr) / c.lr_step} if lr else {},
    )]


def bn_disagreement(row: dict) -> dict[str, float]:
    """From a val row's batch-norm check: ``loss`` = loss with running / with batch statistics, ``obj_pos`` =
    objectness at true objects with batch / with running statistics (each > 1 when the running ones are
    worse); a ratio whose values were not logged (or would divide by 0) is left out."""
    out = {}
    pairs = {"loss": ("bn_check/loss_running", "bn_check/loss_batch"),
             "obj_pos": ("bn_check/obj_pos_batch", "bn_check/obj_pos_running")}
    for name, (top, bottom) in pairs.items():
        if row.get(top) is not None and row.get(bottom):
            out[name] = row[top] / row[bottom]
    return out


def stale_epochs(val: list[dict], cfg: DoctorConfig) -> list[int]:
    """Epochs whose validation batch-norm check disagrees strongly (``bn_loss_ratio``, ``bn_obj_ratio``): the
    running statistics do not fit the weights, so neither do the validation numbers."""
    limits = {"loss": cfg.bn_loss_ratio, "obj_pos": cfg.bn_obj_ratio}
    return [row["epoch"] for row in val if any(r > limits[k] for k, r in bn_disagreement(row).items())]


def stale_batch_norm_finding(ctx: Context, stale: list[int]) -> Finding:
    """What the stale epochs mean: a warning while the last validation is one of them (the rules that read
    validation are held back), an info once validation agrees again (those epochs were left out).
    ``ctx.val`` holds every val row here."""
    val = ctx.val
    ratios = {row["epoch"]: bn_disagreement(row) for row in val if row["epoch"] in stale}
    last = ratios[stale[-1]]
    said = []
    if "obj_pos" in last:
        said.append(f"objectness at true objects was {last['obj_pos']:.3g}x lower with batch norm's running "
                    f"statistics than with the batch's own")
    if "loss" in last:
        said.append(f"the loss {last['loss']:.3g}x higher")
    held = ", ".join(rule.__name__.removeprefix("rule_") for rule in VALIDATION_RULES)
    numbers = {"epochs": stale, **{f"{k}_ratio": v for k, v in last.items()}}
    why = (f"on the same validation batch at epoch {stale[-1]}, {' and '.join(said)}: the running averages lag "
           f"the weights, as they do when an epoch has few steps")
    batches = ctx.train_cfg.get("precise_bn_batches")
    if batches:
        advice = (f"Re-estimate the statistics over more un-augmented training batches before validation "
                  f"(train.precise_bn_batches, {batches} now), or train with more steps per epoch.")
        changes = {"train.precise_bn_batches": 2 * batches}
    else:
        advice = ("Re-estimate the statistics before each validation: precise BN, train.precise_bn_batches > 0 "
                  "(on by default).")
        changes = {}
    if stale[-1] == val[-1]["epoch"]:
        return Finding("stale_batch_norm", "warning", first_epoch=stale[0], numbers=numbers,
                       message=f"Validation numbers are not trustworthy yet: {why}. Findings that read validation "
                               f"({held}) are held back until they are.",
                       suggestion=advice, changes=changes)
    return Finding("stale_batch_norm", "info", first_epoch=stale[0], numbers=numbers,
                   message=f"Validation of epoch(s) {', '.join(map(str, stale))} was not trustworthy ({why}); "
                           f"later epochs agree, and the rules left those epochs out.",
                   suggestion=advice)


# Rules that read the validation rows or histograms: held back while validation is not trustworthy.
VALIDATION_RULES = [
    rule_targets_not_found,
    rule_low_separated_objectness,
    rule_false_positive_objectness,
    rule_lagging_scale_iou,
    rule_overfitting,
    rule_memorised_training_images,
    rule_collapse_after_warmup,
]
RULES = [
    *VALIDATION_RULES,
    rule_term_sanity,
    rule_anchor_fit,
    rule_training_dynamics,
    rule_diverged_optimiser,
]


# --------------------------------------------------------------------------------------------- entry points


def diagnose(rows: list[dict], anchor_fit: dict | None = None, cfg: DoctorConfig | None = None,
             loss: dict | None = None, histograms: list[dict] | None = None,
             train_config: dict | None = None, data_config: dict | None = None) -> list[Finding]:
    """Run every rule in ``RULES`` over metrics rows; findings sorted by severity, then epoch.

    ``loss``: the run's loss config section (``config.yaml``'s ``loss``) for context such as ``box_loss``,
    ``aggregation`` and the current weights; None when unknown. ``histograms``: the histograms.jsonl rows
    (validation objectness and IoU per scale), None when not recorded. ``train_config``: the run's ``train``
    section (precise BN settings), None when unknown. ``data_config``: its ``data`` section (whether it
    augmented), None when unknown.

    Validation epochs whose batch-norm check says the running statistics do not fit the weights
    (``stale_epochs``) are left out of the rules that read validation; while the last one is such an epoch,
    those rules are held back entirely, and a ``stale_batch_norm`` finding says why. A diverged optimiser
    explains what ``targets_not_found`` would blame on the labels, so that one is then dropped.
    """
    cfg = cfg or DoctorConfig()
    by_split = {split: sorted((r for r in rows if r.get("split") == split), key=lambda r: r["epoch"])
                for split in ("train", "val")}
    ctx = Context(by_split["train"], by_split["val"], anchor_fit, dict(loss or {}), cfg, list(histograms or []),
                  dict(train_config or {}), dict(data_config or {}))
    stale = stale_epochs(ctx.val, cfg)
    findings = [stale_batch_norm_finding(ctx, stale)] if stale else []
    trusted = replace(ctx, val=[r for r in ctx.val if r["epoch"] not in stale],
                      histograms=[h for h in ctx.histograms if h["epoch"] not in stale])
    held_back = bool(stale) and stale[-1] == ctx.val[-1]["epoch"]
    for rule in RULES:
        if rule in VALIDATION_RULES:
            findings += [] if held_back else rule(trusted)
        else:
            findings += rule(ctx)
    if any(f.rule == "diverged_optimiser" for f in findings):
        findings = [f for f in findings if f.rule != "targets_not_found"]
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
    findings = diagnose(run.rows, run.anchor_fit, cfg, run.config.get("loss") or {}, run.histograms,
                        run.config.get("train") or {}, run.config.get("data") or {})
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
