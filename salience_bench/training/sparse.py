"""Sparse fine-tuning with O(k) trainable state: compact deltas on selected weight entries.

Each selected linear weight keeps three 1-D tensors of length k_i: the flat ``index`` of its
selected entries, their pretrained ``base`` values, and a trainable float32 ``delta``. The
module's weight tensor always holds ``base + delta`` at those entries (written in place after
every optimizer step) and its pretrained values everywhere else, bit for bit.

Gradients reach ``delta`` through a custom autograd function: the backward computes the weight
gradient of one layer at a time (a transient out × in product, freed at once) and gathers the
selected entries. No dense gradient or optimizer state outlives a step, so AdamW moments and
kept gradients are O(k). Entries that leave a dynamic mask keep their learned change merged
into the weight (SpIEL-style); entries that stay keep their delta and optimizer state.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..per_example import linear_modules_for


class _SparseDeltaLinear(torch.autograd.Function):
    """y = x Wᵀ + b, where W already holds base + delta; the gradient goes to delta only."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, index):  # noqa: D401 - autograd signature
        ctx.save_for_backward(x, weight, index)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, index = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = grad_2d.sum(0) if ctx.needs_input_grad[2] else None
        # One layer's dense weight gradient, alive only for this gather.
        dense = grad_2d.t() @ x.reshape(-1, x.shape[-1])
        grad_delta = dense.view(-1).index_select(0, index).float()
        return grad_x, None, grad_bias, grad_delta, None


@dataclass
class SparseSlot:
    """The selected entries of one weight tensor."""

    module: nn.Linear
    index: torch.Tensor  # int64, sorted flat positions
    base: torch.Tensor  # values of the weight at ``index`` before this delta (weight dtype)
    delta: nn.Parameter  # float32, trainable


class SparseDeltaEngine:
    """Installs compact trainable deltas on the masked entries of ``nn.Linear`` weights.

    ``masks`` maps parameter names (as in ``model.named_parameters()``) to boolean masks.
    The weights themselves are frozen; train ``engine.parameters()`` (plus a head) and call
    :meth:`sync_weights` after each optimizer step.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise KeyError(f"masks name unknown parameters: {missing[:3]}")
        modules = linear_modules_for(model, {n: params[n] for n in masks})
        self.slots: dict[str, SparseSlot] = {}
        for name, mask in masks.items():
            module = modules[name]
            module.weight.requires_grad_(False)
            index = mask.to(module.weight.device).reshape(-1).nonzero().squeeze(1)
            base = module.weight.detach().reshape(-1).index_select(0, index).clone()
            delta = nn.Parameter(torch.zeros(index.numel(), dtype=torch.float32, device=module.weight.device))
            self.slots[name] = SparseSlot(module, index, base, delta)
        self._install()

    # --- forward patching -------------------------------------------------------------
    def _install(self) -> None:
        for slot in self.slots.values():
            slot.module.forward = self._sparse_forward(slot)

    def _uninstall(self) -> None:
        for slot in self.slots.values():
            if "forward" in vars(slot.module):
                del slot.module.forward

    @staticmethod
    def _sparse_forward(slot: SparseSlot):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return _SparseDeltaLinear.apply(x, slot.module.weight, slot.module.bias, slot.delta, slot.index)

        return forward

    @contextmanager
    def dense(self) -> Iterator[None]:
        """Plain ``nn.Linear`` forwards inside the block (e.g. to re-score the current weights)."""
        self._uninstall()
        try:
            yield
        finally:
            self._install()

    def remove(self) -> None:
        """Back to plain modules; the weights keep base + delta."""
        self.sync_weights()
        self._uninstall()

    # --- state --------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [slot.delta for slot in self.slots.values()]

    @property
    def num_selected(self) -> int:
        return sum(slot.index.numel() for slot in self.slots.values())

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Write base + delta into the selected entries of each weight."""
        for slot in self.slots.values():
            weight = slot.module.weight
            values = (slot.base.float() + slot.delta).to(weight.dtype)
            weight.view(-1).index_copy_(0, slot.index, values)

    def masks(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, slot in self.slots.items():
            mask = torch.zeros(slot.module.weight.numel(), dtype=torch.bool, device=slot.index.device)
            mask[slot.index] = True
            out[name] = mask.view_as(slot.module.weight)
        return out

    @torch.no_grad()
    def update_masks(self, masks: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Switch to new masks: leaving entries keep their learned change merged into the weight,
        staying entries keep delta and optimizer moments, new entries start from zero."""
        self.sync_weights()
        for name, slot in self.slots.items():
            old_index = slot.index
            new_index = masks[name].to(old_index.device).reshape(-1).nonzero().squeeze(1)
            pos = torch.searchsorted(old_index, new_index)
            found = pos < old_index.numel()
            stay = torch.zeros_like(found)
            stay[found] = old_index[pos[found]] == new_index[found]
            src = pos[stay]

            def carry(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
                fresh[stay] = old[src]
                return fresh

            new_base = carry(slot.base, slot.module.weight.detach().reshape(-1).index_select(0, new_index).clone())
            new_delta = carry(slot.delta.detach(), torch.zeros(new_index.numel(), dtype=torch.float32, device=new_index.device))
            if optimizer is not None and slot.delta in optimizer.state:
                state = optimizer.state[slot.delta]
                for key, value in list(state.items()):
                    if torch.is_tensor(value) and value.shape == slot.delta.shape:
                        state[key] = carry(value, torch.zeros(new_index.numel(), dtype=value.dtype, device=value.device))
            slot.index, slot.base = new_index, new_base
            slot.delta.data = new_delta
            slot.delta.grad = None
        self.sync_weights()


def state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's per-parameter state (e.g. AdamW's two moments)."""
    return sum(state_bytes(state.values()) for state in optimizer.state.values())
