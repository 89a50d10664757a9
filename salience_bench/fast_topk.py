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
from typing import Sequence

import torch

try:  # optional: CUDA builds of torch bring Triton; the CPU build does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch
    triton = None

BLOCK = 4096  # scores per program; the order of an entry is (global block << 12) | offset in its block
_BLOCK_BITS = 12
SAMPLE = 1 << 20
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def usable(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the Triton route applies: stored float32 contiguous tensors on one CUDA device (any device
    under Triton's interpreter), each under 2^31 entries, more than 4 × 2^20 entries in all."""
    if triton is None or os.environ.get("SALIENCE_BENCH_TRITON", "1") == "0" or not tensors:
        return False
    device = tensors[0].device
    if not (device.type == "cuda" or _interpreting()):
        return False
    return (all(t.dtype == torch.float32 and t.is_contiguous() and t.device == device and t.numel() < 2**31
                for t in tensors)
            and sum(t.numel() for t in tensors) > 4 * SAMPLE)


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

    @triton.jit
    def _sample_kernel(ptrs, elem_start, stride, m, out, num, steps: tl.constexpr,
                       BLOCK_S: tl.constexpr):
        i = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
        valid = i < m
        g = i.to(tl.int64) * stride
        t = _find(elem_start, g, num, steps)
        base = tl.load(ptrs + t, mask=valid, other=0).to(tl.pointer_type(tl.float32))
        x = tl.load(base + (g - tl.load(elem_start + t, mask=valid, other=0)), mask=valid, other=0.0)
        tl.store(out + i, _ordered(x), mask=valid)

    @triton.jit
    def _block_scores(ptrs, numels, first_block, num, steps: tl.constexpr, BLOCK_: tl.constexpr):
        """This program's block: its scores' keys, which lanes hold scores, their offsets in the tensor."""
        b = tl.program_id(0)
        t = _find(first_block, b.to(tl.int64), num, steps)
        base = tl.load(ptrs + t).to(tl.pointer_type(tl.float32))
        offs = (b - tl.load(first_block + t)).to(tl.int32) * BLOCK_ + tl.arange(0, BLOCK_)
        valid = offs < tl.load(numels + t)
        key = _ordered(tl.load(base + offs, mask=valid, other=0.0))
        return b, key, valid, offs

    @triton.jit
    def _band_kernel(ptrs, numels, first_block, hi_key, lo_key, above, cand_keys, cand_order, counters, region,
                     non_finite, num, steps: tl.constexpr, BLOCK_: tl.constexpr, REGIONS: tl.constexpr):
        b, key, valid, _ = _block_scores(ptrs, numels, first_block, num, steps, BLOCK_)
        tl.store(above + b, tl.sum((valid & (key > hi_key)).to(tl.int32), axis=0))
        # ±inf and NaN: keys from +inf's up, and from -inf's down (-inf's bits 0xFF800000 map to -2139095041)
        bad = tl.sum((valid & ((key >= 0x7F800000) | (key <= -2139095041))).to(tl.int32), axis=0)
        if bad > 0:
            tl.atomic_add(non_finite, bad)
        band = (valid & (key >= lo_key) & (key <= hi_key)).to(tl.int32)
        count = tl.sum(band, axis=0)
        if count > 0:
            # Blocks append to one of REGIONS buffer regions (one counter each): a single shared counter
            # serialised the atomics of every block. The buffer's order is arbitrary; each entry keeps its order.
            r = b % REGIONS
            start = tl.atomic_add(counters + r, count)
            slot = start + tl.cumsum(band, axis=0) - 1
            keep = (band > 0) & (slot < region)
            order = (b.to(tl.int64) << 12) | tl.arange(0, BLOCK_).to(tl.int64)
            tl.store(cand_keys + r * region + slot, key, mask=keep)
            tl.store(cand_order + r * region + slot, order, mask=keep)


    @triton.jit
    def _count_kernel(cand_keys, cand_order, n, threshold, last_tie, counts, BLOCK_C: tl.constexpr):
        i = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        valid = i < n
        key = tl.load(cand_keys + i, mask=valid, other=0)
        order = tl.load(cand_order + i, mask=valid, other=0)
        chosen = valid & ((key > threshold) | ((key == threshold) & (order <= last_tie)))
        tl.atomic_add(counts + (order >> 12), 1, mask=chosen)  # integer adds: the same sums in any order

    @triton.jit
    def _write_kernel(ptrs, numels, first_block, threshold, last_tie, offsets, out,
                      num, steps: tl.constexpr, BLOCK_: tl.constexpr):
        b, key, valid, offs = _block_scores(ptrs, numels, first_block, num, steps, BLOCK_)
        order = (b.to(tl.int64) << 12) | tl.arange(0, BLOCK_).to(tl.int64)
        chosen = (valid & ((key > threshold) | ((key == threshold) & (order <= last_tie)))).to(tl.int32)
        slot = tl.load(offsets + b) + tl.cumsum(chosen, axis=0) - 1
        tl.store(out + slot, offs, mask=chosen > 0)


class _Tables:
    """Addresses, sizes and first global block of every tensor, on the tensors' device."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        device = tensors[0].device
        numels = [t.numel() for t in tensors]
        blocks = [-(-n // BLOCK) for n in numels]
        self.num = len(tensors)
        self.steps = 1 << max(0, math.ceil(math.log2(math.ceil(math.log2(self.num + 1)))))  # 1, 2, 4, 8, 16 ...
        self.total = sum(numels)
        self.num_blocks = sum(blocks)
        first, elem = [0], [0]
        for n, nb in zip(numels, blocks):
            first.append(first[-1] + nb)
            elem.append(elem[-1] + n)
        host = torch.tensor([t.data_ptr() for t in tensors] + numels + first + elem, dtype=torch.int64)
        table = host.to(device, non_blocking=True)
        n = self.num
        self.ptrs, self.numels = table[:n], table[n:2 * n]
        self.first_block, self.elem_start = table[2 * n:3 * n + 1], table[3 * n + 1:]
        self.first_block_host = first


def _bracket(tables: _Tables, k: int, device: torch.device) -> tuple[int, int, int]:
    """(lo key, hi key, expected band size): sample order statistics around the k-th largest."""
    stride = -(-tables.total // SAMPLE)
    m = -(-tables.total // stride)
    sample = torch.empty(m, dtype=torch.int32, device=device)
    _sample_kernel[(triton.cdiv(m, 1024),)](tables.ptrs, tables.elem_start, stride, m, sample,
                                            num=tables.num, steps=tables.steps, BLOCK_S=1024)
    q = k / tables.total
    margin = int(4 * (m * q * (1 - q)) ** 0.5) + 16
    hi_rank, lo_rank = int(q * m) - margin, int(q * m) + margin  # ranks from the top, 0-based
    ranks = [r for r in (hi_rank, lo_rank) if 0 <= r < m]
    ascending = torch.sort(sample).values  # one sort: torch.kthvalue on one long row is far slower on a GPU
    values = ascending[torch.tensor([m - 1 - r for r in ranks], device=device)].tolist() if ranks else []
    hi = values.pop(0) if 0 <= hi_rank < m else _INT32_MAX
    lo = values.pop(0) if 0 <= lo_rank < m else _INT32_MIN
    expected = (min(lo_rank, m - 1) - max(hi_rank, 0) + 1) * stride
    return lo, hi, expected


REGIONS = 64


def _threshold(tensors: Sequence[torch.Tensor], k: int):
    """The band pass and the exact k-th largest key; None where the bracket misses or the buffer overflows.
    Raises where a score is NaN or infinite (the band pass counts them)."""
    device = tensors[0].device
    tables = _Tables(tensors)
    if not 0 < k <= tables.total:
        return None
    lo, hi, expected = _bracket(tables, k, device)
    region = int(1.5 * expected / REGIONS) + 1024
    above = torch.empty(tables.num_blocks, dtype=torch.int32, device=device)
    cand_keys = torch.empty(region * REGIONS, dtype=torch.int32, device=device)
    cand_order = torch.empty(region * REGIONS, dtype=torch.int64, device=device)
    counters = torch.zeros(REGIONS + 1, dtype=torch.int32, device=device)  # the last counts non-finite scores
    _band_kernel[(tables.num_blocks,)](tables.ptrs, tables.numels, tables.first_block, hi, lo, above,
                                       cand_keys, cand_order, counters, region, counters[REGIONS:],
                                       num=tables.num, steps=tables.steps, BLOCK_=BLOCK, REGIONS=REGIONS,
                                       num_warps=8)
    read = torch.cat([above.sum(dtype=torch.int64).reshape(1), counters.long()]).tolist()
    above_n, filled, non_finite = read[0], read[1:-1], read[-1]
    if non_finite:
        raise _non_finite_error(tensors)
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
    return tables, above, keys, order, threshold, take, equal, above_n + strictly_above


class NonFiniteScores(ValueError):
    """A score is NaN or infinite; ``index`` is the first tensor holding one."""

    def __init__(self, index: int):
        super().__init__(f"scores of tensor {index} contain NaN or inf")
        self.index = index


def _non_finite_error(tensors: Sequence[torch.Tensor]) -> NonFiniteScores:
    return NonFiniteScores(next(i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())))


def kth_largest_key(tensors: Sequence[torch.Tensor], k: int) -> tuple[int, int] | None:
    """As :func:`salience_bench.masks.kth_largest_key`, in two launches; None → use the torch route."""
    found = _threshold(tensors, k)
    if found is None:
        return None
    _, _, _, _, threshold, take, _, _ = found
    return threshold, take


def top_k_positions(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor] | None:
    """Each tensor's sorted int32 flat positions of the global top k (ties by tensor order, then position):
    views into one buffer of k entries. None → use the torch route."""
    found = _threshold(tensors, k)
    if found is None:
        return None
    tables, above, keys, order, threshold, take, equal, _ = found
    device = tensors[0].device
    if take < equal:  # not every tie is taken: the last one taken is the take-th in global order
        last_tie = int(torch.sort(torch.where(keys == threshold, order, torch.iinfo(torch.int64).max)).values[take - 1])
    else:
        last_tie = torch.iinfo(torch.int64).max
    counts = above.to(torch.int32)
    if keys.numel():
        _count_kernel[(triton.cdiv(keys.numel(), 1024),)](keys, order, keys.numel(), threshold, last_tie, counts,
                                                         BLOCK_C=1024)
    ends = counts.cumsum(0, dtype=torch.int64)
    offsets = ends - counts
    out = torch.empty(k, dtype=torch.int32, device=device)
    _write_kernel[(tables.num_blocks,)](tables.ptrs, tables.numels, tables.first_block, threshold, last_tie,
                                        offsets, out, num=tables.num, steps=tables.steps, BLOCK_=BLOCK, num_warps=8)
    starts = torch.cat([offsets, ends[-1:]])[torch.tensor(tables.first_block_host, device=device)].tolist()
    return [out[a:b] for a, b in zip(starts[:-1], starts[1:])]
