"""Fused Triton kernels for the rank statistics (optional GPU route): Kendall's discordant-pair count, one
kernel per radix level, and the tie-averaged ranks of sorted values, three kernels instead of ~17 torch ops.

:func:`salience_bench.stats._count_inversions` walks the bits of the dense ranks from the most significant;
each level is a prefix sum of the level's bits and then, per entry, two gathers, a few selects and three
scattered writes — about fifteen torch kernels over every entry, which made the levels most of Kendall's time
on an H100 (profile in benchmarks/README.md). Here the prefix sum stays a torch ``cumsum`` and the rest of a
level is one kernel. The count is the same integer, and the ranks the same integers (tested against the torch
routes under Triton's interpreter on the CPU and on the GPU); where Triton is missing or switched off
(``SALIENCE_BENCH_TRITON=0``), the torch routes run.
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


    @triton.jit(do_not_specialize=["n"])
    def _group_start_kernel(sorted_values, starts, n, BLOCK_R: tl.constexpr):
        i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = i < n
        here = tl.load(sorted_values + i, mask=valid)
        before = tl.load(sorted_values + i - 1, mask=valid & (i > 0))
        tl.store(starts + i, ((i == 0) | (here != before)).to(tl.int32), mask=valid)

    @triton.jit(do_not_specialize=["n"])
    def _group_first_kernel(groups_through, firsts, n, BLOCK_R: tl.constexpr):
        """groups_through[i] = tie groups starting at or before i (a prefix sum of the starts)."""
        i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = i < n
        group = tl.load(groups_through + i, mask=valid, other=1)
        previous = tl.load(groups_through + i - 1, mask=valid & (i > 0), other=0)
        tl.store(firsts + group - 1, i, mask=valid & (group != previous))

    @triton.jit(do_not_specialize=["n", "offset"])
    def _rank_kernel(groups_through, firsts, order, positions, ranks, n, offset, HAS_POSITIONS: tl.constexpr,
                     BLOCK_R: tl.constexpr):
        i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = i < n
        group = tl.load(groups_through + i, mask=valid, other=1) - 1
        # doubled rank = (first + 1) + (last + 1), last + 1 being the next group's first
        doubled = (tl.load(firsts + group, mask=valid, other=0).to(tl.int64)
                   + tl.load(firsts + group + 1, mask=valid, other=0).to(tl.int64) + offset)
        target = tl.load(order + i, mask=valid, other=0)
        if HAS_POSITIONS:
            target = tl.load(positions + target, mask=valid, other=0)
        tl.store(ranks + target, doubled.to(ranks.dtype.element_ty), mask=valid)


BLOCK_L = 1024
BLOCK_R = 1024


def rank_sorted(sorted_values: torch.Tensor, order: torch.Tensor, ranks: torch.Tensor,
                positions: torch.Tensor | None, below: int) -> None:
    """As the torch route of :func:`salience_bench.stats._rank_sorted` after its sort: each entry's doubled
    tie-averaged rank, 2·below + (first + 1) + (last + 1) of its tie group, written at its position."""
    n = sorted_values.numel()
    programs = (triton.cdiv(n, BLOCK_R),)
    groups_through = torch.empty(n, dtype=torch.int32, device=sorted_values.device)
    _group_start_kernel[programs](sorted_values, groups_through, n, BLOCK_R=BLOCK_R)
    torch.cumsum(groups_through, 0, dtype=torch.int32, out=groups_through)
    firsts = torch.full((n + 1,), n, dtype=torch.int32, device=sorted_values.device)  # past the last group: n
    _group_first_kernel[programs](groups_through, firsts, n, BLOCK_R=BLOCK_R)
    _rank_kernel[programs](groups_through, firsts, order, order if positions is None else positions, ranks, n,
                           2 * below + 1, HAS_POSITIONS=positions is not None, BLOCK_R=BLOCK_R)


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
