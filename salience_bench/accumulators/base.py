"""The accumulator protocol and its registry.

An accumulator gathers one statistic per scored tensor over the scoring batches (ḡ,
mean |g_b|, per-example squared gradients, input norms …). Per-batch contributions are float32; they
are summed in ``sum_dtype`` (float64 by default: sums of float32 values in float64 are exact unless
one entry's contributions span more than ~2^29 in magnitude, so the result does not depend on how the
batches were split over processes) and handed to scorers as float32. The
scoring pass (:func:`salience_bench.scoring.accumulate`) drives every requested accumulator
through the same five steps, so adding one is one file with one decorated class:

1. ``__init__(model, params)`` — create its state for the scored parameters
   (:meth:`Accumulator.param_sums` makes one sum per parameter, shaped like this process's shard);
2. ``hooks()`` — a context that installs whatever module hooks it needs for the pass;
3. ``start_batch(batch)`` and ``add_gradient(name, grad)`` — per batch, and per scored tensor as
   soon as that tensor's gradient of the batch's mean loss is ready (float32; freed right after);
4. ``to_all_reduce()`` — the tensors to sum over processes under torch.distributed;
5. ``finalize(num_batches)`` — ``{param_name: float32 statistic}`` (:meth:`Accumulator.finish` converts sums).

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


def is_sharded(p: torch.Tensor) -> bool:
    """A parameter FSDP2 has sharded (a DTensor)."""
    return hasattr(p, "to_local") and hasattr(p, "placements")


def sharded(params: Mapping[str, torch.Tensor]) -> bool:
    """Whether any of ``params`` is sharded by FSDP2."""
    return any(is_sharded(p) for p in params.values())


def local_tensor(p: torch.Tensor) -> torch.Tensor:
    """This process's part of ``p``: its shard for a DTensor, else ``p`` itself."""
    return p.to_local() if is_sharded(p) else p


class Accumulator:
    """Base class: a statistic gathered over the scoring batches for every scored tensor."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_backward: ClassVar[bool] = True  # False: forward hooks only (no gradients are computed)
    after: ClassVar[tuple[str, ...]] = ()  # accumulators whose finished results this one needs
    param_shaped: ClassVar[bool] = False  # True: one sum shaped like each parameter (param_sums), sharded with it
    # False: cannot be gathered under FSDP2 sharding (--shard), e.g. a statistic of each batch's own gradient,
    # which FSDP sums with the other processes' batches before any hook sees it
    shardable: ClassVar[bool] = True

    sum_dtype: torch.dtype = torch.float64  # set per pass by create()

    @classmethod
    def create(cls, model: nn.Module, params: Mapping[str, nn.Parameter], *, sum_dtype: torch.dtype = torch.float64):
        """An instance whose sums are in ``sum_dtype`` (``__init__`` keeps its two-argument form)."""
        acc = cls.__new__(cls)
        acc.sum_dtype = sum_dtype
        acc.__init__(model, params)
        return acc

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self.model = model
        self.params = dict(params)
        self.device = local_tensor(next(iter(self.params.values()))).device
        # Parameters sharded by FSDP2 (DTensors): param-shaped state holds this process's shard only, and
        # the gradients that reach add_gradient are already summed over the processes' batches.
        self.sharded = sharded(self.params)

    def zeros(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A sum of ``shape`` in ``sum_dtype`` on the parameters' device."""
        return torch.zeros(shape, dtype=self.sum_dtype, device=self.device)

    def param_sums(self) -> dict[str, torch.Tensor]:
        """One zero sum per scored parameter, shaped like this process's part of it (all of it unless sharded)."""
        return {name: self.zeros(local_tensor(p).shape) for name, p in self.params.items()}

    @staticmethod
    def finish(sums: dict[str, torch.Tensor], divisor: float = 1.0) -> dict[str, torch.Tensor]:
        """``sums / divisor`` as float32, converted once per tensor; each sum is released as it is converted
        (the dict is emptied), so the peak is the sums plus one float32 tensor."""
        out = {}
        for name in list(sums):
            s = sums.pop(name)
            out[name] = (s.div_(divisor) if divisor != 1 else s).to(torch.float32)
            del s
        return out

    def hooks(self) -> AbstractContextManager:
        """Installed for the length of the pass (default: none)."""
        return nullcontext()

    def begin(self, earlier: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Called before a later pass with the finished results of the accumulators in ``after``."""

    def start_batch(self, batch: Mapping[str, Any]) -> None:
        """Called before each batch's forward."""

    def add_gradient(self, name: str, grad: torch.Tensor) -> None:
        """Fold in the float32 gradient of one scored tensor for the current batch."""

    def add_gradients(self, names: list[str], grads: list[torch.Tensor]) -> None:
        """Fold in several tensors' float32 gradients of the current batch (each tensor once per batch). The
        default calls :meth:`add_gradient` for each; an accumulator may do them in one multi-tensor op."""
        for name, grad in zip(names, grads):
            self.add_gradient(name, grad)

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
