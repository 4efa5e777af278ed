"""Assignment: which prediction (scale, image, anchor, cell) is responsible for which truth.

A pure ``no_grad`` function of the targets and anchors: it never looks at predictions, so it can be tested
alone and reused by diagnostics.

Collision rule (two truths wanting one anchor of one cell): the pair with the higher anchor shape IoU keeps
the prediction, ties go to the truth listed first. darknet and keras-yolo3 let the truth processed last
overwrite silently; choosing by shape fit makes the result independent of label order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from yololab.boxes import wh_iou
from yololab.loss.config import LossConfig


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


@torch.no_grad()
def assign_targets(
    targets: Tensor,
    anchors: list[Tensor],
    grids: list[tuple[int, int]],
    input_size: tuple[int, int],
    batch_size: int,
    cfg: LossConfig,
) -> Assignment:
    """Match truths to anchors and cells.

    targets [N, 6] (image, class, cx, cy, w, h) normalised to the input; anchors per scale [A_i, 2] in input
    pixels; grids per scale (H_i, W_i); input_size (height, width) in pixels.
    """
    device = targets.device
    in_h, in_w = input_size
    all_anchors = torch.cat([a.to(device=device, dtype=torch.float32) for a in anchors])  # [sumA, 2]
    n_per_scale = torch.tensor([len(a) for a in anchors], device=device)
    scale_of = torch.repeat_interleave(torch.arange(len(anchors), device=device), n_per_scale)  # [sumA]
    first_anchor = torch.cumsum(n_per_scale, 0) - n_per_scale  # [S]

    wh_px = targets[:, 4:6].float() * torch.tensor([in_w, in_h], device=device, dtype=torch.float32)
    fit = wh_iou(wh_px, all_anchors)  # [N, sumA]
    best = fit.argmax(1)  # [N]
    chosen = torch.zeros_like(fit, dtype=torch.bool)
    chosen[torch.arange(len(targets), device=device), best] = True
    if cfg.assign == "iou_threshold":
        chosen |= fit > cfg.iou_thresh
    t_idx, g_idx = chosen.nonzero(as_tuple=True)  # pairs (truth, global anchor)

    scale = scale_of[g_idx]
    anchor = g_idx - first_anchor[scale]
    grid_h = torch.tensor([g[0] for g in grids], device=device)[scale]
    grid_w = torch.tensor([g[1] for g in grids], device=device)[scale]
    image = targets[t_idx, 0].long()
    # The cell containing the centre; a centre exactly on the right/bottom edge belongs to the last cell.
    gx = torch.minimum((targets[t_idx, 2] * grid_w).long(), grid_w - 1).clamp(min=0)
    gy = torch.minimum((targets[t_idx, 3] * grid_h).long(), grid_h - 1).clamp(min=0)
    quality = fit[t_idx, g_idx]

    # Collisions: one slot per (scale, image, anchor, gy, gx); keep the best-fitting truth.
    n_anchor = n_per_scale[scale]
    slots_per_scale = batch_size * n_per_scale * torch.tensor([g[0] * g[1] for g in grids], device=device)
    scale_base = torch.cumsum(slots_per_scale, 0) - slots_per_scale
    slot = scale_base[scale] + ((image * n_anchor + anchor) * grid_h + gy) * grid_w + gx
    by_quality = torch.argsort(-quality, stable=True)
    order = by_quality[torch.argsort(slot[by_quality], stable=True)]
    sorted_slot = slot[order]
    first = torch.ones_like(sorted_slot, dtype=torch.bool)
    first[1:] = sorted_slot[1:] != sorted_slot[:-1]
    keep = order[first]
    return Assignment(scale[keep], image[keep], anchor[keep], gy[keep], gx[keep], t_idx[keep], quality[keep])
