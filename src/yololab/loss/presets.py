"""Named presets: a coder plus a loss configuration, each reproducing a known implementation.

Each entry names its source. Fields not listed take LossConfig's defaults. The default preset
(``config.DEFAULT_PRESET``, ``tf2-yolov3``) is the one the studies of docs/studies.md measured best; docs/loss.md
gives the tables.
"""

from __future__ import annotations

from typing import Any

from yololab.loss.config import LossConfig

ULTRALYTICS_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}  # ultralytics' objectness balance by stride (P3, P4, P5)

PRESETS: dict[str, dict[str, Any]] = {
    # yololab's own mix (the default until studies/presets.yaml and photo-presets.yaml put tf2-yolov3 ahead):
    # darknet's multi-anchor rule, GIoU boxes with the small-box factor, BCE objectness averaged over
    # predictions, ultralytics' weights for mean reduction.
    "yololab": dict(
        coder="yolov3", assign="iou_threshold", iou_thresh=0.213, box_loss="giou", small_box_weight="linear",
        obj_loss="bce", obj_target="one", ignore_thresh=0.5, cls_loss="bce", reduction="mean",
        box_weight=0.05, obj_weight=1.0, noobj_weight=1.0, cls_weight=0.5,
    ),
    # YOLOv3 paper (Redmon & Farhadi 2018): one anchor per truth, squared error on t (raw tx against
    # logit(offset), tw against log(w/anchor)), logistic objectness and classes, ignore at 0.5.
    "paper": dict(
        coder="yolov3", assign="best_anchor", box_loss="mse", xy_loss="mse_logit", wh_loss="mse_log",
        small_box_weight="none", obj_loss="bce", obj_target="one", ignore_thresh=0.5, cls_loss="bce",
        reduction="image_mean",
    ),
    # AlexeyAB darknet @ 59596d78, yolov3.cfg: best of all 9 anchors, trained only at its own layer (iou_thresh
    # unset = 1.0), ignore_thresh 0.7 and only where some class probability exceeds 0.25, deltas applied to the
    # logits (= BCE gradients for x, y, obj, class), box deltas x iou_normalizer 0.75 x (2 - w*h), the wh delta
    # the gradient of half a squared error; both truths of a collision train the slot. golden/darknet.npz.
    "darknet": dict(
        coder="yolov3", assign="best_anchor", box_loss="mse", xy_loss="bce", wh_loss="half_mse_log",
        small_box_weight="linear", xy_weight=0.75, wh_weight=0.75, obj_loss="bce", obj_target="one",
        ignore_thresh=0.7, ignore_min_class_prob=0.25, cls_loss="bce", collisions="share", reduction="image_mean",
    ),
    # experiencor keras-yolo3 @ 768c524f, config.json: best anchor, xy on sigmoid and raw log-wh with 2 - w*h
    # inside the square, MSE on the sigmoid objectness with obj_scale 5 / noobj_scale 1 (also inside the square,
    # so the loss weight is 5^2 = 25), softmax classes, ignore 0.5 with its grid-unit bug, a later truth
    # overwriting a slot, the square root of each scale's batch sum. Its warmup_batches = warmup_epochs (3) x
    # batches per epoch: set it per dataset. golden/keras-yolo3.npz.
    "keras-yolo3": dict(
        coder="yolov3", assign="best_anchor", box_loss="mse", xy_loss="mse_sigmoid", wh_loss="mse_log",
        small_box_weight="squared", obj_loss="mse", obj_target="one", ignore_thresh=0.5,
        ignore_truth_grid="responsible", cls_loss="softmax_ce", collisions="last", reduction="sum",
        aggregation="sqrt", obj_weight=25.0, noobj_weight=1.0,
    ),
    # pythonlessons TensorFlow-2.x-YOLOv3 @ 9f29d73e (seed 004): every anchor of every scale with IoU > 0.3
    # (anchors centred on the cell centre), else the best; GIoU x (2 - w*h); objectness BCE x (target - p)^2,
    # background ignored at IoU 0.5 against the truths of that scale only; sigmoid classes smoothed 0.01 as
    # (1 - eps) one-hot + eps/C; later truths overwrite; sums per image, averaged over the batch.
    "tf2-yolov3": dict(
        coder="yolov3", assign="iou_threshold", iou_thresh=0.3, anchor_iou_centre="cell", box_loss="giou",
        small_box_weight="linear", obj_loss="focal", focal_gamma=2.0, focal_alpha=None, obj_target="one",
        ignore_thresh=0.5, ignore_truths="scale", cls_loss="bce", label_smoothing=0.01,
        label_smoothing_form="uniform", collisions="last", reduction="image_mean",
    ),
    # ultralytics/yolov3 v9.6.0, hyp.scratch.yaml + train.py's scaling: ratio rule anchor_t 4 with neighbour
    # cells, 2σ coder, CIoU, objectness target the detached CIoU (gr 1.0), balance 4 / 1 / 0.4, box 0.05, obj
    # 1.0, cls 0.5 (x 3/nl, nc/80 x 3/nl, (imgsz/640)^2 x 3/nl), no class term with one class, means x batch size.
    "ultralytics": dict(
        coder="ultralytics", assign="ratio", anchor_t=4.0, neighbour_cells=True, collisions="keep_all",
        box_loss="ciou", small_box_weight="none", obj_loss="bce", obj_target="ciou", obj_iou_mix=1.0,
        ignore_thresh=1.0, cls_loss="bce", single_class_loss=False, reduction="mean",
        scale_weights=ULTRALYTICS_BALANCE, box_weight=0.05, obj_weight=1.0, noobj_weight=1.0, cls_weight=0.5,
        weight_scaling="ultralytics",
    ),
    # seed 002 compute_loss (bbox_loss='iou', obj_label='1' defaults): per scale the anchor with the smallest
    # |r - 1| sum below 2, 1 - IoU boxes, BCE objectness with pos_weight (n_preds - n_labels)/n_labels/2,
    # BCE classes, each term torch's mean; both truths of a collision count in the means. bbox_loss='mse':
    # box_loss='mse', wh_loss='mse_linear', wh_weight 0.1. golden/seed002.npz.
    "scratch-ratio": dict(
        coder="yolov3", assign="ratio_sum", ratio_sum_thresh=2.0, collisions="keep_all", box_loss="iou",
        clamp_pred_wh_to_grid=True, small_box_weight="none",
        xy_loss="mse_sigmoid", wh_loss="mse_linear", wh_weight=0.1, obj_loss="bce", obj_target="one",
        obj_pos_weight="auto", ignore_thresh=1.0, cls_loss="bce", reduction="elementwise_mean",
    ),
    # seed 002 compute_loss2: the scale and anchor whose current prediction overlaps the truth most.
    "scratch-best-iou": dict(
        coder="yolov3", assign="best_pred_iou", box_loss="iou", small_box_weight="none",
        xy_loss="mse_sigmoid", wh_loss="mse_linear", wh_weight=0.1, obj_loss="bce", obj_target="one",
        obj_pos_weight="auto", ignore_thresh=1.0, cls_loss="bce", reduction="elementwise_mean",
    ),
}


def preset(name: str, **overrides: Any) -> LossConfig:
    """LossConfig of a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown loss preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return LossConfig(**{**PRESETS[name], **overrides})
