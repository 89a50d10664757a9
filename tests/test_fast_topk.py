"""The Triton routes against the torch routes: the multi-tensor top-k (salience_bench.fast_topk), bitwise, and
Kendall's inversion count and the tie-averaged ranks (salience_bench.fast_stats), exactly.

On a GPU the kernels run compiled; on a CPU with Triton installed (pip's default CUDA build of torch brings
it) they run under Triton's interpreter in a subprocess (TRITON_INTERPRET must be set before the kernels are
defined). With the CPU build of torch there is no Triton and the CPU cases skip: CI then runs the torch route,
which the rest of the suite tests against independent references.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _cases(device: str):
    """Score sets with ties, empty and one-entry tensors, 2-D shapes, and counts from 1 to all."""
    g = torch.Generator().manual_seed(0)
    sizes = [(50, 100), (0,), (123,), (90, 100), (4096,), (1,), (7001,), (3, 4097)]
    rounded = {f"t{i}": (torch.randn(s, generator=g) * 3).round() for i, s in enumerate(sizes)}  # heavy ties
    distinct = {f"t{i}": torch.randn(s, generator=g) for i, s in enumerate(sizes)}
    signed_zeros = {n: torch.where(s.abs() < 0.5, -0.0 * torch.ones_like(s), s) for n, s in rounded.items()}
    total = sum(s.numel() for s in rounded.values())
    for scores in (rounded, distinct, signed_zeros):
        scores = {n: s.to(device) for n, s in scores.items()}
        for k in (1, 7, 500, total // 100, total // 3, total - 1, total):
            yield scores, k


class ComputedOnAccess(Mapping):
    """Scores computed when read (as salience_bench.scoring.MetricScores): shape_of and device, no storage."""

    def __init__(self, stored: dict[str, torch.Tensor]):
        self.stored, self.reads = stored, 0

    def __getitem__(self, name: str) -> torch.Tensor:
        self.reads += 1
        return self.stored[name] * 1.0  # a fresh tensor each time

    def __iter__(self):
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)

    def shape_of(self, name: str) -> torch.Size:
        return self.stored[name].shape

    @property
    def device(self) -> torch.device:
        return next(iter(self.stored.values())).device


def check_against_torch_route(device: str) -> int:
    """Fast route == torch route (positions, threshold and tie count) for every case; returns the cases run."""
    from salience_bench import fast_topk, masks

    fast_topk.SAMPLE = 1024  # small cases still take the fast route (it needs > 4 × SAMPLE entries)
    ran = 0
    for scores, k in _cases(device):
        tensors = list(scores.values())
        assert fast_topk.usable(tensors)
        os.environ["SALIENCE_BENCH_TRITON"] = "0"
        reference = masks.top_k_mask(scores, k)
        ref_key = masks.kth_largest_key(scores, k)
        os.environ["SALIENCE_BENCH_TRITON"] = "1"
        positions = fast_topk.top_k_positions(fast_topk.Source.stored(tensors), k)
        key = fast_topk.kth_largest_key(fast_topk.Source.stored(tensors), k)
        if positions is None:  # the bracket missed: allowed, but must be rare; the caller then uses the torch route
            assert key is None
            continue
        assert key == ref_key, (k, key, ref_key)
        for name, got in zip(scores, positions):
            assert got.dtype == torch.int32
            assert torch.equal(got.long().cpu(), reference.indices(name).long().cpu()), (name, k)
        through_api = masks.top_k_mask(scores, k)  # and the public function takes this route
        assert all(torch.equal(through_api[n].cpu(), reference[n].cpu()) for n in scores)
        lazy = ComputedOnAccess(scores)  # in groups no larger than the largest tensor, each computed per pass
        source = masks._triton_source(lazy)
        assert source is not None and len(source.groups) > 1
        grouped = fast_topk.top_k_positions(source, k)
        if grouped is not None:
            assert all(torch.equal(g.cpu(), p.cpu()) for g, p in zip(grouped, positions)), k
            assert lazy.reads == 3 * len(scores)  # sample, band and write passes: three computations per tensor
        ran += 1
    return ran


def check_fallback(device: str) -> None:
    """Masses of ties overflow the candidate buffer: the fast route declines and top_k_mask stays exact."""
    from salience_bench import fast_topk, masks

    fast_topk.SAMPLE = 1024
    scores = {"a": torch.zeros(150_000, device=device), "b": torch.zeros(100_000, device=device)}
    scores["b"][5] = 1.0
    assert fast_topk.top_k_positions(fast_topk.Source.stored(list(scores.values())), 125_000) is None
    mask = masks.top_k_mask(scores, 125_000)
    assert mask.count("b") == 1 and mask.indices("a").tolist() == list(range(124_999))


def check_inversions(device: str) -> None:
    """The fused radix levels count the same inversions as the torch levels and as the pairwise definition."""
    from salience_bench import fast_stats, stats

    g = torch.Generator().manual_seed(2)
    for n, levels in ((2, 2), (3, 1), (17, 5), (300, 3), (5000, 7), (5000, 5000), (70_000, 300)):
        y = torch.randint(0, levels, (n,), generator=g)
        fast = fast_stats.count_inversions(y.to(device))
        os.environ["SALIENCE_BENCH_TRITON"] = "0"
        torch_route = stats._count_inversions(y)
        os.environ["SALIENCE_BENCH_TRITON"] = "1"
        assert fast == torch_route, (n, levels, fast, torch_route)
        if n <= 5000:
            assert fast == int((y[:, None] > y[None, :]).triu(1).sum()), (n, levels)
    x, y = torch.randn(3000, generator=g).round(), torch.randn(3000, generator=g).round()
    import scipy.stats

    assert stats.kendall_tau_b_torch(x.to(device), y.to(device)) == pytest.approx(
        scipy.stats.kendalltau(x.numpy(), y.numpy()).statistic, abs=1e-12)


def check_ranks(device: str) -> None:
    """The fused rank kernels give the torch route's doubled ranks (ties, NaN-free values, the bucketed route
    that ranks value ranges at positions) and Spearman equals scipy."""
    import numpy as np
    import scipy.stats

    from salience_bench import stats

    g = torch.Generator().manual_seed(3)
    for x in (torch.randn(20_000, generator=g), (torch.randn(20_000, generator=g) * 3).round(),
              torch.randint(0, 4, (5000,), generator=g).double(), torch.tensor([1.0]), torch.tensor([-0.0, 0.0, 2.0])):
        fast = stats.doubled_ranks(x.to(device)).cpu()
        os.environ["SALIENCE_BENCH_TRITON"] = "0"
        reference = stats.doubled_ranks(x)
        os.environ["SALIENCE_BENCH_TRITON"] = "1"
        assert fast.dtype == reference.dtype and torch.equal(fast, reference), x[:5]
        np.testing.assert_array_equal(fast.numpy(), 2 * scipy.stats.rankdata(x.numpy()))
    saved, budget = stats.SORTED_RANKS_MAX, stats.SORT_BUDGET_BYTES
    stats.SORTED_RANKS_MAX, stats.SORT_BUDGET_BYTES = 1000, 0  # the bucketed route: value ranges ranked at their positions
    try:
        x = (torch.randn(30_000, generator=g) * 5).round()
        np.testing.assert_array_equal(stats.doubled_ranks(x.to(device)).cpu().numpy(), 2 * scipy.stats.rankdata(x.numpy()))
    finally:
        stats.SORTED_RANKS_MAX, stats.SORT_BUDGET_BYTES = saved, budget
    x, y = torch.randn(5000, generator=g).round(), torch.randn(5000, generator=g).round()
    assert stats.spearman(x.to(device), y.to(device)) == pytest.approx(
        scipy.stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def check_non_finite(device: str) -> None:
    """NaN, +inf and -inf are counted in the band pass: the same one-line error, naming the tensor."""
    import salience_bench as sb
    from salience_bench import fast_topk

    fast_topk.SAMPLE = 1024
    for bad in (float("nan"), float("inf"), float("-inf")):
        scores = {"a": torch.rand(30_000, device=device), "b": torch.rand(20_000, device=device)}
        scores["b"][7] = bad
        assert fast_topk.usable(list(scores.values()))
        for given in (scores, ComputedOnAccess(scores)):
            with pytest.raises(sb.SalienceBenchError, match="scores of 'b' contain NaN or inf"):
                sb.make_mask(given, density=0.01)


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs a CUDA GPU and Triton")
def test_triton_routes_equal_torch_routes_on_gpu(monkeypatch):
    monkeypatch.setenv("SALIENCE_BENCH_TRITON", "1")
    assert check_against_torch_route("cuda") >= 15
    check_fallback("cuda")
    check_non_finite("cuda")
    check_inversions("cuda")
    check_ranks("cuda")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (torch's CPU build)")
def test_triton_routes_equal_torch_routes_under_triton_interpreter():
    code = ("from tests.test_fast_topk import check_against_torch_route, check_fallback, check_non_finite, check_inversions, check_ranks;"
            "n = check_against_torch_route('cpu'); check_fallback('cpu'); check_non_finite('cpu');"
            "check_inversions('cpu'); check_ranks('cpu'); print('cases', n)")
    env = dict(os.environ, TRITON_INTERPRET="1", SALIENCE_BENCH_TRITON="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("cases")[-1]) >= 15, done.stdout


def test_fast_route_declines_what_it_cannot_take(monkeypatch):
    """Off by the environment switch, on CPU tensors (without the interpreter), other dtypes, strided views."""
    from salience_bench import fast_topk

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    big = torch.zeros(5 * fast_topk.SAMPLE)
    assert not fast_topk.usable([big])  # CPU tensors: the torch route
    if torch.cuda.is_available() and HAS_TRITON:
        g = big.cuda()
        assert fast_topk.usable([g])
        assert not fast_topk.usable([g.half()]) and not fast_topk.usable([g.view(-1, 2)[:, 0]])
        monkeypatch.setenv("SALIENCE_BENCH_TRITON", "0")
        assert not fast_topk.usable([g])
