"""Letterbox geometry, YoloDataset items and the collate contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from yololab.data import (
    DataError,
    LetterboxInfo,
    YoloDataset,
    boxes_from_letterbox,
    boxes_to_letterbox,
    collate,
    letterbox,
)

FILL = 114

# --- letterbox ----------------------------------------------------------------------------------------


def test_letterbox_wide_image_hand_worked():
    # 200 wide x 100 high into 64x64: scale = min(64/100, 64/200) = 0.32 -> 64 x 32, pad_y = (64-32)/2 = 16.
    image = np.full((100, 200, 3), 7, dtype=np.uint8)
    out, info = letterbox(image, (64, 64))
    assert info == LetterboxInfo(scale=0.32, pad_x=0, pad_y=16, orig_h=100, orig_w=200)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:16] == FILL).all() and (out[48:] == FILL).all()
    assert (out[16:48] == 7).all()


def test_letterbox_tall_image_into_non_square_input():
    # 100 wide x 300 high into h=64, w=96: scale = min(64/300, 96/100) = 0.21333 -> 64 high,
    # round(100 * 0.21333) = 21 wide, pad_x = (96 - 21) // 2 = 37.
    image = np.full((300, 100, 1), 200, dtype=np.uint8)
    out, info = letterbox(image, (64, 96), fill=0)
    assert info.pad_x == 37 and info.pad_y == 0
    assert info.scale == pytest.approx(64 / 300)
    assert out.shape == (64, 96, 1)
    assert (out[:, :37] == 0).all() and (out[:, 37 + 21:] == 0).all()
    assert (out[:, 37:37 + 21] == 200).all()


def test_letterbox_same_size_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out, info = letterbox(image, (32, 48))
    assert (info.scale, info.pad_x, info.pad_y) == (1.0, 0, 0)
    np.testing.assert_array_equal(out, image)


INFO_200x100 = LetterboxInfo(scale=0.32, pad_x=0, pad_y=16, orig_h=100, orig_w=200)


def test_boxes_to_letterbox_hand_worked():
    # Box cx=0.25, cy=0.75, w=0.1, h=0.2 of a 200x100 image = centre (50, 75) px, 20 x 20 px.
    # In the 64x64 input: centre (50*0.32, 75*0.32 + 16) = (16, 40), size 6.4 x 6.4
    # -> normalised (0.25, 0.625, 0.1, 0.1).
    out = boxes_to_letterbox(np.array([[0.25, 0.75, 0.1, 0.2]]), INFO_200x100, (64, 64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.25, 0.625, 0.1, 0.1]], atol=1e-6)
    assert boxes_to_letterbox(np.zeros((0, 4)), INFO_200x100, (64, 64)).shape == (0, 4)


def test_boxes_from_letterbox_hand_worked():
    # The box above in input pixels, xyxy (12.8, 36.8, 19.2, 43.2) -> original (40, 65, 60, 85).
    back = boxes_from_letterbox(np.array([[12.8, 36.8, 19.2, 43.2]]), INFO_200x100)
    np.testing.assert_allclose(back, [[40, 65, 60, 85]], atol=1e-9)
    # Outside the image part: (-5 - 0)/0.32 -> clipped to 0, (0 - 16)/0.32 = -50 -> 0,
    # 70/0.32 = 218.75 -> 200, (64 - 16)/0.32 = 150 -> 100; without clipping the raw values.
    raw = boxes_from_letterbox(np.array([[-5.0, 0.0, 70.0, 64.0]]), INFO_200x100, clip=False)
    np.testing.assert_allclose(raw, [[-15.625, -50, 218.75, 150]])
    clipped = boxes_from_letterbox(np.array([[-5.0, 0.0, 70.0, 64.0]]), INFO_200x100)
    np.testing.assert_allclose(clipped, [[0, 0, 200, 100]])


def test_boxes_from_letterbox_keeps_torch_tensors():
    boxes = torch.tensor([[[12.8, 36.8, 19.2, 43.2]]], dtype=torch.float32)  # [B=1, K=1, 4]
    back = boxes_from_letterbox(boxes, INFO_200x100)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32 and back.shape == (1, 1, 4)
    torch.testing.assert_close(back, torch.tensor([[[40.0, 65.0, 60.0, 85.0]]]))
    torch.testing.assert_close(boxes, torch.tensor([[[12.8, 36.8, 19.2, 43.2]]]))  # input untouched


# --- YoloDataset ----------------------------------------------------------------------------------------

RGB = (200, 100, 50)
GREY_OF_RGB = 124  # PIL's ITU-R 601 luma: 200*0.299 + 100*0.587 + 50*0.114 = 124.2


def make_images(root: Path) -> list[Path]:
    """wide.png 200x100 RGB with two boxes, grey.png 50x50 L with one, empty.png with none,
    deep.png 40x40 16-bit grey with one."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (200, 100), RGB).save(root / "images/wide.png")
    (root / "labels/wide.txt").write_text("3 0.25 0.75 0.1 0.2\n1 0.5 0.5 1.0 1.0\n")
    Image.new("L", (50, 50), 90).save(root / "images/grey.png")
    (root / "labels/grey.txt").write_text("9 0.5 0.5 0.2 0.2\n")
    Image.new("RGB", (64, 64), RGB).save(root / "images/empty.png")
    # 25700 = 100 * 257, and 65535 / 255 = 257, so the 8-bit value is exactly 100.
    Image.fromarray(np.full((40, 40), 25700, dtype=np.uint16)).save(root / "images/deep.png")
    (root / "labels/deep.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return [root / f"images/{n}.png" for n in ("wide", "grey", "empty", "deep")]


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return make_images(tmp_path)


def test_item_contract_and_letterboxed_targets(images):
    ds = YoloDataset(images, num_classes=10, img_size=64, channels=3)
    image, targets, meta = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert targets.dtype == torch.float32
    # Box 1 as worked out in test_boxes_to_letterbox_hand_worked; box 2 covers the whole
    # 200x100 image -> 64 x 32 px centred: (0.5, 0.5, 1.0, 0.5).
    torch.testing.assert_close(targets, torch.tensor([[3, 0.25, 0.625, 0.1, 0.1], [1, 0.5, 0.5, 1.0, 0.5]]))
    assert meta["path"] == str(images[0])
    assert meta["orig_size"] == (100, 200)
    assert meta["letterbox"] == INFO_200x100
    # Pixels: padding rows are the fill grey, the image part keeps its colour.
    torch.testing.assert_close(image[:, 0, 0], torch.full((3,), FILL / 255))
    torch.testing.assert_close(image[:, 32, 32], torch.tensor(RGB) / 255)


@pytest.mark.parametrize(
    ("channels", "index", "expected"),
    [
        (3, 0, RGB),  # RGB stays RGB
        (1, 0, (GREY_OF_RGB,)),  # RGB -> grey
        (3, 1, (90, 90, 90)),  # grey -> RGB repeats the value
        (1, 1, (90,)),  # grey stays grey
        (1, 3, (100,)),  # 16-bit grey scaled to 8 bits
        (3, 3, (100, 100, 100)),
    ],
)
def test_channel_conversion(images, channels, index, expected):
    image, _, _ = YoloDataset(images, num_classes=10, img_size=64, channels=channels)[index]
    assert image.shape == (channels, 64, 64)
    torch.testing.assert_close(image[:, 32, 32], torch.tensor(expected, dtype=torch.float32) / 255)


def test_collate_adds_image_index_and_keeps_empty_images(images):
    ds = YoloDataset(images, num_classes=10, img_size=(32, 48), channels=1)
    batch = [ds[2], ds[0], ds[2], ds[1]]  # empty, two boxes, empty, one box
    out_images, targets, metas = collate(batch)
    assert out_images.shape == (4, 1, 32, 48)
    assert targets.shape == (3, 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [1, 1, 3]
    assert targets[:, 1].tolist() == [3, 1, 9]
    torch.testing.assert_close(targets[:, 1:], torch.cat([ds[0][1], ds[1][1]]))
    assert [m["path"] for m in metas] == [str(images[i]) for i in (2, 0, 2, 1)]

    _, only_empty, _ = collate([ds[2], ds[2]])
    assert only_empty.shape == (0, 6)


def test_dataloader_with_collate(images):
    loader = DataLoader(YoloDataset(images, 10, 32), batch_size=4, collate_fn=collate)
    out_images, targets, metas = next(iter(loader))
    assert out_images.shape == (4, 3, 32, 32) and targets.shape == (4, 6) and len(metas) == 4


def test_transform_runs_before_letterbox(images):
    def hflip(image, boxes, classes):
        boxes = boxes.copy()
        boxes[:, 0] = 1 - boxes[:, 0]
        return image[:, ::-1].copy(), boxes, classes

    _, targets, _ = YoloDataset(images, 10, 64, transform=hflip)[0]
    # cx 0.25 -> 0.75 on the original; the wide image fills the input width, so cx stays 0.75.
    torch.testing.assert_close(targets[0], torch.tensor([3, 0.75, 0.625, 0.1, 0.1]))


def test_bad_label_fails_at_construction(images):
    (images[1].parent.parent / "labels/grey.txt").write_text("9 0.5 0.5 0.2 0.2\n10 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as info:
        YoloDataset(images, num_classes=10, img_size=64)
    assert info.value.line == 2 and info.value.file.endswith("grey.txt")


def test_unreadable_image_raises_data_error(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "images/bad.png"
    bad.write_bytes(b"")
    with pytest.raises(DataError) as info:
        YoloDataset([bad], 10, 32)[0]
    assert info.value.file == str(bad)


def test_epoch_keyed_items_draw_the_same_augmentation_in_any_loader(images):
    """`(epoch, index)` keys seed each item's augmentation from (seed, epoch, index) alone: the same item in a
    fresh dataset, in another order and through worker processes; another epoch draws anew."""
    from yololab.data.augment import AugmentConfig, build_transform
    from yololab.engine.datamodule import EpochSeededSampler

    def dataset():
        transform = build_transform(AugmentConfig(degrees=10, translate=0.2, fliplr=0.5), 3, seed=7)
        return YoloDataset(images, 10, 64, transform=transform)

    keyed = [dataset()[(1, i)] for i in range(len(images))]
    again = dataset()
    assert all(torch.equal(again[(1, i)][0], keyed[i][0]) for i in reversed(range(len(images))))
    sampler = EpochSeededSampler(len(images), seed=3)
    sampler.set_epoch(1)
    loader = DataLoader(dataset(), batch_size=1, sampler=sampler, num_workers=2, collate_fn=collate)
    order = [index for _, index in sampler]
    for index, (batch, targets, _) in zip(order, loader, strict=True):
        assert torch.equal(batch[0], keyed[index][0]) and torch.equal(targets[:, 1:], keyed[index][1])
    assert not all(torch.equal(dataset()[(2, i)][0], keyed[i][0]) for i in range(len(images)))


def test_ddp_ranks_share_the_epoch_keys():
    """Under DDP Lightning wraps the sampler in its DistributedSamplerWrapper: each rank gets its share of the
    same (epoch, index) keys, with the epoch Lightning sets (forwarded to this sampler)."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from yololab.engine.datamodule import EpochSeededSampler

    plain = EpochSeededSampler(10, seed=3)
    plain.set_epoch(4)
    ranks = [DistributedSamplerWrapper(EpochSeededSampler(10, seed=3), num_replicas=2, rank=r, shuffle=False)
             for r in (0, 1)]
    for wrapper in ranks:
        wrapper.set_epoch(4)
    shares = [list(wrapper) for wrapper in ranks]
    assert sorted(shares[0] + shares[1]) == sorted(plain) and all(epoch == 4 for epoch, _ in shares[0] + shares[1])
    assert shares[0] == list(plain)[0::2]  # DistributedSampler without shuffle: rank r takes every 2nd from r
