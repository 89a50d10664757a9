"""LIFT principal weights: magnitude after rank reduction."""

from __future__ import annotations

import torch

from .registry import Option, TensorStats, register

DEFAULT_LIFT_RANK = 32  # LIFT's filter rank for its smallest model (Llama-3.2-1B)
_EXACT_SVD_MAX_DIM = 4096


def low_rank_approximation(weight: torch.Tensor, rank: int, seed: int = 0) -> torch.Tensor:
    """The best rank-``rank`` approximation of a 2-D tensor (truncated SVD; randomized for large matrices)."""
    rank = min(rank, *weight.shape)
    w = weight.float()
    if max(w.shape) <= _EXACT_SVD_MAX_DIM:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return (u[:, :rank] * s[:rank]) @ vh[:rank]
    # Randomized SVD (Halko et al.) with power iterations, seeded for reproducible masks.
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        u, s, v = torch.svd_lowrank(w, q=min(rank + 10, *w.shape), niter=4)
    finally:
        torch.random.set_rng_state(state)
    return (u[:, :rank] * s[:rank]) @ v[:, :rank].T


@register("lift", source="Liu et al. 2025 (LIFT), arXiv 2506.00772",
          options={"lift_rank": Option(int, DEFAULT_LIFT_RANK, "rank of the SVD approximation for lift", minimum=1)})
def lift(t: TensorStats) -> torch.Tensor:
    """|W_r|: magnitude of the best rank-r approximation of W (--lift-rank, default 32); data-free."""
    if t.weight.dim() != 2:
        return t.weight.abs()
    return low_rank_approximation(t.weight, t.options["lift_rank"], t.seed).abs()
