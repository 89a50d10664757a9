"""Mask overlap and rank correlation, in torch so they run where the scores live.

Every function takes either one tensor or a dict of tensors (flattened in the key
order of the first argument; both dicts must hold the same names and shapes).
Definitions follow scipy.stats: Spearman ρ is the Pearson correlation of
tie-averaged ranks; Kendall τ is tau-b. Both are exact; Kendall can be asked to use a
seeded subsample (``max_n``) for speed, and reports which sample size it used.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Union

import torch

from . import fast_stats
from .errors import SalienceBenchError, is_int
from .runtime import available_memory
from .tensors import CompactMasks, shape_of

TensorOrDict = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class _Pair:
    """Two inputs walked part by part (one tensor of each at a time, for score dicts computed on access)."""

    def __init__(self, a: TensorOrDict, b: TensorOrDict):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            self.a, self.b, self.names = {"": a}, {"": b}, [""]
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            if list(a) != list(b) and set(a) != set(b):
                missing = sorted(set(a) ^ set(b))
                raise SalienceBenchError(f"the two inputs cover different tensors: {missing[:5]}")
            self.a, self.b, self.names = a, b, list(a)
        else:
            raise SalienceBenchError("compare a tensor with a tensor, or a dict of tensors with a dict of tensors")
        self.shapes = [shape_of(self.a, n) for n in self.names]
        for name, shape in zip(self.names, self.shapes):
            if tuple(shape_of(self.b, name)) != tuple(shape):
                raise SalienceBenchError(f"shape mismatch: {tuple(shape)} vs {tuple(shape_of(self.b, name))}")
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.numel = sum(self.sizes)

    def parts(self, side: str):
        source = self.a if side == "a" else self.b
        for name in self.names:
            yield source[name].reshape(-1)

    def both(self):
        for name in self.names:
            yield self.a[name], self.b[name]


def intersection_and_sizes(a: TensorOrDict, b: TensorOrDict) -> tuple[int, int, int]:
    """(|A ∩ B|, |A|, |B|) of two boolean masks, one tensor at a time (compact masks by their positions)."""
    pair = _Pair(a, b)
    counts = []
    if isinstance(pair.a, CompactMasks) and isinstance(pair.b, CompactMasks):  # sorted positions: no boolean tensors
        for name in pair.names:
            x, y = pair.a.indices(name), pair.b.indices(name)
            counts.append(torch.stack([torch.isin(x, y).sum(), torch.tensor(x.numel(), device=x.device),
                                       torch.tensor(y.numel(), device=x.device)]))
    for x, y in ([] if counts else pair.both()):
        x, y = x.bool(), y.bool()
        counts.append(torch.stack([(x & y).sum(), x.sum(), y.sum()]))
    inter, size_a, size_b = (int(v) for v in torch.stack(counts).sum(0).tolist())
    return inter, size_a, size_b


def jaccard_from_counts(inter: int, size_a: int, size_b: int) -> float:
    union = size_a + size_b - inter
    return inter / union if union else math.nan


def overlap_from_counts(inter: int, size_a: int, size_b: int) -> float:
    smaller = min(size_a, size_b)
    return inter / smaller if smaller else math.nan


def jaccard(a: TensorOrDict, b: TensorOrDict) -> float:
    """|A ∩ B| / |A ∪ B| (NaN when both masks are empty)."""
    return jaccard_from_counts(*intersection_and_sizes(a, b))


def overlap_coefficient(a: TensorOrDict, b: TensorOrDict) -> float:
    """|A ∩ B| / min(|A|, |B|) (NaN when either mask is empty)."""
    return overlap_from_counts(*intersection_and_sizes(a, b))


def chance_jaccard(density: float) -> float:
    """Expected Jaccard of two independent random masks of density d: d / (2 − d)."""
    return density / (2.0 - density)


RANK_CHUNK = 1 << 24  # entries per step of the rank and correlation passes (bounds their temporaries)


def _gather(parts, numel: int) -> torch.Tensor:
    """The parts' values, flattened into one buffer filled part by part (each part computed once)."""
    buffer = None
    offset = 0
    for part in parts:
        if buffer is None:
            dtype = part.dtype if part.is_floating_point() else torch.float64
            buffer = torch.empty(numel, dtype=dtype, device=part.device)
        buffer[offset : offset + part.numel()] = part
        offset += part.numel()
    return buffer


SORTED_RANKS_MAX = 1 << 24  # up to this many entries one sort ranks them; beyond, value buckets bound the memory …
# … unless one sort's ~24 bytes per entry fit in this and in a quarter of the free memory: on 2 CPU cores the 64 value
# ranges cost 60 s for SmolLM2's 106M weights where one sort takes 17 s; a 0.95B model's 20 GB sort still goes by ranges
SORT_BUDGET_BYTES = 4 << 30
SORT_BYTES_PER_ENTRY = 24
RANK_BUCKETS = 64


def doubled_ranks(values: torch.Tensor) -> torch.Tensor:
    """2 × the tie-averaged 1-based rank of every entry of a 1-D tensor, as exact integers (int32 where
    they fit, else int64): first + last + 1 of its tie group in sorted order.

    Up to 2^24 entries, or where one sort fits in 4 GiB and a quarter of the free memory: one sort. Beyond: the
    values are split into about 64 value ranges by a sorted
    sample; each range's entries are sorted on their own and ranked after the entries of the ranges below,
    and a value the sample shows to be heavily tied gets a range of its own, ranked without sorting. Ties
    never straddle ranges, so the ranks are the same; the extra memory is 1 byte per entry (a membership
    mask) plus one range at a time, instead of a sort of everything (about 24 bytes per entry on a GPU)."""
    values = values.reshape(-1)
    n = values.numel()
    dtype = torch.int32 if 2 * n + 1 < 2**31 else torch.int64
    ranks = torch.empty(n, dtype=dtype, device=values.device)
    if n <= SORTED_RANKS_MAX or _one_sort_fits(n, values.device):
        _rank_sorted(values, ranks, None, 0)
        return ranks
    below = 0
    for lo, hi in _value_ranges(values):
        inside = values >= lo if hi is None else (values >= lo) & (values < hi)
        if hi is not None and bool(torch.nextafter(lo, hi) == hi):  # a single value: one tie group
            count = int(inside.sum())
            ranks.masked_fill_(inside, 2 * below + count + 1)
        else:
            members = inside.nonzero().squeeze(1)
            count = members.numel()
            if count:
                _rank_sorted(values[members], ranks, members, below)
        below += count
        del inside
    return ranks


def _one_sort_fits(n: int, device: torch.device) -> bool:
    need = SORT_BYTES_PER_ENTRY * n
    return need <= SORT_BUDGET_BYTES and need <= 0.25 * available_memory(device)


def _group_starts(sorted_values: torch.Tensor) -> torch.Tensor:
    """The first entry and each that differs from the one before: in a sorted 1-D tensor, its tie groups' starts."""
    starts = torch.ones(sorted_values.numel(), dtype=torch.bool, device=sorted_values.device)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return starts


def _group_bounds(starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the group starts (:func:`_group_starts`): each entry's tie group (0-based ids in order) and every
    group's first index (``firsts[g]``; entries past the last group hold n, so ``firsts[g + 1]`` ends group g).
    O(n) passes — a prefix sum and one scatter — and no host sync."""
    n = starts.numel()
    itype = torch.int32 if n < 2**31 else torch.int64
    group = starts.cumsum(0, dtype=itype).sub_(1)
    firsts = torch.full((n + 1,), n, dtype=itype, device=starts.device)
    # Non-starts all write to slot n, which is then reset: only each group's start lands in firsts[group].
    firsts.scatter_(0, torch.where(starts, group, n).long(), torch.arange(n, dtype=itype, device=starts.device))
    firsts[n] = n
    return group, firsts


def _rank_sorted(values: torch.Tensor, ranks: torch.Tensor, positions: torch.Tensor | None, below: int) -> None:
    """Write the doubled ranks of ``values`` (at ``positions`` of ``ranks``), ``below`` entries ranking lower:
    after one sort, an entry's doubled rank is (first + 1) + (last + 1) of its tie group, read from the
    groups' first indices (:func:`_group_bounds`) — O(n), no binary searches, no host sync."""
    sorted_values, order = torch.sort(values)
    if fast_stats.usable(sorted_values):  # three fused Triton kernels on a GPU; the same integers
        return fast_stats.rank_sorted(sorted_values, order, ranks, positions, below)
    group, firsts = _group_bounds(_group_starts(sorted_values))
    del sorted_values
    group = group.long()
    doubled = firsts[group].to(ranks.dtype) + firsts[group + 1].to(ranks.dtype) + (2 * below + 1)
    ranks[order if positions is None else positions[order]] = doubled


def _value_ranges(values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """[lo, hi) ranges covering every value, in increasing order (the last open above); each sampled
    boundary value also gets the one-value range [v, nextafter(v)) so that heavy ties rank without a sort."""
    stride = max(1, values.numel() // (1 << 20))
    sample = torch.sort(values[::stride]).values
    cuts = torch.unique(sample[:: max(1, sample.numel() // RANK_BUCKETS)])
    bounds = [values.min()]
    for cut in cuts:
        after = torch.nextafter(cut, torch.tensor(float("inf"), dtype=cut.dtype, device=cut.device))
        if bool(cut > bounds[-1]):
            bounds.append(cut)
        if bool(after > bounds[-1]) and bool(torch.isfinite(after)):
            bounds.append(after)
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:])] + [(bounds[-1], None)]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor with ties given their average rank (scipy's 'average'), float64."""
    return doubled_ranks(x.reshape(-1)).to(torch.float64) / 2


def rank_correlation(ra: torch.Tensor, rb: torch.Tensor, nan_flags: list[torch.Tensor] = ()) -> float:
    """Pearson correlation of two doubled-rank vectors (see :func:`doubled_ranks`) = Spearman ρ.

    The doubled ranks of n entries always average n + 1, so they are centred exactly; the sums run in
    float64, chunk by chunk."""
    n = ra.numel()
    center = n + 1
    totals = torch.zeros(3, dtype=torch.float64, device=ra.device)
    for start in range(0, n, RANK_CHUNK):
        # Centred exactly (integers up to 2n + 1 are exact in float64); dot products sum without a product buffer.
        x = ra[start : start + RANK_CHUNK].to(torch.float64).sub_(center)
        y = rb[start : start + RANK_CHUNK].to(torch.float64).sub_(center)
        totals += torch.stack([torch.dot(x, y), torch.dot(x, x), torch.dot(y, y)])
    # One host read for the sums and for whether any input held NaN (``nan_flags``: 0-dim bools).
    values = torch.cat([totals, *(f.reshape(1).to(totals) for f in nan_flags)]).tolist()
    sxy, sxx, syy = values[:3]
    if any(values[3:]) or sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def has_nan(parts) -> bool:
    return any(p.is_floating_point() and bool(torch.isnan(p).any()) for p in parts)


def ranks_of(values: TensorOrDict) -> tuple[torch.Tensor, torch.Tensor]:
    """Doubled ranks over all entries of a tensor or a dict of tensors (model order), and a 0-dim "held a
    NaN" flag for :func:`rank_correlation` — no host sync; a lone tensor is ranked without a copy.

    Peak beside the result: the values (a dict's, gathered) and, for large inputs, 1 byte per entry."""
    pair = _Pair(values, values)
    flat = values.reshape(-1) if isinstance(values, torch.Tensor) else _gather(pair.parts("a"), pair.numel)
    has_nan = torch.isnan(flat).any() if flat.is_floating_point() else torch.zeros((), dtype=torch.bool, device=flat.device)
    return doubled_ranks(flat), has_nan


def spearman_from_ranks(ra: tuple[torch.Tensor, torch.Tensor], rb: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Spearman ρ from two :func:`ranks_of` results (NaN where either input held a NaN)."""
    return rank_correlation(ra[0], rb[0], [ra[1], rb[1]])


def spearman(a: TensorOrDict, b: TensorOrDict) -> float:
    """Spearman ρ over all entries (tie-averaged ranks), equal to scipy.stats.spearmanr (NaN in → NaN out).

    Extra memory about 20 bytes per entry (the sort of one input beside the other's int32 ranks); one host
    read in all."""
    _Pair(a, b)  # same tensors and shapes
    return spearman_from_ranks(ranks_of(a), ranks_of(b))


def spearman_standard_error(rho: float, sample: int, population: int) -> float:
    """Standard error of Spearman ρ estimated on a uniform sample of ``sample`` of ``population`` entries:
    Fisher's z with Fieller, Hartley & Pearson's variance 1.06 / (n − 3), back through the delta method,
    with the finite-population correction."""
    if sample >= population:
        return 0.0
    if sample <= 3 or not math.isfinite(rho):
        return math.nan
    return (1 - rho * rho) * math.sqrt(1.06 / (sample - 3)) * math.sqrt(1 - sample / population)


def _count_inversions(y: torch.Tensor) -> int:
    """Pairs i < j with y[i] > y[j] for non-negative integer ``y``, by a most-significant-bit-first radix
    partition: one streaming level per bit of max(y), each a few scans, gathers and scatters.

    At the level of bit b the entries are stably ordered by their bits above b, in groups of equal high
    bits (each entry carries its group's start and size). Inside a group, a pair decided at bit b is an
    inversion when the earlier entry has bit b set and the later one not, so the level adds, over the
    entries whose bit is 0, the number of set-bit entries before them in their group. Then each group is
    stably split by bit b (zeros first), which orders the entries by one more bit. Pairs equal in every
    bit are never counted. (The earlier merge-sort count needed log2 n levels of batched binary searches.)"""
    n = y.numel()
    if n < 2:
        return 0
    if fast_stats.usable(y):  # one fused Triton kernel per level on a GPU; the same count
        return fast_stats.count_inversions(y)
    device = y.device
    # int32 where n allows, used directly as indices (no conversion per level): half the traffic of int64
    itype = torch.int32 if n < 2**31 else torch.int64
    values = y.to(itype)
    bits = int(values.max().item()).bit_length()
    index = torch.arange(n, dtype=itype, device=device)
    group_start = torch.zeros(n, dtype=itype, device=device)
    group_size = torch.full((n,), n, dtype=itype, device=device)
    ones_through = torch.zeros(n + 1, dtype=itype, device=device)  # ones_through[i] = set bits among entries < i
    inversions = torch.zeros((), dtype=torch.int64, device=device)
    for b in range(bits - 1, -1, -1):
        bit = (values >> b) & 1
        torch.cumsum(bit, 0, dtype=itype, out=ones_through[1:])
        before_group = ones_through[group_start]
        ones_before = ones_through[:-1] - before_group
        ones_in_group = ones_through[group_start + group_size] - before_group
        is_one = bit.bool()
        inversions += torch.where(is_one, 0, ones_before).sum(dtype=torch.int64)
        zeros_in_group = group_size - ones_in_group
        new_position = torch.where(is_one, group_start + zeros_in_group + ones_before,
                                   index - ones_before)  # zeros keep (start + zeros before them)
        new_start = torch.where(is_one, group_start + zeros_in_group, group_start)
        new_size = torch.where(is_one, ones_in_group, zeros_in_group)
        moved = torch.empty_like(values)
        moved[new_position] = values  # a permutation: every slot written once
        values = moved
        moved = torch.empty_like(group_start)
        moved[new_position] = new_start
        group_start = moved
        moved = torch.empty_like(group_size)
        moved[new_position] = new_size
        group_size = moved
    return int(inversions.item())


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Kendall tau-b of two 1-D tensors (scipy's definition): ``scipy.stats.kendalltau`` for CPU
    tensors (its compiled merge sort is the fastest route there), :func:`kendall_tau_b_torch` elsewhere."""
    if x.device.type == "cpu" and y.device.type == "cpu":
        from scipy import stats as scipy_stats

        if x.numel() < 2:
            return math.nan
        return float(scipy_stats.kendalltau(x.reshape(-1).double().numpy(), y.reshape(-1).double().numpy()).statistic)
    return kendall_tau_b_torch(x, y)


def _ties(starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tie-group id of every entry, tied pairs Σ c(c−1)/2) from the group starts of a sorted run: an entry i of
    a group starting at f is tied with the i − f before it."""
    group, firsts = _group_bounds(starts)
    index = torch.arange(starts.numel(), dtype=firsts.dtype, device=starts.device)
    return group, (index - firsts[group.long()]).sum(dtype=torch.int64)


def kendall_tau_b_torch(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Kendall tau-b of two 1-D tensors in torch (Knight's algorithm), for tensors on a GPU.

    Two stable sorts (by y, then by x: the entries end ordered by x, and by y inside x ties), y's dense
    ranks and the three tie counts from the sorted runs, and the discordant pairs as the inversions of y's
    ranks in that order (:func:`_count_inversions`). One host read at the end."""
    x, y = x.reshape(-1), y.reshape(-1)
    n = x.numel()
    if n < 2:
        return math.nan
    y_sorted, by_y = torch.sort(y, stable=True)
    y_rank_sorted, y_ties = _ties(_group_starts(y_sorted))
    del y_sorted
    y_rank = torch.empty_like(y_rank_sorted).scatter_(0, by_y, y_rank_sorted)  # dense rank of each entry of y
    del y_rank_sorted
    x_sorted, then_by_x = torch.sort(x[by_y], stable=True)
    ys = y_rank[by_y[then_by_x]]
    del by_y, then_by_x, y_rank
    x_starts = _group_starts(x_sorted)
    del x_sorted
    _, x_ties = _ties(x_starts)
    # Pairs tied in both: runs of equal (x, y) in this lexicographic order start where x or y changes.
    _, joint_ties = _ties(x_starts | _group_starts(ys))
    del x_starts
    discordant = _count_inversions(ys)
    total = n * (n - 1) // 2
    x_ties, y_ties, joint_ties = torch.stack([x_ties, y_ties, joint_ties]).tolist()
    concordant_minus_discordant = total - x_ties - y_ties + joint_ties - 2 * discordant
    denom = math.sqrt(float(total - x_ties) * float(total - y_ties))
    return concordant_minus_discordant / denom if denom else math.nan


def kendall(a: TensorOrDict, b: TensorOrDict, *, max_n: int | None = None, seed: int = 0) -> float:
    """Kendall τ-b over all entries; with ``max_n``, over a seeded uniform subsample of that many
    (NaN in → NaN out, as scipy)."""
    return kendall_with_n(a, b, max_n=max_n, seed=seed)[0]


SMALL_POPULATION = 1 << 24  # up to here a CPU randperm draws the sample (fast enough, and stable across devices)


def sample_indices(n: int, max_n: int | None, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A seeded uniform sample (without replacement) of ``max_n`` of ``n`` positions, sorted; None when all
    ``n`` are used.

    Populations up to 2^24 use a CPU ``randperm``; larger ones draw in O(max_n) time and memory on
    ``device``: seeded uniform draws with replacement, duplicates dropped (topped up until there are
    enough), then a uniform ``max_n``-subset of them — every ``max_n``-subset equally likely."""
    if max_n is not None and (not is_int(max_n) or max_n < 2):
        raise SalienceBenchError(f"max_n={max_n!r} must be an integer ≥ 2 (or None for all entries)")
    if max_n is None or n <= max_n:
        return None
    if n <= SMALL_POPULATION:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_n].sort().values.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    drawn = torch.empty(0, dtype=torch.int64, device=device)
    while drawn.numel() < max_n:
        extra = max_n - drawn.numel() + max_n // 16 + 64
        drawn = torch.unique(torch.cat([drawn, torch.randint(0, n, (extra,), generator=generator, device=device)]))
    keep = torch.randperm(drawn.numel(), generator=generator, device=device)[:max_n]
    return drawn[keep].sort().values


def _sampled(pair: "_Pair", side: str, positions: torch.Tensor) -> torch.Tensor:
    """The values at sorted global ``positions``, gathered part by part (no concatenation)."""
    out = []
    offset = 0
    bounds = torch.tensor([0, *itertools.accumulate(pair.sizes)], device=positions.device)
    cuts = torch.searchsorted(positions, bounds).tolist()
    for part, size, lo, hi in zip(pair.parts(side), pair.sizes, cuts[:-1], cuts[1:]):
        if hi > lo:
            out.append(part[(positions[lo:hi] - offset).to(part.device)])
        offset += size
    return torch.cat(out)


def values_at(values: TensorOrDict, positions: torch.Tensor | None) -> torch.Tensor:
    """All entries of a tensor or dict of tensors in order (``positions`` None), or those at sorted global
    ``positions`` — read part by part."""
    pair = _Pair(values, values)
    return _gather(pair.parts("a"), pair.numel) if positions is None else _sampled(pair, "a", positions)


def kendall_with_n(
    a: TensorOrDict, b: TensorOrDict, *, max_n: int | None = None, seed: int = 0
) -> tuple[float, int]:
    """(τ-b, number of entries it was computed on)."""
    pair = _Pair(a, b)
    device = next(pair.parts("a")).device
    pick = sample_indices(pair.numel, max_n, seed, device)
    if pick is None:
        x, y = _gather(pair.parts("a"), pair.numel), _gather(pair.parts("b"), pair.numel)
    else:
        x, y = _sampled(pair, "a", pick), _sampled(pair, "b", pick)
    if has_nan([x, y]):
        return math.nan, x.numel()
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


# The studies' decision rule for a claim "A is at least as good as B" (issue #17, fixed before the runs): over paired
# seeds, the 95% t-interval of A − B in the headline metric. A shortfall within half a point counts as "as good".
CLAIM_MARGIN = 0.005


def claim_verdict(differences, margin: float = CLAIM_MARGIN) -> tuple[str, float, float, float]:
    """(verdict, mean, low, high) for "A ≥ B" from paired differences A − B: **holds** if the interval's lower
    bound is above −``margin``, **does not hold** if its upper bound is below 0, else **inconclusive** (also with
    fewer than two pairs: no interval)."""
    mean, half, _ = mean_ci(differences)
    low, high = mean - half, mean + half
    if math.isnan(half):
        return "inconclusive", mean, low, high
    return ("holds" if low > -margin else "does not hold" if high < 0 else "inconclusive"), mean, low, high


def claim_rule(margin: float = CLAIM_MARGIN) -> str:
    """The rule of :func:`claim_verdict` in words, for reports."""
    return (f"paired 95% interval of the difference; holds if its lower bound > −{margin * 100:.1f} points, does not "
            "hold if its upper bound < 0, else inconclusive")
