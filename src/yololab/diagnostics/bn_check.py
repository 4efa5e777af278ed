"""A per-epoch check that validation's batch-norm statistics fit the weights.

On the first validation batch, the loss is computed twice on the same images: with batch norm in eval mode
(the running statistics validation uses; the module's own validation step) and with batch norm normalising by
that batch's own statistics. When the running statistics lag the weights, the first is far above the second
(docs/diagnostics.md, "Batch-norm statistics"); the doctor's ``stale_batch_norm`` rule reads the two as
``val`` rows' ``bn_check/loss_running`` and ``bn_check/loss_batch``. The model is left unchanged.
"""

from __future__ import annotations

import lightning as L
import torch

from yololab.engine.precise_bn import batch_statistics

CHECKED_BATCH = 0  # the first validation batch: the same images every epoch


class BatchNormCheck(L.Callback):
    """Logs ``val/bn_check/loss_running`` and ``val/bn_check/loss_batch`` (loss/total on one batch)."""

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != CHECKED_BATCH or dataloader_idx or not isinstance(outputs, dict) or "breakdown" not in outputs:
            return
        images, targets = batch[0], batch[1]
        with torch.no_grad(), batch_statistics(pl_module.model):
            batch_loss = pl_module.loss(pl_module.model(images), targets).total.detach()
        opts = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        pl_module.log("val/bn_check/loss_running", outputs["breakdown"].total.detach(), **opts)
        pl_module.log("val/bn_check/loss_batch", batch_loss, **opts)
