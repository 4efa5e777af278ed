"""Predictions of a trained module on a whole split of a dataset, and their COCO metrics: what ``yololab eval``
and a study's test evaluation both measure."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from yololab.data import DataError, DataSpec
from yololab.data.size_bins import input_area_ranges
from yololab.engine.datamodule import YoloDataModule
from yololab.engine.module import YoloModule
from yololab.evaluate.coco import coco_map
from yololab.evaluate.runner import collect_predictions


def split_predictions(module: YoloModule, data_yaml: str | Path | DataSpec, split: str, batch: int, imgsz: int,
                      device: str | torch.device = "cpu") -> tuple[list[Tensor], list[Tensor]]:
    """Detections ``[K, 6]`` and truths ``[M, 5]`` (input pixels) of every image of ``split``, read under the
    run's own box policy and validated first; DataError naming the data.yaml when it has no such split.
    ``data_yaml`` is a path or an already loaded DataSpec."""
    cfg = module.cfg
    dm = YoloDataModule(data_yaml, imgsz, batch, cfg.data.workers, channels=module.model.channels,
                        boxes_outside=cfg.data.boxes_outside)
    if split not in dm.spec.splits:
        raise DataError(dm.spec.yaml_path, None, f"no '{split}' split (it has {', '.join(dm.spec.splits)})")
    dm.validate((split,))
    tc = cfg.train
    return collect_predictions(module.model, dm.loader(split), module.loss.coder, tc.conf_thres, tc.iou_thres,
                               tc.max_det, device)


def split_map(module: YoloModule, spec: DataSpec, split: str, batch: int, imgsz: int,
              device: str | torch.device = "cpu") -> tuple[dict, list[Tensor], list[Tensor]]:
    """:func:`coco_map` of ``module`` on ``split`` (APs by COCO's sizes and by the data's own size bins
    included), with the detections ``[K, 6]`` and truths ``[M, 5]`` it was computed from."""
    dets, truths = split_predictions(module, spec, split, batch, imgsz, device)
    result = coco_map(dets, truths, num_classes=len(module.names), names=module.names,
                      area_ranges=input_area_ranges(spec.size_bins, imgsz))
    return result, dets, truths
