"""LossConfig: every choice that published YOLOv3 losses disagree on, as a named field.

Each field's description says which reference uses which value, so a preset (``loss/presets.py``) is a
documented list of choices rather than a different code path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AssignRule = Literal["best_anchor", "iou_threshold"]
BoxLoss = Literal["mse", "iou", "giou", "diou", "ciou"]
ObjLoss = Literal["bce", "mse"]
ObjTarget = Literal["one", "iou"]
ClsLoss = Literal["bce", "softmax_ce"]
Reduction = Literal["sum", "mean"]
Aggregation = Literal["sum", "sqrt"]
Coder = Literal["yolov3", "scaled", "ultralytics"]


class LossConfig(BaseModel):
    """Configuration of ``YoloLoss``. Unknown keys are an error (a typo must not silently change nothing)."""

    model_config = ConfigDict(extra="forbid")

    coder: Coder = Field("yolov3", description="Box coder (model/coder.py); the loss and inference share it.")
    scale_x_y: float = Field(1.0, description="darknet scale_x_y for the 'scaled' coder (YOLOv4 uses 1.05-1.2).")

    assign: AssignRule = Field(
        "iou_threshold",
        description="Which anchors are responsible for a truth. 'best_anchor': the single anchor of all scales "
        "with the best shape IoU (the paper, keras-yolo3). 'iou_threshold': the best anchor plus every anchor "
        "whose shape IoU exceeds iou_thresh (darknet's iou_thresh, AlexeyAB cfgs use 0.213).",
    )
    iou_thresh: float = Field(0.213, description="Shape-IoU threshold of the 'iou_threshold' rule (darknet).")

    box_loss: BoxLoss = Field(
        "giou",
        description="'mse': squared error of the decoded xy offset and of log(w/anchor), log(h/anchor) "
        "(darknet's default, keras-yolo3) giving the xy and wh terms; 'iou'/'giou'/'diou'/'ciou': 1 - IoU of "
        "the kind (darknet iou_loss, TF2 YOLOv3 uses giou, ultralytics ciou) giving the box term.",
    )
    small_box_weight: bool = Field(
        True,
        description="Multiply each positive's box loss by 2 - w*h (box area relative to the input), as "
        "keras-yolo3 and TF2 YOLOv3 do, so small boxes weigh up to twice as much.",
    )

    obj_loss: ObjLoss = Field(
        "bce", description="'bce' on the logit (darknet's logistic delta, ultralytics); 'mse' on the sigmoid "
        "(keras-yolo3)."
    )
    obj_target: ObjTarget = Field(
        "one", description="Objectness target at responsible predictions: 'one' (paper, darknet, keras-yolo3) "
        "or 'iou' = the detached, clamped IoU of the prediction with its truth (ultralytics)."
    )
    ignore_thresh: float = Field(
        0.5,
        description="Predictions not responsible for a truth whose decoded box has IoU > ignore_thresh with "
        "any truth of the image get no noobj loss (darknet 0.7 in yolov3.cfg, paper and keras-yolo3 0.5). "
        "1.0 disables ignoring.",
    )

    cls_loss: ClsLoss = Field(
        "bce", description="'bce': independent logistic per class (the paper, darknet, ultralytics); "
        "'softmax_ce': softmax cross-entropy (keras-yolo3), identically 0 with one class."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Class label smoothing epsilon.")

    xy_weight: float = Field(1.0, ge=0, description="Weight of the xy term (box_loss='mse').")
    wh_weight: float = Field(1.0, ge=0, description="Weight of the wh term (box_loss='mse').")
    box_weight: float = Field(1.0, ge=0, description="Weight of the box term (IoU-family box losses).")
    obj_weight: float = Field(1.0, ge=0, description="Weight of objectness at responsible predictions (conf1).")
    noobj_weight: float = Field(1.0, ge=0, description="Weight of objectness elsewhere (conf2).")
    cls_weight: float = Field(1.0, ge=0, description="Weight of the class term.")
    scale_weights: list[float] | None = Field(
        None,
        description="Per-scale multipliers of the objectness terms in cfg order (ultralytics' balance "
        "[4.0, 1.0, 0.4] from the finest scale up); None = all 1 (the paper, darknet, keras-yolo3).",
    )

    reduction: Reduction = Field(
        "mean",
        description="'sum': every term summed over predictions and averaged over images (darknet, "
        "keras-yolo3). 'mean': box and class terms averaged over positives, obj and noobj summed and divided "
        "by the number of predictions of the scale, all multiplied by the batch size (ultralytics).",
    )
    aggregation: Aggregation = Field(
        "sum", description="How terms make the total: 'sum', or 'sqrt' = sum over scales of the square root "
        "of that scale's summed terms (keras-yolo3's `tf.sqrt(tf.reduce_sum(loss))` per scale)."
    )
