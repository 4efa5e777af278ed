"""Inference with a trained run: ``load(run).predict(images)`` in Python, and ``yololab detect`` on image files,
folders, globs and video files (annotated PNGs / MP4s, ``detections.json`` and COCO-style ``coco_results.json``).

Detections come back in the layout of DESIGN.md, in the pixels of the image that was given: per image a
``[K, 6]`` float tensor ``x1, y1, x2, y2, score, class`` sorted by descending score (on the CPU).
"""

from __future__ import annotations

import glob
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from yololab.data import boxes_from_letterbox, letterbox, read_image
from yololab.evaluate.runner import predict
from yololab.evaluate.thresholds import recorded_conf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
WEIGHTS_CHOICES = ("best", "last")
CHECKPOINT_FILES = {"best": "best.ckpt", "last": "last.ckpt"}
DEFAULT_BATCH = 16
DEFAULT_IOU = 0.45  # NMS IoU of ultralytics' predict (its val uses 0.6 / 0.7)
VIDEO_CODEC = "mpeg4"  # built into every FFmpeg that PyAV wheels ship (no libx264 licence question)
VIDEO_PIXEL_FORMAT = "yuv420p"
UINT8_MAX = 255.0
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))  # distinct colours per class


class DetectError(ValueError):
    """A source, checkpoint or device that detect cannot use; the message names it."""


# ------------------------------------------------------------------------------------------------ checkpoints
def resolve_checkpoint(run_or_ckpt: Path, weights: str = "best") -> tuple[Path, str]:
    """The checkpoint to use and a sentence saying which and why.

    ``run_or_ckpt`` is a run folder or a ``.ckpt`` file; ``weights`` is ``best`` (best val mAP50; falls back
    to ``last`` when a run has no best.ckpt, e.g. it never validated), ``last`` or a path to a ``.ckpt``.
    """
    run_or_ckpt = Path(run_or_ckpt)
    if weights not in WEIGHTS_CHOICES:
        path = Path(weights)
        if not path.is_file():
            raise DetectError(f"--weights {weights}: no such checkpoint file (or use best / last)")
        return path, f"weights {path} (given with --weights)"
    if run_or_ckpt.is_file():
        return run_or_ckpt, f"weights {run_or_ckpt} (checkpoint file given)"
    folder = run_or_ckpt / "checkpoints"
    chosen = folder / CHECKPOINT_FILES[weights]
    if chosen.is_file():
        why = "best val mAP50 of the run" if weights == "best" else "the last epoch"
        return chosen, f"weights {chosen} ({why}; --weights best|last|PATH to choose)"
    fallback = folder / CHECKPOINT_FILES["last"]
    if weights == "best" and fallback.is_file():
        return fallback, f"weights {fallback} (no best.ckpt in the run: the last epoch)"
    raise DetectError(f"{run_or_ckpt}: not a .ckpt file and no checkpoints/{CHECKPOINT_FILES[weights]} in it")


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint lives in (``RUN/checkpoints/x.ckpt``), or None for a loose file."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file() else None


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> torch.device, refusing one this machine does not have."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise DetectError(f"--device {device}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DetectError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DetectError(f"--device {device}: MPS is not available on this machine")
    return dev


# ------------------------------------------------------------------------------------------------ the detector
@dataclass
class Detector:
    """A trained model ready for inference. Build it with :func:`load`."""

    model: torch.nn.Module
    coder: object
    names: list[str]
    channels: int
    imgsz: int
    conf: float
    iou: float
    max_det: int
    device: torch.device
    checkpoint: Path
    conf_source: str = ""
    weights_note: str = ""  # which checkpoint and why (resolve_checkpoint's sentence)

    @torch.no_grad()
    def predict(self, images: str | Path | np.ndarray | Sequence[str | Path | np.ndarray], conf: float | None = None,
                iou: float | None = None, batch: int = DEFAULT_BATCH) -> list[Tensor]:
        """Detections of each image, in that image's pixels.

        Args:
            images: one or a list of image paths or ``[H, W, C]`` uint8 arrays (RGB, or grey with C = 1).
            conf: score threshold (default: the detector's, i.e. the run's best-F1 confidence).
            iou: NMS IoU threshold.
            batch: images per forward pass.

        Returns:
            one ``[K, 6]`` float32 CPU tensor per image: ``x1, y1, x2, y2, score, class``, by descending score.
        """
        if isinstance(images, str | Path | np.ndarray):
            images = [images]
        arrays = [read_image(i, self.channels) if isinstance(i, str | Path) else self._checked(i) for i in images]
        out: list[Tensor] = []
        for start in range(0, len(arrays), batch):
            out += self._predict_arrays(arrays[start:start + batch], conf, iou)
        return out

    def _checked(self, array: np.ndarray) -> np.ndarray:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != self.channels:
            raise DetectError(f"predict: expected a uint8 [H, W, {self.channels}] array, got {array.dtype} "
                              f"{list(array.shape)}")
        return array

    def _predict_arrays(self, arrays: list[np.ndarray], conf: float | None, iou: float | None) -> list[Tensor]:
        boxed = [letterbox(a, (self.imgsz, self.imgsz)) for a in arrays]
        batch = torch.from_numpy(np.stack([b for b, _ in boxed])).permute(0, 3, 1, 2)
        batch = batch.to(self.device).float().div(UINT8_MAX)
        dets = predict(self.model, batch, self.coder, self.conf if conf is None else conf,
                       self.iou if iou is None else iou, self.max_det)
        out = []
        for det, (_, info) in zip(dets, boxed, strict=True):
            det = det.float().cpu()
            det[:, :4] = boxes_from_letterbox(det[:, :4], info)
            out.append(det)
        return out


def load(run: str | Path, weights: str = "best", device: str = "cpu", conf: float | None = None,
         iou: float = DEFAULT_IOU, imgsz: int | None = None) -> Detector:
    """A :class:`Detector` from a run folder or ``.ckpt`` file.

    ``weights``: best, last or a checkpoint path; ``conf``: default score threshold (None: the best-F1
    confidence that ``yololab eval`` recorded in the run, else 0.25); ``imgsz``: input size (default: the
    run's). Example: ``yololab.load("runs/demo").predict(["a.png", "b.png"])``.
    """
    from yololab.engine.checkpoint import load_module

    checkpoint, weights_note = resolve_checkpoint(Path(run), weights)
    dev = resolve_device(device)
    module = load_module(checkpoint)
    model = module.model.eval().to(dev)
    conf_source = "given with --conf"
    if conf is None:
        conf, conf_source = recorded_conf(run_folder_of(checkpoint))
    return Detector(model=model, coder=module.loss.coder, names=module.names, channels=module.model.channels,
                    imgsz=imgsz or module.cfg.data.imgsz, conf=conf, iou=iou, max_det=module.cfg.train.max_det,
                    device=dev, checkpoint=checkpoint, conf_source=conf_source, weights_note=weights_note)


# ------------------------------------------------------------------------------------------------ sources
def list_sources(sources: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images and videos, sorted) and glob patterns -> paths. A source that matches
    nothing is an error naming it."""
    found: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not inside:
                raise DetectError(f"{path}: no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            found += inside
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not matches:
                raise DetectError(f"{source}: the pattern matches no file")
            found += matches
        else:
            raise DetectError(f"{source}: no such file or folder")
    return found


def output_names(sources: Sequence[Path]) -> dict[Path, str]:
    """A distinct output stem per source: the file's stem, prefixed by its folder's name (then a number) when
    two sources share a stem (``val/0001.png`` and ``test/0001.png``)."""
    taken: set[str] = set()
    names: dict[Path, str] = {}
    for path in sources:
        name, number = path.stem, 1
        if name in taken:
            name = f"{path.parent.name}_{path.stem}"
        while name in taken:
            number += 1
            name = f"{path.parent.name}_{path.stem}_{number}"
        taken.add(name)
        names[path] = name
    return names


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video(path: Path, channels: int) -> tuple[Iterator[np.ndarray], float]:
    """Frames of a video as uint8 ``[H, W, channels]`` arrays (PyAV), and its frame rate."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise DetectError(f"{path}: cannot open as a video: {err}") from None
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 25)

    def frames() -> Iterator[np.ndarray]:
        with container:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                yield rgb if channels == 3 else np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    return frames(), rate


class VideoWriter:
    """Annotated frames -> an MP4 (PyAV, ``mpeg4`` codec); the size is taken from the first frame."""

    def __init__(self, path: Path, rate: float):
        import av

        self._container = av.open(str(path), "w")
        self._rate = round(rate)
        self._stream = None

    def write(self, frame: Image.Image) -> None:
        import av

        if self._stream is None:
            self._stream = self._container.add_stream(VIDEO_CODEC, rate=self._rate)
            # yuv420p needs even sides
            self._stream.width, self._stream.height = frame.width // 2 * 2, frame.height // 2 * 2
            self._stream.pix_fmt = VIDEO_PIXEL_FORMAT
        rgb = np.asarray(frame)[: self._stream.height, : self._stream.width]
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()


def draw(image: np.ndarray, dets: np.ndarray, names: list[str]) -> Image.Image:
    """image [H, W, C] uint8, dets [K, 6] (x1, y1, x2, y2, score, class) pixels -> PIL RGB image."""
    canvas = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for x1, y1, x2, y2, score, cls in dets.tolist():
        colour = BOX_COLOURS[int(cls) % len(BOX_COLOURS)]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        pen.text((x1 + 2, max(y1 - 11, 0)), f"{names[int(cls)]} {score:.2f}", fill=colour)
    return canvas


# ------------------------------------------------------------------------------------------------ detect
@dataclass
class DetectSummary:
    images: int
    frames: int
    detections: int
    written: list[Path]


class _Results:
    """Collects ``detections.json`` records and COCO-style result dicts (image ids from 1, category = class + 1,
    bbox = x, y, w, h in source pixels; ``file_name`` and, for video, ``frame`` name the source)."""

    def __init__(self, names: list[str]):
        self.names, self.records, self.coco = names, [], []

    def add(self, source: Path, image: np.ndarray, dets: np.ndarray, frame: int | None = None) -> None:
        image_id = len(self.records) + 1
        record = {"image_id": image_id, "image": str(source), "width": int(image.shape[1]),
                  "height": int(image.shape[0]), "detections": [
                      {"box_xyxy": [round(v, 2) for v in d[:4].tolist()], "score": round(float(d[4]), 4),
                       "class_id": int(d[5]), "class": self.names[int(d[5])]} for d in dets]}
        where = {"file_name": str(source)} if frame is None else {"file_name": str(source), "frame": frame}
        if frame is not None:
            record["frame"] = frame
        self.records.append(record)
        self.coco += [{"image_id": image_id, "category_id": int(c) + 1, "bbox": [round(x1, 2), round(y1, 2),
                       round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(s, 4), **where}
                      for x1, y1, x2, y2, s, c in dets.tolist()]

    def write(self, out: Path) -> None:
        (out / "detections.json").write_text(json.dumps(self.records, indent=2))
        (out / "coco_results.json").write_text(json.dumps(self.coco))


def detect_sources(detector: Detector, sources: Sequence[Path], out: Path, conf: float | None = None,
                   iou: float | None = None, batch: int = DEFAULT_BATCH, save_images: bool = True) -> DetectSummary:
    """Detect in every source; writes ``out/<stem>.png`` per image, ``out/<stem>.mp4`` per video (boxes
    drawn), ``out/detections.json`` (per image or frame) and ``out/coco_results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    results, written, n_frames = _Results(detector.names), [], 0
    stems = output_names(sources)
    images = [p for p in sources if not is_video(p)]
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        arrays = [read_image(p, detector.channels) for p in chunk]
        for path, image, det in zip(chunk, arrays, detector.predict(arrays, conf, iou, batch), strict=True):
            results.add(path, image, det.numpy())
            if save_images:
                target = out / f"{stems[path]}.png"
                draw(image, det.numpy(), detector.names).save(target)
                written.append(target)
    for path in (p for p in sources if is_video(p)):
        target = out / f"{stems[path]}.mp4" if save_images else None
        n_frames += _detect_video(detector, path, target, results, written, conf, iou, batch)
    results.write(out)
    return DetectSummary(len(images), n_frames, sum(len(r["detections"]) for r in results.records), written)


def _detect_video(detector: Detector, path: Path, target: Path | None, results: _Results, written: list[Path],
                  conf: float | None, iou: float | None, batch: int) -> int:
    """Detections of every frame of ``path``, drawn into the MP4 ``target`` (None: no video written)."""
    frames, rate = read_video(path, detector.channels)
    writer = VideoWriter(target, rate) if target is not None else None
    count = 0
    try:
        chunk: list[np.ndarray] = []
        for frame in itertools.chain(frames, [None]):  # None flushes the last chunk
            if frame is not None:
                chunk.append(frame)
            if chunk and (frame is None or len(chunk) == batch):
                for image, det in zip(chunk, detector.predict(chunk, conf, iou, batch), strict=True):
                    results.add(path, image, det.numpy(), frame=count)
                    count += 1
                    if writer is not None:
                        writer.write(draw(image, det.numpy(), detector.names))
                chunk = []
    finally:
        if writer is not None:
            writer.close()
            written.append(target)
    if count == 0:
        raise DetectError(f"{path}: the video has no frames")
    return count
