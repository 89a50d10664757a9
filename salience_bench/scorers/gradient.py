"""Scorers built from the mean gradient ḡ over the scoring batches.

ḡ = (1/B) Σ_b ∇_W L_b, where L_b is the mean loss of scoring batch b. SPEFT
accumulates the signed gradient first and applies the function afterwards; so do we.
All of these share one pass over the data.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..errors import SalienceBenchError
from ..tiles import block_sums, expand_tiles
from ..accumulators import ABS_GRAD, MEAN_GRAD
from .registry import Option, TensorStats, register


@register("grad", needs={MEAN_GRAD}, aliases=("gradient",), source="SPEFT 'gradient'")
def grad(t: TensorStats) -> torch.Tensor:
    """|ḡ|: magnitude of the mean gradient (SPEFT's recommended metric)."""
    return t.mean_grad.abs()


@register("snip", needs={MEAN_GRAD}, aliases=("saliency",), source="Lee et al. 2019 (SNIP); SPEFT 'saliency'")
def snip(t: TensorStats) -> torch.Tensor:
    """|W ⊙ ḡ|: connection sensitivity."""
    return (t.weight * t.mean_grad).abs()


@register("plain", needs={MEAN_GRAD}, source="zero-cost-nas 'plain'")
def plain(t: TensorStats) -> torch.Tensor:
    """W ⊙ ḡ (signed): first-order change of the loss if the weight were removed, negated."""
    return t.weight * t.mean_grad


@register("skeletonization", needs={MEAN_GRAD}, source="Mozer & Smolensky 1989; SPEFT 'skeletonization'")
def skeletonization(t: TensorStats) -> torch.Tensor:
    """−W ⊙ ḡ (signed): first-order estimate of the loss increase when the weight is zeroed."""
    return -(t.weight * t.mean_grad)


@register("taylor_fo", needs={MEAN_GRAD}, aliases=("taylor-fo",), source="Molchanov et al. 2019; SPEFT 'Taylor-FO'")
def taylor_fo(t: TensorStats) -> torch.Tensor:
    """(W ⊙ ḡ)²: first-order Taylor importance."""
    return (t.weight * t.mean_grad).square()


@register("grad_norm", needs={MEAN_GRAD}, source="zero-cost-nas 'grad_norm'")
def grad_norm(t: TensorStats) -> torch.Tensor:
    """‖ḡ‖₂ of the whole tensor, broadcast to every weight (ranks tensors, not weights)."""
    return torch.linalg.vector_norm(t.mean_grad).expand(t.weight.shape).clone()  # no host sync


@register("movement", needs={MEAN_GRAD}, source="Sanh et al. 2020 (movement pruning)")
def movement(t: TensorStats) -> torch.Tensor:
    """−Σ_b W ⊙ g_b over the scoring batches (before training W is fixed, so it ranks like skeletonization)."""
    return -(t.weight * t.mean_grad) * t.num_batches


@register("spiel_grad", needs={ABS_GRAD}, source="Ansell et al. 2024 (SpIEL regrowth)")
def spiel_grad(t: TensorStats) -> torch.Tensor:
    """(1/B) Σ_b |g_b|: accumulated absolute batch gradient, SpIEL's regrowth criterion."""
    return t.abs_grad.clone()


def _block_fits(shapes: Mapping[str, Sequence[int]], options: Mapping[str, Any]) -> None:
    largest = max(max(shape) for shape in shapes.values())
    if options["block_size"] > largest:
        raise SalienceBenchError(f"block size {options['block_size']} (smt_block) is larger than every eligible tensor "
                                 f"(longest side {largest}); valid: 1 … {largest}")


@register("smt_block", needs={MEAN_GRAD}, source="He et al. 2024 (SMT), arXiv 2405.15525", check_shapes=_block_fits,
          options={"block_size": Option(int, 64, "tile side of smt_block (and of block masks)", minimum=1)})
def smt_block(t: TensorStats) -> torch.Tensor:
    """Σ |ḡ| over the b×b block holding each weight (--block-size); pairs with --structure block."""
    block = t.options["block_size"]
    if t.weight.dim() != 2:
        return t.mean_grad.abs()
    return expand_tiles(block_sums(t.mean_grad.abs(), block), block, t.weight.shape)
