"""ḡ and mean |g_b|: per-tensor means over the scoring batches of the batch gradient (or its magnitude)."""

from __future__ import annotations

import torch

from .base import Accumulator, register_accumulator


class _BatchGradientMean(Accumulator):
    """(1/B) Σ_b f(g_b) for every scored tensor, g_b the gradient of batch b's mean loss."""

    param_shaped = True

    def __init__(self, model, params):
        super().__init__(model, params)
        self.sums = self.param_sums()

    @staticmethod
    def transform(grad: torch.Tensor) -> torch.Tensor:
        return grad

    def add_gradient(self, name: str, grad: torch.Tensor) -> None:
        self.sums[name].add_(self.transform(grad))

    def add_gradients(self, names: list[str], grads: list[torch.Tensor]) -> None:
        # One multi-tensor add (per-tensor adds from Python were a visible share of a small model's pass),
        # unless a subclass folds gradients its own way in add_gradient.
        if type(self).add_gradient is not _BatchGradientMean.add_gradient:
            return super().add_gradients(names, grads)
        torch._foreach_add_([self.sums[n] for n in names], [self.transform(g) for g in grads])

    def to_all_reduce(self) -> list[torch.Tensor]:
        # Sharded: each gradient shard already holds the sum over every process's batch of the step.
        return [] if self.sharded else list(self.sums.values())

    def finalize(self, num_batches: int) -> dict[str, torch.Tensor]:
        return self.finish(self.sums, num_batches)


@register_accumulator
class MeanGradient(_BatchGradientMean):
    name = "mean_grad"
    description = "ḡ: mean over scoring batches of the gradient of each batch's mean loss"


@register_accumulator
class MeanAbsoluteGradient(_BatchGradientMean):
    name = "abs_grad"
    description = "(1/B) Σ_b |g_b|: mean over batches of the absolute batch gradient"
    shardable = False  # |Σ_ranks g| is not Σ_ranks |g|: FSDP hands over the ranks' summed gradient

    @staticmethod
    def transform(grad: torch.Tensor) -> torch.Tensor:
        return grad.abs()
