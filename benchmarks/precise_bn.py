"""How far validation with batch norm's running statistics is from what the weights can do, per epoch.

A short run with few steps per epoch (where the running statistics lag the weights), trained as `yololab
train` trains (default preset and augmentation) but with precise BN off. Before each validation, the same
weights are evaluated on the whole validation split four ways:

- running: batch norm in eval mode with the running statistics (what validation used before precise BN);
- batch: batch norm in training mode, each validation batch normalised with its own statistics;
- precise: the running statistics re-estimated over N un-augmented training batches (precise BN);
- epoch_mean: the running statistics replaced by the plain average of this epoch's training-batch statistics
  (augmented, as trained): a cumulative average restarted every epoch.

Prints one Markdown row per epoch (mAP@0.5 of each, and the BN check's loss ratio on the first validation
batch) and the seconds precise BN took.

    .venv/bin/python benchmarks/precise_bn.py                  # digits, 64 train images, 8 steps/epoch (~6 min)
    .venv/bin/python benchmarks/precise_bn.py --epochs 6 --batches 4
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from yololab.config import build_config
from yololab.data import load_data_yaml, make_digits
from yololab.engine.datamodule import YoloDataModule
from yololab.engine.precise_bn import batch_norms, batch_statistics, estimate_bn_statistics, plain_train_loader
from yololab.engine.train import make_module
from yololab.evaluate.runner import evaluate_loader


class EpochBatchStats(L.Callback):
    """Keeps, per batch-norm layer, the average of this epoch's training-batch means and variances."""

    def __init__(self):
        self.sums: dict[torch.nn.Module, list] = {}
        self._handles = []

    def on_train_epoch_start(self, trainer, module):
        self.sums = {}
        for norm in batch_norms(module.model):
            self._handles.append(norm.register_forward_hook(self._record))

    def _record(self, norm, inputs, output):
        if not norm.training:
            return
        x = inputs[0].detach().float()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
        total = self.sums.setdefault(norm, [torch.zeros_like(mean), torch.zeros_like(var), 0])
        total[0] += mean
        total[1] += var
        total[2] += 1

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


class FourWays(L.Callback):
    def __init__(self, epoch_stats: EpochBatchStats, batches: int, names: list[str]):
        self.epoch_stats, self.batches, self.names = epoch_stats, batches, names
        self.rows: list[dict] = []

    def on_validation_epoch_start(self, trainer, module):
        if trainer.sanity_checking:
            return
        self.epoch_stats.remove()
        dm, tc = trainer.datamodule, module.cfg.train
        val = dm.loader("val")

        def mAP(model):
            return evaluate_loader(model, val, module.loss.coder, self.names, tc.conf_thres, tc.iou_thres,
                                   tc.max_det)["mAP50"]

        with torch.inference_mode(False), torch.no_grad():
            model = copy.deepcopy(module.model)
            row = {"epoch": trainer.current_epoch, "running": mAP(model)}
            model.eval()
            with batch_statistics(model):
                row["batch"] = evaluate_batch_mode(model, val, module, self.names)
            precise = copy.deepcopy(module.model)
            loader = plain_train_loader(dm)
            loader.sampler.set_epoch(trainer.current_epoch)
            start = time.perf_counter()
            used = estimate_bn_statistics(precise, (b[0] for _, b in zip(range(self.batches), loader, strict=False)))
            row["precise_s"] = time.perf_counter() - start
            row["precise_batches"] = used
            row["precise"] = mAP(precise)
            half = copy.deepcopy(module.model)
            estimate_bn_statistics(half, (b[0] for _, b in zip(range(self.batches // 2), loader, strict=False)))
            row["precise_half"] = mAP(half)
            epoch_mean = copy.deepcopy(module.model)
            originals = dict(zip(batch_norms(module.model), batch_norms(epoch_mean), strict=True))
            for norm, (mean, var, n) in self.epoch_stats.sums.items():
                originals[norm].running_mean.copy_(mean / n)
                originals[norm].running_var.copy_(var / n)
            row["epoch_mean"] = mAP(epoch_mean)
            images, targets, _ = next(iter(val))
            model.eval()
            running = first_batch(model, module, images, targets)
            with batch_statistics(model):
                batch = first_batch(model, module, images, targets)
            row["loss_ratio"] = running["loss"] / batch["loss"]
            row["check"] = {k: (running[k], batch[k]) for k in running}
        self.rows.append(row)
        print(_line(row), flush=True)


def first_batch(model, module, images, targets) -> dict:
    """loss/total, IoU and obj_pos (means over the truths of all scales) on one batch."""
    br = module.loss(model(images), targets)
    n = {k.split("/")[1]: v.item() for k, v in br.stats.items() if k.startswith("n_pos/")}
    out = {"loss": br.total.item()}
    for name in ("iou", "obj_pos", "obj_neg"):
        vals = [(br.stats[f"{name}/{s}"].item(), n[s]) for s in n if n[s] > 0]
        out[name] = sum(v * w for v, w in vals) / max(sum(w for _, w in vals), 1e-9)
    return out


def evaluate_batch_mode(model, loader, module, names):
    """mAP with batch norm in training mode (``evaluate_loader`` would switch the model to eval)."""
    from yololab.evaluate import coco_map
    from yololab.evaluate.runner import predict, truths_in_pixels

    tc = module.cfg.train
    dets, truths = [], []
    for images, targets, _ in loader:
        dets += predict(model, images, module.loss.coder, tc.conf_thres, tc.iou_thres, tc.max_det)
        truths += truths_in_pixels(targets, len(images), tuple(images.shape[-2:]))
    return coco_map(dets, truths, num_classes=len(names), names=names)["mAP50"]


def _line(row: dict) -> str:
    check = " | ".join(f"{a:.3g} / {b:.3g}" for a, b in row["check"].values())
    return (f"| {row['epoch']} | {row['running']:.3f} | {row['batch']:.3f} | {row['precise']:.3f} | "
            f"{row['precise_half']:.3f} | {row['epoch_mean']:.3f} | {check} | {row['precise_s']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batches", type=int, default=8, help="training batches precise BN reads")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_yaml = make_digits(Path(tmp) / "digits", args.train_images, args.val_images, 4, img_size=args.imgsz,
                                seed=1)
        cfg = build_config({"project": tmp, "name": "run", "data": {"data": str(data_yaml), "imgsz": args.imgsz,
                                                                     "batch": args.batch, "workers": 0},
                            "train": {"epochs": args.epochs, "precise_bn_batches": 0}})
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)
        spec = load_data_yaml(data_yaml)
        module = make_module(cfg, spec.names)
        data = YoloDataModule(spec, args.imgsz, args.batch, 0, channels=module.model.channels, seed=0,
                              augment=cfg.data.augment)
        stats = EpochBatchStats()
        ways = FourWays(stats, args.batches, spec.names)
        print(f"{args.train_images} training images, batch {args.batch}: "
              f"{-(-args.train_images // args.batch)} steps per epoch; precise BN over {args.batches} batches")
        print("| epoch | running | batch | precise | precise, half the batches | epoch_mean | first batch, running / "
              "batch statistics: loss | iou | obj_pos | obj_neg | precise BN s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[stats, ways])
        trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
