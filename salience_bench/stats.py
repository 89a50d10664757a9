"""Mask overlap and rank correlation, in torch so they run where the scores live.

Every function takes either one tensor or a dict of tensors (flattened in the key
order of the first argument; both dicts must hold the same names and shapes).
Definitions follow scipy.stats: Spearman ρ is the Pearson correlation of
tie-averaged ranks; Kendall τ is tau-b. Both are exact; Kendall can be asked to use a
seeded subsample (``max_n``) for speed, and reports which sample size it used.
"""

from __future__ import annotations

import math
from typing import Mapping, Union

import torch

from .errors import SalienceBenchError

TensorOrDict = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def _pair(a: TensorOrDict, b: TensorOrDict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        pairs = [(a, b)]
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a) != list(b) and set(a) != set(b):
            missing = sorted(set(a) ^ set(b))
            raise SalienceBenchError(f"the two inputs cover different tensors: {missing[:5]}")
        pairs = [(a[n], b[n]) for n in a]
    else:
        raise SalienceBenchError("compare a tensor with a tensor, or a dict of tensors with a dict of tensors")
    for x, y in pairs:
        if x.shape != y.shape:
            raise SalienceBenchError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    return [x for x, _ in pairs], [y for _, y in pairs]


def _flat(parts: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    flat = torch.cat([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0].reshape(-1)
    return flat if dtype is None else flat.to(dtype)


def intersection_and_sizes(a: TensorOrDict, b: TensorOrDict) -> tuple[int, int, int]:
    """(|A ∩ B|, |A|, |B|) of two boolean masks."""
    xs, ys = _pair(a, b)
    inter = sum(int((x.bool() & y.bool()).sum().item()) for x, y in zip(xs, ys))
    size_a = sum(int(x.bool().sum().item()) for x in xs)
    size_b = sum(int(y.bool().sum().item()) for y in ys)
    return inter, size_a, size_b


def jaccard(a: TensorOrDict, b: TensorOrDict) -> float:
    """|A ∩ B| / |A ∪ B| (NaN when both masks are empty)."""
    inter, size_a, size_b = intersection_and_sizes(a, b)
    union = size_a + size_b - inter
    return inter / union if union else math.nan


def overlap_coefficient(a: TensorOrDict, b: TensorOrDict) -> float:
    """|A ∩ B| / min(|A|, |B|) (NaN when either mask is empty)."""
    inter, size_a, size_b = intersection_and_sizes(a, b)
    smaller = min(size_a, size_b)
    return inter / smaller if smaller else math.nan


def chance_jaccard(density: float) -> float:
    """Expected Jaccard of two independent random masks of density d: d / (2 − d)."""
    return density / (2.0 - density)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor with ties given their average rank (scipy's 'average'), float64.

    Each value's tie group spans [first, last] in sorted order, found by two binary searches,
    so nothing waits on the host (no data-dependent output sizes).
    """
    values, order = torch.sort(x.reshape(-1))
    first = torch.searchsorted(values, values, right=False)
    last = torch.searchsorted(values, values, right=True)  # one past the group's last position
    ranks = torch.empty(values.numel(), dtype=torch.float64, device=x.device)
    ranks[order] = (first + last + 1).to(torch.float64) / 2
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation in float64 (NaN when either input is constant)."""
    x = x.reshape(-1).to(torch.float64)
    y = y.reshape(-1).to(torch.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = torch.sqrt((xc * xc).sum() * (yc * yc).sum())
    if denom.item() == 0:
        return math.nan
    return float(((xc * yc).sum() / denom).clamp(-1.0, 1.0).item())


def _has_nan(parts: list[torch.Tensor]) -> bool:
    return any(p.is_floating_point() and bool(torch.isnan(p).any()) for p in parts)


def spearman(a: TensorOrDict, b: TensorOrDict) -> float:
    """Spearman ρ over all entries (tie-averaged ranks), equal to scipy.stats.spearmanr (NaN in → NaN out)."""
    xs, ys = _pair(a, b)
    if _has_nan(xs) or _has_nan(ys):
        return math.nan
    return pearson(average_ranks(_flat(xs)), average_ranks(_flat(ys)))


def _dense_ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.unique(x, sorted=True, return_inverse=True)[1]


def _tie_pairs(x: torch.Tensor) -> int:
    counts = torch.unique(x, return_counts=True)[1].to(torch.float64)
    return int((counts * (counts - 1) / 2).sum().item())


def _count_inversions(y: torch.Tensor) -> int:
    """Pairs i < j with y[i] > y[j], by a bottom-up merge sort: O(n log n) per level, log n levels.

    Each level merges sorted neighbour blocks with batched ``searchsorted`` (no re-sort): a
    right-block element moves left past exactly the left-block elements greater than it.
    """
    n = y.numel()
    if n < 2:
        return 0
    size = 1 << (n - 1).bit_length()
    # Padding with a value above every element adds no inversions (pads sit at the end).
    run = torch.full((size,), int(y.max().item()) + 1, dtype=torch.int64, device=y.device)
    run[:n] = y
    inversions = 0
    width = 1
    while width < size:
        blocks = run.view(-1, 2, width)
        left, right = blocks[:, 0].contiguous(), blocks[:, 1].contiguous()
        left_not_greater = torch.searchsorted(left, right, right=True)  # per right element
        inversions += int((width - left_not_greater).sum().item())
        offsets = torch.arange(width, device=y.device)
        merged = torch.empty_like(blocks.reshape(-1, 2 * width))
        merged.scatter_(1, offsets + torch.searchsorted(right, left, right=False), left)
        merged.scatter_(1, offsets + left_not_greater, right)
        run = merged.reshape(-1)
        width *= 2
    return inversions


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Kendall tau-b of two 1-D tensors (Knight's algorithm; scipy's definition)."""
    x, y = x.reshape(-1), y.reshape(-1)
    n = x.numel()
    if n < 2:
        return math.nan
    xr, yr = _dense_ranks(x), _dense_ranks(y)
    # Sort by x, then by y inside x ties, so pairs tied in x add no inversions.
    order = torch.sort(yr, stable=True).indices
    order = order[torch.sort(xr[order], stable=True).indices]
    xs, ys = xr[order], yr[order]
    total = n * (n - 1) // 2
    x_ties = _tie_pairs(xs)
    y_ties = _tie_pairs(ys)
    joint_ties = _tie_pairs(xs * (int(ys.max().item()) + 1) + ys)
    discordant = _count_inversions(ys)
    concordant_minus_discordant = total - x_ties - y_ties + joint_ties - 2 * discordant
    denom = math.sqrt(float(total - x_ties) * float(total - y_ties))
    return concordant_minus_discordant / denom if denom else math.nan


def kendall(a: TensorOrDict, b: TensorOrDict, *, max_n: int | None = None, seed: int = 0) -> float:
    """Kendall τ-b over all entries; with ``max_n``, over a seeded uniform subsample of that many
    (NaN in → NaN out, as scipy)."""
    return kendall_with_n(a, b, max_n=max_n, seed=seed)[0]


def sample_indices(n: int, max_n: int | None, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A seeded uniform sample of ``max_n`` of ``n`` positions (None when all ``n`` are used)."""
    if max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 2):
        raise SalienceBenchError(f"max_n={max_n!r} must be an integer ≥ 2 (or None for all entries)")
    if max_n is None or n <= max_n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_n].to(device)


def kendall_with_n(
    a: TensorOrDict, b: TensorOrDict, *, max_n: int | None = None, seed: int = 0
) -> tuple[float, int]:
    """(τ-b, number of entries it was computed on)."""
    xs, ys = _pair(a, b)
    x, y = _flat(xs), _flat(ys)
    pick = sample_indices(x.numel(), max_n, seed, x.device)
    if _has_nan(xs) or _has_nan(ys):
        return math.nan, x.numel() if pick is None else pick.numel()
    if pick is not None:
        x, y = x[pick], y[pick]
    return kendall_tau_b(x, y), x.numel()


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t-interval, n) of a few numbers (e.g. accuracies over seeds);
    the half-width is NaN for a single value."""
    from scipy import stats as scipy_stats

    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n
