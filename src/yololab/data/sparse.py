"""Sparse detector-like images: a synthetic dataset in the spirit of a neutrino-detector readout.

Images are mostly zero, with a small fraction of low-amplitude noise hits, and a few objects drawn as
sparse hit patterns: thin straight ``track`` lines, cone-shaped ``shower`` hit clouds that open away from
their apex, and compact ``blob`` clusters. Object sizes span two orders of magnitude, from ~3x2 pixels to
~200x150 pixels (the anchors of the SNNu detector dataset ran from [3, 2] to [217, 143] at 480x480).

The truth box of an object is the tight box of its own hit pixels, computed from the pixels (noise hits
never enter a box). Every image has its own random generator seeded by ``(seed, split, index)``, so a
file's bytes depend only on those and on the parameters: the same arguments give byte-identical files,
however many processes write them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from yololab.data.size_bins import SIZE_BINS_KEY, SizeBins
from yololab.data.synthetic import label_line, pair_iou, prepare_output_dir

SHAPES = ("track", "shower", "blob")  # the hit patterns an object can be drawn as
DEFAULT_CLASSES = ("track", "shower")
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"n_train": 2000, "n_val": 250, "n_test": 250, "img_size": 480}
OBJECTS_PER_IMAGE = (1, 4)  # inclusive range of objects drawn into one image
NOISE = 0.02  # fraction of the pixels that carry a noise hit
NOISE_MAX = 48  # noise hits are uniform in 1..NOISE_MAX (of 255): well below any object hit
HIT_MIN = 64  # object hits are uniform in HIT_MIN..255, so an object always outshines the noise
# Fraction of the pixels inside a shower's cone or a blob's ellipse that are hit: sparse, as a
# detector readout, yet dense enough that a small blob is a visible cluster.
HIT_DENSITY = 0.3
COLOUR_MIN = 96  # RGB images: lowest channel factor (of 255) of an object's tint; keeps hits non-zero
MAX_IOU = 0.3  # a placement overlapping an already placed box by more than this is retried
MAX_PLACEMENT_TRIES = 50  # after this many rejected positions the object is left out of the image
PNG_COMPRESS_LEVEL = 1  # mostly-zero images compress well even at zlib's fastest level
CHUNK_SIZE = 250  # images written by one worker call; the files do not depend on it


@dataclass(frozen=True)
class SizeBin:
    """One kind of object size: drawn with probability ``weight`` (weights are normalised), width and
    height each log-uniform between ``min_wh`` and ``max_wh`` (pixels, inclusive, capped at the image)."""

    weight: float
    min_wh: tuple[int, int]
    max_wh: tuple[int, int]


# Small, medium and large objects, after the SNNu anchors at 480x480: detailed scale [3,2] [3,3] [4,3],
# intermediate [6,6] [9,12] [13,33], coarse [26,16] [39,51] [217,143].
SIZE_MIX = (
    SizeBin(0.4, (3, 2), (5, 4)),
    SizeBin(0.4, (6, 6), (40, 40)),
    SizeBin(0.2, (40, 30), (200, 150)),
)
SIZE_MIX_TEXT = "0.4:3x2-5x4,0.4:6x6-40x40,0.2:40x30-200x150"  # SIZE_MIX in parse_size_mix's syntax


@dataclass(frozen=True)
class SparseParams:
    """Everything that decides the pixels of an image (besides its seed)."""

    img_size: int
    channels: int
    shapes: tuple[str, ...]  # the shape of each class
    objects_per_image: tuple[int, int]
    size_mix: tuple[SizeBin, ...]
    noise: float
    hit_density: float
    max_iou: float


def parse_size_mix(text: str) -> tuple[SizeBin, ...]:
    """``"0.4:3x2-5x4,0.2:40x30-200x150"`` (``weight:WxH-WxH`` per bin) -> size bins; ValueError if bad."""
    bins = []
    for item in text.split(","):
        try:
            weight, sizes = item.split(":")
            low, high = (tuple(int(v) for v in side.lower().split("x")) for side in sizes.split("-"))
            if len(low) != 2 or len(high) != 2:
                raise ValueError("a size is WxH")
            bins.append(SizeBin(float(weight), low, high))
        except ValueError as err:
            raise ValueError(f"size mix {text!r}: expected 'weight:WxH-WxH' items separated by commas, "
                             f"got {item!r}") from err
    return tuple(bins)


def class_shapes(classes: Sequence[str] | int) -> tuple[list[str], tuple[str, ...]]:
    """Class names and the shape each is drawn as.

    A name that is a shape (``track``, ``shower``, ``blob``) is drawn as that shape; other names take the
    shapes in turn. ``n`` classes are named after their shapes: track, shower, blob, track1, shower1, ...
    """
    if isinstance(classes, int):
        if classes < 1:
            raise ValueError(f"number of classes must be >= 1, got {classes}")
        names = [SHAPES[i % len(SHAPES)] + (str(i // len(SHAPES)) if i >= len(SHAPES) else "")
                 for i in range(classes)]
    else:
        names = [str(c) for c in classes]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class names must be non-empty and distinct, got {names}")
    shapes = tuple(n if n in SHAPES else SHAPES[i % len(SHAPES)] for i, n in enumerate(names))
    return names, shapes


def make_sparse(
    out_dir: str | Path,
    n_train: int = DEFAULT_SIZES["n_train"],
    n_val: int = DEFAULT_SIZES["n_val"],
    n_test: int = DEFAULT_SIZES["n_test"],
    img_size: int = DEFAULT_SIZES["img_size"],
    channels: int = 1,
    classes: Sequence[str] | int = DEFAULT_CLASSES,
    objects_per_image: tuple[int, int] = OBJECTS_PER_IMAGE,
    size_mix: Sequence[SizeBin] = SIZE_MIX,
    noise: float = NOISE,
    hit_density: float = HIT_DENSITY,
    max_iou: float = MAX_IOU,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write the dataset to ``out_dir`` and return the path of its ``data.yaml``.

    Args:
        n_train, n_val, n_test: images per split.
        img_size: side of the square images in pixels.
        channels: 1 (grey PNG) or 3 (RGB PNG; each object gets a random tint, noise is grey).
        classes: class names, or a number of classes (see :func:`class_shapes`); each object's class is
            uniform over them.
        objects_per_image: inclusive ``(min, max)``; 0 allows background images.
        size_mix: the object size bins (pixels, width x height), see :class:`SizeBin`.
        noise: fraction of the pixels of each image that get a noise hit (exactly
            ``round(noise * img_size**2)`` distinct pixels, values 1..``NOISE_MAX``).
        hit_density: fraction of the pixels of a shower's cone or a blob's ellipse that are hit.
        max_iou: objects of one image overlap by at most this IoU (placements are retried).
        seed: same seed and arguments, byte-identical files.
        overwrite: replace a previous dataset in ``out_dir`` (otherwise it must be empty or absent).
        workers: processes writing images (default: one per ``CHUNK_SIZE`` images, at most the CPU
            count); the files do not depend on it. Processes are spawned: a script calling this with
            several workers needs the usual ``if __name__ == "__main__":`` guard.

    Writes ``images/{train,val,test}/NNNNNN.png``, ``labels/{train,val,test}/NNNNNN.txt`` (``class cx cy
    w h`` normalised; empty for a background image) and ``data.yaml`` with a ``generator`` block
    recording every parameter and a ``size_bins`` block (:func:`size_bins`) that evaluation reports AP per.
    """
    names, shapes = class_shapes(classes)
    params = SparseParams(img_size, channels, shapes, tuple(objects_per_image), tuple(size_mix), noise,
                          hit_density, max_iou)
    _check_params(params)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if min(counts.values()) < 0:
        raise ValueError(f"image counts must be >= 0, got {counts}")

    out_dir = Path(out_dir).resolve()
    prepare_output_dir(out_dir, overwrite)
    chunks = []
    for split_number, split in enumerate(SPLITS):
        for sub in ("images", "labels"):
            (out_dir / sub / split).mkdir(parents=True)
        chunks += [(out_dir, split_number, start, min(start + CHUNK_SIZE, counts[split]), seed, params)
                   for start in range(0, counts[split], CHUNK_SIZE)]
    _run_chunks(chunks, workers)

    spec = {
        "path": str(out_dir),
        **{split: f"images/{split}" for split in SPLITS if counts[split]},
        "names": names,
        "generator": {
            "name": "yololab.data.sparse",
            "seed": seed,
            "img_size": img_size,
            "channels": channels,
            "n_images": counts,
            "shapes": dict(zip(names, shapes, strict=True)),
            "objects_per_image": list(objects_per_image),
            "size_mix": [{"weight": b.weight, "min_wh": list(b.min_wh), "max_wh": list(b.max_wh)}
                         for b in size_mix],
            "noise": noise,
            "noise_values": [1, NOISE_MAX],
            "hit_values": [HIT_MIN, 255],
            "hit_density": hit_density,
            "max_iou": max_iou,
            "max_placement_tries": MAX_PLACEMENT_TRIES,
            "image_seed": "numpy.random.default_rng([seed, split_number, index]); train=0 val=1 test=2",
        },
        SIZE_BINS_KEY: size_bins(size_mix, img_size).to_yaml(),
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def size_bins(size_mix: Sequence[SizeBin], img_size: int) -> SizeBins:
    """The size mix as evaluation bins: per bin, ``WxH-WxH`` -> the areas ``[min_w * min_h, max_w * max_h]``
    (pixels² at ``img_size``) its boxes can have. A box is exactly its drawn size (the patch's hits span it),
    and sides are capped at the image as :func:`_draw_size` caps them."""
    areas = {}
    for b in size_mix:
        (lo_w, lo_h), (hi_w, hi_h) = ((min(v, img_size) for v in wh) for wh in (b.min_wh, b.max_wh))
        name = f"{b.min_wh[0]}x{b.min_wh[1]}-{b.max_wh[0]}x{b.max_wh[1]}"
        areas[name] = (float(lo_w * lo_h), float(hi_w * hi_h))
    return SizeBins(img_size, areas)


def _check_params(p: SparseParams) -> None:
    if p.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {p.channels}")
    if p.img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {p.img_size}")
    low, high = p.objects_per_image
    if not 0 <= low <= high:
        raise ValueError(f"objects_per_image must be (min, max), 0 <= min <= max: {p.objects_per_image}")
    if not p.size_mix or any(b.weight < 0 for b in p.size_mix) or sum(b.weight for b in p.size_mix) <= 0:
        raise ValueError(f"size_mix needs at least one bin, weights >= 0 with a positive sum: {p.size_mix}")
    for b in p.size_mix:
        if not all(1 <= lo <= hi for lo, hi in zip(b.min_wh, b.max_wh, strict=True)):
            raise ValueError(f"size bin {asdict(b)}: need 1 <= min <= max for width and height")
    for name, value in (("noise", p.noise), ("hit_density", p.hit_density), ("max_iou", p.max_iou)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _run_chunks(chunks: list[tuple], workers: int | None) -> None:
    """Write every chunk, in worker processes when there are several chunks and workers.

    By default there is one process per ``CHUNK_SIZE`` images, up to the CPU count: starting a process
    costs more than writing a few hundred images.
    """
    if workers is None:
        n_images = sum(stop - start for _, _, start, stop, *_ in chunks)
        workers = min(os.cpu_count() or 1, n_images // CHUNK_SIZE)
    workers = min(workers, len(chunks))
    if workers <= 1:
        for chunk in chunks:
            _write_chunk(chunk)
        return
    # spawn, not fork: the parent may hold torch / OpenMP threads, which do not survive a fork. Like any
    # spawning code, a script that calls make_sparse must guard it with `if __name__ == "__main__":`.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_chunk, chunks):
            pass


def _write_chunk(chunk: tuple) -> None:
    """Render and write images ``start .. stop - 1`` of one split."""
    out_dir, split_number, start, stop, seed, params = chunk
    split = SPLITS[split_number]
    for index in range(start, stop):
        rng = np.random.default_rng([seed, split_number, index])
        canvas, objects = render_sparse_image(rng, params)
        pixels = canvas[:, :, 0] if params.channels == 1 else canvas
        Image.fromarray(pixels).save(out_dir / "images" / split / f"{index:06d}.png",
                                     compress_level=PNG_COMPRESS_LEVEL)
        lines = [label_line(cls, box, params.img_size) for cls, box in objects]
        (out_dir / "labels" / split / f"{index:06d}.txt").write_text("".join(lines))


def render_sparse_image(rng: np.random.Generator, params: SparseParams):
    """One uint8 ``[S, S, channels]`` image and its objects as ``[(class, (x1, y1, x2, y2))]``.

    Boxes are in pixels with exclusive right/bottom edges: the tight box of the object's own hit pixels
    (columns ``x1 .. x2 - 1``, rows ``y1 .. y2 - 1``). Objects are blended by maximum, so an object's hits
    stay non-zero where others overlap it; noise is added last, where no object hit is.
    """
    size = params.img_size
    canvas = np.zeros((size, size, params.channels), dtype=np.uint8)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    low, high = params.objects_per_image
    for _ in range(rng.integers(low, high + 1)):
        cls = int(rng.integers(len(params.shapes)))
        w, h = _draw_size(rng, params.size_mix, size)
        patch = _draw_patch(params.shapes[cls], w, h, rng, params)  # [h, w, C]
        rows, cols = np.nonzero(patch.max(axis=2))
        for _ in range(MAX_PLACEMENT_TRIES):
            ox, oy = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            x1, y1 = ox + int(cols.min()), oy + int(rows.min())
            box = (x1, y1, ox + int(cols.max()) + 1, oy + int(rows.max()) + 1)
            if all(pair_iou(box, other) <= params.max_iou for _, other in objects):
                region = canvas[oy:oy + h, ox:ox + w]
                np.maximum(region, patch, out=region)
                objects.append((cls, box))
                break
    _add_noise(canvas, rng, params.noise)
    return canvas, objects


def _draw_size(rng: np.random.Generator, size_mix: Sequence[SizeBin], img_size: int) -> tuple[int, int]:
    """Width and height of one object: a bin by weight, then each side log-uniform within the bin."""
    weights = np.array([b.weight for b in size_mix], dtype=np.float64)
    b = size_mix[rng.choice(len(size_mix), p=weights / weights.sum())]
    sides = []
    for lo, hi in zip(b.min_wh, b.max_wh, strict=True):
        lo, hi = min(lo, img_size), min(hi, img_size)
        # Log-uniform over the integer sides lo..hi: small objects are as common as large ones on a log
        # scale, as in a detector where both point-like hits and showers occur.
        side = math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))
        sides.append(min(side, hi))
    return sides[0], sides[1]


def _draw_patch(shape: str, w: int, h: int, rng: np.random.Generator, params: SparseParams) -> np.ndarray:
    """The hits of one object -> uint8 ``[h, w, channels]``; its non-zero pixels span the whole patch."""
    mask = _MASKS[shape](w, h, rng, params.hit_density)
    values = np.where(mask, rng.integers(HIT_MIN, 256, size=mask.shape), 0).astype(np.float32)
    if params.channels == 1:
        return values.astype(np.uint8)[:, :, None]
    tint = rng.integers(COLOUR_MIN, 256, size=3).astype(np.float32) / 255
    # HIT_MIN * COLOUR_MIN / 255 >= 24: a hit stays non-zero in every channel.
    return np.round(values[:, :, None] * tint).astype(np.uint8)


def _track_mask(w: int, h: int, rng: np.random.Generator, hit_density: float) -> np.ndarray:
    """A straight 8-connected line from one corner of the box to the opposite one -> bool [h, w]."""
    steps = max(w, h)
    xs = np.rint(np.linspace(0, w - 1, steps)).astype(np.int64)
    ys = np.rint(np.linspace(0, h - 1, steps)).astype(np.int64)
    if rng.random() < 0.5:  # the other diagonal
        ys = h - 1 - ys
    mask = np.zeros((h, w), dtype=bool)
    mask[ys, xs] = True
    return mask


def _shower_mask(w: int, h: int, rng: np.random.Generator, hit_density: float) -> np.ndarray:
    """A cone of scattered hits along the box's longer side, apex at the middle of one short edge,
    opening to the full width at the other -> bool [h, w]. The apex and the two far corners are hit, so
    the hits span the box."""
    length, width = max(w, h), min(w, h)
    n_hits = max(1, round(hit_density * length * width / 2))  # the cone covers half the box
    # The cone's cross-section grows linearly from the apex, so hit density along it goes as t: t = sqrt(u).
    t = np.sqrt(rng.random(n_hits))
    across = rng.uniform(-1, 1, n_hits) * t
    u = np.rint(t * (length - 1)).astype(np.int64)
    v = np.rint((width - 1) / 2 * (1 + across)).astype(np.int64)
    u = np.concatenate([u, [0, length - 1, length - 1]])
    v = np.concatenate([v, [round((width - 1) / 2), 0, width - 1]])
    if rng.random() < 0.5:  # apex at the other end
        u = length - 1 - u
    mask = np.zeros((width, length), dtype=bool)
    mask[v, u] = True
    return mask if w >= h else mask.T


def _blob_mask(w: int, h: int, rng: np.random.Generator, hit_density: float) -> np.ndarray:
    """Random hits inside the ellipse inscribed in the box, plus the middle of each edge -> bool [h, w]."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ys, xs = np.mgrid[0:h, 0:w]
    inside = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1
    mask = inside & (rng.random((h, w)) < hit_density)
    mask[round(cy), [0, w - 1]] = True
    mask[[0, h - 1], round(cx)] = True
    return mask


def _add_noise(canvas: np.ndarray, rng: np.random.Generator, noise: float) -> None:
    """Give ``round(noise * H * W)`` distinct pixels a grey noise hit (1..NOISE_MAX) unless an object hit
    is there already."""
    height, width, _ = canvas.shape
    n_noisy = round(noise * height * width)
    where = rng.choice(height * width, size=n_noisy, replace=False)
    values = rng.integers(1, NOISE_MAX + 1, size=n_noisy, dtype=np.uint8)
    flat = canvas.reshape(height * width, -1)  # a view: writes go to the canvas
    free = ~flat[where].any(axis=1)
    flat[where[free]] = values[free, None]


_MASKS = {"track": _track_mask, "shower": _shower_mask, "blob": _blob_mask}  # one per name in SHAPES
