"""Photo-like scenes: a small colour detection dataset in the spirit of a few hundred photographs.

Backgrounds are random crops (position, scale, mirror, quarter turns) of the two photographs that ship inside
scikit-learn (``china.jpg`` and ``flower.jpg``, read from its package folder), blended with a smooth random
colour texture and jittered in saturation, colour balance, contrast and brightness. On them stand 1 to 6 lit
objects of four classes that differ by shape, not by colour: a ``ball`` (a shaded sphere with a highlight), a
``box`` (a cuboid showing two or three faces), a ``cone`` and a ``ring``. Each object has a random colour, a
random size (its longer side 8-60 % of the image side, uniform, so most are medium or large), a random shape
aspect and rotation, shading from the image's one light, and a soft drop shadow away from that light. Some
images get a mild blur and some sensor noise; all are written as JPEG.

Boxes: a pixel is an object's when the object covers at least half of it (coverage >= ``DRAWN``) and no later
object covers any of it (so a half-pixel sliver along an occluder's anti-aliased edge does not stretch a box);
the truth box is the tight box of those visible pixels. Occlusion is limited when an object is placed: it goes
only where it overlaps no earlier box by more than ``MAX_IOU`` and every earlier object keeps at least
``MIN_VISIBLE`` of its pixels; after ``MAX_PLACEMENT_TRIES`` rejected positions it is left out. So no label is of
an object hidden by more than 60 %, and none of an invisible one.

Determinism, as in :mod:`yololab.data.sparse`: an image's pixels depend only on ``(seed, split, index)`` and the
parameters, so the same arguments give byte-identical files. Each part of a scene draws from its own generator,
``numpy.random.default_rng([seed, split_number, index, part])``: the background, the scene (object count and
light), the finish (blur and noise), and object ``i`` (``[..., OBJECT_PART, i]``). An image rendered with fewer
objects keeps its background, its light and its first objects exactly.
"""

from __future__ import annotations

import colorsys
import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageStat

from yololab.data.size_bins import SIZE_BINS_KEY, SizeBins
from yololab.data.synthetic import label_line, pair_iou, prepare_output_dir

CLASSES = ("ball", "box", "cone", "ring")  # class names; each is drawn as the shape it names
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"n_train": 200, "n_val": 50, "n_test": 50, "img_size": 320}
MIN_IMG_SIZE = 64  # below this the smallest objects are a few pixels and the photo crops are mush
PHOTOS = ("china.jpg", "flower.jpg")  # the sample images in scikit-learn's sklearn/datasets/images/
JPEG_QUALITY = 90  # a typical camera or phone setting

# Scene parts, each with its own random generator (see the module docstring).
BACKGROUND_PART, SCENE_PART, FINISH_PART, OBJECT_PART = range(4)

# Objects and their placement.
OBJECTS_PER_IMAGE = (1, 6)  # inclusive range of objects drawn into one image
SIZE_RANGE = (0.08, 0.6)  # an object's longer side as a fraction of the image side, uniform in this range
MAX_IOU = 0.3  # a placement overlapping an already placed box by more than this is retried
MIN_VISIBLE = 0.4  # a placement hiding more than 60 % of an earlier object's pixels is retried
MAX_PLACEMENT_TRIES = 50  # after this many rejected positions the object is left out of the image
DRAWN = 0.5  # coverage from which a pixel is the object's (what an annotator would box)
SUPERSAMPLE = 4  # silhouettes are drawn at this many times the resolution, then averaged: smooth edges
PAD = 1  # pixels around an object's patch, so its anti-aliased edge is never cut
POLYGON_VERTICES = 72  # vertices of a drawn circle or ellipse

# Colours and light. A colour is HSV with these saturation and value ranges (hue uniform).
SATURATION_RANGE = (0.35, 1.0)
VALUE_RANGE = (0.45, 1.0)
AMBIENT = 0.3  # light every surface gets: a face turned from the light stays visible
DIFFUSE = 0.8  # Lambert term: shade = AMBIENT + DIFFUSE * max(0, normal . light)
SPECULAR = {"ball": 0.6, "box": 0.0, "cone": 0.1, "ring": 0.35}  # highlight strength per shape
SHININESS = 40  # Blinn-Phong exponent: a small, sharp highlight
LIGHT_AZIMUTH_DEG = (-160.0, -20.0)  # direction to the light in the image plane: above (y grows downwards)
LIGHT_ELEVATION_DEG = (30.0, 65.0)  # light's angle above the image plane
SHADOW = 0.5  # strongest drop-shadow opacity; an object's shadow is SHADOW times SHADOW_JITTER
SHADOW_JITTER = (0.6, 1.0)
SHADOW_SHIFT = 0.1  # shadow offset away from the light, as a fraction of the object's size
SHADOW_SOFTNESS = 0.05  # shadow blur radius, as a fraction of the object's size

# Shapes, in the units of each shape's own frame (radius 1 for ball, cone base and ring).
BOX_SIDES = (0.5, 1.0)  # each side of a cuboid relative to the others
BOX_PITCH_DEG = (0.0, 40.0)  # camera elevation: near 0 the top face is hidden (two faces), else three
BOX_ROLL_DEG = 10.0  # in-plane tilt, either way
CONE_HEIGHT = (1.3, 2.4)  # apex height over the base radius: the apex stays wider than a pixel
CONE_SQUASH = (0.2, 0.5)  # base ellipse height / width (the sine of the camera elevation)
CONE_ROLL_DEG = 25.0
RING_HOLE = (0.45, 0.7)  # inner radius / outer radius
RING_SQUASH = (0.35, 1.0)  # ring ellipse height / width (1: seen face on)

# Background.
CROP_RANGE = (0.3, 1.0)  # crop side as a fraction of the photograph's shorter side
TEXTURE_CELLS = (2, 6)  # the texture is a random grid of this many cells a side, smoothly upsampled
TEXTURE_WEIGHT = (0.0, 0.6)  # share of the texture in the background
BACKGROUND_SATURATION = (0.6, 1.3)
CHANNEL_GAIN = (0.88, 1.12)  # per-channel factor: white balance
CONTRAST = (0.7, 1.3)
BRIGHTNESS = (0.75, 1.2)

# Finish: some images blurred, some with sensor noise.
BLUR = 0.3  # probability that an image is blurred
BLUR_RADIUS = (0.4, 1.0)  # Gaussian radius in pixels
NOISE = 0.5  # probability that an image gets sensor noise
NOISE_SIGMA = (0.005, 0.025)  # standard deviation of the Gaussian noise, of the full range

# Evaluation bins by box side relative to the image side (area = side²): COCO's 32 and 96 pixels at 320 px.
SIZE_BIN_SIDES = {"small": (0.0, 0.1), "medium": (0.1, 0.3), "large": (0.3, 1.0)}

Box = tuple[int, int, int, int]  # pixels, x1, y1, x2, y2 with exclusive right/bottom edges


@dataclass(frozen=True)
class PhotoParams:
    """Everything that decides the pixels of an image (besides its seed)."""

    img_size: int
    objects_per_image: tuple[int, int]
    size_range: tuple[float, float]
    max_iou: float
    min_visible: float
    shadow: float  # strongest shadow opacity; 0 draws none
    blur: float  # probability of a blurred image
    noise: float  # probability of sensor noise


@dataclass(frozen=True)
class _Layer:
    """Part of a shape: polygons ``[(points [n, 2], fill)]`` drawn in order (fill False cuts a hole) and the
    unit surface normal ``normal(x, y) -> [..., 3]`` (x right, y down, z to the viewer) at frame points."""

    polygons: list[tuple[np.ndarray, bool]]
    normal: Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_photo(
    out_dir: str | Path,
    n_train: int = DEFAULT_SIZES["n_train"],
    n_val: int = DEFAULT_SIZES["n_val"],
    n_test: int = DEFAULT_SIZES["n_test"],
    img_size: int = DEFAULT_SIZES["img_size"],
    seed: int = 0,
    objects_per_image: tuple[int, int] = OBJECTS_PER_IMAGE,
    size_range: tuple[float, float] = SIZE_RANGE,
    max_iou: float = MAX_IOU,
    min_visible: float = MIN_VISIBLE,
    shadow: float = SHADOW,
    blur: float = BLUR,
    noise: float = NOISE,
    overwrite: bool = False,
) -> Path:
    """Write the dataset to ``out_dir`` and return the path of its ``data.yaml``.

    Args:
        n_train, n_val, n_test: images per split (at least one training image; an empty split is left out).
        img_size: side of the square images in pixels (at least ``MIN_IMG_SIZE``).
        seed: same seed and arguments, byte-identical files.
        objects_per_image: inclusive ``(min, max)``; 0 allows background images.
        size_range: an object's longer side as a fraction of the image side, uniform in ``[lo, hi]``.
        max_iou: largest IoU between a new object's box and an earlier one.
        min_visible: share of its pixels every earlier object keeps when a new one is placed.
        shadow: strongest drop-shadow opacity (0: no shadows).
        blur, noise: probability that an image is blurred, and that it gets sensor noise.
        overwrite: replace a previous dataset in ``out_dir`` (otherwise it must be empty or absent).

    Writes ``images/{train,val,test}/NNNNNN.jpg``, ``labels/{train,val,test}/NNNNNN.txt`` (``class cx cy w h``
    normalised) and ``data.yaml`` with the splits, ``nc``, ``names``, a ``generator`` block recording every
    parameter and a ``size_bins`` block (:func:`size_bins`) that evaluation reports AP per.
    """
    params = PhotoParams(img_size, tuple(objects_per_image), tuple(size_range), max_iou, min_visible, shadow,
                         blur, noise)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    _check(params, counts)

    out_dir = Path(out_dir).resolve()
    prepare_output_dir(out_dir, overwrite)
    for split_number, split in enumerate(SPLITS):
        for sub in ("images", "labels"):
            (out_dir / sub / split).mkdir(parents=True)
        for index in range(counts[split]):
            pixels, objects = render_photo_image((seed, split_number, index), params)
            Image.fromarray(pixels).save(out_dir / "images" / split / f"{index:06d}.jpg", quality=JPEG_QUALITY)
            lines = [label_line(cls, box, img_size) for cls, box in objects]
            (out_dir / "labels" / split / f"{index:06d}.txt").write_text("".join(lines))

    spec = {
        "path": str(out_dir),
        **{split: f"images/{split}" for split in SPLITS if counts[split]},
        "nc": len(CLASSES),
        "names": list(CLASSES),
        "generator": {
            "name": "yololab.data.photo",
            "backgrounds": [f"sklearn/datasets/images/{name}" for name in PHOTOS],
            "seed": seed,
            "img_size": img_size,
            "n_images": counts,
            "objects_per_image": list(params.objects_per_image),
            "size_range": list(params.size_range),
            "max_iou": max_iou,
            "min_visible": min_visible,
            "max_placement_tries": MAX_PLACEMENT_TRIES,
            "shadow": shadow,
            "blur": blur,
            "noise": noise,
            "jpeg_quality": JPEG_QUALITY,
            "image_seed": "numpy.random.default_rng([seed, split_number, index, part]); train=0 val=1 test=2; "
                          "part background=0 scene=1 finish=2, object i=[3, i]",
        },
        SIZE_BINS_KEY: size_bins(img_size).to_yaml(),
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def size_bins(img_size: int) -> SizeBins:
    """``SIZE_BIN_SIDES`` as evaluation bins: box areas ``[(lo * img_size)², (hi * img_size)²]`` in pixels²."""
    return SizeBins(img_size, {name: (float(round(lo * img_size) ** 2), float(round(hi * img_size) ** 2))
                               for name, (lo, hi) in SIZE_BIN_SIDES.items()})


def _check(p: PhotoParams, counts: dict[str, int]) -> None:
    if counts["train"] < 1 or min(counts.values()) < 0:
        raise ValueError(f"need n_train >= 1 and n_val, n_test >= 0, got {counts}")
    if p.img_size < MIN_IMG_SIZE:
        raise ValueError(f"img_size must be >= {MIN_IMG_SIZE}, got {p.img_size}")
    low, high = p.objects_per_image
    if not 0 <= low <= high:
        raise ValueError(f"objects_per_image must be (min, max), 0 <= min <= max: {p.objects_per_image}")
    if not 0 < p.size_range[0] <= p.size_range[1] <= 1:
        raise ValueError(f"size_range must be (lo, hi) with 0 < lo <= hi <= 1: {p.size_range}")
    for name in ("max_iou", "min_visible", "shadow", "blur", "noise"):
        if not 0 <= getattr(p, name) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(p, name)}")


def _rng(key: Sequence[int], *part: int) -> np.random.Generator:
    return np.random.default_rng([*key, *part])


def render_photo_image(key: Sequence[int], params: PhotoParams) -> tuple[np.ndarray, list[tuple[int, Box]]]:
    """One uint8 ``[S, S, 3]`` RGB image and its objects as ``[(class, (x1, y1, x2, y2))]``.

    ``key`` is ``(seed, split_number, index)``. Boxes are in pixels with exclusive right/bottom edges: the
    tight box of the object's visible pixels (see the module docstring).
    """
    size = params.img_size
    canvas = _background(_rng(key, BACKGROUND_PART), size)
    scene = _rng(key, SCENE_PART)
    count = int(scene.integers(params.objects_per_image[0], params.objects_per_image[1] + 1))
    light = _light(scene)
    classes: list[int] = []
    boxes: list[Box] = []  # of the whole drawn mask, for the overlap test
    visible: list[np.ndarray] = []  # bool [S, S] per object: its pixels no later object covers
    n_drawn: list[int] = []
    for i in range(count):
        rng = _rng(key, OBJECT_PART, i)
        cls = int(rng.integers(len(CLASSES)))
        side = min(rng.uniform(*params.size_range) * size, size - 2 * PAD - 1)
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*SATURATION_RANGE),
                                              rng.uniform(*VALUE_RANGE)), dtype=np.float32)
        alpha, premultiplied = _sprite(CLASSES[cls], side, colour, light, rng)
        mask, touched = alpha >= DRAWN, alpha > 0
        spot = _place(mask, touched, boxes, visible, n_drawn, rng, params)
        if spot is None:
            continue
        ox, oy = spot
        patch = np.s_[oy:oy + mask.shape[0], ox:ox + mask.shape[1]]
        if params.shadow > 0:
            _drop_shadow(canvas, alpha, ox, oy, light, side, params.shadow * rng.uniform(*SHADOW_JITTER))
        canvas[patch] = canvas[patch] * (1 - alpha[:, :, None]) + premultiplied
        for other in visible:
            other[patch] &= ~touched
        own = np.zeros((size, size), dtype=bool)
        own[patch] = mask
        rows, cols = np.nonzero(mask)
        classes.append(cls)
        boxes.append((ox + int(cols.min()), oy + int(rows.min()), ox + int(cols.max()) + 1, oy + int(rows.max()) + 1))
        visible.append(own)
        n_drawn.append(len(rows))
    pixels = _finish(canvas, _rng(key, FINISH_PART), params)
    return pixels, [(cls, _tight_box(own)) for cls, own in zip(classes, visible, strict=True)]


def _tight_box(mask: np.ndarray) -> Box:
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _place(mask: np.ndarray, touched: np.ndarray, boxes: list[Box], visible: list[np.ndarray],
           n_drawn: list[int], rng: np.random.Generator, params: PhotoParams) -> tuple[int, int] | None:
    """Top-left corner of the object's patch (its pixels ``mask``, those it changes ``touched``), or None when
    every try breaks the overlap rules."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    height, width = mask.shape
    for _ in range(MAX_PLACEMENT_TRIES):
        ox = int(rng.integers(0, params.img_size - width + 1))
        oy = int(rng.integers(0, params.img_size - height + 1))
        box = (ox + int(cols.min()), oy + int(rows.min()), ox + int(cols.max()) + 1, oy + int(rows.max()) + 1)
        if any(pair_iou(box, other) > params.max_iou for other in boxes):
            continue
        hidden = [np.count_nonzero(v[oy:oy + height, ox:ox + width] & touched) for v in visible]
        kept = [np.count_nonzero(v) - h for v, h in zip(visible, hidden, strict=True)]
        # At least one pixel stays visible even with min_visible 0: no box for an invisible object.
        if all(k >= max(params.min_visible * n, 1) for k, n in zip(kept, n_drawn, strict=True)):
            return ox, oy
    return None


# ------------------------------------------------------------------------------------------ background
@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """The scikit-learn sample photographs as read-only uint8 ``[H, W, 3]`` (found without importing sklearn)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the photo generator needs scikit-learn's sample images: pip install scikit-learn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    photos = []
    for name in PHOTOS:
        with Image.open(folder / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        pixels.flags.writeable = False
        photos.append(pixels)
    return tuple(photos)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A jittered crop of a sample photograph blended with a smooth colour texture -> float32 [S, S, 3] in 0..1."""
    photo = _photos()[rng.integers(len(PHOTOS))]
    height, width, _ = photo.shape
    crop = round(rng.uniform(*CROP_RANGE) * min(height, width))
    y0, x0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    image = Image.fromarray(photo[y0:y0 + crop, x0:x0 + crop]).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    turns = int(rng.integers(4))
    if turns:
        image = image.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                 Image.Transpose.ROTATE_270)[turns - 1])
    cells = int(rng.integers(TEXTURE_CELLS[0], TEXTURE_CELLS[1] + 1))
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    texture = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    image = Image.blend(image, texture, rng.uniform(*TEXTURE_WEIGHT))

    # Saturation, white balance, contrast and brightness are linear in the pixels: one 3x3 matrix and an offset,
    # applied by PIL (numpy's matrix product is slow when the BLAS threads compete with other work).
    saturation, gain = rng.uniform(*BACKGROUND_SATURATION), rng.uniform(*CHANNEL_GAIN, size=3)
    contrast, brightness = rng.uniform(*CONTRAST), rng.uniform(*BRIGHTNESS)
    saturate = saturation * np.eye(3) + (1 - saturation) / 3  # grey + saturation * (pixel - grey)
    balanced = gain[:, None] * saturate
    mean = float((balanced * np.array(ImageStat.Stat(image).mean)).sum(axis=1).mean())  # the contrast pivot
    matrix = brightness * contrast * balanced
    offset = brightness * (1 - contrast) * mean
    image = image.convert("RGB", matrix=tuple(np.concatenate([matrix, np.full((3, 1), offset)], axis=1).ravel()))
    return np.asarray(image, dtype=np.float32) / 255


def _light(rng: np.random.Generator) -> np.ndarray:
    """Unit vector to the image's light (x right, y down, z to the viewer)."""
    azimuth, elevation = (math.radians(rng.uniform(*r)) for r in (LIGHT_AZIMUTH_DEG, LIGHT_ELEVATION_DEG))
    return np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                     math.sin(elevation)], dtype=np.float32)


def _finish(canvas: np.ndarray, rng: np.random.Generator, params: PhotoParams) -> np.ndarray:
    """Mild blur and sensor noise on some images -> uint8 [S, S, 3]. Draws the same numbers whatever the scene."""
    blurred, radius = rng.random() < params.blur, rng.uniform(*BLUR_RADIUS)
    noisy, sigma = rng.random() < params.noise, rng.uniform(*NOISE_SIGMA)
    pixels = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    if blurred:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
    if noisy:
        noise = rng.standard_normal(size=pixels.shape, dtype=np.float32) * (sigma * 255)
        pixels = np.round(np.clip(pixels + noise, 0, 255)).astype(np.uint8)
    return pixels


def _drop_shadow(canvas: np.ndarray, alpha: np.ndarray, ox: int, oy: int, light: np.ndarray, side: float,
                 opacity: float) -> None:
    """Darken the canvas under the object's silhouette shifted away from the light and blurred."""
    direction = -light[:2] / max(float(np.hypot(*light[:2])), 1e-6)
    dx, dy = (round(v) for v in direction * SHADOW_SHIFT * side)
    radius = SHADOW_SOFTNESS * side
    margin = math.ceil(3 * radius) + 1
    height, width = alpha.shape
    padded = np.zeros((height + 2 * margin, width + 2 * margin), dtype=np.uint8)
    padded[margin:margin + height, margin:margin + width] = np.round(alpha * 255).astype(np.uint8)
    soft = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255
    top, left = oy + dy - margin, ox + dx - margin
    size = canvas.shape[0]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + soft.shape[0], size), min(left + soft.shape[1], size)
    if y0 < y1 and x0 < x1:
        shade = 1 - opacity * soft[y0 - top:y1 - top, x0 - left:x1 - left]
        canvas[y0:y1, x0:x1] *= shade[:, :, None]


# ------------------------------------------------------------------------------------------ objects
def _sprite(shape: str, side: float, colour: np.ndarray, light: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One lit object whose longer side is ``side`` pixels -> (coverage [P, P], premultiplied RGB [P, P, 3])."""
    layers = _SHAPES[shape](rng)
    points = np.concatenate([p for layer in layers for p, _ in layer.polygons])
    low, high = points.min(axis=0), points.max(axis=0)
    scale = side / float((high - low).max())
    centre = (low + high) / 2
    n = math.ceil(side) + 2 * PAD
    grid = (np.arange(n, dtype=np.float32) + 0.5 - n / 2) / scale  # pixel centres in the shape's frame
    x, y = np.meshgrid(grid + centre[0], grid + centre[1])
    halfway = light + np.array([0, 0, 1], dtype=np.float32)
    halfway /= np.linalg.norm(halfway)
    alpha = np.zeros((n, n), dtype=np.float32)
    premultiplied = np.zeros((n, n, 3), dtype=np.float32)
    for layer in layers:
        coverage = _coverage([((p - centre) * scale + n / 2, fill) for p, fill in layer.polygons], n)
        normal = layer.normal(x, y)
        shade = AMBIENT + DIFFUSE * np.clip(_dot(normal, light), 0, None)
        highlight = SPECULAR[shape] * np.clip(_dot(normal, halfway), 0, None) ** SHININESS
        premultiplied += coverage[:, :, None] * (colour * shade[:, :, None] + highlight[:, :, None])
        alpha += coverage
    return np.clip(alpha, 0, 1), premultiplied


def _dot(normals: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``normals [..., 3] . v [3]`` element-wise: no BLAS call, whose threads crawl on a busy machine."""
    return normals[..., 0] * v[0] + normals[..., 1] * v[1] + normals[..., 2] * v[2]


def _coverage(polygons: list[tuple[np.ndarray, bool]], n: int) -> np.ndarray:
    """Share of each pixel of an ``n x n`` patch inside the polygons (pixel units) -> float32 [n, n]."""
    image = Image.new("L", (n * SUPERSAMPLE, n * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(image)
    for points, fill in polygons:
        draw.polygon([tuple(p) for p in (points * SUPERSAMPLE).tolist()], fill=255 if fill else 0)
    return np.asarray(image.resize((n, n), Image.Resampling.BOX), dtype=np.float32) / 255


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _ellipse(rx: float, ry: float, start: float = 0.0, stop: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, POLYGON_VERTICES)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _unit(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    normal = np.stack([x, y, z], axis=-1).astype(np.float32)
    return normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)


def _rolled(layer: _Layer, angle: float) -> _Layer:
    """``layer`` turned by ``angle`` in the image plane: its polygons and its normals."""
    turn = _rotation(angle)

    def normal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = layer.normal(turn[0, 0] * x + turn[1, 0] * y, turn[0, 1] * x + turn[1, 1] * y)  # frame -> own
        return np.stack([turn[0, 0] * n[..., 0] + turn[0, 1] * n[..., 1],
                         turn[1, 0] * n[..., 0] + turn[1, 1] * n[..., 1], n[..., 2]], axis=-1)

    return _Layer([(p @ turn.T, fill) for p, fill in layer.polygons], normal)


def _tilted(normal: np.ndarray, sin_pitch: float) -> np.ndarray:
    """Normals of an object seen from ``asin(sin_pitch)`` above: its up (-y) turns towards the viewer."""
    cos_pitch = math.sqrt(1 - sin_pitch**2)
    ny, nz = normal[..., 1], normal[..., 2]
    return np.stack([normal[..., 0], ny * cos_pitch + nz * sin_pitch, nz * cos_pitch - ny * sin_pitch], axis=-1)


def _ball(rng: np.random.Generator) -> list[_Layer]:
    """A sphere of radius 1."""

    def normal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _unit(x, y, np.sqrt(np.clip(1 - x**2 - y**2, 0, None)))

    return [_Layer([(_ellipse(1, 1), True)], normal)]


def _ring(rng: np.random.Generator) -> list[_Layer]:
    """A ring of outer radius 1 lying tilted away from the viewer (an ellipse with an elliptic hole), shaded
    as a round tube, turned by a random angle."""
    hole, squash = rng.uniform(*RING_HOLE), rng.uniform(*RING_SQUASH)
    middle, half_width = (1 + hole) / 2, (1 - hole) / 2
    sin_pitch = math.sqrt(1 - squash**2)

    def normal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        b = y / squash  # back to the ring's own plane
        radius = np.maximum(np.hypot(x, b), 1e-6)
        across = np.clip((radius - middle) / half_width, -1, 1)  # -1 inner edge .. 1 outer edge of the tube
        flat = _unit(x / radius * across, b / radius * across, np.sqrt(1 - across**2))
        # The ring's axis (z in its plane) turns up and towards the viewer, as a ring lying on the ground.
        return np.stack([flat[..., 0], flat[..., 1] * squash - flat[..., 2] * sin_pitch,
                         flat[..., 1] * sin_pitch + flat[..., 2] * squash], axis=-1)

    layer = _Layer([(_ellipse(1, squash), True), (_ellipse(hole, hole * squash), False)], normal)
    return [_rolled(layer, rng.uniform(0, math.pi))]


def _cone(rng: np.random.Generator) -> list[_Layer]:
    """An upright cone of base radius 1, seen from a little above, leaning by a random angle."""
    height, squash = rng.uniform(*CONE_HEIGHT), rng.uniform(*CONE_SQUASH)
    # The sides touch the base ellipse (cos t, squash sin t) where sin t = -squash / height.
    tangent = math.asin(-squash / height)
    outline = np.concatenate([[[0.0, -height]], _ellipse(1, squash, tangent, math.pi - tangent)])
    slope = math.atan2(1, height)  # the surface's angle from the axis

    def normal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        radius = np.clip((y + height) / height, 1e-3, 1)  # the cone's radius at this height
        across = np.clip(x / radius, -1, 1)
        upright = _unit(across * math.cos(slope), np.full_like(x, -math.sin(slope)),
                        np.sqrt(1 - across**2) * math.cos(slope))
        return _tilted(upright, squash)

    return [_rolled(_Layer([(outline, True)], normal), math.radians(rng.uniform(-CONE_ROLL_DEG, CONE_ROLL_DEG)))]


def _box(rng: np.random.Generator) -> list[_Layer]:
    """A cuboid turned about its vertical axis and seen from a little above: its two or three visible faces,
    each a flat-shaded polygon, the whole rolled by a small angle."""
    half = rng.uniform(*BOX_SIDES, size=3) / 2
    yaw = rng.uniform(0, math.pi / 2)
    sin_pitch = math.sin(math.radians(rng.uniform(*BOX_PITCH_DEG)))
    roll = math.radians(rng.uniform(-BOX_ROLL_DEG, BOX_ROLL_DEG))
    turn = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])

    def view(v: np.ndarray) -> np.ndarray:  # [..., 3] object frame -> camera frame
        return _tilted(v @ turn.T, sin_pitch)

    layers = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            face_normal = view(np.eye(3)[axis] * sign)
            if face_normal[2] <= 0:  # faces away from the viewer
                continue
            others = [a for a in range(3) if a != axis]
            corners = np.zeros((4, 3))
            corners[:, axis] = sign * half[axis]
            corners[:, others[0]] = half[others[0]] * np.array([-1, -1, 1, 1])
            corners[:, others[1]] = half[others[1]] * np.array([-1, 1, 1, -1])
            outline = view(corners)[:, :2]
            layers.append(_rolled(_Layer([(outline, True)], _flat(face_normal)), roll))
    return layers


def _flat(normal: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda x, y: np.broadcast_to(normal.astype(np.float32), (*x.shape, 3))


_SHAPES: dict[str, Callable[[np.random.Generator], list[_Layer]]] = {
    "ball": _ball, "box": _box, "cone": _cone, "ring": _ring}  # one per name in CLASSES
