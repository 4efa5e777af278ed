"""Assignment: which prediction (scale, image, anchor, cell) is responsible for which truth.

A pure ``no_grad`` function returning index tensors. It looks only at targets and anchors, except for the
``best_pred_iou`` rule (seed 002's compute_loss2), which by definition also reads the current predictions at
each truth's cells. Rules are described in ``LossConfig.assign``; collisions in ``LossConfig.collisions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from yololab.boxes import box_cxcywh_to_xyxy, iou_elementwise, wh_iou
from yololab.loss.config import LossConfig
from yololab.model.coder import BoxCoder

NEIGHBOUR_MARGIN = 0.5  # ultralytics' g: a centre within half a cell of an edge also claims that neighbour
CELL_CENTRE = 0.5  # TF2-YOLOv3 centres its anchors on floor(xy) + 0.5


@dataclass
class Assignment:
    """Positives of one batch, all ``long`` tensors of length P (number of positives), in one row per
    (truth, anchor, cell) pair that trains.

    ``scale`` index into heads, ``image`` into the batch, ``anchor`` into that scale's anchors, ``gy, gx`` the
    cell, ``target`` the row of the ``[N, 6]`` targets. ``shape_iou`` [P] float: anchor-to-truth IoU.
    ``matched`` [N, S] bool: whether a truth was matched at a scale before collisions were resolved (the truths
    of TF2-YOLOv3's per-scale ignore test). ``home_scale`` [N] long: the scale of each truth's best anchor.
    """

    scale: Tensor
    image: Tensor
    anchor: Tensor
    gy: Tensor
    gx: Tensor
    target: Tensor
    shape_iou: Tensor
    matched: Tensor
    home_scale: Tensor

    def at_scale(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(image, anchor, gy, gx, target) of the positives of scale i."""
        m = self.scale == i
        return self.image[m], self.anchor[m], self.gy[m], self.gx[m], self.target[m]

    def __iter__(self):
        """Unpacks as (scale, image, anchor, gy, gx, target), the order of DESIGN.md's contract."""
        return iter((self.scale, self.image, self.anchor, self.gy, self.gx, self.target))


@dataclass
class Geometry:
    """The batch's geometry, built once per loss evaluation and passed down.

    ``batch``; per scale ``grids`` (H, W), ``strides`` and ``anchors`` [A, 2] (input pixels, on the device);
    ``input_hw`` (height, width) in pixels; as tensors: ``all_anchors`` [sumA, 2], ``scale_of`` [sumA] (scale
    of each anchor), ``first`` [S] (first anchor index per scale), ``n_anchor``, ``height``, ``width`` and
    ``stride`` [S].
    """

    batch: int
    grids: list[tuple[int, int]]
    strides: list[int]
    anchors: list[Tensor]
    input_hw: tuple[int, int]
    all_anchors: Tensor
    scale_of: Tensor
    first: Tensor
    n_anchor: Tensor
    height: Tensor
    width: Tensor
    stride: Tensor

    @classmethod
    def build(cls, anchors: list[Tensor], strides: list[int], grids: list[tuple[int, int]], batch: int,
              device) -> Geometry:
        """From anchors per scale [A, 2] pixels, strides and grids (H, W): the input is grid x stride."""
        anchors = [torch.as_tensor(a, dtype=torch.float32, device=device) for a in anchors]
        n_anchor = torch.tensor([len(a) for a in anchors], device=device)
        return cls(
            batch=batch, grids=list(grids), strides=list(strides), anchors=anchors,
            input_hw=(grids[0][0] * strides[0], grids[0][1] * strides[0]),
            all_anchors=torch.cat(anchors),
            scale_of=torch.repeat_interleave(torch.arange(len(anchors), device=device), n_anchor),
            first=torch.cumsum(n_anchor, 0) - n_anchor,
            n_anchor=n_anchor,
            height=torch.tensor([g[0] for g in grids], device=device),
            width=torch.tensor([g[1] for g in grids], device=device),
            stride=torch.tensor(strides, device=device, dtype=torch.float32),
        )

    @property
    def input_wh(self) -> Tensor:
        """[2] (width, height) of the input in pixels."""
        return self.stride.new_tensor([self.input_hw[1], self.input_hw[0]])


def _cells(targets: Tensor, grid: Geometry, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Cell (gy, gx) holding each target's centre at the given scales; a centre on the far edge -> last cell."""
    gx = torch.minimum((targets[:, 2] * grid.width[scale]).long(), grid.width[scale] - 1).clamp(min=0)
    gy = torch.minimum((targets[:, 3] * grid.height[scale]).long(), grid.height[scale] - 1).clamp(min=0)
    return gy, gx


def _anchor_fit(targets: Tensor, wh_px: Tensor, grid: Geometry, centre: str) -> Tensor:
    """[N, sumA] IoU of each truth with each anchor, the anchor centred on the truth or on its cell's centre.

    The cell-centred IoU is taken in float64 where the device has it, as TF2-YOLOv3's numpy code does: a truth
    can sit exactly on its 0.3 threshold in exact arithmetic, and float32 rounding would then decide.
    """
    if centre == "truth":
        return wh_iou(wh_px, grid.all_anchors)
    dtype = torch.float32 if targets.device.type == "mps" else torch.float64
    stride = grid.stride[grid.scale_of].to(dtype)  # [sumA]
    size = grid.input_wh.to(dtype)
    xy, wh = targets[:, 2:4].to(dtype) * size, targets[:, 4:6].to(dtype) * size
    anchor_xy = ((xy[:, None, :] / stride[None, :, None]).floor() + CELL_CENTRE) * stride[None, :, None]
    truth = box_cxcywh_to_xyxy(torch.cat((xy, wh), -1))[:, None, :]  # [N, 1, 4]
    anchors = grid.all_anchors.to(dtype)[None].expand(len(targets), -1, -1)
    anchor = box_cxcywh_to_xyxy(torch.cat((anchor_xy, anchors), -1))  # [N, sumA, 4]
    return iou_elementwise(truth, anchor, "iou")


def _pairs_by_shape(fit: Tensor, wh_px: Tensor, grid: Geometry, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """Shape-based rules: boolean [N, sumA] of responsible (truth, anchor) pairs -> (truth idx, anchor idx)."""
    n = len(fit)
    if cfg.assign in ("best_anchor", "iou_threshold"):
        chosen = torch.zeros_like(fit, dtype=torch.bool)
        chosen[torch.arange(n, device=fit.device), fit.argmax(1)] = True
        if cfg.assign == "iou_threshold":
            chosen |= fit > cfg.iou_thresh
    else:
        ratio = wh_px[:, None, :] / grid.all_anchors[None]  # [N, sumA, 2]
        if cfg.assign == "ratio":
            chosen = torch.maximum(ratio, 1 / ratio).amax(-1) < cfg.anchor_t
        else:  # ratio_sum: per scale, the best anchor by |r - 1| summed over w and h, if below the limit
            cost = (ratio - 1).abs().sum(-1)  # [N, sumA]
            chosen = torch.zeros_like(fit, dtype=torch.bool)
            for s in range(len(grid.first)):  # a loop over scales only
                lo, hi = int(grid.first[s]), int(grid.first[s] + grid.n_anchor[s])
                best_cost, best = cost[:, lo:hi].min(1)
                rows = torch.nonzero(best_cost < cfg.ratio_sum_thresh).squeeze(1)
                chosen[rows, lo + best[rows]] = True
    return chosen.nonzero(as_tuple=True)


def _pairs_by_prediction(targets: Tensor, raw: list[Tensor], coder: BoxCoder, grid: Geometry) -> tuple[Tensor, Tensor]:
    """seed 002 compute_loss2: for each truth, the (scale, anchor) whose prediction at the truth's cell has
    the highest IoU with it. Returns (truth idx, global anchor idx), one pair per truth."""
    n = len(targets)
    image = targets[:, 0].long()
    truth = box_cxcywh_to_xyxy(targets[:, 2:6] * grid.input_wh.repeat(2))  # [N, 4] pixels
    ious, anchors_idx = [], []
    for s, r in enumerate(raw):
        scale = torch.full((n,), s, device=targets.device)
        gy, gx = _cells(targets, grid, scale)
        p = r[image, :, gy, gx, :4].float()  # [N, A, 4]
        lo = int(grid.first[s])
        cell = torch.stack((gx, gy), -1)[:, None, :].to(p)
        xy = (coder.xy(p[..., :2]) + cell) * grid.stride[s]
        boxes = box_cxcywh_to_xyxy(torch.cat((xy, coder.wh(p[..., 2:4], grid.anchors[s][None])), -1))
        iou = iou_elementwise(boxes, truth[:, None, :], "iou")  # [N, A]
        best_iou, best = iou.max(1)
        ious.append(best_iou)
        anchors_idx.append(lo + best)
    best_scale = torch.stack(ious).argmax(0)  # [N]
    return torch.arange(n, device=targets.device), torch.stack(anchors_idx)[best_scale, torch.arange(n)]


def _add_neighbours(targets: Tensor, t_idx: Tensor, g_idx: Tensor, gy: Tensor, gx: Tensor, grid: Geometry,
                    scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ultralytics' neighbour cells (loss.py:196-203): a centre in the left half of its cell (and more than one
    cell from the left edge) also claims the cell to the left, and so on for the other three sides. The cell is
    (centre -/+ half a cell) truncated, in float32, as the original picks it at exact borders."""
    w, h = grid.width[scale].float(), grid.height[scale].float()
    x, y = targets[t_idx, 2] * w, targets[t_idx, 3] * h
    xi, yi = w - x, h - y
    sides = (
        ((x % 1 < NEIGHBOUR_MARGIN) & (x > 1), x - NEIGHBOUR_MARGIN, None),
        ((y % 1 < NEIGHBOUR_MARGIN) & (y > 1), None, y - NEIGHBOUR_MARGIN),
        ((xi % 1 < NEIGHBOUR_MARGIN) & (xi > 1), x + NEIGHBOUR_MARGIN, None),
        ((yi % 1 < NEIGHBOUR_MARGIN) & (yi > 1), None, y + NEIGHBOUR_MARGIN),
    )
    ts, gs, ys, xs = [t_idx], [g_idx], [gy], [gx]
    for mask, new_x, new_y in sides:
        ts.append(t_idx[mask])
        gs.append(g_idx[mask])
        ys.append(gy[mask] if new_y is None else new_y[mask].long())
        xs.append(gx[mask] if new_x is None else new_x[mask].long())
    return torch.cat(ts), torch.cat(gs), torch.cat(ys), torch.cat(xs)


@torch.no_grad()
def assign_targets(targets: Tensor, grid: Geometry, cfg: LossConfig, raw: list[Tensor] | None = None,
                   coder: BoxCoder | None = None) -> Assignment:
    """Match truths to anchors and cells.

    targets [N, 6] (image, class, cx, cy, w, h) normalised to the input; ``grid`` the batch's geometry. ``raw``
    (per scale [B, A, H, W, 5 + C]) and ``coder`` are read only by the ``best_pred_iou`` rule.
    """
    device = targets.device
    wh_px = targets[:, 4:6].float() * grid.input_wh
    fit = _anchor_fit(targets.float(), wh_px, grid, cfg.anchor_iou_centre)  # [N, sumA]

    if cfg.assign == "best_pred_iou":
        if raw is None or coder is None:
            raise ValueError("the best_pred_iou assignment needs the raw predictions and the coder")
        t_idx, g_idx = _pairs_by_prediction(targets.float(), raw, coder, grid)
    else:
        t_idx, g_idx = _pairs_by_shape(fit, wh_px, grid, cfg)

    scale = grid.scale_of[g_idx]
    gy, gx = _cells(targets[t_idx], grid, scale)
    if cfg.neighbour_cells:
        t_idx, g_idx, gy, gx = _add_neighbours(targets, t_idx, g_idx, gy, gx, grid, scale)
        scale = grid.scale_of[g_idx]
    anchor = g_idx - grid.first[scale]
    image = targets[t_idx, 0].long()
    quality = fit[t_idx, g_idx].float()
    matched = torch.zeros(len(targets), len(grid.grids), dtype=torch.bool, device=device)
    matched[t_idx, scale] = True
    home_scale = grid.scale_of[fit.argmax(1)] if len(targets) else torch.zeros(0, dtype=torch.long, device=device)
    keep = torch.arange(len(t_idx), device=device)
    if cfg.collisions in ("best_fit", "last"):
        slot = _slot(scale, image, anchor, gy, gx, grid)
        keep = _best_fit(slot, quality) if cfg.collisions == "best_fit" else last_of_slot(slot).sort().values
    return Assignment(scale[keep], image[keep], anchor[keep], gy[keep], gx[keep], t_idx[keep], quality[keep],
                      matched, home_scale)


def _slot(scale: Tensor, image: Tensor, anchor: Tensor, gy: Tensor, gx: Tensor, grid: Geometry) -> Tensor:
    """[P] one integer per (scale, image, anchor, cell) of the whole batch."""
    slots_per_scale = grid.batch * grid.n_anchor * grid.height * grid.width
    scale_base = torch.cumsum(slots_per_scale, 0) - slots_per_scale
    return scale_base[scale] + ((image * grid.n_anchor[scale] + anchor) * grid.height[scale] + gy) * \
        grid.width[scale] + gx


def _best_fit(slot: Tensor, quality: Tensor) -> Tensor:
    """Indices of the pairs that keep their slot: the best shape fit wins (ties: the first listed)."""
    by_quality = torch.argsort(-quality, stable=True)
    order = by_quality[torch.argsort(slot[by_quality], stable=True)]
    sorted_slot = slot[order]
    first = torch.ones_like(sorted_slot, dtype=torch.bool)
    first[1:] = sorted_slot[1:] != sorted_slot[:-1]
    return order[first]


def last_of_slot(slot: Tensor) -> Tensor:
    """Index of the last row of each distinct slot, in ascending slot order: slot [P] integers -> [U]."""
    distinct, inverse = torch.unique(slot, return_inverse=True)
    last = torch.full((len(distinct),), -1, dtype=torch.long, device=slot.device)
    last.scatter_reduce_(0, inverse, torch.arange(len(slot), device=slot.device), reduce="amax")
    return last
