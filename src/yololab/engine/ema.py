"""The exponential moving average of the weights (``train.ema``): Lightning's EMAWeightAveraging, computed as a
lerp.

Lightning's EMA updates each average as ``decay * ema + (1 - decay) * w`` (torch's ``get_ema_avg_fn``), which
moves an average whose weight never changes by rounding: a frozen layer's (``train.freeze``) averaged weights and
batch-norm statistics, which validation and the checkpoints use, would drift from the frozen values by a few
units in the last place. The same average written as ``ema + (1 - decay) * (w - ema)`` (torch's
``get_ema_multi_avg_fn``, ``torch._foreach_lerp_``) keeps it bit for bit.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


class LerpEMA(EMAWeightAveraging):
    """EMAWeightAveraging (one update per optimiser step) whose average is a lerp; its checkpoint state keeps
    EMAWeightAveraging's key, so runs saved before resume with it."""

    def __init__(self, decay: float):
        super().__init__(decay=decay)
        # Lightning hands these to torch's AveragedModel, which takes either avg_fn or multi_avg_fn.
        self._kwargs = {k: v for k, v in self._kwargs.items() if k != "avg_fn"}
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)

    @property
    def state_key(self) -> str:
        return EMAWeightAveraging.__qualname__
