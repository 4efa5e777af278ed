"""Augmentation: boxes checked against the boxes of masks transformed with the image, the drop rule,
identity, determinism, grey images, mosaic, DataLoader workers and the preview command."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from PIL import Image
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset
from typer.testing import CliRunner

from yololab.commands.preview import class_colour, preview_command, preview_grid
from yololab.data import make_digits
from yololab.data.augment import AugmentConfig, build_transform

H, W = 96, 128  # not square, so a swapped x / y shows
N_BOXES = 4
BOX_SIDE = (8, 40)  # pixel side range of the random boxes
GAP = 1  # pixels kept free around each box, so every box's mask is its own
N_ROUNDS = 60  # random images per check
BOX_TOL = 1.0  # px: box vs bounding box of its transformed mask (nearest-neighbour mask warps)
SHARE_TOL = 1e-3  # visible shares this close to min_visibility are not judged
NO_GEOMETRY = {"fliplr": 0.0, "flipud": 0.0, "scale": 0.0, "translate": 0.0, "degrees": 0.0}
NO_COLOUR = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}


def only(**fields) -> AugmentConfig:
    """A config that does nothing but ``fields``."""
    return AugmentConfig(**{**NO_GEOMETRY, **NO_COLOUR, **fields})


def random_sample(rng, channels=3, n_boxes=N_BOXES):
    """Image [H, W, C], pixel-aligned non-touching boxes [n, 4] cxcywh normalised, masks [n, H, W] uint8."""
    taken = np.zeros((H, W), dtype=bool)
    boxes, masks = [], []
    while len(boxes) < n_boxes:
        w, h = (int(v) for v in rng.integers(*BOX_SIDE, size=2))
        x1, y1 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if taken[max(y1 - GAP, 0):y1 + h + GAP, max(x1 - GAP, 0):x1 + w + GAP].any():
            continue
        taken[y1:y1 + h, x1:x1 + w] = True
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[y1:y1 + h, x1:x1 + w] = 1
        masks.append(mask)
        boxes.append([(x1 + w / 2) / W, (y1 + h / 2) / H, w / W, h / H])
    image = rng.integers(0, 256, (H, W, channels), dtype=np.uint8)
    return image, np.array(boxes, dtype=np.float32), np.stack(masks)


def pixels_xyxy(box, width=W, height=H):
    cx, cy, w, h = (float(v) for v in box)
    return np.array([(cx - w / 2) * width, (cy - h / 2) * height,
                     (cx + w / 2) * width, (cy + h / 2) * height])


def mask_xyxy(mask):
    """Bounding box of a mask's pixels; pixel (r, c) covers [c, c + 1) x [r, r + 1)."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def augmented_pairs(cfg, channels, seed, rounds=N_ROUNDS):
    """Yield (box [4] px, mask [H, W], original mask) for every surviving box, plus the dropped originals."""
    transform = build_transform(cfg, channels, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        image, boxes, masks = random_sample(rng, channels)
        # Distinct, shuffled class ids: each surviving class names the mask its box must match.
        classes = rng.permutation(10)[:len(boxes)].astype(np.float32)
        before = image.copy(), boxes.copy(), classes.copy()
        out_image, out_boxes, out_classes, out_masks = transform.apply(image, boxes, classes, masks)
        for array, copy in zip((image, boxes, classes), before, strict=True):
            np.testing.assert_array_equal(array, copy)  # the inputs (dataset labels) are not modified
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_boxes.dtype == np.float32 and out_boxes.shape == (len(out_classes), 4)
        assert len(set(out_classes.tolist())) == len(out_classes)  # no box doubled
        yield classes, masks, out_boxes, out_classes, out_masks


# --- config --------------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    cfg = AugmentConfig()
    # ultralytics' default hyp values, mosaic off for now.
    assert (cfg.fliplr, cfg.flipud, cfg.scale, cfg.translate, cfg.degrees) == (0.5, 0.0, 0.5, 0.1, 0.0)
    assert (cfg.hsv_h, cfg.hsv_s, cfg.hsv_v) == (0.015, 0.7, 0.4)
    assert (cfg.mosaic, cfg.min_visibility, cfg.min_size) == (0.0, 0.3, 2.0)
    with pytest.raises(ValidationError):
        AugmentConfig(flip=0.5)
    with pytest.raises(ValidationError):
        AugmentConfig(fliplr=1.5)
    with pytest.raises(ValidationError):
        AugmentConfig(scale=1.0)  # a gain of 1 - 1 = 0 would erase the image


# --- hand-worked geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["fliplr", "flipud"])
def test_certain_flip_hand_worked(axis):
    cfg = only(**{axis: 1.0})
    image, boxes, _ = random_sample(np.random.default_rng(1))
    classes = np.arange(len(boxes), dtype=np.float32)
    out, out_boxes, out_classes = build_transform(cfg, 3, seed=0)(image, boxes, classes)
    expected = boxes.copy()
    if axis == "fliplr":
        np.testing.assert_array_equal(out, image[:, ::-1])
        expected[:, 0] = 1 - boxes[:, 0]  # cx -> 1 - cx, the rest unchanged
    else:
        np.testing.assert_array_equal(out, image[::-1])
        expected[:, 1] = 1 - boxes[:, 1]
    np.testing.assert_allclose(out_boxes, expected, atol=1e-6)
    np.testing.assert_array_equal(out_classes, classes)


# --- boxes against transformed masks -------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_boxes_match_their_transformed_masks(channels):
    # Flips, scale and translation without rotation: an axis-aligned box stays axis-aligned, so the box
    # must be the bounding box of its mask (clipped to the image) within a pixel.
    cfg = AugmentConfig(fliplr=0.5, flipud=0.5, scale=0.5, translate=0.3)
    checked = 0
    for classes, _, out_boxes, out_classes, out_masks in augmented_pairs(cfg, channels, seed=channels):
        for box, cls in zip(out_boxes, out_classes, strict=True):
            (k,) = np.flatnonzero(classes == cls)  # classes stay with their own box
            np.testing.assert_allclose(pixels_xyxy(box), mask_xyxy(out_masks[k]), atol=BOX_TOL)
            checked += 1
    assert checked > N_ROUNDS * N_BOXES // 2  # most boxes survive, so the check is not vacuous


def test_rotated_boxes_enclose_their_masks():
    # With rotation albumentations keeps the box of the rotated corners ("largest_box"). For a filled
    # rectangle that is also the box of its rotated pixels, unless the image edge clips the rotated
    # rectangle: then the clipped corner box can be larger than the visible pixels. So: the mask lies
    # inside the box always, and equals it within a pixel when the box does not touch the image edge.
    cfg = AugmentConfig(fliplr=0.5, scale=0.3, translate=0.2, degrees=10, min_visibility=0.0)
    inside = exact = 0
    for classes, _, out_boxes, out_classes, out_masks in augmented_pairs(cfg, 3, seed=5):
        for box, cls in zip(out_boxes, out_classes, strict=True):
            (k,) = np.flatnonzero(classes == cls)
            if not out_masks[k].any():
                continue  # a corner of a rotated box can stay in view while its pixels do not
            got, want = pixels_xyxy(box), mask_xyxy(out_masks[k])
            assert (want[:2] >= got[:2] - BOX_TOL).all() and (want[2:] <= got[2:] + BOX_TOL).all()
            inside += 1
            if got[0] > 1 and got[1] > 1 and got[2] < W - 1 and got[3] < H - 1:
                np.testing.assert_allclose(got, want, atol=BOX_TOL)
                exact += 1
    assert inside > 100 and exact > 50


def test_boxes_dropped_exactly_by_the_stated_rule():
    # Integer translations and flips keep every area, so a box's visible share is its visible mask
    # pixels over its original mask pixels, counted independently of the boxes.
    min_visibility, min_size = 0.3, 3.0
    cfg = only(fliplr=0.5, flipud=0.5, translate=0.5, min_visibility=min_visibility, min_size=min_size)
    kept = dropped = judged = 0
    for classes, masks, _, out_classes, out_masks in augmented_pairs(cfg, 3, seed=7, rounds=2 * N_ROUNDS):
        for k, cls in enumerate(classes):
            visible = out_masks[k]
            share = visible.sum() / masks[k].sum()
            if abs(share - min_visibility) < SHARE_TOL:
                continue
            judged += 1
            width, height = (mask_xyxy(visible)[2:] - mask_xyxy(visible)[:2]) if visible.any() else (0, 0)
            should_keep = share >= min_visibility and width >= min_size and height >= min_size
            assert (cls in out_classes) == should_keep, (share, width, height)
            kept += should_keep
            dropped += not should_keep
    assert kept > 100 and dropped > 50 and judged == kept + dropped


# --- identity, determinism, grey -----------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [only(), AugmentConfig(enabled=False)])
def test_nothing_to_do_is_the_identity(cfg):
    image, boxes, _ = random_sample(np.random.default_rng(2))
    classes = np.array([3, 1, 4, 1], dtype=np.float32)
    out, out_boxes, out_classes = build_transform(cfg, 3, seed=0)(image, boxes, classes)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert out.tobytes() == image.tobytes()
    np.testing.assert_allclose(out_boxes, boxes, atol=1e-6)
    np.testing.assert_array_equal(out_classes, classes)


def run_seeded(seed, n=8):
    transform = build_transform(AugmentConfig(degrees=5), 3, seed=seed)
    rng = np.random.default_rng(0)  # the same inputs for every seed
    outputs = []
    for _ in range(n):
        image, boxes, _ = random_sample(rng)
        outputs.append(transform(image, boxes, np.arange(len(boxes))))
    return outputs


def test_same_seed_same_augmentations():
    first, second, other = run_seeded(3), run_seeded(3), run_seeded(4)
    for (a_image, a_boxes, a_cls), (b_image, b_boxes, b_cls) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_boxes, b_boxes)
        np.testing.assert_array_equal(a_cls, b_cls)
    assert any(not np.array_equal(a[0], c[0]) for a, c in zip(first, other, strict=True))


def flips_seen(transform, n=200):
    """(left-right flipped, up-down flipped) per call, read off one off-centre box."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    box = np.array([[0.25, 0.25, 0.1, 0.1]], dtype=np.float32)
    flips = [transform(image, box, np.zeros(1))[1][0, :2] > 0.5 for _ in range(n)]
    return np.array(flips)


def test_flip_draws_are_independent():
    # albumentations' Compose(seed=s) seeds every step with the same s, which makes two flips of equal
    # probability fire together every time; the transform shares one generator instead.
    cfg = only(fliplr=0.5, flipud=0.5)
    flips = flips_seen(build_transform(cfg, 3, seed=11))
    both = (flips[:, 0] & flips[:, 1]).mean()
    assert 0.35 < flips.mean(axis=0).min() and flips.mean(axis=0).max() < 0.65
    assert 0.15 < both < 0.35  # independent halves: 0.25; tied draws would give 0.5


def test_grey_images_keep_one_channel_and_brightness_is_one_gain():
    cfg = only(hsv_v=0.4, hsv_h=0.5, hsv_s=0.9)
    transform = build_transform(cfg, 1, seed=0)
    image = np.tile(np.arange(40, 140, dtype=np.uint8)[None, :, None], (H, 1, 1))  # a grey ramp
    for _ in range(10):
        out, _, _ = transform(image, np.zeros((0, 4)), np.zeros(0))
        assert out.shape == image.shape and out.dtype == np.uint8
        gain = out.astype(np.float64) / image
        # Hue and saturation mean nothing on grey: only a brightness gain in 1 ± 0.4 remains.
        assert 0.6 - 0.01 <= gain.mean() <= 1.4 + 0.01
        np.testing.assert_allclose(gain, gain.mean(), atol=1 / 40)  # one gain up to uint8 rounding


def test_bad_inputs_are_refused():
    transform = build_transform(AugmentConfig(), 3, seed=0)
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        transform(np.zeros((8, 8, 1), dtype=np.uint8), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        transform(np.zeros((8, 8, 3), dtype=np.uint8), np.full((2, 4), 0.5), np.zeros(1))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        build_transform(AugmentConfig(), 2)


# --- mosaic --------------------------------------------------------------------------------------------


def labelled_sample(rng, first_value):
    """Grey image whose box k is filled with the value first_value + k (background 0); class = value."""
    _, boxes, masks = random_sample(rng, channels=1, n_boxes=3)
    values = first_value + np.arange(len(boxes))
    image = (masks * values[:, None, None]).sum(axis=0).astype(np.uint8)[:, :, None]
    return image, boxes, values.astype(np.float32)


def test_mosaic_boxes_are_the_boxes_of_their_pixels():
    rng = np.random.default_rng(9)
    cfg = only(mosaic=1.0)
    for round_ in range(10):
        # Four images with distinct box values (1..12, never the padding grey 114); the sampler hands
        # out the three others in turn, ignoring the generator it is given.
        samples = [labelled_sample(rng, 1 + 3 * i) for i in range(4)]
        others = iter(samples[1:])
        transform = build_transform(cfg, 1, seed=round_, sampler=lambda _rng, others=others: next(others))
        out, out_boxes, out_classes = transform(*samples[0])
        assert out.shape == samples[0][0].shape
        found = dict(zip(out_classes.tolist(), out_boxes, strict=True))
        for value in range(1, 13):
            region = out[:, :, 0] == value
            if not region.any():
                assert value not in found
                continue
            want = mask_xyxy(region)
            # Inside the mosaic only min_size applies (the cell crop cuts boxes before the check).
            if min(want[2] - want[0], want[3] - want[1]) < cfg.min_size:
                assert value not in found
                continue
            np.testing.assert_allclose(pixels_xyxy(found[value]), want, atol=BOX_TOL)


def test_mosaic_output_has_the_primary_size_whatever_the_others():
    rng = np.random.default_rng(4)
    other = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    small = (other, np.array([[0.5, 0.5, 0.5, 0.5]]), np.array([7.0]))
    transform = build_transform(only(mosaic=1.0, degrees=5.0), 3, seed=0, sampler=lambda _rng: small)
    for size in [(H, W), (64, 48), (H, W)]:  # a new primary size rebuilds the mosaic at that size
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        boxes = np.array([[0.5, 0.5, 0.2, 0.2]], dtype=np.float32)
        out, out_boxes, out_classes = transform(image, boxes, np.array([1.0]))
        assert out.shape == image.shape
        assert set(out_classes.tolist()) <= {1.0, 7.0}
        assert ((out_boxes[:, :2] >= 0) & (out_boxes[:, :2] <= 1) & (out_boxes[:, 2:] > 0)).all()


def test_mosaic_refuses_masks_and_is_skipped_without_sampler():
    rng = np.random.default_rng(0)
    image, boxes, masks = random_sample(rng)
    cfg = only(mosaic=1.0)
    out, _, _ = build_transform(cfg, 3, seed=0)(image, boxes, np.arange(len(boxes)))
    assert out.tobytes() == image.tobytes()  # no sampler: nothing to combine with
    transform = build_transform(cfg, 3, seed=0, sampler=lambda _rng: (image, boxes, np.arange(len(boxes))))
    with pytest.raises(ValueError, match="mosaic"):
        transform.apply(image, boxes, np.arange(len(boxes)), masks)


# --- DataLoader workers --------------------------------------------------------------------------------


class FlipProbe(Dataset):
    """Each item says whether the transform flipped one off-centre box left-right."""

    def __init__(self, transform, n):
        self.transform, self.n = transform, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image = np.zeros((8, 8, 3), dtype=np.uint8)
        _, boxes, _ = self.transform(image, np.array([[0.25, 0.5, 0.25, 0.25]]), np.zeros(1))
        return bool(boxes[0, 0] > 0.5)


def test_workers_draw_different_and_reproducible_streams():
    import torch

    cfg = only(fliplr=0.5)
    n = 32

    def run():
        torch.manual_seed(0)  # what Lightning's seed_everything does before the loaders start
        loader = DataLoader(FlipProbe(build_transform(cfg, 3, seed=0), n), batch_size=None, num_workers=2)
        return [bool(x) for x in loader]

    first = run()
    # Items alternate between the two workers; copies of one generator would give equal halves.
    assert first[0::2] != first[1::2]
    assert first == run()


# --- preview -------------------------------------------------------------------------------------------


def test_preview_grid_draws_boxes_in_their_cells(tmp_path):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    box = np.array([[0.5, 0.375, 0.5, 0.25]], dtype=np.float32)  # pixels x 16..48, y 16..32
    samples = [(image, box, np.array([1.0])), (image, box, np.array([2.0])), (image, box, np.array([3.0]))]
    result = preview_grid(samples, build_transform(AugmentConfig(enabled=False), 3), tmp_path / "g.png",
                          n=3, cols=2, tile=64)
    grid = np.asarray(Image.open(result.path).convert("RGB"))
    assert grid.shape == (128, 128, 3) and result.size == (128, 128)
    assert (result.boxes_in, result.boxes_out) == (3, 3)
    for i, cls in enumerate((1, 2, 3)):
        ox, oy = (i % 2) * 64, (i // 2) * 64
        assert tuple(grid[oy + 24, ox + 16]) == class_colour(cls)  # left edge of the box
        assert tuple(grid[oy + 24, ox + 32]) == (0, 0, 0)  # its inside is untouched
    assert not grid[64:, 64:].any()  # the fourth cell is empty


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("digits") / "ds", tiny=True, seed=0)


def cli():
    app = typer.Typer()
    app.command()(preview_command)
    return app


def test_preview_command_writes_the_grid(digits, tmp_path):
    out = tmp_path / "preview.png"
    args = [str(digits), "-n", "6", "--cols", "4", "--tile", "96", "--out", str(out),
            "--set", "mosaic=1.0", "--set", "data.augment.degrees=5"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as grid:
        assert grid.size == (4 * 96, 2 * 96)  # 6 samples in 4 columns -> 2 rows
    assert "mosaic=1.0" in result.output and "degrees=5.0" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "flip=1"], "flip"),
        (["--set", "fliplr=2"], "fliplr"),
        (["--split", "nope"], "no split 'nope'"),
    ],
)
def test_preview_command_errors_exit_2(digits, tmp_path, args, message):
    result = CliRunner().invoke(cli(), [str(digits), "--out", str(tmp_path / "p.png"), *args])
    assert result.exit_code == 2
    assert message in result.output
