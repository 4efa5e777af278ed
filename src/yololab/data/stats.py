"""What a dataset holds: objects per image and per class, box and image sizes in pixels and, for sparse
images (detector images, digits on black), the fraction of pixels that are non-zero, as a JSON-ready dict and
as PNG plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from yololab.data.errors import DataError
from yololab.data.yolo_format import label_path, load_data_yaml, read_label_file

# Modes whose pixels numpy reads as one number each, zero meaning no signal. Any other mode is made RGB
# first: a palette index or a YCbCr triple of 0 need not be black.
PLAIN_GREY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "F"})
PX_DECIMALS = 3  # box sizes in pixels are kept to a thousandth of a pixel
WH_BINS = 40  # bins per axis of the box width/height histogram (log-spaced)
FIGURE_SIZE = (6.4, 4.8)  # inches, matplotlib's default
DPI = 100
PLOT_FILES = ("objects_per_image.png", "per_class.png", "box_wh.png", "nonzero_fraction.png")
SPARSITY_PLOT = PLOT_FILES[-1]  # drawn for sparse images only
# Images are sparse when in the median image at most this share of the pixels is non-zero: most of the image is
# empty background, and the share tells how much signal there is. In a photo nearly every pixel is non-zero
# (0.99 and more), so the share says nothing there and is not reported.
SPARSE_NONZERO_MAX = 0.5


def nonzero_fraction(path: str | Path) -> float:
    """Fraction of the image's pixels that are non-zero in any channel (alpha ignored)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "LA":
                image = image.convert("L")
            elif image.mode not in PLAIN_GREY_MODES:
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(path, None, f"cannot decode image: {err}") from err
    signal = pixels != 0
    if signal.ndim == 3:
        signal = signal.any(axis=2)
    return float(signal.mean())


def dataset_stats(data_yaml: str | Path, split: str | None = None) -> dict:
    """Statistics of one split of a dataset, or of all its splits together (an image listed in several
    splits counts once).

    Labels are read strictly: a bad label line raises :class:`DataError` (run ``yololab data check``
    first). Every image is decoded to count its non-zero pixels.

    Returns a JSON-ready dict:
        ``n_images``, ``n_objects``, ``n_backgrounds`` (images without objects), ``names``;
        ``objects_per_image``: ``mean``, ``max`` and ``histogram`` ``{"k": images with k objects}``;
        ``per_class``: ``{name: objects}``;
        ``box_width_px`` / ``box_height_px`` / ``nonzero_fraction``: ``min, median, mean, max`` (``None``
        without values); ``nonzero_fraction`` is the image sparsity (fraction of non-zero pixels);
        ``sparse``: whether the images are sparse (median ``nonzero_fraction`` at most ``SPARSE_NONZERO_MAX``);
        ``image_sizes``: ``{"WxH": images}``, most frequent first; ``image_width_px`` / ``image_height_px``:
        ``min, median, mean, max`` over the images;
        ``per_image``: lists ``path``, ``objects``, ``nonzero_fraction``;
        ``per_box``: lists ``class``, ``width_px``, ``height_px`` (normalised label sizes times the
        image's width and height).
    """
    spec = load_data_yaml(data_yaml)
    if split is not None and split not in spec.splits:
        raise DataError(spec.yaml_path, None, f"no split {split!r}; it has {list(spec.splits)}")
    splits = [split] if split is not None else list(spec.splits)
    images = list(dict.fromkeys(p for s in splits for p in spec.splits[s]))

    objects, fractions, sizes, widths, heights = [], [], [], [], []
    box_class, box_w, box_h = [], [], []
    for image in images:
        labels = read_label_file(label_path(image), spec.num_classes)
        with Image.open(image) as opened:
            width, height = opened.size
        objects.append(len(labels))
        fractions.append(nonzero_fraction(image))
        sizes.append(f"{width}x{height}")
        widths.append(width)
        heights.append(height)
        box_class += labels[:, 0].astype(int).tolist()
        # float32 labels carry ~1e-5 px of rounding at these sizes: keep 3 decimals.
        box_w += np.round(labels[:, 3].astype(np.float64) * width, PX_DECIMALS).tolist()
        box_h += np.round(labels[:, 4].astype(np.float64) * height, PX_DECIMALS).tolist()

    per_count = Counter(objects)
    per_class = Counter(box_class)
    return {
        "data": str(spec.yaml_path),
        "splits": splits,
        "names": spec.names,
        "n_images": len(images),
        "n_objects": len(box_class),
        "n_backgrounds": per_count.get(0, 0),
        "objects_per_image": {
            "mean": float(np.mean(objects)) if objects else None,
            "max": max(objects, default=None),
            "histogram": {str(k): per_count[k] for k in sorted(per_count)},
        },
        "per_class": {name: per_class.get(i, 0) for i, name in enumerate(spec.names)},
        "box_width_px": _summary(box_w),
        "box_height_px": _summary(box_h),
        "nonzero_fraction": _summary(fractions),
        "sparse": bool(fractions) and float(np.median(fractions)) <= SPARSE_NONZERO_MAX,
        "image_sizes": dict(Counter(sorted(sizes)).most_common()),
        "image_width_px": _summary(widths),
        "image_height_px": _summary(heights),
        "per_image": {"path": [str(p) for p in images], "objects": objects, "nonzero_fraction": fractions},
        "per_box": {"class": box_class, "width_px": box_w, "height_px": box_h},
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "median": float(np.median(array)), "mean": float(array.mean()),
            "max": float(array.max())}


def plot_stats(stats: dict, out_dir: str | Path) -> list[Path]:
    """Write the plots of :func:`dataset_stats`' result to ``out_dir``; returns their paths.

    ``objects_per_image.png`` (images per object count), ``per_class.png`` (objects per class),
    ``box_wh.png`` (2-D histogram of box width x height in pixels, log-spaced bins: sizes span two orders
    of magnitude on sparse detector images) and, for sparse images only, ``nonzero_fraction.png`` (images per
    fraction of non-zero pixels).
    """
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{Path(stats['data']).parent.name} [{', '.join(stats['splits'])}]"
    painters = (_plot_objects_per_image, _plot_per_class, _plot_box_wh, _plot_nonzero_fraction)
    paths = []
    for name, paint in zip(PLOT_FILES, painters, strict=True):
        if name == SPARSITY_PLOT and not stats["sparse"]:
            continue
        # Figure without pyplot: no global state, no GUI backend, safe in worker threads.
        figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
        axes = figure.add_subplot()
        paint(axes, stats)
        axes.set_title(f"{title}: {axes.get_title()}")
        figure.savefig(out_dir / name)
        paths.append(out_dir / name)
    return paths


def _plot_objects_per_image(axes, stats: dict) -> None:
    histogram = stats["objects_per_image"]["histogram"]
    axes.bar([int(k) for k in histogram], list(histogram.values()))
    axes.set(xlabel="objects in the image", ylabel="images", title="objects per image")


def _plot_per_class(axes, stats: dict) -> None:
    axes.bar(range(len(stats["per_class"])), list(stats["per_class"].values()))
    axes.set_xticks(range(len(stats["per_class"])), list(stats["per_class"]), rotation=45, ha="right")
    axes.set(ylabel="objects", title="objects per class")


def _plot_box_wh(axes, stats: dict) -> None:
    from matplotlib.colors import LogNorm

    width, height = (np.asarray(stats["per_box"][k], dtype=np.float64) for k in ("width_px", "height_px"))
    axes.set(xlabel="box width (px)", ylabel="box height (px)", title="box sizes")
    if len(width) == 0:
        axes.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=axes.transAxes)
        return
    low, high = min(width.min(), height.min()), max(width.max(), height.max())
    bins = np.geomspace(low * 0.9, high * 1.1, WH_BINS + 1)  # margins keep the extremes inside the bins
    *_, image = axes.hist2d(width, height, bins=[bins, bins], norm=LogNorm(), cmap="viridis")
    axes.set(xscale="log", yscale="log")
    axes.figure.colorbar(image, ax=axes, label="boxes")


def _plot_nonzero_fraction(axes, stats: dict) -> None:
    axes.hist(stats["per_image"]["nonzero_fraction"], bins="auto")
    axes.set(xlabel="fraction of non-zero pixels", ylabel="images", title="image sparsity")
