"""LossConfig: every choice that published YOLOv3 losses disagree on, as a named field.

Each field's description says which reference uses which value, so a preset (``loss/presets.py``) is a
documented list of choices rather than a different code path. References: the YOLOv3 paper (Redmon & Farhadi
2018), darknet (AlexeyAB), keras-yolo3 (experiencor), TF2 YOLOv3 (seed 004), ultralytics YOLOv3/v5, and the
from-scratch implementation of seed 002 (``compute_loss`` / ``compute_loss2``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AssignRule = Literal["best_anchor", "iou_threshold", "ratio", "ratio_sum", "best_pred_iou"]
Collisions = Literal["best_fit", "keep_all", "last", "share"]
AnchorCentre = Literal["truth", "cell"]
BoxLoss = Literal["mse", "iou", "giou", "diou", "ciou"]
XyLoss = Literal["mse_sigmoid", "mse_logit", "bce"]
WhLoss = Literal["mse_log", "half_mse_log", "mse_linear"]
SmallBoxWeight = Literal["none", "linear", "squared"]
ObjLoss = Literal["bce", "mse", "focal"]
ObjTarget = Literal["one", "iou", "ciou"]
IgnoreTruths = Literal["image", "scale"]
IgnoreGrid = Literal["own", "responsible"]
SmoothingForm = Literal["half", "uniform"]
WeightScaling = Literal["none", "ultralytics"]
ClsLoss = Literal["bce", "softmax_ce", "mse_softmax"]
Reduction = Literal["sum", "image_mean", "mean", "elementwise_mean"]
Aggregation = Literal["sum", "sqrt"]
Coder = Literal["yolov3", "scaled", "ultralytics"]
TermName = Literal["xy", "wh", "box", "obj", "noobj", "cls"]


class LossConfig(BaseModel):
    """Configuration of ``YoloLoss``. Unknown keys are an error (a typo must not silently change nothing)."""

    model_config = ConfigDict(extra="forbid")

    # ---- box coder
    coder: Coder = Field("yolov3", description="Box coder (model/coder.py); the loss and inference share it.")
    scale_x_y: float = Field(1.0, description="darknet scale_x_y for the 'scaled' coder (YOLOv4 uses 1.05-1.2).")

    # ---- assignment (loss/assign.py)
    assign: AssignRule = Field(
        "iou_threshold",
        description="Which anchors are responsible for a truth. 'best_anchor': the one anchor of all scales with "
        "the best shape IoU (the paper, darknet yolov3.cfg, keras-yolo3). 'iou_threshold': the best anchor plus "
        "every anchor whose shape IoU exceeds iou_thresh (darknet iou_thresh, TF2 YOLOv3's 0.3). 'ratio': every "
        "anchor of every scale with max(w/a, a/w, h/b, b/h) < anchor_t (ultralytics). 'ratio_sum': per scale the "
        "anchor with the smallest |w/a - 1| + |h/b - 1|, if below ratio_sum_thresh (seed 002 compute_loss). "
        "'best_pred_iou': the scale and anchor whose current prediction at the truth's cell overlaps it most "
        "(seed 002 compute_loss2).",
    )
    iou_thresh: float = Field(0.213, description="Shape-IoU threshold of 'iou_threshold' (darknet cfgs: 0.213; "
                              "TF2-YOLOv3 0.3, dataset.py:272).")
    anchor_iou_centre: AnchorCentre = Field(
        "truth", description="Where the anchor sits when its IoU with a truth is taken for 'best_anchor' and "
        "'iou_threshold': 'truth' = centred on the truth, a pure shape IoU (the paper, darknet yolo_layer.c:519-537, "
        "keras-yolo3 generator.py:81-96); 'cell' = centred on the centre of the truth's cell at the anchor's scale, "
        "so the IoU also depends on where the truth lies in its cell (TF2-YOLOv3 dataset.py:266-270).",
    )
    anchor_t: float = Field(4.0, gt=1, description="Size-ratio limit of 'ratio' (ultralytics anchor_t 4.0).")
    ratio_sum_thresh: float = Field(2.0, gt=0, description="Limit of 'ratio_sum' (seed 002: 2, 'empirical').")
    neighbour_cells: bool = Field(
        False, description="Also make the two cells nearest to the truth's centre responsible (ultralytics' "
        "0.5 offsets). Their targets lie outside (0, 1) cells, so this needs the 'ultralytics' or 'scaled' coder.",
    )
    collisions: Collisions = Field(
        "best_fit", description="Two truths on one anchor of one cell (a slot). 'best_fit': the truth with the "
        "higher anchor shape IoU keeps the slot (ties: the first listed). 'keep_all': every pair trains the box and "
        "class terms, and the objectness target is the last pair's (ultralytics loss.py:143, seed 002 lines 66, "
        "84). 'last': the later truth in target order overwrites the slot, the earlier one trains nothing there "
        "(keras-yolo3 generator.py:119-122, TF2-YOLOv3 dataset.py:277-280). 'share': every truth trains the slot's "
        "box (darknet's deltas add up, yolo_layer.c:209-212) and the slot's class target holds every truth's "
        "class once (delta_yolo_class, yolo_layer.c:311-320); objectness is trained once.",
    )

    # ---- box terms
    box_loss: BoxLoss = Field(
        "giou",
        description="'mse': separate xy and wh terms (see xy_loss, wh_loss; darknet's default, keras-yolo3, the "
        "paper); 'iou'/'giou'/'diou'/'ciou': one box term 1 - IoU of that kind (seed 002 'iou', TF2 YOLOv3 "
        "'giou', darknet iou_loss, ultralytics 'ciou').",
    )
    xy_loss: XyLoss = Field(
        "mse_sigmoid",
        description="xy term of box_loss='mse'. 'mse_sigmoid': squared error of the decoded offset (keras-yolo3, "
        "seed 002). 'mse_logit': squared error of raw tx against logit(offset) (the paper's t-hat). 'bce': "
        "binary cross-entropy of the logit against the offset, written as KL so its minimum is 0: its gradient "
        "is darknet's delta (offset - sigmoid(tx)) applied directly to tx.",
    )
    wh_loss: WhLoss = Field(
        "mse_log",
        description="wh term of box_loss='mse'. 'mse_log': squared error of log(w/anchor) (keras-yolo3, the paper). "
        "'half_mse_log': half of it, the loss whose gradient is darknet's wh delta scale * (t - tw) "
        "(yolo_layer.c:195-196, 211-212). 'mse_linear': squared error of w, h in grid cells (seed 002, with "
        "wh_weight 0.1).",
    )
    clamp_pred_wh_to_grid: bool = Field(
        False, description="Clamp the decoded width and height of responsible predictions to the grid's size "
        "before the box terms and the IoU objectness target (seed 002 compute_loss: wh_pd.clamp(0, "
        "grid_size.max()) in grid cells); beyond it their gradient is 0.",
    )
    small_box_weight: SmallBoxWeight = Field(
        "linear",
        description="Weight 2 - w*h (box area relative to the input) on each positive's box terms. 'linear': as "
        "a loss factor (darknet's delta scale, TF2 YOLOv3); 'squared': inside the square (keras-yolo3 multiplies "
        "the delta before squaring); 'none' (paper, ultralytics, seed 002).",
    )

    # ---- objectness
    obj_loss: ObjLoss = Field(
        "bce", description="'bce' on the logit (darknet's logistic delta, ultralytics, seed 002); 'mse' on the "
        "sigmoid (keras-yolo3); 'focal' = BCE x alpha_t x (1 - p_t)^gamma (Lin et al. 2017).",
    )
    focal_gamma: float = Field(2.0, ge=0, description="Focal loss gamma (RetinaNet 2.0; ultralytics fl_gamma 1.5).")
    focal_alpha: float | None = Field(
        0.25, gt=0, lt=1, description="Focal loss alpha for positives (RetinaNet 0.25). None: no alpha weighting, "
        "the plain factor (target - p)^gamma on both parts (TF2-YOLOv3 yolov3.py:350-358, gamma 2).",
    )
    obj_target: ObjTarget = Field(
        "one", description="Objectness target at responsible predictions: 'one' (paper, darknet, keras-yolo3); "
        "'iou' = the detached IoU of the prediction with its truth (seed 002 obj_label='iou'); 'ciou' = the "
        "detached CIoU clamped at 0 (ultralytics loss.py:135-143, gr = 1).",
    )
    obj_iou_mix: float = Field(
        1.0, ge=0, le=1, description="With obj_target='iou': target = (1 - mix) + mix * IoU (ultralytics 'gr', 1.0).",
    )
    obj_pos_weight: float | Literal["auto"] = Field(
        1.0, description="Weight of the positive part of the objectness loss (BCE pos_weight). 'auto' = "
        "(predictions per image - truths in the batch) / truths * 0.5 (seed 002).",
    )
    ignore_thresh: float = Field(
        0.5,
        description="Predictions not responsible for a truth whose decoded box has IoU > ignore_thresh with any "
        "truth of the image get no noobj loss (darknet yolov3.cfg 0.7, paper and keras-yolo3 0.5). 1.0 "
        "disables ignoring (ultralytics, seed 002).",
    )
    ignore_truths: IgnoreTruths = Field(
        "image", description="Truths the ignore test compares with: 'image' = every truth of the image (darknet, "
        "keras-yolo3); 'scale' = only the truths assigned at that scale (TF2-YOLOv3 dataset.py:282-284, 299-301).",
    )
    ignore_truth_grid: IgnoreGrid = Field(
        "own", description="'own': truth centres in consistent units. 'responsible' reproduces a BUG of "
        "keras-yolo3 (generator.py:100-103, yolo.py:79): the ignore test at every scale reads the truth centres in "
        "the grid units of the scale the truth is assigned to, so at the other scales they sit 2x or 4x off. "
        "Only the keras-yolo3 preset sets it.",
    )
    ignore_min_class_prob: float = Field(
        0.0, ge=0, lt=1, description="A prediction is ignored only when also some class probability exceeds "
        "this (darknet compare_yolo_class with 0.25, yolo_layer.c:356-366, 439-446); 0 = no class condition.",
    )

    # ---- classes
    cls_loss: ClsLoss = Field(
        "bce", description="'bce': independent logistic per class (paper, darknet, ultralytics, TF2 YOLOv3); "
        "'softmax_ce': softmax cross-entropy (keras-yolo3), identically 0 with one class; 'mse_softmax': squared "
        "error of the softmax against the one-hot truth (seed 003), also 0 with one class.",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Class label smoothing epsilon (TF2-YOLOv3 "
                                   "0.01, dataset.py:254-258).")
    label_smoothing_form: SmoothingForm = Field(
        "half", description="Smoothed BCE class targets: 'half' = 1 - eps/2 and eps/2 (ultralytics smooth_BCE); "
        "'uniform' = (1 - eps) one-hot + eps/C (TF2-YOLOv3). softmax_ce always uses the uniform form.",
    )
    single_class_loss: bool = Field(
        True, description="Whether the class term exists with one class. False: no class term when C = 1 "
        "(ultralytics loss.py:146).",
    )

    # ---- weights
    xy_weight: float = Field(1.0, ge=0, description="Weight of the xy term (box_loss='mse'; darknet's "
                             "iou_normalizer 0.75, parser.c:469, yolo_layer.c:209-212).")
    wh_weight: float = Field(1.0, ge=0, description="Weight of the wh term (box_loss='mse'; darknet 0.75 as xy).")
    box_weight: float = Field(1.0, ge=0, description="Weight of the box term (IoU-family box losses).")
    obj_weight: float = Field(1.0, ge=0, description="Weight of objectness at responsible predictions (conf1).")
    noobj_weight: float = Field(1.0, ge=0, description="Weight of objectness elsewhere (conf2).")
    cls_weight: float = Field(1.0, ge=0, description="Weight of the class term.")
    scale_weights: list[float] | dict[int, float] | None = Field(
        None,
        description="Per-scale multipliers of the terms in scale_weight_terms: a list in cfg order, or a dict "
        "stride -> weight (strides not listed get 1). ultralytics' balance is {8: 4.0, 16: 1.0, 32: 0.4}; "
        "keras-yolo3 grid_scales [1, 1, 1]; None = all 1.",
    )
    scale_weight_terms: list[TermName] = Field(
        ["obj", "noobj"], description="Terms multiplied by scale_weights (ultralytics balances objectness only).",
    )
    weight_scaling: WeightScaling = Field(
        "none", description="'ultralytics': train.py's scaling of the weights (train.py:248-250): box x 3/nl, cls x "
        "nc/80 x 3/nl, obj and noobj x (imgsz/640)^2 x 3/nl, nl = scales, nc = classes, imgsz = input width.",
    )

    # ---- reduction and aggregation
    reduction: Reduction = Field(
        "mean",
        description="'sum': summed over the batch. 'image_mean': summed, divided by the batch size (darknet's "
        "update, keras-yolo3, TF2 YOLOv3). 'mean': box terms averaged over positives, class over positives x "
        "classes, obj and noobj summed and divided by the predictions of the scale, all times the batch size "
        "(ultralytics). 'elementwise_mean': each term the mean over its elements, as torch's default "
        "reduction (seed 002).",
    )
    aggregation: Aggregation = Field(
        "sum", description="How terms make the total: 'sum', or 'sqrt' = sum over scales of the square root of "
        "that scale's summed terms (keras-yolo3's `tf.sqrt(tf.reduce_sum(loss))` per scale, yolo.py:366-367; "
        "with reduction 'sum' the batch sum sits inside the root).",
    )

    # ---- warm-up
    warmup_batches: int = Field(
        0, ge=0,
        description="Anchor-prior warm-up (keras-yolo3 warmup_batches): during the first N training batches, "
        "predictions without a truth are also pulled to their cell centre and anchor size by the box terms.",
    )

    @property
    def class_smoothing_form(self) -> SmoothingForm:
        """The smoothing form the class term uses: softmax_ce needs a distribution, so always 'uniform'."""
        return "uniform" if self.cls_loss == "softmax_ce" else self.label_smoothing_form

    @model_validator(mode="after")
    def _compatible(self) -> LossConfig:
        reach_neighbours = self.coder == "ultralytics" or (self.coder == "scaled" and self.scale_x_y >= 2)
        if self.neighbour_cells and not reach_neighbours:
            raise ValueError("neighbour_cells needs the 'ultralytics' coder or 'scaled' with scale_x_y >= 2: a "
                             "neighbour cell's target offset lies in (-0.5, 1.5) cells, which this coder cannot reach")
        if self.box_loss == "mse" and self.xy_loss != "mse_sigmoid" and self.coder != "yolov3":
            raise ValueError(f"xy_loss={self.xy_loss!r} compares tx with an offset in (0, 1): use the yolov3 coder")
        return self
