"""Property checks that any loss configuration should pass (``yololab check-loss``).

The loss is driven through its public API only (``YoloLoss(cfg, anchors, strides, num_classes)(raw, targets)
-> LossBreakdown``) on a small synthetic batch, so every preset and every combination of options is checked
the same way:

1. ``finite-terms``       every term finite and >= 0, the total finite, the terms aggregate to the total exactly.
2. ``minimum-at-truth``   raw outputs that decode exactly onto every truth at its responsible predictions put
                          every term at its minimum: ~0 (the smoothed class term at its analytic minimum), and
                          no small random change of the raw outputs lowers any term.
3. ``step-toward-truth``  a small step of wrong raw outputs toward the perfect ones raises no term and strictly
                          lowers the box terms (a delta with the wrong sign would raise them).
4. ``descent-converges``  Adam on the raw outputs alone (no network) reaches IoU >= 0.9 at every positive,
                          objectness near its target there and low elsewhere, and the right class on top.
5. ``empty-images``       a batch without truths gives finite terms of which only noobj is non-zero; a batch
                          whose images mostly have no truths gives finite terms and gradients.
6. ``batch-order``        permuting the images (and their targets' image indices) changes no term.
7. ``finite-gradient``    the gradient of the total w.r.t. every raw output is finite (random, large and
                          perfect raw outputs).

The synthetic batch: a 128-pixel input with strides 32, 16, 8, YOLOv3's nine anchors scaled to that input,
four images with 0 to 3 truths from 2 to 96 pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from yololab.boxes import box_cxcywh_to_xyxy, iou_elementwise
from yololab.keys import match, parse
from yololab.loss.config import LossConfig
from yololab.loss.criterion import LossBreakdown, YoloLoss, aggregate
from yololab.loss.terms import class_targets
from yololab.model.coder import BoxCoder

# ---- the synthetic batch
YOLOV3_INPUT = 416  # yolov3.cfg's width/height, the input its anchors are given for
YOLOV3_ANCHORS = (  # yolov3.cfg anchors in pixels, coarsest scale first (the order of its [yolo] layers)
    ((116, 90), (156, 198), (373, 326)),
    ((30, 61), (62, 45), (59, 119)),
    ((10, 13), (16, 30), (33, 23)),
)
STRIDES = (32, 16, 8)
INPUT_SIZE = 128  # grids 4, 8 and 16: a suite of a few seconds on a CPU
# Truths per image as (cx, cy) normalised and (w, h) in pixels at INPUT_SIZE. Every centre sits 0.2 to 0.8 of
# a cell from the cell's corner at every stride, so every coder can reach it; the truths of one image lie in
# opposite quarters, so no prediction (neighbour cells included) is responsible for two truths. Sizes run
# from below the smallest anchor (2 px) to most of the image (96 px); image 1 has no truth.
SYNTHETIC_IMAGES: tuple[tuple[tuple[float, float, float, float], ...], ...] = (
    ((0.30, 0.30, 3.0, 4.0), (0.85, 0.80, 10.0, 18.0)),
    (),
    ((0.40, 0.45, 38.0, 32.0), (0.90, 0.85, 5.0, 12.0)),
    ((0.55, 0.55, 96.0, 90.0), (0.10, 0.10, 2.0, 2.0), (0.10, 0.90, 14.0, 20.0)),
)

# ---- check 2: the perfect prediction
BIG_LOGIT = 30.0  # sigmoid(30) = 1 - 9e-14: probabilities of 0 and 1 to float32 precision, exp(30) finite
INVERT_BOUND = 30.0  # the coder is inverted by bisection over raw values in [-30, 30]
INVERT_STEPS = 64  # bisection halvings: 60 / 2^64 is far below float64 resolution
REACH_TOL = 1e-4  # a decoded offset (cells) or log size that misses its target by more is unreachable
AT_MIN_TOL = 1e-4  # "~0": float32 error of terms at an exactly decoded truth, summed over all predictions
PERTURB_STD = 0.03  # random changes of the raw outputs around the perfect prediction
PERTURB_DIRECTIONS = 4  # each tried with both signs, so a non-zero slope cannot hide
ASSIGNMENT_ROUNDS = 3  # rebuilds of the perfect prediction for an assignment that reads the predictions
NOT_RAISED_ATOL = 1e-6  # float32 noise allowed when a term must not go down (check 2) or up (check 3) ...
NOT_RAISED_RTOL = 1e-5  # ... plus this fraction of the term

# ---- check 3: a small step toward the truth
# Moderately wrong boxes, relative to the truth so that they overlap it at every size and stride: the centre
# off by 15 % of the box size in x and y (at most 0.1 cell, so the offset stays in the coder's range), width
# and height off by a factor e^0.3 = 1.35. The IoU with the truth is about 0.4 to 0.6.
BOX_SHIFT = 0.15
MAX_SHIFT_CELLS = 0.1
BOX_LOG_SCALE = 0.3
UNDECIDED_LOGIT = 0.0  # moderately wrong objectness and class logits: probability 0.5
STEP_FRACTION = 0.1  # fraction of the way to the perfect raw outputs
STRICT_RTOL = 1e-4  # a box term must fall by more than this fraction to count as falling

# ---- check 4: gradient descent on the raw outputs
# Adam's step is held for the first half of the descent, then cosine-annealed to 0 so the boxes settle; the
# held half matters for IoU objectness targets, which only rise once the box has converged.
DESCENT_STEPS = 200
DESCENT_LR = 0.1
DESCENT_HOLD = 0.5
DESCENT_EVAL_EVERY = 20  # the targets are checked every so many steps; the check passes once they are met
DESCENT_INIT_STD = 0.1  # start near the anchor prior at each cell centre, as a freshly initialised head
# Thresholds after descent. Objectness starts at 0.5 everywhere; a term pushing the wrong way ends near 0 at
# positives or near 1 elsewhere. Focal objectness deliberately stops pushing easy negatives (about 0.07 after
# this descent) and lags behind an IoU target that rises as the box converges (up to 0.12 off).
MIN_IOU = 0.9
MIN_OBJ_POS = 0.9  # objectness probability at positives when the target is one
OBJ_TARGET_TOL = 0.15  # |probability - target| at positives when the target is the IoU
MAX_OBJ_ELSEWHERE = 0.1  # mean objectness probability of all other predictions

# ---- checks 6 and 7
ORDER_RTOL = 1e-5
ORDER_ATOL = 1e-7  # terms that are 0 in one order may come out as float32 dust in the other
LARGE_RAW_STD = 4.0  # raw outputs of an untrained or diverging network: exp(4 sigma) reaches the wh clamp

MAX_LISTED = 3  # problems listed in a failed check's detail
BOX_TERMS = ("xy", "wh", "box")
NOOBJ_TERM = "noobj"

LossFactory = Callable[[LossConfig, list[Tensor], list[int], int], Callable[..., LossBreakdown]]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: its name, whether it passed, what was measured, and how long it took."""

    name: str
    passed: bool
    detail: str
    seconds: float = 0.0


class CheckFailed(Exception):
    """Raised inside a check with the measurement that broke the property."""


@dataclass(frozen=True)
class SyntheticBatch:
    """The batch every check runs on. anchors per scale [A, 2] pixels; targets [N, 6] (image, class, cx, cy,
    w, h) normalised to the input."""

    anchors: list[Tensor]
    strides: list[int]
    input_size: int
    batch_size: int
    num_classes: int
    targets: Tensor

    def grid(self, scale: int) -> int:
        return self.input_size // self.strides[scale]

    def shapes(self) -> list[tuple[int, int, int, int, int]]:
        """Raw output shape per scale: (B, A, H, W, 5 + C)."""
        return [(self.batch_size, len(a), self.grid(i), self.grid(i), 5 + self.num_classes)
                for i, a in enumerate(self.anchors)]

    def random_raw(self, generator: torch.Generator, std: float = 1.0) -> list[Tensor]:
        return [torch.randn(shape, generator=generator) * std for shape in self.shapes()]


def make_batch(num_classes: int = 3) -> SyntheticBatch:
    """The synthetic batch: YOLOv3 anchors scaled to INPUT_SIZE, SYNTHETIC_IMAGES with classes 0, 1, 2, ..."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    scale = INPUT_SIZE / YOLOV3_INPUT
    anchors = [torch.tensor(a, dtype=torch.float32) * scale for a in YOLOV3_ANCHORS]
    rows = [(image, cx, cy, w / INPUT_SIZE, h / INPUT_SIZE)
            for image, truths in enumerate(SYNTHETIC_IMAGES) for cx, cy, w, h in truths]
    targets = torch.tensor([(image, k % num_classes, cx, cy, w, h) for k, (image, cx, cy, w, h) in enumerate(rows)],
                           dtype=torch.float32)
    return SyntheticBatch(anchors, list(STRIDES), INPUT_SIZE, len(SYNTHETIC_IMAGES), num_classes, targets)


# ------------------------------------------------------------------------------------- perfect prediction
def _invert(fn: Callable[[Tensor], Tensor], target: Tensor) -> Tensor:
    """Raw values t with fn(t) = target for an element-wise non-decreasing fn, by bisection (float64)."""
    lo = torch.full_like(target, -INVERT_BOUND)
    hi = torch.full_like(target, INVERT_BOUND)
    for _ in range(INVERT_STEPS):
        mid = (lo + hi) / 2
        below = fn(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def box_logits(coder: BoxCoder, offset: Tensor, wh: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Raw tx, ty, tw, th that the coder decodes onto the given boxes.

    offset [P, 2] centre in cells from the cell's top-left corner; wh [P, 2] and anchors [P, 2] in pixels.
    Returns ([P, 4] float32 raw values, [P] bool: the coder reaches the box). Bisection instead of a formula per
    coder, so any monotone coder is covered; an unreachable box gets the nearest raw value.
    """
    offset, wh, anchors = offset.double(), wh.double(), anchors.double()
    t_xy = _invert(coder.xy, offset)
    t_wh = _invert(lambda t: coder.wh(t, anchors), wh)
    raw = torch.cat((t_xy, t_wh), -1).float()
    xy_miss = (coder.xy(raw[:, :2].double()) - offset).abs().amax(-1)
    wh_miss = (coder.wh(raw[:, 2:].double(), anchors) / wh).log().abs().amax(-1)
    return raw, (xy_miss <= REACH_TOL) & (wh_miss <= REACH_TOL)


def class_logits(cfg: LossConfig, classes: Tensor, num_classes: int) -> Tensor:
    """Class logits [P, C] at the minimum of the class term for integer classes [P].

    Without smoothing: +-BIG_LOGIT. With smoothing, the minimiser of each loss against its own smoothed target
    (``terms.class_targets`` in the config's form): 'bce' matches the sigmoids to the target; 'softmax_ce'
    matches the softmax to its (uniform) target distribution; 'mse_softmax' goes to the point of the
    probability simplex nearest its target (the target shifted by a constant so it sums to 1).
    """
    if cfg.label_smoothing == 0:
        one_hot = torch.nn.functional.one_hot(classes, num_classes).double()
        return ((2 * one_hot - 1) * BIG_LOGIT).float()
    target = class_targets(classes, num_classes, cfg.label_smoothing, cfg.class_smoothing_form).double()
    if cfg.cls_loss == "bce":
        return (target.log() - (-target).log1p()).float()
    if cfg.cls_loss == "mse_softmax":
        target = target + (1 - target.sum(-1, keepdim=True)) / num_classes
    return target.log().float()


@dataclass(frozen=True)
class PerfectPrediction:
    """Raw outputs decoding exactly onto every truth at its responsible predictions, objectness +-BIG_LOGIT,
    the class term at its minimum; every other prediction decodes to a vanishing box (IoU 0 with everything).

    raw per scale [B, A, H, W, 5 + C]; positives per scale (image, anchor, gy, gx, target) index tensors; problems:
    why no perfect prediction exists (an unreachable box, a prediction responsible for two truths).
    """

    raw: list[Tensor]
    positives: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    problems: list[str]


def _size(wh: Tensor) -> str:
    return "x".join(f"{float(v):.3g}" for v in wh)


def perfect_prediction(batch: SyntheticBatch, coder: BoxCoder, cfg: LossConfig,
                       assignment: Sequence[Tensor]) -> PerfectPrediction:
    """Build the perfect raw outputs for an assignment (scale, image, anchor, gy, gx, target)."""
    scale, image, anchor, gy, gx, target = (t.long().cpu() for t in assignment)
    raw = []
    for shape in batch.shapes():
        r = torch.zeros(shape)
        r[..., 2:4] = -INVERT_BOUND  # vanishing boxes: never ignored, never the best prediction of a truth
        r[..., 4] = -BIG_LOGIT
        raw.append(r)
    positives, problems = [], []
    for i, r in enumerate(raw):
        m = scale == i
        b, a, y, x, t = image[m], anchor[m], gy[m], gx[m], target[m]
        slots = torch.stack((b, a, y, x), -1)
        if len(slots):
            unique_slots, counts = slots.unique(dim=0, return_counts=True)
            for slot in unique_slots[counts > 1].tolist():
                owners = t[(slots == torch.tensor(slot)).all(-1)].tolist()
                problems.append(f"prediction (scale {i}, image, anchor, gy, gx = {slot}) is responsible for "
                                f"truths {owners}")
        tgt = batch.targets[t]
        grid = batch.grid(i)
        offset = tgt[:, 2:4] * grid - torch.stack((x, y), -1)
        wh = tgt[:, 4:6] * batch.input_size
        box, reached = box_logits(coder, offset, wh, batch.anchors[i][a])
        for k in (~reached).nonzero().flatten().tolist():
            ox, oy = offset[k].tolist()
            problems.append(f"the {coder.name} coder cannot decode anchor {_size(batch.anchors[i][a[k]])} px at "
                            f"scale {i} onto truth {int(t[k])} ({_size(wh[k])} px, offset ({ox:.2f}, {oy:.2f}) "
                            f"cells)")
        r[b, a, y, x, :4] = box
        r[b, a, y, x, 4] = BIG_LOGIT
        r[b, a, y, x, 5:] = class_logits(cfg, tgt[:, 1].long(), batch.num_classes)
        positives.append((b, a, y, x, t))
    return PerfectPrediction(raw, positives, problems)


# ------------------------------------------------------------------------------------------------ helpers
class _Context:
    """What every check shares: the config, the synthetic batch, the loss and its coder, the seed."""

    def __init__(self, cfg: LossConfig, num_classes: int, seed: int, loss_factory: LossFactory):
        self.cfg = cfg
        self.batch = make_batch(num_classes)
        self.loss = loss_factory(cfg, self.batch.anchors, self.batch.strides, num_classes)
        self.coder: BoxCoder = getattr(self.loss, "coder", None) or BoxCoder(cfg.coder, cfg.scale_x_y)
        self.seed = seed
        self._perfect: PerfectPrediction | None = None

    def generator(self, salt: int) -> torch.Generator:
        """An independent seeded stream per check, so checks do not depend on each other's order."""
        return torch.Generator().manual_seed(self.seed * 1000 + salt)

    def __call__(self, raw: list[Tensor], targets: Tensor | None = None) -> LossBreakdown:
        return self.loss(raw, self.batch.targets if targets is None else targets)

    def perfect(self) -> PerfectPrediction:
        """The perfect prediction for the loss's own assignment. An assignment may read the predictions
        (best_pred_iou), so it is taken again at the perfect raw outputs until it stops changing."""
        if self._perfect is None:
            raw = [torch.zeros(shape) for shape in self.batch.shapes()]
            for _ in range(ASSIGNMENT_ROUNDS):
                assignment = self(raw).assignment
                perfect = perfect_prediction(self.batch, self.coder, self.cfg, assignment)
                raw = perfect.raw
                again = self(raw).assignment
                if _same_assignment(assignment, again):
                    break
            else:
                perfect.problems.append("the assignment keeps changing at the perfect prediction")
            self._perfect = perfect
        return self._perfect


def _same_assignment(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    def rows(x: Sequence[Tensor]) -> list[tuple[int, ...]]:
        return sorted(zip(*(t.tolist() for t in x), strict=True))

    return rows(a) == rows(b)


def _values(terms: dict[str, Tensor]) -> dict[str, float]:
    return {key: float(value.detach()) for key, value in terms.items()}


def _term(text: str) -> str:
    return parse(text)[0]


def _fmt(terms: dict[str, float], keys: Sequence[str]) -> str:
    return ", ".join(f"{k} = {terms[k]:.3g}" for k in keys)


def _require_finite(out: LossBreakdown, what: str) -> None:
    bad = [k for k, v in out.terms.items() if not torch.isfinite(v).all()]
    if bad or not torch.isfinite(out.total).all():
        raise CheckFailed(f"{what}: non-finite {', '.join(bad) or 'total'} (total {float(out.total):.4g})")


def _require_finite_grad(raw: list[Tensor], what: str) -> None:
    for i, r in enumerate(raw):
        if r.grad is None:
            continue
        bad = ~torch.isfinite(r.grad)
        if bad.any():
            where = bad.nonzero()[0].tolist()
            raise CheckFailed(f"{what}: {int(bad.sum())} non-finite gradient values at scale {i}, first at "
                              f"(b, a, gy, gx, channel) = {where}")


def _trainable(raw: list[Tensor]) -> list[Tensor]:
    return [r.detach().clone().requires_grad_(True) for r in raw]


# ------------------------------------------------------------------------------------------------- checks
def check_finite_terms(ctx: _Context) -> str:
    """1. Terms finite and >= 0, named '<term>/s<i>', total finite, aggregate(terms) == total exactly."""
    out = ctx(ctx.batch.random_raw(ctx.generator(1)))
    _require_finite(out, "random raw outputs")
    n_scales = len(ctx.batch.strides)
    badly_named = [k for k in out.terms if not (m := match(k)) or m[1] >= n_scales]
    if badly_named:
        raise CheckFailed(f"term keys not '<term>/s<i>' with i < {n_scales}: {badly_named}")
    values = _values(out.terms)
    negative = [k for k, v in values.items() if v < 0]
    if negative:
        raise CheckFailed(f"negative terms: {_fmt(values, negative)}")
    combined = aggregate(out.terms, ctx.cfg.aggregation)
    if not torch.equal(combined, out.total):
        raise CheckFailed(f"terms aggregate ({ctx.cfg.aggregation}) to {float(combined):.9g} but total is "
                          f"{float(out.total):.9g}")
    return f"{len(values)} terms finite and >= 0; their {ctx.cfg.aggregation} equals the total exactly"


def check_minimum_at_truth(ctx: _Context) -> str:
    """2. At the perfect prediction every term is ~0 (smoothed class term: its minimum) and no random change of
    the raw outputs lowers any term."""
    perfect = ctx.perfect()
    if perfect.problems:
        shown = perfect.problems[:MAX_LISTED]
        more = len(perfect.problems) - len(shown)
        raise CheckFailed("no perfect prediction exists: " + "; ".join(shown) + (f"; {more} more" if more else ""))
    base = _values(ctx(perfect.raw).terms)
    exempt = {"cls"} if ctx.cfg.label_smoothing > 0 else set()
    not_zero = [k for k, v in base.items() if _term(k) not in exempt and abs(v) > AT_MIN_TOL]
    if not_zero:
        raise CheckFailed(f"terms not ~0 at the perfect prediction: {_fmt(base, not_zero)}")
    gen = ctx.generator(2)
    for _ in range(PERTURB_DIRECTIONS):
        direction = [torch.randn(r.shape, generator=gen) * PERTURB_STD for r in perfect.raw]
        for sign in (1.0, -1.0):
            moved = _values(ctx([r + sign * d for r, d in zip(perfect.raw, direction, strict=True)]).terms)
            lowered = [k for k, v in moved.items()
                       if k in base and v < base[k] - NOT_RAISED_ATOL - NOT_RAISED_RTOL * abs(base[k])]
            if lowered:
                k = lowered[0]
                raise CheckFailed(f"not a minimum: a random change (std {PERTURB_STD}) of the raw outputs lowered "
                                  f"{k} from {base[k]:.6g} to {moved[k]:.6g}")
    largest = max(base, key=lambda k: abs(base[k]) if _term(k) not in exempt else -1.0)
    detail = (f"terms ~0 (largest {largest} = {base[largest]:.1e}); {2 * PERTURB_DIRECTIONS} random changes "
              f"lowered none")
    if exempt:
        detail += f"; smoothed cls at its minimum {sum(v for k, v in base.items() if _term(k) == 'cls'):.4g}"
    return detail


def _wrong(ctx: _Context, perfect: PerfectPrediction, group: str, gen: torch.Generator) -> list[Tensor]:
    """The perfect raw outputs with one group of values made moderately wrong: 'box' (tx..th of positives, see
    BOX_SHIFT), 'obj' (every objectness logit) or 'cls' (class logits of positives)."""
    raw = [r.clone() for r in perfect.raw]
    for i, (r, (b, a, y, x, t)) in enumerate(zip(raw, perfect.positives, strict=True)):
        if group == "box":
            tgt = ctx.batch.targets[t]
            offset = tgt[:, 2:4] * ctx.batch.grid(i) - torch.stack((x, y), -1)
            wh = tgt[:, 4:6] * ctx.batch.input_size
            signs = torch.randint(0, 2, (len(b), 4), generator=gen).float() * 2 - 1
            shift = (BOX_SHIFT * wh / ctx.batch.strides[i]).clamp(max=MAX_SHIFT_CELLS)
            wrong_offset = offset + signs[:, :2] * shift
            wrong_wh = wh * torch.exp(signs[:, 2:] * BOX_LOG_SCALE)
            r[b, a, y, x, :4], _ = box_logits(ctx.coder, wrong_offset, wrong_wh, ctx.batch.anchors[i][a])
        elif group == "obj":
            r[..., 4] = UNDECIDED_LOGIT
        else:
            r[b, a, y, x, 5:] = UNDECIDED_LOGIT
    return raw


def check_step_toward_truth(ctx: _Context) -> str:
    """3. From moderately wrong raw outputs (box, objectness or class values, one group at a time), a step of
    STEP_FRACTION toward the perfect ones raises no term and strictly lowers every box term with positives."""
    perfect = ctx.perfect()
    gen = ctx.generator(3)
    scales_with_positives = {i for i, (b, *_rest) in enumerate(perfect.positives) if len(b)}
    falls = []
    for group in ("box", "obj", "cls"):
        wrong = _wrong(ctx, perfect, group, gen)
        stepped = [w + STEP_FRACTION * (p - w) for w, p in zip(wrong, perfect.raw, strict=True)]
        before, after = ctx(wrong), ctx(stepped)
        b_vals, a_vals = _values(before.terms), _values(after.terms)
        rose = [k for k, v in a_vals.items()
                if k in b_vals and v > b_vals[k] + NOT_RAISED_ATOL + NOT_RAISED_RTOL * abs(b_vals[k])]
        if rose:
            k = rose[0]
            raise CheckFailed(f"a step of the {group} values toward the truth raised {k} from {b_vals[k]:.6g} to "
                              f"{a_vals[k]:.6g}")
        if group != "box":
            continue
        b_un, a_un = _values(before.unweighted), _values(after.unweighted)
        box_keys = [k for k in b_un if _term(k) in BOX_TERMS and parse(k)[1] in scales_with_positives]
        if not box_keys:
            raise CheckFailed("no box term at the scales with positives")
        not_falling = [k for k in box_keys if not a_un[k] < b_un[k] * (1 - STRICT_RTOL)]
        if not_falling:
            k = not_falling[0]
            raise CheckFailed(f"a step of the boxes toward the truth did not lower {k} (unweighted): {b_un[k]:.6g} "
                              f"-> {a_un[k]:.6g}")
        falls = [1 - a_un[k] / b_un[k] for k in box_keys]
    return (f"{len(falls)} box terms fell {min(falls):.0%} to {max(falls):.0%} after a {STEP_FRACTION:.0%} step; "
            f"steps of the objectness and class logits raised no term")


def _positive_ious(ctx: _Context, raw: list[Tensor], assignment: Sequence[Tensor]) -> Tensor:
    """[P] IoU of each positive's decoded box with its truth, computed here from the coder (not the loss)."""
    scale, image, anchor, gy, gx, target = (t.long().cpu() for t in assignment)
    ious = []
    for i, r in enumerate(raw):
        m = scale == i
        b, a, y, x, t = image[m], anchor[m], gy[m], gx[m], target[m]
        p = r[b, a, y, x].detach()
        stride = ctx.batch.strides[i]
        cell = torch.stack((x, y), -1).float()
        pred = torch.cat(((cell + ctx.coder.xy(p[:, :2])) * stride, ctx.coder.wh(p[:, 2:4], ctx.batch.anchors[i][a])),
                         -1)
        truth = ctx.batch.targets[t, 2:6] * ctx.batch.input_size
        ious.append(iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(truth), "iou"))
    return torch.cat(ious)


def _at_positives(raw: list[Tensor], assignment: Sequence[Tensor], channels: slice) -> Tensor:
    """[P, len(channels)] raw values of the positives, in the order of an assignment sorted by scale."""
    scale, image, anchor, gy, gx = assignment[:5]
    return torch.cat([raw[i][image[scale == i], anchor[scale == i], gy[scale == i], gx[scale == i], channels]
                      for i in range(len(raw))])


def _descent_problems(ctx: _Context, raw: list[Tensor]) -> tuple[list[str], str]:
    """What still keeps the raw outputs from their targets (empty when none), and a summary of where they are."""
    assignment = [t.long().cpu() for t in ctx(raw).assignment]
    by_scale = torch.argsort(assignment[0], stable=True)  # the order in which _at_positives concatenates
    scale, image, anchor, gy, gx, target = (t[by_scale] for t in assignment)
    if not len(scale):
        return ["no positives in the synthetic batch"], ""
    assignment = (scale, image, anchor, gy, gx, target)
    iou = _positive_ious(ctx, raw, assignment)
    problems = []
    if iou.min() < MIN_IOU:
        k = int(iou.argmin())
        problems.append(f"IoU {float(iou.min()):.3f} < {MIN_IOU} at truth {int(target[k])} (scale {int(scale[k])})")
    obj = _at_positives(raw, assignment, slice(4, 5)).squeeze(-1).sigmoid()
    if ctx.cfg.obj_target == "iou":
        mix = getattr(ctx.cfg, "obj_iou_mix", 1.0)
        obj_error = float((obj - ((1 - mix) + mix * iou.clamp(min=0))).abs().max())
        if obj_error > OBJ_TARGET_TOL:
            problems.append(f"objectness misses its IoU target by {obj_error:.3f} > {OBJ_TARGET_TOL}")
        obj_detail = f"objectness within {obj_error:.3f} of its IoU target"
    else:
        if obj.min() < MIN_OBJ_POS:
            problems.append(f"objectness {float(obj.min()):.3f} < {MIN_OBJ_POS} at a positive")
        obj_detail = f"objectness >= {float(obj.min()):.3f} at positives"
    elsewhere = []
    for i, r in enumerate(raw):
        positive = torch.zeros(r.shape[:4], dtype=torch.bool)
        positive[image[scale == i], anchor[scale == i], gy[scale == i], gx[scale == i]] = True
        elsewhere.append(r[..., 4][~positive].sigmoid())
    obj_elsewhere = float(torch.cat(elsewhere).mean())
    if obj_elsewhere > MAX_OBJ_ELSEWHERE:
        problems.append(f"mean objectness elsewhere {obj_elsewhere:.3f} > {MAX_OBJ_ELSEWHERE}")
    if ctx.batch.num_classes > 1:
        top = _at_positives(raw, assignment, slice(5, None)).argmax(-1)
        wrong_class = int((top != ctx.batch.targets[target, 1].long()).sum())
        if wrong_class:
            problems.append(f"{wrong_class} positives with the wrong class on top")
    summary = f"IoU >= {float(iou.min()):.3f} at {len(iou)} positives, {obj_detail}, {obj_elsewhere:.4f} elsewhere"
    return problems, summary


def check_descent_converges(ctx: _Context) -> str:
    """4. Adam on the raw outputs (the parameters; no network) reaches, within DESCENT_STEPS steps, IoU >= MIN_IOU
    at every positive, objectness near its target there and low elsewhere, and the right class on top."""
    raw = _trainable(ctx.batch.random_raw(ctx.generator(4), DESCENT_INIT_STD))
    optimizer = torch.optim.Adam(raw, lr=DESCENT_LR)
    held = int(DESCENT_HOLD * DESCENT_STEPS)

    def lr_factor(step: int) -> float:
        return 1.0 if step < held else (1 + math.cos(math.pi * (step - held) / (DESCENT_STEPS - held))) / 2

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    for step in range(1, DESCENT_STEPS + 1):
        optimizer.zero_grad()
        ctx(raw).total.backward()
        optimizer.step()
        schedule.step()
        if step % DESCENT_EVAL_EVERY == 0 or step == DESCENT_STEPS:
            problems, summary = _descent_problems(ctx, [r.detach() for r in raw])
            if not problems:
                return f"{step} Adam steps: {summary}"
    raise CheckFailed(f"after {DESCENT_STEPS} Adam steps: " + "; ".join(problems))


def check_empty_images(ctx: _Context) -> str:
    """5. No truths at all: finite, only noobj non-zero, finite gradients. One image with truths among empty
    ones: finite terms and gradients."""
    gen = ctx.generator(5)
    raw = _trainable(ctx.batch.random_raw(gen))
    out = ctx(raw, ctx.batch.targets[:0])
    _require_finite(out, "no truths")
    values = _values(out.terms)
    nonzero = [k for k, v in values.items() if _term(k) != NOOBJ_TERM and v != 0]
    if nonzero:
        raise CheckFailed(f"no truths, yet non-zero {_fmt(values, nonzero)}")
    noobj = sum(v for k, v in _values(out.unweighted).items() if _term(k) == NOOBJ_TERM)
    if not noobj > 0:
        raise CheckFailed(f"no truths and random objectness logits, yet the unweighted noobj terms sum to {noobj}")
    out.total.backward()
    _require_finite_grad(raw, "no truths")

    last = ctx.batch.targets[:, 0] == ctx.batch.batch_size - 1
    raw = _trainable(ctx.batch.random_raw(gen))
    out = ctx(raw, ctx.batch.targets[last])
    _require_finite(out, "truths in the last image only")
    out.total.backward()
    _require_finite_grad(raw, "truths in the last image only")
    n_pos = len(out.assignment.scale)
    if not n_pos:
        raise CheckFailed(f"{int(last.sum())} truths in the last image gave no positives")
    return (f"no truths: only noobj non-zero ({noobj:.3g} unweighted); truths in one image of "
            f"{ctx.batch.batch_size}: {n_pos} positives, finite")


def check_batch_order(ctx: _Context) -> str:
    """6. Rolling the images by one (targets re-indexed and listed in the new image order) changes no term."""
    raw = ctx.batch.random_raw(ctx.generator(6))
    perm = torch.roll(torch.arange(ctx.batch.batch_size), 1)  # new image j is old image perm[j]
    moved = ctx.batch.targets.clone()
    moved[:, 0] = torch.argsort(perm)[moved[:, 0].long()].float()
    moved = moved[torch.argsort(moved[:, 0], stable=True)]
    a, b = _values(ctx(raw).terms), _values(ctx([r[perm] for r in raw], moved).terms)
    if set(a) != set(b):
        raise CheckFailed(f"different terms after permuting images: {sorted(set(a) ^ set(b))}")
    differ = [k for k in a if abs(a[k] - b[k]) > ORDER_ATOL + ORDER_RTOL * max(abs(a[k]), abs(b[k]))]
    if differ:
        k = differ[0]
        raise CheckFailed(f"permuting the images changed {k}: {a[k]:.9g} -> {b[k]:.9g}")
    return f"{len(a)} terms equal within {ORDER_RTOL:g} relative after permuting the images"


def check_finite_gradient(ctx: _Context) -> str:
    """7. d total / d raw is finite everywhere at random, large random and perfect raw outputs."""
    gen = ctx.generator(7)
    states = {
        "random": ctx.batch.random_raw(gen),
        f"large (std {LARGE_RAW_STD:g})": ctx.batch.random_raw(gen, LARGE_RAW_STD),
        "perfect": ctx.perfect().raw,
    }
    for name, values in states.items():
        raw = _trainable(values)
        out = ctx(raw)
        _require_finite(out, f"{name} raw outputs")
        out.total.backward()
        _require_finite_grad(raw, f"{name} raw outputs")
    return f"finite at {', '.join(states)} raw outputs"


CHECKS: dict[str, Callable[[_Context], str]] = {
    "finite-terms": check_finite_terms,
    "minimum-at-truth": check_minimum_at_truth,
    "step-toward-truth": check_step_toward_truth,
    "descent-converges": check_descent_converges,
    "empty-images": check_empty_images,
    "batch-order": check_batch_order,
    "finite-gradient": check_finite_gradient,
}
CHECK_NAMES = tuple(CHECKS)


def run_checks(cfg: LossConfig, num_classes: int = 3, seed: int = 0, *, loss_factory: LossFactory | None = None,
               only: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the property checks on a loss configuration.

    ``loss_factory(cfg, anchors, strides, num_classes)`` builds the loss (default ``YoloLoss``); it must return
    a callable ``(raw, targets) -> LossBreakdown`` and may carry a ``coder``. ``only`` restricts the run to some
    of CHECK_NAMES. A check whose loss raises fails with the exception's type and message as its detail.
    """
    names = list(CHECK_NAMES if only is None else only)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; available: {', '.join(CHECK_NAMES)}")
    ctx = _Context(cfg, num_classes, seed, loss_factory or YoloLoss)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few thousand values: more threads only add overhead and contention
    try:
        for name in names:
            start = time.perf_counter()
            try:
                passed, detail = True, CHECKS[name](ctx)
            except CheckFailed as failure:
                passed, detail = False, str(failure)
            except Exception as err:  # a loss that raises fails this check: the error is the finding
                passed, detail = False, f"the loss raised {type(err).__name__}: {err}"
            results.append(CheckResult(name, passed, detail, time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return results
