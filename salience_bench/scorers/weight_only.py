"""Scorers that need no data: random and magnitude."""

from __future__ import annotations

import zlib

import torch

from .registry import TensorStats, register


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends only on the run seed and the tensor's name.

    Naming the tensor (rather than counting tensors) keeps a tensor's random scores
    the same when the include/exclude selection around it changes.
    """
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@register("random", source="SPEFT 'random'; zero-cost-nas baseline")
def random_scores(t: TensorStats) -> torch.Tensor:
    """U(0,1) per weight, seeded by --seed and the tensor name (a chance baseline)."""
    generator = torch.Generator().manual_seed(tensor_seed(t.seed, t.name))
    # Drawn on the CPU so the scores do not depend on the device the model sits on.
    return torch.rand(t.weight.shape, generator=generator, dtype=torch.float32).to(t.weight.device)


@register("magnitude", source="SPEFT 'magnitude'; magnitude pruning")
def magnitude(t: TensorStats) -> torch.Tensor:
    """|W|: absolute value of the pretrained weight."""
    return t.weight.abs()
