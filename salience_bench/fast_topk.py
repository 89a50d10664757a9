"""Exact global top-k over many CUDA float32 tensors with one kernel launch per pass (Triton).

The torch route in :mod:`salience_bench.masks` runs about a dozen small kernels per tensor; over the 200
tensors of an LLM it is launch-bound (a 1e9-score top-1% took 57 ms on an H100 against 23 ms for
concatenate + ``torch.topk``). Here every pass covers all tensors in one launch: each Triton program
takes one block of ``BLOCK`` scores of one tensor, found by a binary search over a small table of the
tensors' addresses and block offsets (the pattern of Triton's grouped-GEMM tutorial). Only the search's step count is a compile-time
constant, so a new number of tensors rarely compiles anew.

    1. sample: a strided sample of at most 2^20 scores (one launch) brackets the k-th largest
       key between two sample order statistics ``lo`` and ``hi``;
    2. band pass (reads every score once): per block, the count of keys above ``hi``, and the keys in
       [lo, hi] appended to a small candidate buffer with their global order (block, offset);
    3. on the candidates only: the exact k-th largest key T, and — where several entries equal T and not
       all are taken — the position of the last tie taken;
    4. write pass (reads every score once more): each block writes the positions of its selected
       entries (key > T, or key == T up to that last tie) at its offset, an exclusive prefix sum of
       the per-block counts, so positions come out sorted within every tensor.

The result is bitwise the torch route's (same threshold, same ties by tensor order then position);
``tests/test_fast_topk.py`` checks it against that route on random data with ties, on the GPU where
there is one and under Triton's interpreter (``TRITON_INTERPRET=1``) on the CPU. Where the bracket
misses or the candidate buffer would overflow (a sample unlike the data, or masses of ties), the
functions return ``None`` and the caller runs the torch route. Set ``SALIENCE_BENCH_TRITON=0`` to
turn this path off.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, Sequence

import torch

try:  # optional: CUDA builds of torch bring Triton; the CPU build does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch
    triton = None

BLOCK_BITS = 11  # 2048 scores and 4 warps a program, 256 counter regions: the fastest of benchmarks/topk_kernels.py
BLOCK = 1 << BLOCK_BITS  # scores per program; the order of an entry is (global block << BLOCK_BITS) | offset in it
NUM_WARPS = 4
SAMPLE = 1 << 20
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
SEARCH_STEPS = 16  # a fixed binary-search depth (up to 65,535 tensors a group): one compile for any tensor count


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | None) -> bool:
    """Triton is installed, not switched off, and ``device`` is a CUDA device (any under the interpreter)."""
    return (triton is not None and os.environ.get("SALIENCE_BENCH_TRITON", "1") != "0" and device is not None
            and (device.type == "cuda" or _interpreting()))


def sizes_fit(numels: Sequence[int]) -> bool:
    """Each tensor under 2^31 − BLOCK entries (int32 offsets), more than 4 × SAMPLE in all (smaller: the torch
    route is as fast)."""
    return bool(numels) and max(numels) < 2**31 - BLOCK and sum(numels) > 4 * SAMPLE


def usable(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether stored tensors take the Triton route: float32, contiguous, on one CUDA device, sizes that fit."""
    if not tensors or not available(tensors[0].device):
        return False
    device = tensors[0].device
    return (all(t.dtype == torch.float32 and t.is_contiguous() and t.device == device for t in tensors)
            and sizes_fit([t.numel() for t in tensors]))


if triton is not None:

    @triton.jit
    def _ordered(x):
        """int32 keys whose signed order is the float order (−0.0 folded into +0.0): masks._ordered_keys."""
        bits = (x + 0.0).to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _find(table, value, num, steps: tl.constexpr):
        """Largest t in [0, num) with table[t] <= value (table ascending, table[0] = 0): a binary search
        whose fixed step count keeps it branch-free (works for a scalar and for a block of values)."""
        lo = value * 0
        hi = lo + num
        for _ in tl.static_range(steps):
            mid = (lo + hi) // 2
            go_right = tl.load(table + mid) <= value
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(go_right, hi, mid)
        return lo.to(tl.int32)

    # Integer arguments are not specialised (Triton would compile a variant for values equal to 1 or divisible
    # by 16); with the fixed search depth below, each kernel compiles once per process.
    @triton.jit(do_not_specialize=["stride", "first", "end", "elem_base", "num"])
    def _sample_kernel(ptrs, elem_start, stride, first, end, elem_base, out, num, steps: tl.constexpr,
                       BLOCK_S: tl.constexpr):
        """Sample entries first … end-1 (global sample index i is the entry i·stride of the concatenation)."""
        i = first + tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
        valid = i < end
        g = i.to(tl.int64) * stride - elem_base
        t = _find(elem_start, g, num, steps)
        base = tl.load(ptrs + t, mask=valid, other=0).to(tl.pointer_type(tl.float32))
        x = tl.load(base + (g - tl.load(elem_start + t, mask=valid, other=0)), mask=valid, other=0.0)
        tl.store(out + i, _ordered(x), mask=valid)

    @triton.jit
    def _block_scores(ptrs, numels, first_block, block_base, num, steps: tl.constexpr, BLOCK_: tl.constexpr):
        """This program's block: its global index, its scores' keys, which lanes hold scores, their offsets
        in the tensor (``first_block`` is the group's own table; ``block_base`` its first global block)."""
        b = tl.program_id(0)
        t = _find(first_block, b.to(tl.int64), num, steps)
        base = tl.load(ptrs + t).to(tl.pointer_type(tl.float32))
        offs = (b - tl.load(first_block + t)).to(tl.int32) * BLOCK_ + tl.arange(0, BLOCK_)
        valid = offs < tl.load(numels + t)
        key = _ordered(tl.load(base + offs, mask=valid, other=0.0))
        return block_base + b, key, valid, offs

    @triton.jit(do_not_specialize=["block_base", "hi_key", "lo_key", "region", "regions", "num"])
    def _band_kernel(ptrs, numels, first_block, block_base, hi_key, lo_key, above, cand_keys, cand_order, counters,
                     region, regions, non_finite, num, steps: tl.constexpr, BLOCK_: tl.constexpr,
                     BITS: tl.constexpr):
        b, key, valid, _ = _block_scores(ptrs, numels, first_block, block_base, num, steps, BLOCK_)
        band = (valid & (key >= lo_key) & (key <= hi_key)).to(tl.int32)
        # ±inf and NaN: keys from +inf's up, and from -inf's down (-inf's bits 0xFF800000 map to -2139095041)
        bad = valid & ((key >= 0x7F800000) | (key <= -2139095041))
        # Three counts (each ≤ BLOCK < 2^21) in one reduction: fields of 21 bits of an int64
        packed = tl.sum((valid & (key > hi_key)).to(tl.int64) | (band.to(tl.int64) << 21) | (bad.to(tl.int64) << 42),
                        axis=0)
        tl.store(above + b, (packed & 0x1FFFFF).to(tl.int32))
        count = ((packed >> 21) & 0x1FFFFF).to(tl.int32)
        if (packed >> 42) > 0:
            tl.atomic_add(non_finite, (packed >> 42).to(tl.int32))
        if count > 0:
            # Blocks append to one of the buffer's regions (one counter each) rather than all to one counter. The buffer's order is arbitrary; each entry keeps its order.
            r = b % regions
            start = tl.atomic_add(counters + r, count)
            slot = start + tl.cumsum(band, axis=0) - 1
            keep = (band > 0) & (slot < region)
            order = (b.to(tl.int64) << BITS) | tl.arange(0, BLOCK_).to(tl.int64)
            tl.store(cand_keys + r * region + slot, key, mask=keep)
            tl.store(cand_order + r * region + slot, order, mask=keep)


    @triton.jit(do_not_specialize=["n"])
    def _count_kernel(cand_keys, cand_order, n, limits, counts, BLOCK_C: tl.constexpr, BITS: tl.constexpr):
        threshold, last_tie = tl.load(limits).to(tl.int32), tl.load(limits + 1)
        i = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        valid = i < n
        key = tl.load(cand_keys + i, mask=valid, other=0)
        order = tl.load(cand_order + i, mask=valid, other=0)
        chosen = valid & ((key > threshold) | ((key == threshold) & (order <= last_tie)))
        tl.atomic_add(counts + (order >> BITS), 1, mask=chosen)  # integer adds: the same sums in any order

    @triton.jit(do_not_specialize=["block_base", "num"])
    def _write_kernel(ptrs, numels, first_block, block_base, limits, offsets, out,
                      num, steps: tl.constexpr, BLOCK_: tl.constexpr, BITS: tl.constexpr):
        threshold, last_tie = tl.load(limits).to(tl.int32), tl.load(limits + 1)
        b, key, valid, offs = _block_scores(ptrs, numels, first_block, block_base, num, steps, BLOCK_)
        order = (b.to(tl.int64) << BITS) | tl.arange(0, BLOCK_).to(tl.int64)
        chosen = (valid & ((key > threshold) | ((key == threshold) & (order <= last_tie)))).to(tl.int32)
        slot = tl.load(offsets + b) + tl.cumsum(chosen, axis=0) - 1
        tl.store(out + slot, offs, mask=chosen > 0)


class Source:
    """Score tensors walked in groups, one group in memory at a time: stored tensors are one group; scores
    computed on access are grouped so that a group holds no more entries than the largest tensor (the extra
    memory of the route stays about one largest tensor).

    ``get(start, stop)`` returns tensors ``start … stop-1`` as contiguous float32 tensors on ``device``."""

    def __init__(self, numels: Sequence[int], get: Callable[[int, int], list[torch.Tensor]], device: torch.device,
                 group_numel: int | None = None):
        self.numels, self.get, self.device = list(numels), get, device
        self.total = sum(self.numels)
        blocks = [-(-n // BLOCK) for n in self.numels]
        self.first_block, self.elem_start = [0], [0]
        for n, nb in zip(self.numels, blocks):
            self.first_block.append(self.first_block[-1] + nb)
            self.elem_start.append(self.elem_start[-1] + n)
        self.num_blocks = self.first_block[-1]
        self.groups: list[tuple[int, int]] = []
        limit = self.total if group_numel is None else max(group_numel, max(self.numels, default=0))
        start = 0
        for i in range(1, len(self.numels) + 1):
            if i == len(self.numels) or self.elem_start[i + 1] - self.elem_start[start] > limit:
                self.groups.append((start, i))
                start = i

    @classmethod
    def stored(cls, tensors: Sequence[torch.Tensor]) -> "Source":
        return cls([t.numel() for t in tensors], lambda a, b: list(tensors[a:b]), tensors[0].device)

    def walk(self):
        """Per group, a :class:`_Group`: its tables on the device (relative to the group) and where it lies in
        the whole. The group's tensors are dropped when the walk moves on — safe while kernels still read them,
        as the caching allocator reuses memory in stream order."""
        for a, b in self.groups:
            tensors = self.get(a, b)
            n = b - a
            fb, es = self.first_block[a:b + 1], self.elem_start[a:b + 1]
            host = torch.tensor([t.data_ptr() for t in tensors] + self.numels[a:b] + [x - fb[0] for x in fb]
                                + [x - es[0] for x in es], dtype=torch.int64)
            table = host.to(self.device, non_blocking=True)
            steps = SEARCH_STEPS if n < 2**SEARCH_STEPS else math.ceil(math.log2(n + 1))
            yield _Group(table[:n], table[n:2 * n], table[2 * n:3 * n + 1], table[3 * n + 1:], n, steps,
                         block_base=fb[0], blocks=fb[-1] - fb[0], elem_base=es[0], elem_end=es[-1])
            del tensors


class _Group(NamedTuple):
    ptrs: torch.Tensor  # the tensors' addresses
    numels: torch.Tensor
    first_block: torch.Tensor  # each tensor's first block, from the group's first (and the group's end)
    elem_start: torch.Tensor  # each tensor's first entry, from the group's first (and the group's end)
    num: int  # tensors in the group
    steps: int  # the binary search's depth
    block_base: int  # the group's first block in the whole
    blocks: int
    elem_base: int  # the group's first entry in the whole
    elem_end: int


def _bracket(source: Source, k: int) -> tuple[int, int, int]:
    """(lo key, hi key, expected band size): sample order statistics around the k-th largest."""
    stride = -(-source.total // SAMPLE)
    m = -(-source.total // stride)
    sample = torch.empty(m, dtype=torch.int32, device=source.device)
    for g in source.walk():
        first, end = -(-g.elem_base // stride), -(-g.elem_end // stride)
        if end > first:
            _sample_kernel[(triton.cdiv(end - first, 1024),)](g.ptrs, g.elem_start, stride, first, end, g.elem_base,
                                                              sample, num=g.num, steps=g.steps, BLOCK_S=1024)
    q = k / source.total
    margin = int(4 * (m * q * (1 - q)) ** 0.5) + 16
    hi_rank, lo_rank = int(q * m) - margin, int(q * m) + margin  # ranks from the top, 0-based
    ranks = [r for r in (hi_rank, lo_rank) if 0 <= r < m]
    ascending = torch.sort(sample).values  # one sort: torch.kthvalue on one long row is far slower on a GPU
    values = ascending[torch.tensor([m - 1 - r for r in ranks], device=source.device)].tolist() if ranks else []
    hi = values.pop(0) if 0 <= hi_rank < m else _INT32_MAX
    lo = values.pop(0) if 0 <= lo_rank < m else _INT32_MIN
    expected = (min(lo_rank, m - 1) - max(hi_rank, 0) + 1) * stride
    return lo, hi, expected


REGIONS = 256  # counter regions of the band pass (blocks append to region b % REGIONS)


def _threshold(source: Source, k: int):
    """The band pass and the exact k-th largest key; None where the bracket misses or the buffer overflows.
    Raises :class:`NonFiniteScores` where a score is NaN or infinite (the band pass counts them)."""
    device = source.device
    if not 0 < k <= source.total:
        return None
    lo, hi, expected = _bracket(source, k)
    regions = min(REGIONS, source.num_blocks)  # each region takes the blocks b with b % regions == its index
    region = int(1.5 * expected / regions) + 256
    above = torch.empty(source.num_blocks, dtype=torch.int32, device=device)
    cand_keys = torch.empty(region * regions, dtype=torch.int32, device=device)
    cand_order = torch.empty(region * regions, dtype=torch.int64, device=device)
    counters = torch.zeros(regions + 1, dtype=torch.int32, device=device)  # the last counts non-finite scores
    for g in source.walk():
        if g.blocks:
            _band_kernel[(g.blocks,)](g.ptrs, g.numels, g.first_block, g.block_base, hi, lo, above,
                                      cand_keys, cand_order, counters, region, regions, counters[regions:],
                                      num=g.num, steps=g.steps, BLOCK_=BLOCK, BITS=BLOCK_BITS, num_warps=NUM_WARPS)
    read = torch.cat([above.sum(dtype=torch.int64).reshape(1), counters.long()]).tolist()
    above_n, filled, non_finite = read[0], read[1:-1], read[-1]
    if non_finite:
        raise _non_finite_error(source)
    in_band = sum(filled)
    if max(filled) > region or not above_n < k <= above_n + in_band:
        return None
    keys = torch.cat([cand_keys[r * region: r * region + c] for r, c in enumerate(filled)])
    order = torch.cat([cand_order[r * region: r * region + c] for r, c in enumerate(filled)])
    del cand_keys, cand_order
    rank = k - above_n  # the k-th largest overall is the rank-th largest candidate
    threshold = torch.sort(keys).values[in_band - rank]
    strictly_above, equal, threshold = torch.stack([(keys > threshold).sum(), (keys == threshold).sum(),
                                                    threshold.long()]).tolist()
    take = rank - strictly_above
    return above, keys, order, threshold, take, equal


class NonFiniteScores(ValueError):
    """A score is NaN or infinite; ``index`` is the first tensor holding one."""

    def __init__(self, index: int):
        super().__init__(f"scores of tensor {index} contain NaN or inf")
        self.index = index


def _non_finite_error(source: Source) -> NonFiniteScores:
    bad = next(i for i in range(len(source.numels)) if not bool(torch.isfinite(source.get(i, i + 1)[0]).all()))
    return NonFiniteScores(bad)


def kth_largest_key(source: Source, k: int) -> tuple[int, int] | None:
    """As :func:`salience_bench.masks.kth_largest_key`: a sample and one pass; None → use the torch route."""
    found = _threshold(source, k)
    if found is None:
        return None
    _, _, _, threshold, take, _ = found
    return threshold, take


def top_k_positions(source: Source, k: int) -> list[torch.Tensor] | None:
    """Each tensor's sorted int32 flat positions of the global top k (ties by tensor order, then position):
    views into one buffer of k entries. None → use the torch route."""
    found = _threshold(source, k)
    if found is None:
        return None
    above, keys, order, threshold, take, equal = found
    device = source.device
    if take < equal:  # not every tie is taken: the last one taken is the take-th in global order
        last_tie = int(torch.sort(torch.where(keys == threshold, order, torch.iinfo(torch.int64).max)).values[take - 1])
    else:
        last_tie = torch.iinfo(torch.int64).max
    limits = torch.tensor([threshold, last_tie], dtype=torch.int64).to(device, non_blocking=True)
    counts = above  # becomes the selected count of every block
    if keys.numel():
        _count_kernel[(triton.cdiv(keys.numel(), 1024),)](keys, order, keys.numel(), limits, counts, BLOCK_C=1024,
                                                         BITS=BLOCK_BITS)
    ends = counts.cumsum(0, dtype=torch.int64)
    offsets = ends - counts
    out = torch.empty(k, dtype=torch.int32, device=device)
    for g in source.walk():
        if g.blocks:
            _write_kernel[(g.blocks,)](g.ptrs, g.numels, g.first_block, g.block_base, limits, offsets, out,
                                       num=g.num, steps=g.steps, BLOCK_=BLOCK, BITS=BLOCK_BITS, num_warps=NUM_WARPS)
    starts = torch.cat([offsets, ends[-1:]])[torch.tensor(source.first_block, device=device)].tolist()
    return [out[a:b] for a, b in zip(starts[:-1], starts[1:])]
