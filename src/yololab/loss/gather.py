"""The loss's only reads of a head output, with a backward that writes its gradient once.

A YOLOv3 loss needs two views of each raw output ``r`` [B, A, H, W, 5 + C]: the box and objectness logits of
every prediction (objectness, the ignore test, the warm-up) and the full rows of the responsible predictions
(box, class). Taken with plain indexing, autograd builds one full-size zero gradient per view and adds them
up: three writes and two reads of a tensor that is mostly zeros. ``gather_head`` returns both views and, on
backward, allocates the gradient once and fills in the two small parts.
"""

from __future__ import annotations

import torch
from torch import Tensor

HEAD = 5  # tx, ty, tw, th, to


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw: Tensor, image: Tensor, anchor: Tensor, gy: Tensor, gx: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(image, anchor, gy, gx)
        ctx.shape, ctx.dtype = raw.shape, raw.dtype
        head = raw[..., :HEAD].to(torch.float32, copy=True).contiguous()
        rows = raw[image, anchor, gy, gx].to(torch.float32)
        return head, rows

    @staticmethod
    def backward(ctx, grad_head: Tensor | None, grad_rows: Tensor | None):
        image, anchor, gy, gx = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=image.device)
        if grad_head is not None:
            grad[..., :HEAD] = grad_head
        if grad_rows is not None and len(image):
            grad.index_put_((image, anchor, gy, gx), grad_rows.to(ctx.dtype), accumulate=True)
        return grad, None, None, None, None


def gather_head(raw: Tensor, image: Tensor, anchor: Tensor, gy: Tensor, gx: Tensor) -> tuple[Tensor, Tensor]:
    """raw [B, A, H, W, 5 + C] and P positives -> (head [B, A, H, W, 5], rows [P, 5 + C]), both float32.

    Differentiable (once) w.r.t. ``raw``; a row listed twice receives the sum of both rows' gradients.
    """
    return _Gather.apply(raw, image, anchor, gy, gx)
