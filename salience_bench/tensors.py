"""The protocols of the tensor mappings that the library passes around without materialising them.

Scores computed on access (:class:`~salience_bench.scoring.MetricScores`) and compact masks
(:class:`~salience_bench.masks.MaskSet`) are mappings from tensor name to tensor that also know each tensor's shape
without computing it; masks know their selected positions too. Consumers (masks, statistics, analysis, the Triton
top-k) ask for these protocols by ``isinstance`` instead of probing attributes one by one; a plain dict of tensors
satisfies neither and is read as it is.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol, runtime_checkable

import torch


@runtime_checkable
class ShapedTensors(Protocol):
    """A mapping of tensors by name that gives a tensor's shape without computing it."""

    def __getitem__(self, name: str) -> torch.Tensor: ...

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def shape_of(self, name: str) -> torch.Size: ...


@runtime_checkable
class ComputedTensors(ShapedTensors, Protocol):
    """Tensors computed when read, on ``device`` (None when they are assembled from several processes)."""

    @property
    def device(self) -> torch.device | None: ...


@runtime_checkable
class CompactMasks(ShapedTensors, Protocol):
    """Boolean masks kept as each tensor's sorted selected positions."""

    def indices(self, name: str) -> torch.Tensor: ...

    def count(self, name: str | None = None) -> int: ...


def shape_of(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Size:
    """A tensor's shape, without computing it where the mapping knows it."""
    return tensors.shape_of(name) if isinstance(tensors, ShapedTensors) else tensors[name].shape


def numel_of(tensors: Mapping[str, torch.Tensor], name: str) -> int:
    """A tensor's size, without computing it where the mapping knows its shape."""
    return math.prod(shape_of(tensors, name))
