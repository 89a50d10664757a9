"""GraSP: gradient signal preservation through a Hessian-gradient product."""

from __future__ import annotations

import torch

from ..accumulators import HESSIAN_GRAD
from .registry import TensorStats, register


@register("grasp", needs={HESSIAN_GRAD}, source="Wang et al. 2020 (GraSP); zero-cost-nas sign convention")
def grasp(t: TensorStats) -> torch.Tensor:
    """−W ⊙ (H ḡ): Hessian-gradient product (ḡ held constant); zero-cost-nas sign, so higher = keep."""
    return -(t.weight * t.hessian_grad)
