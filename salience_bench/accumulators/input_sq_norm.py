"""Σ over (unpadded) tokens of x_j², per input column of each scored linear layer (Wanda)."""

from __future__ import annotations

import torch

from ..models import weight_is_transposed
from .base import register_accumulator
from .linear_hooks import LinearHookAccumulator


@register_accumulator
class InputSquaredNorms(LinearHookAccumulator):
    """Padded positions are left out when the batch's ``attention_mask`` has the input's leading
    (batch, sequence) shape."""

    name = "input_sq_norm"
    description = "Σ over (unpadded) tokens of x_j², per input column of a linear layer (shaped to broadcast on its weight)"
    needs_backward = False
    purpose = "wanda needs input-activation norms, which are"

    def __init__(self, model, params):
        super().__init__(model, params)
        # Shaped to broadcast against the weight: a row for nn.Linear (out × in), a column for Conv1D (in × out).
        self.sums = {name: self.zeros((m.weight.shape[0], 1) if weight_is_transposed(m) else (1, m.weight.shape[1]))
                     for name, m in self.modules.items()}
        self._token_mask: torch.Tensor | None = None

    def start_batch(self, batch) -> None:
        self._token_mask = batch.get("attention_mask")

    def forward_hook(self, name: str):
        def hook(module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            mask = self._token_mask
            if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
                x = x * mask.to(x.dtype).unsqueeze(-1)
            self.sums[name].view(-1).add_(x.reshape(-1, x.shape[-1]).square().sum(0))

        return hook

    def to_all_reduce(self) -> list[torch.Tensor]:
        return list(self.sums.values())

    def finalize(self, num_batches: int) -> dict[str, torch.Tensor]:
        return self.finish(self.sums)
