"""Kendall's discordant-pair count as one fused Triton kernel per radix level (optional GPU route).

:func:`salience_bench.stats._count_inversions` walks the bits of the dense ranks from the most significant;
each level is a prefix sum of the level's bits and then, per entry, two gathers, a few selects and three
scattered writes — about fifteen torch kernels over every entry, which made the levels most of Kendall's time
on an H100 (profile in benchmarks/README.md). Here the prefix sum stays a torch ``cumsum`` and the rest of a
level is one kernel. The count is the same integer (tested against the torch route under Triton's interpreter
on the CPU and on the GPU); where Triton is missing or switched off (``SALIENCE_BENCH_TRITON=0``), the torch
route runs.
"""

from __future__ import annotations

import torch

from .fast_topk import available, triton

if triton is not None:
    import triton.language as tl

    @triton.jit(do_not_specialize=["n", "b"])
    def _level_kernel(values, group_start, group_size, ones_through, new_values, new_start, new_size, partial,
                      n, b, BLOCK_L: tl.constexpr):
        i = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
        valid = i < n
        v = tl.load(values + i, mask=valid, other=0)
        start = tl.load(group_start + i, mask=valid, other=0)
        size = tl.load(group_size + i, mask=valid, other=0)
        is_one = ((v >> b) & 1) == 1
        before_group = tl.load(ones_through + start, mask=valid, other=0)
        ones_before = tl.load(ones_through + i, mask=valid, other=0) - before_group
        ones_in_group = tl.load(ones_through + start + size, mask=valid, other=0) - before_group
        zeros_in_group = size - ones_in_group
        position = tl.where(is_one, start + zeros_in_group + ones_before, i - ones_before)
        tl.store(new_values + position, v, mask=valid)
        tl.store(new_start + position, tl.where(is_one, start + zeros_in_group, start), mask=valid)
        tl.store(new_size + position, tl.where(is_one, ones_in_group, zeros_in_group), mask=valid)
        # pairs decided at this bit with the set bit first: the set bits before each clear one, in its group
        tl.store(partial + tl.program_id(0), tl.sum(tl.where(valid & ~is_one, ones_before, 0).to(tl.int64), axis=0))


BLOCK_L = 1024


def usable(y: torch.Tensor) -> bool:
    return available(y.device) and y.numel() < 2**31 - BLOCK_L


def count_inversions(y: torch.Tensor) -> int:
    """Pairs i < j with y[i] > y[j], for non-negative integers ``y`` (as stats._count_inversions)."""
    n = y.numel()
    if n < 2:
        return 0
    device = y.device
    values = y.reshape(-1).to(torch.int32)
    bits = int(values.max().item()).bit_length()
    group_start = torch.zeros(n, dtype=torch.int32, device=device)
    group_size = torch.full((n,), n, dtype=torch.int32, device=device)
    ones_through = torch.zeros(n + 1, dtype=torch.int32, device=device)
    spare = [torch.empty_like(values) for _ in range(3)]
    programs = triton.cdiv(n, BLOCK_L)
    partial = torch.empty((bits, programs), dtype=torch.int64, device=device)
    for level, b in enumerate(range(bits - 1, -1, -1)):
        torch.cumsum((values >> b) & 1, 0, dtype=torch.int32, out=ones_through[1:])
        _level_kernel[(programs,)](values, group_start, group_size, ones_through, *spare, partial[level], n, b,
                                   BLOCK_L=BLOCK_L)
        (values, group_start, group_size), spare = spare, [values, group_start, group_size]
    return int(partial.sum().item())
