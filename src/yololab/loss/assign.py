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


@dataclass
class Assignment:
    """Positives of one batch, all ``long`` tensors of length P (number of positives).

    ``scale`` index into heads, ``image`` into the batch, ``anchor`` into that scale's anchors, ``gy, gx`` the
    cell, ``target`` the row of the ``[N, 6]`` targets. ``shape_iou`` [P] float: anchor-to-truth shape IoU.
    """

    scale: Tensor
    image: Tensor
    anchor: Tensor
    gy: Tensor
    gx: Tensor
    target: Tensor
    shape_iou: Tensor

    def at_scale(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(image, anchor, gy, gx, target) of the positives of scale i."""
        m = self.scale == i
        return self.image[m], self.anchor[m], self.gy[m], self.gx[m], self.target[m]

    def as_tuple(self) -> tuple[Tensor, ...]:
        """(scale, image, anchor, gy, gx, target): the ``LossBreakdown.assignment`` contract."""
        return self.scale, self.image, self.anchor, self.gy, self.gx, self.target


@dataclass
class _Grid:
    """Per-scale geometry as tensors on the targets' device: anchors [sumA, 2], scale of each anchor [sumA],
    first anchor index per scale [S], grid heights/widths [S], strides [S]."""

    anchors: Tensor
    scale_of: Tensor
    first: Tensor
    n_anchor: Tensor
    height: Tensor
    width: Tensor
    stride: Tensor


def _grid(anchors: list[Tensor], grids: list[tuple[int, int]], strides: list[int], device) -> _Grid:
    n_anchor = torch.tensor([len(a) for a in anchors], device=device)
    return _Grid(
        anchors=torch.cat([a.to(device=device, dtype=torch.float32) for a in anchors]),
        scale_of=torch.repeat_interleave(torch.arange(len(anchors), device=device), n_anchor),
        first=torch.cumsum(n_anchor, 0) - n_anchor,
        n_anchor=n_anchor,
        height=torch.tensor([g[0] for g in grids], device=device),
        width=torch.tensor([g[1] for g in grids], device=device),
        stride=torch.tensor(strides, device=device, dtype=torch.float32),
    )


def _cells(targets: Tensor, grid: _Grid, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Cell (gy, gx) holding each target's centre at the given scales; a centre on the far edge -> last cell."""
    gx = torch.minimum((targets[:, 2] * grid.width[scale]).long(), grid.width[scale] - 1).clamp(min=0)
    gy = torch.minimum((targets[:, 3] * grid.height[scale]).long(), grid.height[scale] - 1).clamp(min=0)
    return gy, gx


def _pairs_by_shape(fit: Tensor, wh_px: Tensor, grid: _Grid, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """Shape-based rules: boolean [N, sumA] of responsible (truth, anchor) pairs -> (truth idx, anchor idx)."""
    n = len(fit)
    if cfg.assign in ("best_anchor", "iou_threshold"):
        chosen = torch.zeros_like(fit, dtype=torch.bool)
        chosen[torch.arange(n, device=fit.device), fit.argmax(1)] = True
        if cfg.assign == "iou_threshold":
            chosen |= fit > cfg.iou_thresh
    else:
        ratio = wh_px[:, None, :] / grid.anchors[None]  # [N, sumA, 2]
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


def _pairs_by_prediction(targets: Tensor, raw: list[Tensor], coder: BoxCoder, grid: _Grid,
                         input_wh: Tensor) -> tuple[Tensor, Tensor]:
    """seed 002 compute_loss2: for each truth, the (scale, anchor) whose prediction at the truth's cell has
    the highest IoU with it. Returns (truth idx, global anchor idx), one pair per truth."""
    n = len(targets)
    image = targets[:, 0].long()
    truth = box_cxcywh_to_xyxy(targets[:, 2:6] * input_wh.repeat(2))  # [N, 4] pixels
    ious, anchors_idx = [], []
    for s, r in enumerate(raw):
        scale = torch.full((n,), s, device=targets.device)
        gy, gx = _cells(targets, grid, scale)
        p = r[image, :, gy, gx, :4].float()  # [N, A, 4]
        lo = int(grid.first[s])
        anchors = grid.anchors[lo:lo + int(grid.n_anchor[s])]
        cell = torch.stack((gx, gy), -1)[:, None, :].to(p)
        xy = (coder.xy(p[..., :2]) + cell) * grid.stride[s]
        boxes = box_cxcywh_to_xyxy(torch.cat((xy, coder.wh(p[..., 2:4], anchors[None])), -1))
        iou = iou_elementwise(boxes, truth[:, None, :], "iou")  # [N, A]
        best_iou, best = iou.max(1)
        ious.append(best_iou)
        anchors_idx.append(lo + best)
    best_scale = torch.stack(ious).argmax(0)  # [N]
    return torch.arange(n, device=targets.device), torch.stack(anchors_idx)[best_scale, torch.arange(n)]


def _add_neighbours(targets: Tensor, t_idx: Tensor, g_idx: Tensor, gy: Tensor, gx: Tensor, grid: _Grid,
                    scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ultralytics' neighbour cells: a centre in the left half of its cell (and not in the first cell) also
    claims the cell to the left, and so on for the other three sides (at most two extra cells per pair)."""
    w, h = grid.width[scale].float(), grid.height[scale].float()
    x, y = targets[t_idx, 2] * w, targets[t_idx, 3] * h
    xi, yi = w - x, h - y
    sides = (
        ((x % 1 < NEIGHBOUR_MARGIN) & (x > 1), 0, -1),
        ((y % 1 < NEIGHBOUR_MARGIN) & (y > 1), -1, 0),
        ((xi % 1 < NEIGHBOUR_MARGIN) & (xi > 1), 0, 1),
        ((yi % 1 < NEIGHBOUR_MARGIN) & (yi > 1), 1, 0),
    )
    ts, gs, ys, xs = [t_idx], [g_idx], [gy], [gx]
    for mask, dy, dx in sides:
        ts.append(t_idx[mask])
        gs.append(g_idx[mask])
        ys.append(gy[mask] + dy)
        xs.append(gx[mask] + dx)
    return torch.cat(ts), torch.cat(gs), torch.cat(ys), torch.cat(xs)


@torch.no_grad()
def assign_targets(
    targets: Tensor,
    anchors: list[Tensor],
    grids: list[tuple[int, int]],
    input_size: tuple[int, int],
    batch_size: int,
    cfg: LossConfig,
    raw: list[Tensor] | None = None,
    coder: BoxCoder | None = None,
) -> Assignment:
    """Match truths to anchors and cells.

    targets [N, 6] (image, class, cx, cy, w, h) normalised to the input; anchors per scale [A_i, 2] in input
    pixels; grids per scale (H_i, W_i); input_size (height, width) in pixels. ``raw`` (per scale [B, A, H, W,
    5 + C]) and ``coder`` are read only by the ``best_pred_iou`` rule.
    """
    device = targets.device
    in_h, in_w = input_size
    strides = [in_h // g[0] for g in grids]
    grid = _grid(anchors, grids, strides, device)
    input_wh = torch.tensor([in_w, in_h], device=device, dtype=torch.float32)
    wh_px = targets[:, 4:6].float() * input_wh
    fit = wh_iou(wh_px, grid.anchors)  # [N, sumA] anchor-to-truth shape IoU

    if cfg.assign == "best_pred_iou":
        if raw is None or coder is None:
            raise ValueError("the best_pred_iou assignment needs the raw predictions and the coder")
        t_idx, g_idx = _pairs_by_prediction(targets.float(), raw, coder, grid, input_wh)
    else:
        t_idx, g_idx = _pairs_by_shape(fit, wh_px, grid, cfg)

    scale = grid.scale_of[g_idx]
    gy, gx = _cells(targets[t_idx], grid, scale)
    if cfg.neighbour_cells:
        t_idx, g_idx, gy, gx = _add_neighbours(targets, t_idx, g_idx, gy, gx, grid, scale)
        scale = grid.scale_of[g_idx]
    anchor = g_idx - grid.first[scale]
    image = targets[t_idx, 0].long()
    quality = fit[t_idx, g_idx]
    keep = torch.arange(len(t_idx), device=device)
    if cfg.collisions == "best_fit":
        keep = _best_fit(scale, image, anchor, gy, gx, quality, grid, batch_size)
    return Assignment(scale[keep], image[keep], anchor[keep], gy[keep], gx[keep], t_idx[keep], quality[keep])


def _best_fit(scale, image, anchor, gy, gx, quality, grid: _Grid, batch_size: int) -> Tensor:
    """Indices of the pairs that keep their slot (scale, image, anchor, gy, gx): the best shape fit wins."""
    grid_h, grid_w = grid.height[scale], grid.width[scale]
    slots_per_scale = batch_size * grid.n_anchor * grid.height * grid.width
    scale_base = torch.cumsum(slots_per_scale, 0) - slots_per_scale
    slot = scale_base[scale] + ((image * grid.n_anchor[scale] + anchor) * grid_h + gy) * grid_w + gx
    by_quality = torch.argsort(-quality, stable=True)
    order = by_quality[torch.argsort(slot[by_quality], stable=True)]
    sorted_slot = slot[order]
    first = torch.ones_like(sorted_slot, dtype=torch.bool)
    first[1:] = sorted_slot[1:] != sorted_slot[:-1]
    return order[first]
