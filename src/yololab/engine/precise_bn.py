"""Precise batch norm: running statistics re-estimated for the current weights before each validation.

Batch norm's running statistics are an exponential average (momentum 0.03 here) of the batch statistics of
past steps. With few steps per epoch they lag far behind the weights: on 140 photos (9 steps per epoch) the
epoch-12 weights gave val mAP@0.5 0.009 with the running statistics and 0.44 with batch statistics.
Validation, ``best.ckpt``, the doctor and the report all read the eval-mode numbers, so a lag there makes
the whole run look as if it had learned nothing.

The remedy measured in docs/diagnostics.md ("Batch-norm statistics") is the one of Wu & Johnson, "Rethinking
'Batch' in BatchNorm" (2021), known as *precise BN*: before validation, forward a bounded number of
un-augmented training batches with batch norm in training mode and no gradients, and set each layer's
running mean and variance to the plain average of the batch means and variances seen.

``PreciseBatchNorm`` does that as a Lightning callback. The re-estimated statistics stay in the model, so the
checkpoints written after validation (``last.ckpt`` at the training-epoch end, ``best.ckpt`` on the
validation metric) hold exactly the statistics validation used, and ``eval``, ``detect``, export and the doctor
agree with the logged numbers. ``batch_statistics`` runs a forward with batch statistics without changing
the model, for the per-epoch check of how far the two disagree (``yololab.diagnostics.bn_check``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from yololab.data import YoloDataset, collate


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics and are trained: a frozen one (affine
    parameters with requires_grad False, train.freeze) keeps its statistics, and is left out."""
    return [m for m in _all_batch_norms(model) if not is_frozen(m)]


def _all_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def is_frozen(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    """A batch norm frozen for transfer learning: its affine parameters need no gradient."""
    return norm.affine and not norm.weight.requires_grad


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Restores every submodule's train/eval flag on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def estimate_bn_statistics(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Set every batch norm's running mean and variance to the mean over ``batches`` of its batch statistics.

    ``batches``: images ``[B, C, H, W]`` already on the model's device and dtype. Batch norm runs in training
    mode (the rest of the model too; a Darknet has no dropout), with momentum None, which makes torch keep the
    cumulative average: after n batches, running_mean = mean of the n batch means, running_var = mean of the
    n unbiased batch variances. Frozen batch norms (``is_frozen``) stay in eval mode: they normalise with their
    own statistics, as in training and validation, and keep them bit for bit. No gradient is computed. Momentum
    and train/eval flags are restored; when no batch came, the old statistics are kept. Returns the number of
    batches used.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    used = 0
    # Lightning validates under inference mode; the buffers must stay ordinary tensors that training updates.
    with torch.inference_mode(False), torch.no_grad(), _modes_kept(model):
        model.train()
        for frozen in _all_batch_norms(model):
            if is_frozen(frozen):
                frozen.eval()
        try:
            for images in batches:
                model(images)
                used += 1
        finally:
            for m, (mean, var, count, momentum) in zip(norms, saved, strict=True):
                m.momentum = momentum
                if used == 0:
                    _restore(m, mean, var, count)
    if used and torch.distributed.is_available() and torch.distributed.is_initialized():
        _average_across_processes(norms)
    return used


def _restore(norm: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: Tensor) -> None:
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    norm.num_batches_tracked.copy_(count)


def _average_across_processes(norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Under DDP each process estimated on its own batches: all end with the mean of the estimates."""
    world = torch.distributed.get_world_size()
    for m in norms:
        for buffer in (m.running_mean, m.running_var):
            torch.distributed.all_reduce(buffer)
            buffer.div_(world)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, batch norm normalises with the statistics of the batch it sees (training mode); on exit the
    running statistics and train/eval flags are as before, so the model is unchanged."""
    norms = batch_norms(model)
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    with _modes_kept(model):
        for m in norms:
            m.train()
        try:
            yield
        finally:
            for m, (mean, var, count) in zip(norms, saved, strict=True):
                _restore(m, mean, var, count)


def plain_train_loader(datamodule) -> DataLoader:
    """The training images letterboxed and never augmented, shuffled anew each epoch (EpochSeededSampler):
    what validation images look like. ``datamodule``: a YoloDataModule (its spec, sizes, seed and box policy)."""
    from yololab.engine.datamodule import EpochSeededSampler  # the data module imports this package's neighbours

    spec = datamodule.spec
    data = YoloDataset(spec.splits["train"], spec.num_classes, datamodule.img_size, channels=datamodule.channels,
                       boxes_outside=datamodule.boxes_outside)
    return DataLoader(data, batch_size=datamodule.batch_size, sampler=EpochSeededSampler(len(data), datamodule.seed),
                      num_workers=datamodule.workers, collate_fn=collate, persistent_workers=datamodule.workers > 0)


class PreciseBatchNorm(L.Callback):
    """Before every validation (not the sanity check), re-estimate batch-norm statistics over up to
    ``max_batches`` un-augmented training batches; ``seconds`` is how long the last estimate took.

    Place it after an EMA callback in the callback list: EMA swaps its weights in at the validation-epoch start,
    and the statistics must be those of the weights validated.
    """

    def __init__(self, max_batches: int):
        if max_batches <= 0:
            raise ValueError(f"precise BN needs a positive number of batches, got {max_batches}")
        self.max_batches = max_batches
        self.seconds = 0.0
        self.batches_used = 0
        self._loader: DataLoader | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loader = self._train_loader(trainer)
        if loader is None:
            return
        start = time.perf_counter()
        loader.sampler.set_epoch(trainer.current_epoch)
        device, dtype = pl_module.device, next(pl_module.parameters()).dtype
        images = (batch[0].to(device, dtype) for batch in islice(loader, self.max_batches))
        self.batches_used = estimate_bn_statistics(pl_module.model, images)
        self.seconds = time.perf_counter() - start

    def _train_loader(self, trainer: L.Trainer) -> DataLoader | None:
        if self._loader is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "spec"):
                rank_zero_warn("precise BN needs a YoloDataModule (un-augmented training images): validation "
                               "uses the running batch-norm statistics")
                self.max_batches = 0
            else:
                self._loader = plain_train_loader(datamodule)
        return self._loader if self.max_batches else None
