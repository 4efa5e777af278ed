"""A per-epoch check that validation's batch-norm statistics fit the weights.

On the first validation batch, the loss and its statistics are computed twice on the same images: with batch
norm in eval mode (the running statistics validation uses; the module's own validation step) and with batch
norm normalising by that batch's own statistics. When the running statistics lag the weights, the objectness
at true objects falls far below its batch-statistics value (docs/diagnostics.md, "Batch-norm statistics"); the
doctor's ``stale_batch_norm`` rule reads them from the ``val`` rows (``bn_check/loss_running``,
``bn_check/obj_pos_batch`` ...). The model is left unchanged.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from yololab import keys as scale_keys
from yololab.engine.precise_bn import batch_statistics

CHECKED_BATCH = 0  # the first validation batch: the same images every epoch
SUMMARY_STATS = ("obj_pos", "iou")  # loss statistics compared besides the loss (weighted by truths per scale)


def _summary(breakdown) -> dict[str, Tensor]:
    """loss/total and, over the truths of all scales, the mean objectness and IoU of responsible predictions."""
    counts = {}  # scale -> truths trained there
    for key, value in breakdown.stats.items():
        name, scale = scale_keys.parse(key)
        if name == "n_pos":
            counts[scale] = value
    total = sum(counts.values())
    out = {"loss": breakdown.total.detach()}
    for name in SUMMARY_STATS:
        weighted = [breakdown.stats[scale_keys.key(name, s)].nan_to_num() * n for s, n in counts.items()]
        out[name] = sum(weighted) / total if total > 0 else torch.zeros(())
    return out


class BatchNormCheck(L.Callback):
    """Logs ``val/bn_check/<what>_running`` and ``val/bn_check/<what>_batch`` for ``what`` in loss (loss/total),
    obj_pos and iou (means over the batch's truths) on the first validation batch."""

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != CHECKED_BATCH or dataloader_idx or not isinstance(outputs, dict) or "breakdown" not in outputs:
            return
        images, targets = batch[0], batch[1]
        with torch.no_grad(), batch_statistics(pl_module.model):
            batch_mode = _summary(pl_module.loss(pl_module.model(images), targets))
        running = _summary(outputs["breakdown"])
        opts = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        for name in running:
            pl_module.log(f"val/bn_check/{name}_running", running[name].float(), **opts)
            pl_module.log(f"val/bn_check/{name}_batch", batch_mode[name].float(), **opts)
