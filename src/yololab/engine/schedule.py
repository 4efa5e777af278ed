"""Learning-rate schedule: linear warm-up, then cosine decay, as a per-step multiplier of the peak LR."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """LR multiplier at optimiser step ``step``.

    1. During warm-up (step < warmup_steps): rises linearly from 1/warmup_steps to 1.
    2. Afterwards: cosine from 1 down to ``final_fraction`` at ``total_steps``; constant after that.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
