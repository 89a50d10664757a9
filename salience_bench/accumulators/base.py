"""The accumulator protocol and its registry.

An accumulator gathers one float32 statistic per scored tensor over the scoring batches (ḡ,
mean |g_b|, per-example squared gradients, input norms …). The
scoring pass (:func:`salience_bench.scoring.accumulate`) drives every requested accumulator
through the same five steps, so adding one is one file with one decorated class:

1. ``__init__(model, params)`` — create its float32 state for the scored parameters;
2. ``hooks()`` — a context that installs whatever module hooks it needs for the pass;
3. ``start_batch(batch)`` and ``add_gradient(name, grad)`` — per batch, and per scored tensor as
   soon as that tensor's gradient of the batch's mean loss is ready (float32; freed right after);
4. ``to_all_reduce()`` — the tensors to sum over processes under torch.distributed;
5. ``finalize(num_batches)`` — ``{param_name: statistic}``.

An accumulator that needs another one's finished result (``after``) runs in a second pass over the
same batches and receives those results in :meth:`Accumulator.begin` (e.g. a centred second moment
needs ḡ first).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ..registry import Registry


class Accumulator:
    """Base class: a statistic gathered over the scoring batches for every scored tensor."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_backward: ClassVar[bool] = True  # False: forward hooks only (no gradients are computed)
    after: ClassVar[tuple[str, ...]] = ()  # accumulators whose finished results this one needs

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self.model = model
        self.params = dict(params)
        self.device = next(iter(self.params.values())).device

    def zeros(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A float32 accumulator of ``shape`` on the parameters' device."""
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def hooks(self) -> AbstractContextManager:
        """Installed for the length of the pass (default: none)."""
        return nullcontext()

    def begin(self, earlier: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Called before a later pass with the finished results of the accumulators in ``after``."""

    def start_batch(self, batch: Mapping[str, Any]) -> None:
        """Called before each batch's forward."""

    def add_gradient(self, name: str, grad: torch.Tensor) -> None:
        """Fold in the float32 gradient of one scored tensor for the current batch."""

    def to_all_reduce(self) -> list[torch.Tensor]:
        """Tensors (sums and counts) that are summed over processes in place before finalize."""
        return []

    def finalize(self, num_batches: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError


_ACCUMULATORS: Registry[type[Accumulator]] = Registry("accumulator")


def register_accumulator(cls: type[Accumulator]) -> type[Accumulator]:
    """Class decorator: make ``cls`` available to scorers as ``needs={cls.name}``."""
    unknown = [a for a in cls.after if a not in _ACCUMULATORS.entries]
    if unknown:
        raise ValueError(f"accumulator {cls.name!r} runs after unknown accumulators {unknown}")
    return _ACCUMULATORS.add(cls.name, cls)


def get_accumulator(name: str) -> type[Accumulator]:
    return _ACCUMULATORS.get(name)


def list_accumulators() -> list[str]:
    return sorted(_ACCUMULATORS.entries)


def with_dependencies(names: Iterable[str]) -> list[str]:
    """``names`` plus everything they run after, dependencies first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for dep in get_accumulator(name).after:
            visit(dep)
        if name not in ordered:
            ordered.append(name)

    for name in sorted(names):
        visit(name)
    return ordered
