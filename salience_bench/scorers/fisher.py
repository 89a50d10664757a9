"""The empirical Fisher diagonal from per-example gradients."""

from __future__ import annotations

import torch

from ..accumulators import EXAMPLE_SQ_GRAD
from .registry import TensorStats, register


@register("fisher", needs={EXAMPLE_SQ_GRAD}, aliases=("fisher_info",), source="Theis et al. 2018; SPEFT 'fisher_info'")
def fisher(t: TensorStats) -> torch.Tensor:
    """(1/N) Σ_n g_n²: empirical Fisher diagonal over N single examples (per-example gradients)."""
    return t.example_sq_grad.clone()
