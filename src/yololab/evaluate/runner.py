"""Prediction over images and loaders: raw outputs -> decoded boxes -> NMS -> COCO metrics."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from yololab.boxes import box_cxcywh_to_xyxy
from yololab.evaluate.coco import coco_map
from yololab.evaluate.nms import nms
from yololab.model.coder import BoxCoder, decode_outputs


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, coder: BoxCoder, conf_thres: float, iou_thres: float, max_det: int
) -> list[Tensor]:
    """images [B, C, H, W] -> per image [K, 6] (x1, y1, x2, y2, score, class) in input pixels.

    ``model`` must expose ``anchors`` and ``strides`` (a Darknet does).
    """
    raw = model(images)
    decoded = decode_outputs(raw, model.anchors, model.strides, coder)
    return nms(decoded, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)


def truths_in_pixels(targets: Tensor, batch_size: int, input_hw: tuple[int, int]) -> list[Tensor]:
    """targets [N, 6] normalised -> per image [M, 5] (class, x1, y1, x2, y2) in input pixels, on the CPU."""
    targets = targets.detach().float().cpu()
    h, w = input_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    out = []
    for i in range(batch_size):
        t = targets[targets[:, 0] == i]
        out.append(torch.cat((t[:, 1:2], box_cxcywh_to_xyxy(t[:, 2:6] * scale)), 1))
    return out


def collect_predictions(
    model: nn.Module,
    loader: DataLoader,
    coder: BoxCoder,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 100,
    device: str | torch.device = "cpu",
) -> tuple[list[Tensor], list[Tensor]]:
    """Detections ``[K, 6]`` and truths ``[M, 5]`` (input pixels, CPU) of every image of ``loader``."""
    model.eval().to(device)
    dets: list[Tensor] = []
    truths: list[Tensor] = []
    for images, targets, _ in loader:
        images = images.to(device)
        dets.extend(d.cpu() for d in predict(model, images, coder, conf_thres, iou_thres, max_det))
        truths.extend(truths_in_pixels(targets, len(images), tuple(images.shape[-2:])))
    return dets, truths


def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    coder: BoxCoder,
    names: list[str],
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 100,
    device: str | torch.device = "cpu",
) -> dict:
    """COCO mAP of ``model`` over every image of ``loader`` (the whole split, not a sample)."""
    dets, truths = collect_predictions(model, loader, coder, conf_thres, iou_thres, max_det, device)
    return coco_map(dets, truths, num_classes=len(names), names=names)
