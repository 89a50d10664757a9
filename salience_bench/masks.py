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

from dataclasses import asdict, dataclass
import math
from typing import Collection, Mapping, Sequence

import torch

from . import fast_topk
from .errors import SalienceBenchError, is_int, is_number
from .tiles import block_sums, expand_tiles

Mask = Mapping[str, torch.Tensor]
SCOPES = ("global", "layer", "lora")
STRUCTURES = ("unstructured", "row", "block", "nm")


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
    shape_of, device = getattr(scores, "shape_of", None), getattr(scores, "device", None)
    if shape_of is None or not fast_topk.available(device):
        return None
    names = list(scores)
    numels = [math.prod(shape_of(n)) for n in names]
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


def _numel(scores: Mapping[str, torch.Tensor], name: str) -> int:
    """A tensor's size without computing it where the mapping knows its shape (scores computed on access)."""
    shape_of = getattr(scores, "shape_of", None)
    return math.prod(shape_of(name)) if shape_of is not None else scores[name].numel()


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


@dataclass(frozen=True)
class MaskSpec:
    """How scores become a mask: size (``density`` or ``k``), ``scope``, ``structure`` and its settings.

    Validated once, here, whoever builds it (the CLI, :func:`make_mask`, a study or training).
    ``density`` d ∈ (0, 1] selects exactly round(d·N) entries (N = all eligible weights for
    ``scope="global"``, each tensor's own size for ``scope="layer"``); ``k`` selects exactly k entries
    globally. Give one of the two (neither for ``structure="nm"``, whose density is N/M).
    """

    density: float | None = None
    k: int | None = None
    scope: str = "global"
    structure: str = "unstructured"
    block_size: int = 64
    nm: tuple[int, int] = (2, 4)
    rank: int | None = None  # scope "lora": each tensor gets exactly rank·(rows + columns) entries

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise SalienceBenchError(f"unknown scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        if self.scope == "lora":
            if not is_int(self.rank) or self.rank < 1:
                raise SalienceBenchError(f"scope 'lora' needs rank (--rank) as an integer ≥ 1, got {self.rank!r}")
            if self.density is not None or self.k is not None or self.structure != "unstructured":
                raise SalienceBenchError("scope 'lora' sizes each tensor by its rank: give neither density nor k, "
                                         "and no structure")
            return
        if self.rank is not None:
            raise SalienceBenchError(f"rank={self.rank} applies to scope 'lora' only (got scope {self.scope!r})")
        if self.structure not in STRUCTURES:
            raise SalienceBenchError(f"unknown structure {self.structure!r}; valid: {', '.join(STRUCTURES)}")
        if not is_int(self.block_size) or self.block_size < 1:
            raise SalienceBenchError(f"block size {self.block_size!r} must be an integer ≥ 1")
        nm = tuple(self.nm) if isinstance(self.nm, (tuple, list)) else self.nm
        if not (isinstance(nm, tuple) and len(nm) == 2 and all(is_int(x) for x in nm) and 0 < nm[0] <= nm[1]):
            raise SalienceBenchError(f"N:M must be two integers with 0 < N ≤ M, got {self.nm!r}")
        object.__setattr__(self, "nm", nm)
        if self.structure == "nm":
            if self.density is not None or self.k is not None:
                raise SalienceBenchError(
                    f"structure 'nm' fixes the density at N/M={nm[0]}/{nm[1]}; give neither density nor k")
            return
        if (self.density is None) == (self.k is None):
            raise SalienceBenchError(f"give exactly one of density and k (got density={self.density}, k={self.k})")
        if self.k is not None:
            if not is_int(self.k) or self.k < 1:
                raise SalienceBenchError(f"k={self.k!r} must be an integer between 1 and the number of eligible weights")
            if self.scope != "global":
                raise SalienceBenchError(f"k={self.k} is a global count; use density with scope={self.scope!r}")
            if self.structure == "row":
                raise SalienceBenchError("structure 'row' selects a fraction of every row; use density, not k")
        elif not is_number(self.density) or not 0 < self.density <= 1:
            raise SalienceBenchError(f"density={self.density!r} must be in (0, 1]")

    @property
    def target_density(self) -> float | None:
        """The fraction asked for (N/M for ``nm``); None when sized by ``k`` or by a LoRA rank."""
        return self.nm[0] / self.nm[1] if self.structure == "nm" else self.density

    def count(self, total: int, shapes: Mapping[str, Sequence[int]] | None = None) -> int:
        """The number of weights this spec aims at among ``total`` eligible ones (scope "lora": needs ``shapes``)."""
        if self.scope == "lora":
            return sum(self.lora_count(shape) for shape in (shapes or {}).values())
        return self.k if self.k is not None else selection_count(total, self.target_density)

    def lora_count(self, shape: Sequence[int]) -> int:
        """rank · (rows + columns): LoRA's trainable count on a weight of this shape (LIFT's and SHiRA's budget)."""
        rows, cols = _as_2d_shape(shape)
        return self.rank * (rows + cols)

    def check_shapes(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Refuse, before anything is scored, a spec that cannot make a mask for tensors of these shapes:
        ``k`` above the eligible count, a block larger than every tensor, a density that selects nothing."""
        if not shapes:
            raise SalienceBenchError("no tensors to mask")
        sides = {name: _as_2d_shape(shape) for name, shape in shapes.items()}
        total = sum(r * c for r, c in sides.values())
        if self.scope == "lora":
            for name, shape in shapes.items():
                if self.lora_count(shape) > math.prod(shape):
                    raise SalienceBenchError(
                        f"rank {self.rank} asks {self.lora_count(shape):,} entries of {name!r}, which has "
                        f"{math.prod(shape):,}; use a rank ≤ {max(1, math.prod(shape) // sum(sides[name]))}")
            return
        if self.k is not None and self.k > total:
            raise SalienceBenchError(f"k={self.k} is larger than the {total} eligible weights")
        if self.structure == "nm":
            return
        if self.structure == "block":
            largest = max(max(side) for side in sides.values())
            if self.block_size > largest:
                raise SalienceBenchError(f"block size {self.block_size} is larger than every eligible tensor "
                                         f"(longest side {largest}); valid: 1 … {largest}")
            tiles = {n: -(-r // self.block_size) * -(-c // self.block_size) for n, (r, c) in sides.items()}
            self._check_selects(tiles, "tiles")
        elif self.structure == "row":
            selected = sum(r * selection_count(c, self.density) for r, c in sides.values())
            if selected == 0:
                widest = max(c for _, c in sides.values())
                raise SalienceBenchError(
                    f"density={self.density} selects 0 entries of every row (the widest row has {widest}: "
                    f"round({self.density} × {widest}) = 0); raise it to at least {0.5 / widest:.2g}")
        else:
            self._check_selects({n: r * c for n, (r, c) in sides.items()}, "eligible weights")

    def _check_selects(self, counts: Mapping[str, int], unit: str) -> None:
        total = sum(counts.values())
        if self.k is not None:
            return
        if self.scope == "global" and selection_count(total, self.density) == 0:
            raise SalienceBenchError(f"density={self.density} selects 0 of {total} {unit}; raise it")
        if self.scope == "layer" and not any(selection_count(n, self.density) for n in counts.values()):
            raise SalienceBenchError(f"density={self.density} selects 0 {unit} in every tensor; raise it")

    def apply(self, scores: Mapping[str, torch.Tensor], *, transposed: Collection[str] = ()) -> "MaskSet":
        """The masks for ``scores`` (see :func:`make_mask`), kept as selected positions per tensor. ``transposed``
        names the tensors stored input × output (transformers' ``Conv1D``; :attr:`Scores.transposed` lists a scored
        model's), whose output rows are columns: structures ``row`` and ``nm`` select along them."""
        if not isinstance(scores, Mapping) or not scores:
            raise SalienceBenchError(f"scores must be a non-empty dict of tensors by name, got {type(scores).__name__}"
                                     + (" (empty)" if isinstance(scores, Mapping) else ""))
        shapes, bad = {}, None
        # The Triton route of the global top-k counts NaN and inf in its own pass over the scores.
        on_triton = (self.structure, self.scope) == ("unstructured", "global") and _triton_source(scores) is not None
        if on_triton and not isinstance(scores, dict):
            # scores computed on access: not computed an extra time here; shapes come from the mapping
            shapes = {name: scores.shape_of(name) for name in scores}
        else:
            for name, s in scores.items():  # one tensor at a time (scores may be computed on access)
                if not isinstance(s, torch.Tensor):
                    raise SalienceBenchError(f"scores of {name!r} must be a tensor, got {type(s).__name__}")
                if s.is_floating_point() and not on_triton:  # a running count on the device: one host read
                    count = s.numel() - torch.isfinite(s).count_nonzero()
                    bad = count if bad is None else bad + count
                shapes[name] = s.shape
        if bad is not None and int(bad):
            raise _non_finite(next(n for n, s in scores.items() if s.is_floating_point() and not torch.isfinite(s).all()))
        self.check_shapes(shapes)
        if self.structure in ("nm", "row"):
            select = (lambda s: _nm_mask(s, *self.nm)) if self.structure == "nm" else (lambda s: _row_mask(s, self.density))
            return MaskSet({name: _positions(select(s.T).T if name in transposed else select(s))
                            for name, s in scores.items()}, shapes)
        if self.structure == "block":
            block = self.block_size
            tiles = {name: block_sums(_as_2d(s), block) for name, s in scores.items()}
            tile_k = None if self.k is None else max(1, min(round(self.k / block**2), sum(t.numel() for t in tiles.values())))
            tile_masks = _unstructured(tiles, self.density if self.k is None else None, tile_k, self.scope)
            return MaskSet({name: _positions(expand_tiles(tile_masks[name], block, _as_2d_shape(shapes[name])))
                            for name in scores}, shapes)
        if self.scope == "lora":
            return _top_k_per_tensor(scores, {name: self.lora_count(shape) for name, shape in shapes.items()})
        return _unstructured(scores, self.density, self.k, self.scope)

    def describe(self, realised_density: float | None = None) -> str:
        """A short label for titles: "top-1.00% masks (global)", "2:4 masks" …"""
        if self.structure == "nm":
            return f"{self.nm[0]}:{self.nm[1]} masks"
        if self.scope == "lora":
            return f"LoRA-matched masks (rank {self.rank}: r·(m+n) per tensor)"
        density = realised_density if realised_density is not None else self.density
        size = f"top-{density:.2%}" if density is not None else f"top-{self.k:,}"
        return f"{size} masks ({self.scope}{'' if self.structure == 'unstructured' else ', ' + self.structure})"

    def to_dict(self) -> dict:
        return asdict(self)


def make_mask(
    scores: Mapping[str, torch.Tensor],
    density: float | None = None,
    *,
    k: int | None = None,
    scope: str = "global",
    structure: str = "unstructured",
    block_size: int = 64,
    nm: tuple[int, int] = (2, 4),
    rank: int | None = None,
    transposed: Collection[str] = (),
) -> "MaskSet":
    """Masks selecting the highest-scoring weights (the options are those of :class:`MaskSpec`): a mapping
    from tensor name to a boolean mask shaped like it, kept compactly as selected positions.

    Structures: ``unstructured``; ``row`` (round(d·columns) entries in every output row, as
    Wanda; exact per row); ``block`` (block_size² tiles ranked by their summed score, SMT-style:
    exactly round(d·number of tiles) tiles, or round(k / block_size²); edge tiles may be
    smaller, so the realised density can differ slightly from d); ``nm`` (in every group of M
    consecutive entries along the input dimension keep the N largest: density N/M, exact when
    the input size is a multiple of M). ``scope="lora"`` with ``rank=r``: exactly r·(rows + columns) entries
    in every tensor, LoRA's count layer by layer (the budget of LIFT and peft's SHiRA). Ties always go to the
    lower position. ``transposed``: the tensors stored input × output (see :meth:`MaskSpec.apply`).
    """
    spec = MaskSpec(density=density, k=k, scope=scope, structure=structure, block_size=block_size, nm=nm, rank=rank)
    return spec.apply(scores, transposed=transposed)


def _unstructured(scores: Mapping[str, torch.Tensor], density: float | None, k: int | None, scope: str) -> MaskSet:
    if k is not None:
        return top_k_mask(scores, k)
    if scope == "global":  # MaskSpec.check_shapes ensured a count ≥ 1
        return top_k_mask(scores, selection_count(sum(_numel(scores, n) for n in scores), density))
    return _top_k_per_tensor(scores, {n: selection_count(_numel(scores, n), density) for n in scores})


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
