"""Hooks on linear layers: per-example squared gradients and input-activation norms.

Per-example squared gradients of linear weights come from hooks, in one backward per batch.

For ``y = x Wᵀ (+ b)`` with input ``x`` of shape (B, ..., in) and output gradient
``G = ∂L/∂y`` of shape (B, ..., out), the gradient that example ``n`` puts on ``W`` is
``Gₙᵀ xₙ`` summed over its positions (the Opacus / BackPACK identity). Positions
never mix across examples, so padding cannot leak between examples; padded
positions of one example get zero output gradient from a correctly masked model.

The batch loss is assumed to be the *mean* of per-example losses (the Hugging Face
convention for classification), so the gradient of example ``n``'s own loss is
``B · Gₙᵀ xₙ``. This works for any architecture built from ``nn.Linear``, unlike
``torch.func.vmap``, which fails on BERT's data-dependent masking code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import torch
from torch import nn

from .errors import SalienceBenchError


class _LinearHooks:
    """Forward hooks on a set of linear modules, installed for the length of a ``with`` block."""

    modules: dict[str, nn.Linear]

    def _forward_hook(self, name: str):
        raise NotImplementedError

    @contextmanager
    def hooked(self):
        handles = [m.register_forward_hook(self._forward_hook(name)) for name, m in self.modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class ExampleSquaredGradients(_LinearHooks):
    """Accumulates Σₙ gₙ² (float32) for the weights of the given linear modules."""

    def __init__(self, modules: Mapping[str, nn.Linear]):
        self.modules = dict(modules)
        self.sums = {
            name: torch.zeros(m.weight.shape, dtype=torch.float32, device=m.weight.device)
            for name, m in self.modules.items()
        }
        self.examples = 0
        self._calls: dict[str, int] = {}

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not torch.is_grad_enabled() or not output.requires_grad:
                return
            self._calls[name] = self._calls.get(name, 0) + 1
            if self._calls[name] > 1:
                raise SalienceBenchError(
                    f"fisher: module {name!r} ran more than once in one forward pass (shared weights); "
                    "per-example gradients from hooks need one call per forward"
                )
            x = inputs[0].detach()

            def on_output_grad(grad_out: torch.Tensor) -> None:
                batch = x.shape[0]
                xs = x.reshape(batch, -1, x.shape[-1]).float()
                gs = grad_out.reshape(batch, -1, grad_out.shape[-1]).float() * batch
                per_example = torch.bmm(gs.transpose(1, 2), xs)  # (B, out, in)
                self.sums[name].add_(per_example.square_().sum(0))

            output.register_hook(on_output_grad)

        return hook

    def start_batch(self, batch_size: int) -> None:
        self._calls.clear()
        self.examples += batch_size

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: s / max(self.examples, 1) for name, s in self.sums.items()}



def linear_modules_for(
    model: nn.Module, params: Mapping[str, nn.Parameter], purpose: str = "fisher needs per-example gradients, which are"
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` owning each parameter, keyed by parameter name; a clear error otherwise."""
    owners = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
    modules = {}
    for name, p in params.items():
        module = owners.get(id(p))
        if module is None:
            raise SalienceBenchError(
                f"{purpose} computed for nn.Linear weights only; "
                f"{name!r} is not one (exclude it with --exclude or pick another metric)"
            )
        modules[name] = module
    return modules


class InputSquaredNorms(_LinearHooks):
    """Accumulates Σ over tokens of x_j² for each input column j of the given linear modules.

    Padded positions are left out when the batch's ``attention_mask`` has the input's leading
    (batch, sequence) shape; call :meth:`start_batch` with it before each forward.
    """

    def __init__(self, modules: Mapping[str, nn.Linear]):
        self.modules = dict(modules)
        self.sums = {
            name: torch.zeros(m.weight.shape[1], dtype=torch.float32, device=m.weight.device)
            for name, m in self.modules.items()
        }
        self._token_mask: torch.Tensor | None = None

    def start_batch(self, attention_mask: torch.Tensor | None) -> None:
        self._token_mask = attention_mask

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            mask = self._token_mask
            if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
                x = x * mask.to(x.dtype).unsqueeze(-1)
            self.sums[name].add_(x.reshape(-1, x.shape[-1]).square().sum(0))

        return hook

