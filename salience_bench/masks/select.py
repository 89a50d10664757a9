"""Scores → boolean masks with exactly k selected entries and deterministic ties.

Global top-k streams over the tensors: it finds the k-th largest score with a radix
select on the float bits (two histogram passes over the tensors, one tensor in
memory at a time) instead of concatenating every score into one tensor, so it works
when the scores do not fit in memory twice.

Ties at the threshold are broken by position: earlier tensors (in the order of the
score dict, i.e. model order) first, then lower flat index within a tensor. The same
scores therefore always give bitwise-identical masks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .. import fast_topk
from ..errors import SalienceBenchError
from ..tensors import ComputedTensors, numel_of

Mask = Mapping[str, torch.Tensor]


def selection_count(total: int, density: float) -> int:
    """round(density · total), with Python's round (ties to even)."""
    return int(round(density * total))


def _ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float32 order of ``scores`` (−0.0 folded into +0.0)."""
    bits = (scores.detach().float().contiguous() + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


_SAMPLE = 1 << 20


def kth_largest_key(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """(threshold key T, how many entries equal to T to take) for the k largest scores.

    Fast path: a strided sample of at most 2^20 scores brackets the k-th largest value; one pass
    counts the scores above the bracket (reductions only) and collects the few inside it, where
    the exact k-th value is found. If the bracket misses (an unlucky sample), the radix select
    below gives the exact answer anyway.
    """
    found = _on_triton(fast_topk.kth_largest_key, scores, k)
    return found if found is not None else _torch_kth_largest_key(scores, k)


def _torch_kth_largest_key(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """:func:`kth_largest_key` by the torch route: the sample bracket, else the radix select."""
    bracketed = _bracketed_threshold(scores, k)
    return bracketed if bracketed is not None else radix_kth_largest_key(scores, k)


def _triton_source(scores: Mapping[str, torch.Tensor]) -> "fast_topk.Source | None":
    """The scores as a source for the Triton route, where it applies: stored tensors as they are; scores
    computed on access (a mapping with ``shape_of`` and ``device``) in groups no larger than the largest tensor,
    each computed when the route's pass reaches it."""
    if isinstance(scores, dict):
        if not all(isinstance(s, torch.Tensor) for s in scores.values()):
            return None  # MaskSpec.apply names the value that is not a tensor
        tensors = [s.detach() for s in scores.values()]
        return fast_topk.Source.stored(tensors) if fast_topk.usable(tensors) else None
    if not isinstance(scores, ComputedTensors) or not fast_topk.available(scores.device):
        return None
    device, names = scores.device, list(scores)
    numels = [math.prod(scores.shape_of(n)) for n in names]
    if not fast_topk.sizes_fit(numels):
        return None

    def get(start: int, stop: int) -> list[torch.Tensor]:
        return [scores[n].detach().to(device=device, dtype=torch.float32).contiguous() for n in names[start:stop]]

    return fast_topk.Source(numels, get, device, group_numel=max(numels))


def _on_triton(route, scores: Mapping[str, torch.Tensor], k: int):
    """``route(source, k)`` on the Triton path, or None where it does not apply or declines."""
    source = _triton_source(scores)
    if source is None:
        return None
    try:
        return route(source, k)
    except fast_topk.NonFiniteScores as bad:
        raise _non_finite(list(scores)[bad.index]) from None


def _non_finite(name: str) -> SalienceBenchError:
    return SalienceBenchError(f"scores of {name!r} contain NaN or inf; cannot rank them")


_numel = numel_of  # a tensor's size without computing it where the mapping knows its shape


def _bracketed_threshold(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int] | None:
    total = sum(_numel(scores, n) for n in scores)
    if total <= 4 * _SAMPLE:
        return None  # small: the radix select is as fast
    stride = -(-total // _SAMPLE)
    # clone(): a strided view would keep each whole score tensor alive (scores may be computed on access)
    sample = torch.sort(torch.cat([s.detach().reshape(-1)[::stride].float().clone() for s in scores.values()]),
                        descending=True).values
    m = sample.numel()
    q = k / total
    margin = 8 * (m * q * (1 - q)) ** 0.5 + 32
    hi_rank, lo_rank = int(q * m - margin), int(q * m + margin)
    hi = sample[hi_rank] if hi_rank >= 0 else None
    lo = sample[lo_rank] if lo_rank < m else None

    def band(flat: torch.Tensor) -> torch.Tensor:
        inside = flat >= lo if lo is not None else torch.ones_like(flat, dtype=torch.bool)
        return inside & (flat <= hi) if hi is not None else inside

    # Counts stay on the device until one read for all tensors: no per-tensor host sync. Stored scores are
    # read twice; scores computed on access are computed again for the second pass instead of being kept.
    above = [torch.count_nonzero(s.detach().reshape(-1) > hi) for s in scores.values()] if hi is not None else []
    in_band = torch.stack([torch.count_nonzero(band(s.detach().reshape(-1))) for s in scores.values()]).tolist()
    above_n = int(torch.stack(above).sum().item()) if above else 0
    if not above_n < k <= above_n + sum(in_band):
        return None
    candidates = torch.cat([
        flat[torch.nonzero_static(band(flat), size=count).squeeze(1)]
        for flat, count in ((s.detach().reshape(-1), c) for s, c in zip(scores.values(), in_band))
    ])
    value = torch.topk(candidates.float(), k - above_n).values[-1]
    threshold = int(_ordered_keys(value.reshape(1)).item())
    strictly_above = above_n + int((candidates > value).sum().item())
    return threshold, k - strictly_above


def radix_kth_largest_key(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """(threshold key T, how many entries equal to T to take), exactly, by radix select.

    Radix select over the 32 key bits in two 16-bit passes: the first histograms the high half of
    every key, the second the low half of the keys whose high half is the one the k-th largest
    falls in. Histograms are summed over the tensors, one tensor in memory at a time, and read
    back once per pass.
    """
    hist = None
    for s in scores.values():
        keys = _ordered_keys(s).reshape(-1)
        h = torch.bincount(keys.bitwise_right_shift(16).add_(32768), minlength=65536)
        hist = h if hist is None else hist.add_(h)
    high_bucket, remaining = _walk_down(hist, k)
    high = high_bucket - 32768
    hist = None
    for s in scores.values():
        keys = _ordered_keys(s).reshape(-1)
        outside = keys.bitwise_right_shift(16) != high
        low = keys.bitwise_and_(0xFFFF).masked_fill_(outside, 65536)  # bin 65536 collects the rest
        h = torch.bincount(low, minlength=65537)
        hist = h if hist is None else hist.add_(h)
    low_bucket, remaining = _walk_down(hist[:65536], remaining)
    return high * 65536 + low_bucket, remaining


def _walk_down(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest entry (from the top) and k's rank inside it."""
    counts = hist.flip(0).cumsum(0)  # counts[j] = entries in the top j+1 buckets
    j = int(torch.searchsorted(counts, torch.tensor(k, device=counts.device)).item())
    above = int(counts[j - 1].item()) if j > 0 else 0
    return hist.numel() - 1 - j, k - above


class MaskSet(Mapping[str, torch.Tensor]):
    """Masks kept compactly: the sorted selected flat positions of each tensor (int32 where the tensor allows),
    materialised as a boolean mask shaped like the tensor when read (``masks[name]``)."""

    def __init__(self, indices: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]]):
        self._indices, self._shapes = dict(indices), {n: torch.Size(shapes[n]) for n in indices}

    @classmethod
    def from_bool(cls, masks: Mapping[str, torch.Tensor]) -> "MaskSet":
        return cls({n: _positions(m) for n, m in masks.items()}, {n: m.shape for n, m in masks.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        index = self._indices[name]
        mask = torch.zeros(math.prod(self._shapes[name]), dtype=torch.bool, device=index.device)
        mask[index.long()] = True
        return mask.view(self._shapes[name])

    def __iter__(self):
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def shape_of(self, name: str) -> torch.Size:
        return self._shapes[name]

    def indices(self, name: str) -> torch.Tensor:
        """Sorted flat positions of the selected entries of ``name``."""
        return self._indices[name]

    def count(self, name: str | None = None) -> int:
        """Selected entries in ``name``, or in all tensors."""
        return self._indices[name].numel() if name is not None else sum(i.numel() for i in self._indices.values())

    def nbytes(self) -> int:
        return sum(i.numel() * i.element_size() for i in self._indices.values())


def _compact(index: torch.Tensor, numel: int) -> torch.Tensor:
    """Flat positions as int32 where the tensor allows (fewer than 2^31 entries), else int64."""
    return index.to(torch.int32) if numel < 2**31 else index


def _positions(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1)
    return _compact(flat.nonzero().squeeze(1), flat.numel())


def top_k_mask(scores: Mapping[str, torch.Tensor], k: int) -> MaskSet:
    """Exactly ``k`` selected entries over all tensors: the largest scores, ties by position.

    Stored float32 CUDA scores take the multi-tensor Triton route (:mod:`salience_bench.fast_topk`: one
    launch per pass over all tensors, bitwise the same result). Otherwise, two passes after the threshold
    search, with one host read between them: the first counts each
    tensor's entries above and at the threshold, the second writes each tensor's selected positions
    (sizes known, so nothing waits on the device tensor by tensor)."""
    total = sum(_numel(scores, n) for n in scores)
    if not 0 < k <= total:
        raise SalienceBenchError(f"k={k} must be between 1 and the number of eligible weights ({total})")
    positions = _on_triton(fast_topk.top_k_positions, scores, k)
    if positions is not None:
        return MaskSet(dict(zip(scores, positions)), {n: s.shape for n, s in scores.items()})
    threshold, take_equal = _torch_kth_largest_key(scores, k)  # the Triton route, if it applied, declined
    counts = None
    for i, s in enumerate(scores.values()):
        keys = _ordered_keys(s)
        if counts is None:
            counts = torch.empty(len(scores), 2, dtype=torch.int64, device=keys.device)
        counts[i, 0], counts[i, 1] = torch.count_nonzero(keys > threshold), torch.count_nonzero(keys == threshold)
    indices, shapes = {}, {}
    for (name, s), (above, equal) in zip(scores.items(), counts.tolist()):
        take = min(equal, take_equal)
        take_equal -= take
        keys = _ordered_keys(s).reshape(-1)
        mask = keys > threshold
        if take:
            ties = keys == threshold
            mask |= ties & (ties.cumsum(0) <= take) if take < equal else ties
        indices[name] = _compact(torch.nonzero_static(mask, size=above + take).squeeze(1), keys.numel())
        shapes[name] = s.shape
    return MaskSet(indices, shapes)


def _top_k_per_tensor(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> MaskSet:
    """Each tensor's own ``counts[name]`` largest scores (scope "layer" and "lora"); a count of 0 selects none."""
    indices, shapes = {}, {}
    for name, s in scores.items():
        count = counts[name]
        indices[name] = (top_k_mask({name: s}, count).indices(name) if count
                         else _compact(torch.empty(0, dtype=torch.int64, device=s.device), s.numel()))
        shapes[name] = s.shape
    return MaskSet(indices, shapes)


def _as_2d(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(1, -1) if s.dim() < 2 else s.reshape(s.shape[0], -1)


def _as_2d_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, columns) of a tensor of ``shape`` as :func:`_as_2d` views it."""
    numel = math.prod(shape)
    if len(shape) < 2:
        return 1, numel
    return shape[0], numel // shape[0] if shape[0] else 0


def _top_per_row(rows: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` largest entries of every row (stable sort: ties to the lower column)."""
    mask = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    if count > 0:
        order = torch.sort(_ordered_keys(rows), dim=-1, descending=True, stable=True).indices[..., :count]
        mask.scatter_(-1, order, True)
    return mask


def _row_mask(s: torch.Tensor, density: float) -> torch.Tensor:
    rows = _as_2d(s)
    return _top_per_row(rows, selection_count(rows.shape[1], density)).reshape(s.shape)


def _nm_mask(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows = _as_2d(s)
    cols = rows.shape[1]
    padded = torch.nn.functional.pad(rows.float(), (0, -cols % m), value=float("-inf"))
    groups = padded.reshape(rows.shape[0], -1, m)
    return _top_per_row(groups, n).reshape(rows.shape[0], -1)[:, :cols].reshape(s.shape)
