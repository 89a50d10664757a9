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
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SalienceBenchError
from ..models import linear_modules_for, weight_is_transposed


class _SparseDeltaLinear(torch.autograd.Function):
    """y = x Wᵀ + b (``nn.Linear``; W out × in) or y = x W + b (``Conv1D``, ``transposed``; W in × out),
    where W already holds base + delta; the gradient goes to delta only."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, index, transposed):  # noqa: D401 - autograd signature
        ctx.save_for_backward(x, weight, index)
        ctx.transposed = transposed
        return F.linear(x, weight.t() if transposed else weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, index = ctx.saved_tensors
        grad_x = (grad_out @ (weight.t() if ctx.transposed else weight)) if ctx.needs_input_grad[0] else None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = grad_2d.sum(0) if ctx.needs_input_grad[2] else None
        # One layer's dense weight gradient, in the weight's own layout, alive only for this gather.
        x_2d = x.reshape(-1, x.shape[-1])
        dense = x_2d.t() @ grad_2d if ctx.transposed else grad_2d.t() @ x_2d
        grad_delta = dense.view(-1).index_select(0, index).float()
        return grad_x, None, grad_bias, grad_delta, None, None


class SparseDeltaLinear(nn.Module):
    """A linear layer (``base_layer``: ``nn.Linear`` or ``Conv1D``) whose selected weight entries train
    through a compact delta.

    Wraps the layer as peft wraps ``base_layer``: ``print(model)`` shows it, and its ``state_dict``
    holds ``base_layer.weight`` (which always carries base + delta at the selected entries), the
    sorted flat ``index`` of those entries, their pretrained values ``base`` and the float32 ``delta``.
    """

    def __init__(self, base_layer: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.base_layer = base_layer
        self.transposed = weight_is_transposed(base_layer)
        weight = base_layer.weight
        weight.requires_grad_(False)
        index = mask.to(weight.device).reshape(-1).nonzero().squeeze(1)  # int64: the gather's index type
        self.register_buffer("index", index)
        self.register_buffer("base", weight.detach().reshape(-1).index_select(0, index).clone())
        self.delta = nn.Parameter(torch.zeros(index.numel(), dtype=torch.float32, device=weight.device))
        self.dense_forward = False  # True: the plain layer (e.g. to re-score the current weights)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_forward:
            return self.base_layer(x)
        return _SparseDeltaLinear.apply(x, self.base_layer.weight, self.base_layer.bias, self.delta, self.index,
                                        self.transposed)

    @torch.no_grad()
    def sync_weight(self) -> None:
        """Write base + delta into the selected entries of the weight."""
        weight = self.base_layer.weight
        weight.view(-1).index_copy_(0, self.index, (self.base.float() + self.delta).to(weight.dtype))

    def mask(self) -> torch.Tensor:
        mask = torch.zeros(self.weight.numel(), dtype=torch.bool, device=self.index.device)
        mask[self.index] = True
        return mask.view_as(self.weight)

    def extra_repr(self) -> str:
        return f"selected={self.index.numel():,} of {self.weight.numel():,}"


def _parent(model: nn.Module, module_name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = module_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class SparseDeltaEngine:
    """Wraps the linear layers owning the masked weights in :class:`SparseDeltaLinear`.

    ``masks`` maps parameter names (as in ``model.named_parameters()`` before wrapping) to boolean
    masks. The weights themselves are frozen; train ``engine.parameters()`` (plus a head) and call
    :meth:`sync_weights` after each optimizer step. :meth:`remove` puts the plain layers back.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise SalienceBenchError(f"masks name unknown parameters: {missing[:3]}")
        modules = linear_modules_for(model, {n: params[n] for n in masks}, "the sparse engine trains weights that are")
        module_names = {id(m): n for n, m in model.named_modules()}
        self.model = model
        self.slots: dict[str, SparseDeltaLinear] = {}
        self._places: dict[str, tuple[nn.Module, str]] = {}
        for name, mask in masks.items():
            parent, child = _parent(model, module_names[id(modules[name])])
            wrapper = SparseDeltaLinear(modules[name], mask)
            setattr(parent, child, wrapper)
            self.slots[name], self._places[name] = wrapper, (parent, child)

    @contextmanager
    def dense(self) -> Iterator[None]:
        """Plain linear forwards inside the block (e.g. to re-score the current weights)."""
        for slot in self.slots.values():
            slot.dense_forward = True
        try:
            yield
        finally:
            for slot in self.slots.values():
                slot.dense_forward = False

    def remove(self) -> None:
        """Back to plain modules; the weights keep base + delta."""
        self.sync_weights()
        for name, slot in self.slots.items():
            parent, child = self._places[name]
            setattr(parent, child, slot.base_layer)

    # --- state --------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [slot.delta for slot in self.slots.values()]

    @property
    def num_selected(self) -> int:
        return sum(slot.index.numel() for slot in self.slots.values())

    def sync_weights(self) -> None:
        """Write base + delta into the selected entries of each weight."""
        for slot in self.slots.values():
            slot.sync_weight()

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: slot.mask() for name, slot in self.slots.items()}

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

            new_base = carry(slot.base, slot.weight.detach().reshape(-1).index_select(0, new_index).clone())
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
