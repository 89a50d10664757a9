"""Per-example squared gradients of linear weights, from hooks in the same backward.

For ``y = x Wᵀ (+ b)`` with input ``x`` of shape (B, ..., in) and output gradient
``G = ∂L/∂y`` of shape (B, ..., out), the gradient that example ``n`` puts on ``W`` is
``Gₙᵀ xₙ`` summed over its positions (the Opacus / BackPACK identity). Positions never mix
across examples, so padding cannot leak between examples; padded positions of one example get
zero output gradient from a correctly masked model.

The batch loss is assumed to be the *mean* of per-example losses (the Hugging Face convention for
classification), so the gradient of example ``n``'s own loss is ``B · Gₙᵀ xₙ``. This works for any
architecture built from linear layers, unlike ``torch.func.vmap``, which fails on BERT's
data-dependent masking code.
"""

from __future__ import annotations

import torch

from ..errors import SalienceBenchError
from ..data import batch_examples
from .base import register_accumulator
from .linear_hooks import LinearHookAccumulator


@register_accumulator
class ExampleSquaredGradients(LinearHookAccumulator):
    name = "example_sq_grad"
    description = "(1/N) Σ_n g_n² over single examples (per-example gradients)"
    purpose = "fisher needs per-example gradients, which are"

    def __init__(self, model, params):
        super().__init__(model, params)
        self.sums = {name: self.zeros(p.shape) for name, p in self.params.items()}
        self.examples = 0
        self._calls: dict[str, int] = {}
        self._count: torch.Tensor | None = None

    def start_batch(self, batch) -> None:
        self._calls.clear()
        self.examples += batch_examples(batch)

    def forward_hook(self, name: str):
        def hook(module, inputs: tuple, output: torch.Tensor) -> None:
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

    def to_all_reduce(self) -> list[torch.Tensor]:
        self._count = torch.tensor([float(self.examples)], dtype=torch.float64, device=self.device)
        return [*self.sums.values(), self._count]

    def finalize(self, num_batches: int) -> dict[str, torch.Tensor]:
        examples = int(self._count.item()) if self._count is not None else self.examples
        return {name: s / max(examples, 1) for name, s in self.sums.items()}
