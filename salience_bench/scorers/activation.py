"""Wanda: weight magnitude times input-activation norm."""

from __future__ import annotations

import torch

from ..accumulators import INPUT_SQ_NORM
from .registry import TensorStats, register


@register("wanda", needs={INPUT_SQ_NORM}, source="Sun et al. 2023 (Wanda)")
def wanda(t: TensorStats) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂: weight magnitude times the norm of input column j over the scoring tokens."""
    return t.weight.abs() * t.input_sq_norm.sqrt()  # the norms broadcast along the input dimension
