"""Run folders for tests that need a checkpoint but not a trained model: config.yaml and Lightning checkpoints
of a freshly initialised module, written in a second instead of a training run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from yololab.config import build_config, save_config
from yololab.data import load_data_yaml
from yololab.engine.train import make_module

SMALL = ["data.imgsz=128", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"]


def untrained_run(data_yaml: Path, project: Path, name: str = "run", seed: int = 0) -> Path:
    """PROJECT/NAME with config.yaml, checkpoints/{best,last}.ckpt (different weights: seed, seed + 1) and a
    one-epoch metrics.jsonl (so that the report can be written)."""
    cfg = build_config({"project": str(project), "name": name, "data": {"data": str(data_yaml)}}, SMALL)
    names = load_data_yaml(data_yaml).names
    run = cfg.run_dir
    (run / "checkpoints").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    rows = [{"epoch": 0, "split": "train", "step": 1, "loss/total": 1.0},
            {"epoch": 0, "split": "val", "step": 1, "loss/total": 1.0, "mAP50": 0.0, "mAP50_95": 0.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for offset, file in enumerate(("best.ckpt", "last.ckpt")):
        torch.manual_seed(seed + offset)
        module = make_module(cfg, names)
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "pytorch-lightning_version": L.__version__}, run / "checkpoints" / file)
    return run
