"""``train.freeze`` and ``train.unfreeze_epoch`` as a Lightning callback (the layers: ``model/freeze.py``).

``FreezeSchedule`` freezes the first layers when fit sets up, before a multi-process strategy wraps the model
(DDP then leaves the frozen parameters out of its gradient averaging), and unfreezes them at the start of epoch
``unfreeze_epoch``. Its state (how many layers are frozen) is saved in the checkpoints and put back on a resume,
before the first epoch starts: a run resumed past the unfreeze epoch trains unfrozen, one resumed before it
frozen, then unfreezes on schedule.

The optimiser holds every parameter from the start (module.py ``configure_optimizers``): SGD and AdamW skip a
parameter without a gradient, so a frozen one gets no update and no weight decay, and on unfreezing its
momentum (SGD) or moments and step count (AdamW) start from zero at its first gradient. The learning rate goes
on with the schedule (no new warm-up).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from yololab.config import ConfigError
from yololab.model.freeze import frozen_layer_count, set_frozen, trainable_parameters

STATE_KEY = "frozen_layers"
# Lightning warns of modules in eval mode when training starts: the frozen batch norms are, on purpose.
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


class FreezeSchedule(L.Callback):
    """Freeze the first layers ``freeze`` names (``"backbone"`` or a count) until epoch ``unfreeze_epoch``
    (None: for the whole run)."""

    def __init__(self, freeze: str | int, unfreeze_epoch: int | None = None):
        self.freeze, self.unfreeze_epoch = freeze, unfreeze_epoch
        self.layers = 0  # resolved from the model at setup
        self.frozen = 0  # how many layers are frozen now
        self._module: L.LightningModule | None = None

    def frozen_at(self, epoch: int) -> int:
        """How many layers the schedule freezes during ``epoch``."""
        return self.layers if self.unfreeze_epoch is None or epoch < self.unfreeze_epoch else 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.unfreeze_epoch is not None and trainer.world_size > 1:
            raise ConfigError("train.unfreeze_epoch does not work with several processes: DDP averages the gradients "
                             "of the parameters that needed them when it started; set train.freeze without it")
        self._module = pl_module
        self.layers = frozen_layer_count(pl_module.model, self.freeze)
        self._apply(self.frozen_at(0))
        warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)

    def _apply(self, count: int) -> None:
        self.frozen = count
        if self._module is not None:
            set_frozen(self._module.model, count)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainable, total = trainable_parameters(pl_module.model)
        if self.frozen:
            until = f", until epoch {self.unfreeze_epoch}" if self.unfreeze_epoch is not None else ""
            frozen = f"layers 0..{self.frozen - 1} frozen (train.freeze={self.freeze}{until})"
        else:
            frozen = f"nothing frozen (train.unfreeze_epoch={self.unfreeze_epoch} has passed)"
        rank_zero_info(f"trainable parameters: {trainable:,} of {total:,}; {frozen}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        count = self.frozen_at(trainer.current_epoch)
        if count == self.frozen:
            return
        self._apply(count)
        trainable, total = trainable_parameters(pl_module.model)
        what = f"froze layers 0..{count - 1}" if count else f"unfroze layers 0..{self.layers - 1}"
        rank_zero_info(f"epoch {trainer.current_epoch}: {what} (train.unfreeze_epoch={self.unfreeze_epoch}); "
                       f"trainable parameters: {trainable:,} of {total:,}")

    def state_dict(self) -> dict[str, Any]:
        return {STATE_KEY: self.frozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._apply(min(int(state_dict.get(STATE_KEY, self.frozen)), self.layers))
