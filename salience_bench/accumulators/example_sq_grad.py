"""Per-example squared gradients of linear weights, from hooks in the same backward.

For ``y = x Wᵀ (+ b)`` with input ``x`` of shape (B, ..., in) and output gradient
``G = ∂L/∂y`` of shape (B, ..., out), the gradient that example ``n`` puts on ``W`` is
``Gₙᵀ xₙ`` summed over its positions (the Opacus / BackPACK identity). Positions never mix
across examples, so padding cannot leak between examples; padded positions of one example get
zero output gradient from a correctly masked model.

The batch loss is the Hugging Face mean over the batch's loss units: examples for a classifier,
target tokens (labels ≠ -100, after the one-token shift) for a causal LM. Example ``n``'s own loss
is the mean over *its* units, so its gradient is ``(T / Tₙ) · Gₙᵀ xₙ`` with T the units of the
batch and Tₙ those of example n — ``B · Gₙᵀ xₙ`` for a classifier, where every Tₙ is 1. Examples
without a target token have no loss of their own and are not counted. This works for any
architecture built from linear layers (``nn.Linear``, and ``Conv1D`` with its transposed weight),
unlike ``torch.func.vmap``, which fails on BERT's data-dependent masking code.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..errors import SalienceBenchError
from ..data import batch_examples, loss_units
from ..models import weight_is_transposed
from .base import register_accumulator
from .linear_hooks import LinearHookAccumulator


@register_accumulator
class ExampleSquaredGradients(LinearHookAccumulator):
    name = "example_sq_grad"
    description = "(1/N) Σ_n g_n² over single examples (per-example gradients)"
    purpose = "fisher needs per-example gradients, which are"
    param_shaped = True

    def __init__(self, model, params):
        super().__init__(model, params)
        self.sums = self.param_sums()
        self.examples = 0
        self._calls: dict[str, int] = {}
        self._count: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None  # per example: T / Tₙ (0 for an example without targets)
        self._transposed = {name: weight_is_transposed(m) for name, m in self.modules.items()}

    def start_batch(self, batch) -> None:
        self._calls.clear()
        units = loss_units(batch)
        if units is None:  # one label per example
            self.examples += batch_examples(batch)
            self._scale = None
            return
        total = units.sum()
        self._scale = torch.where(units > 0, total / units.clamp(min=1), 0.0).float()
        self.examples += int((units > 0).sum())

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

            scale = self._scale

            def on_output_grad(grad_out: torch.Tensor) -> None:
                # The per-example products run in the model's own precision (as its weight gradients do:
                # bf16 on tensor cores for a bf16 model, float32 for a float32 one); squares and sums in float32.
                batch = x.shape[0]
                xs = x.reshape(batch, -1, x.shape[-1])
                gs = grad_out.reshape(batch, -1, grad_out.shape[-1])
                if self._transposed[name]:  # Conv1D: weight (in, out)
                    per_example = torch.bmm(xs.transpose(1, 2), gs.to(xs.dtype))
                else:  # nn.Linear: weight (out, in)
                    per_example = torch.bmm(gs.transpose(1, 2).to(xs.dtype), xs)
                squares = per_example.float().square_()
                if scale is None:  # every example's own loss is the batch mean times B
                    contribution = squares.sum(0).mul_(float(batch) ** 2)
                else:
                    contribution = torch.einsum("b,boi->oi", scale.square(), squares)
                if self.sharded:  # this process keeps its rows of the sum over every process's examples
                    contribution = distributed.reduce_scatter_rows(contribution)
                self.sums[name].add_(contribution)

            output.register_hook(on_output_grad)

        return hook

    def to_all_reduce(self) -> list[torch.Tensor]:
        self._count = torch.tensor([float(self.examples)], dtype=torch.float64, device=self.device)
        return [self._count] if self.sharded else [*self.sums.values(), self._count]

    def finalize(self, num_batches: int) -> dict[str, torch.Tensor]:
        examples = int(self._count.item()) if self._count is not None else self.examples
        return self.finish(self.sums, max(examples, 1))
