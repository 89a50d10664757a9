"""H ḡ: the Hessian of the mean loss times ḡ (ḡ held constant), by double backward, in a second pass."""

from __future__ import annotations

from typing import Iterable

import torch

from .base import register_accumulator
from .gradient_means import _BatchGradientMean


@register_accumulator
class HessianGradientProducts(_BatchGradientMean):
    name = "hessian_grad"
    description = "H ḡ: Hessian of the mean loss times ḡ (ḡ held constant); a second pass"
    after = ("mean_grad",)

    def begin(self, earlier) -> None:
        self.direction = earlier["mean_grad"]

    def hooks(self):
        # Fused attention kernels have no double backward; the math kernel is plain differentiable ops.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def batch_gradients(self, loss: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
        names = list(self.params)
        tensors = [self.params[n] for n in names]
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        inner = sum((g.float() * self.direction[n]).sum() for n, g in zip(names, grads))
        products = torch.autograd.grad(inner, tensors, allow_unused=True)
        return [(n, hv.float()) for n, hv in zip(names, products) if hv is not None]
