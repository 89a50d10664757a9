"""Scores → boolean masks with exactly k selected entries and deterministic ties.

Global top-k streams over the tensors: it finds the k-th largest score with a radix
select on the float bits (four histogram passes over the tensors, one tensor in
memory at a time) instead of concatenating every score into one tensor, so it works
when the scores do not fit in memory twice.

Ties at the threshold are broken by position: earlier tensors (in the order of the
score dict, i.e. model order) first, then lower flat index within a tensor. The same
scores therefore always give bitwise-identical masks.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .errors import SalienceBenchError

Mask = dict[str, torch.Tensor]
SCOPES = ("global", "layer")


def selection_count(total: int, density: float) -> int:
    """round(density · total), with Python's round (ties to even)."""
    return int(round(density * total))


def _ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float32 order of ``scores`` (−0.0 folded into +0.0)."""
    bits = (scores.detach().float().contiguous() + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def kth_largest_key(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """(threshold key T, how many entries equal to T to take) for the k largest scores.

    Radix select over the 32 key bits, 8 at a time: each pass histograms the next byte of
    the keys that share the prefix found so far, summed over all tensors.
    """
    prefix, remaining = 0, k
    for shift in (24, 16, 8, 0):
        hist = None
        for s in scores.values():
            keys = _ordered_keys(s).reshape(-1)
            if shift != 24:
                keys = keys[(keys >> (shift + 8)) == prefix]
            byte = (keys >> 24) + 128 if shift == 24 else (keys >> shift) & 0xFF
            h = torch.bincount(byte.long(), minlength=256)
            hist = h if hist is None else hist + h
        counts = hist.flip(0).cumsum(0)  # counts[j] = entries in the top j+1 buckets
        j = int(torch.searchsorted(counts, torch.tensor(remaining, device=counts.device)).item())
        bucket = 255 - j
        above = int(counts[j - 1].item()) if j > 0 else 0
        remaining -= above
        prefix = (bucket - 128) if shift == 24 else prefix * 256 + bucket
    return prefix, remaining


def top_k_mask(scores: Mapping[str, torch.Tensor], k: int) -> Mask:
    """Exactly ``k`` True entries over all tensors: the largest scores, ties by position."""
    total = sum(s.numel() for s in scores.values())
    if not 0 < k <= total:
        raise SalienceBenchError(f"k={k} must be between 1 and the number of eligible weights ({total})")
    threshold, take_equal = kth_largest_key(scores, k)
    masks: Mask = {}
    for name, s in scores.items():
        keys = _ordered_keys(s)
        mask = keys > threshold
        if take_equal > 0:
            equal = keys == threshold
            n_equal = int(equal.sum().item())
            if n_equal:
                if n_equal <= take_equal:
                    mask |= equal
                else:
                    flat = equal.reshape(-1)
                    mask |= (flat & (flat.cumsum(0) <= take_equal)).reshape(s.shape)
                take_equal -= min(n_equal, take_equal)
        masks[name] = mask
    return masks


def make_mask(
    scores: Mapping[str, torch.Tensor],
    density: float | None = None,
    *,
    k: int | None = None,
    scope: str = "global",
) -> Mask:
    """Boolean masks selecting the highest-scoring weights.

    ``density`` d ∈ (0, 1] selects exactly round(d·N) entries (N = all eligible weights for
    ``scope="global"``, each tensor's own size for ``scope="layer"``); ``k`` selects exactly
    k entries globally. Give one of the two.
    """
    if not scores:
        raise SalienceBenchError("no scores to mask: the score dict is empty")
    if scope not in SCOPES:
        raise SalienceBenchError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if (density is None) == (k is None):
        raise SalienceBenchError(f"give exactly one of density and k (got density={density}, k={k})")
    for name, s in scores.items():
        if s.is_floating_point() and not torch.isfinite(s).all():
            raise SalienceBenchError(f"scores of {name!r} contain NaN or inf; cannot rank them")
    total = sum(s.numel() for s in scores.values())
    if k is not None:
        if scope != "global":
            raise SalienceBenchError(f"k={k} is a global count; use density with scope={scope!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= total:
            raise SalienceBenchError(f"k={k!r} must be an integer between 1 and the number of eligible weights ({total})")
        return top_k_mask(scores, k)
    if not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise SalienceBenchError(f"density={density!r} must be in (0, 1]")
    if scope == "global":
        count = selection_count(total, density)
        if count == 0:
            raise SalienceBenchError(f"density={density} selects 0 of {total} eligible weights; raise it")
        return top_k_mask(scores, count)
    masks: Mask = {}
    for name, s in scores.items():
        count = selection_count(s.numel(), density)
        masks[name] = top_k_mask({name: s}, count)[name] if count else torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    if not any(m.any() for m in masks.values()):
        raise SalienceBenchError(f"density={density} selects 0 weights in every tensor; raise it")
    return masks
