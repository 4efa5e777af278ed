"""Detection on image files: boxes drawn to PNG and a JSON of detections in original-image pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from yololab.data import boxes_from_letterbox, letterbox, read_image
from yololab.engine.checkpoint import load_module
from yololab.evaluate.runner import predict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
UINT8_MAX = 255.0
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))  # distinct colours per class


def list_images(sources: list[Path]) -> list[Path]:
    """Files and folders -> sorted image paths. A missing path or a folder without images is an error."""
    images: list[Path] = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
            images += found
        elif source.is_file():
            images.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return images


def draw(image: np.ndarray, dets: np.ndarray, names: list[str]) -> Image.Image:
    """image [H, W, C] uint8, dets [K, 6] (x1, y1, x2, y2, score, class) pixels -> PIL RGB image."""
    canvas = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for x1, y1, x2, y2, score, cls in dets.tolist():
        colour = BOX_COLOURS[int(cls) % len(BOX_COLOURS)]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        pen.text((x1 + 2, max(y1 - 11, 0)), f"{names[int(cls)]} {score:.2f}", fill=colour)
    return canvas


@torch.no_grad()
def detect_images(checkpoint: Path, sources: list[Path], out: Path, conf: float, iou: float,
                  imgsz: int | None = None) -> list[Path]:
    """Run a checkpoint on images; writes ``out/<stem>.png`` and ``out/detections.json``. Returns the PNGs."""
    module = load_module(checkpoint).eval()
    size = imgsz or module.cfg.data.imgsz
    out.mkdir(parents=True, exist_ok=True)
    records, written = [], []
    for path in list_images(sources):
        image = read_image(path, module.model.channels)
        boxed, info = letterbox(image, (size, size))
        tensor = torch.from_numpy(boxed).permute(2, 0, 1).float().div(UINT8_MAX)[None]
        dets = predict(module.model, tensor, module.loss.coder, conf, iou, module.cfg.train.max_det)[0]
        dets[:, :4] = boxes_from_letterbox(dets[:, :4], info)
        dets = dets.numpy()
        target = out / f"{path.stem}.png"
        draw(image, dets, module.names).save(target)
        written.append(target)
        records.append({
            "image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
            "detections": [
                {"box_xyxy": [round(v, 2) for v in d[:4].tolist()], "score": round(float(d[4]), 4),
                 "class_id": int(d[5]), "class": module.names[int(d[5])]} for d in dets
            ],
        })
    (out / "detections.json").write_text(json.dumps(records, indent=2))
    return written
