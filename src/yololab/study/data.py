"""The dataset of a study: an existing data.yaml, or one generated into the study folder; and the data.yaml of
a share of its training images (the ``data.train_share`` factor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from yololab.data import load_data_yaml
from yololab.study.spec import MakeData, StudySpec

DATA_DIR = "data"  # under the study folder: generated data and the share lists
SHARE_SEED = 0  # fixed: every seed of a configuration trains on the same images, and smaller shares nest


def study_data(spec: StudySpec, study_dir: Path) -> Path:
    """The absolute path of the study's data.yaml, generating the data the first time when the spec asks."""
    if isinstance(spec.data, str):
        return Path(spec.data).resolve()
    target = (study_dir / DATA_DIR / spec.data.make).resolve()
    if not (target / "data.yaml").is_file():
        _make(spec.data, target)
    return target / "data.yaml"


def _make(make: MakeData, target: Path) -> None:
    from yololab.data import make_digits, make_photo, make_sparse

    maker = {"digits": make_digits, "sparse": make_sparse, "photo": make_photo}[make.make]
    maker(target, overwrite=True, **make.options)


def share_data(data_yaml: Path, share: float, study_dir: Path) -> Path:
    """A data.yaml like ``data_yaml`` whose train split is the first ``round(share * n)`` images (at least one)
    of a fixed shuffle; val and test are unchanged. ``share`` 1 returns ``data_yaml`` itself."""
    if share >= 1:
        return data_yaml
    spec = load_data_yaml(data_yaml)
    order = np.random.default_rng(SHARE_SEED).permutation(len(spec.splits["train"]))
    keep = max(1, round(share * len(order)))
    folder = (study_dir / DATA_DIR / f"train_share={share:g}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    lists = {"train": [spec.splits["train"][i] for i in sorted(order[:keep])]}
    lists.update({split: images for split, images in spec.splits.items() if split != "train"})
    out = {"path": str(spec.root.resolve())}
    for split, images in lists.items():
        list_file = folder / f"{split}.txt"
        list_file.write_text("".join(f"{Path(image).resolve()}\n" for image in images))
        out[split] = str(list_file)
    out["names"] = list(spec.names)
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path
