import math

import numpy as np
import pytest
import scipy.stats
import torch

import salience_bench as sb
from salience_bench import stats


def pairs(seed, n, ties):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = 0.6 * x + torch.randn(n, generator=g, dtype=torch.float64)
    if ties:
        x, y = (x * 2).round(), (y * 3).round()
    return x.float(), y.float()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [3, 10, 257, 5000])
def test_spearman_and_kendall_equal_scipy(n, ties):
    x, y = pairs(n, n, ties)
    assert sb.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-6)
    assert sb.kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x.numpy(), y.numpy()).statistic, abs=1e-6)


def test_heavy_ties_and_reversed_order():
    x = torch.tensor([1.0, 1, 1, 2, 2, 3, 3, 3, 3, 0])
    y = torch.tensor([5.0, 4, 4, 4, 3, 3, 3, 1, 1, 1])
    assert sb.kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
    assert sb.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert sb.kendall(x, -x) == pytest.approx(-1.0)


def test_dict_inputs_are_flattened_in_order():
    a = {"u": torch.tensor([[1.0, 3.0], [2.0, 0.5]]), "v": torch.tensor([4.0, -1.0])}
    b = {"u": torch.tensor([[2.0, 1.0], [2.0, 7.0]]), "v": torch.tensor([3.0, 0.0])}
    xa = np.array([1.0, 3.0, 2.0, 0.5, 4.0, -1.0])
    xb = np.array([2.0, 1.0, 2.0, 7.0, 3.0, 0.0])
    assert sb.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(xa, xb).statistic)
    assert sb.kendall(a, b) == pytest.approx(scipy.stats.kendalltau(xa, xb).statistic)


def test_average_ranks_equal_scipy_rankdata():
    x, _ = pairs(0, 1000, ties=True)
    np.testing.assert_array_equal(stats.average_ranks(x).numpy(), scipy.stats.rankdata(x.numpy()))


def test_kendall_subsample_reports_size_and_is_seeded():
    x, y = pairs(1, 20_000, ties=False)
    tau, n = stats.kendall_with_n(x, y, max_n=2000, seed=5)
    again, _ = stats.kendall_with_n(x, y, max_n=2000, seed=5)
    full = scipy.stats.kendalltau(x.numpy(), y.numpy()).statistic
    assert n == 2000 and tau == again
    assert abs(tau - full) < 0.05  # ~5 standard errors of τ at n = 2000
    assert stats.kendall_with_n(x[:100], y[:100], max_n=2000)[1] == 100


def test_constant_input_gives_nan_like_scipy():
    assert math.isnan(sb.spearman(torch.ones(5), torch.arange(5.0)))
    assert math.isnan(sb.kendall(torch.ones(5), torch.arange(5.0)))


def test_jaccard_and_overlap_against_python_sets():
    g = torch.Generator().manual_seed(0)
    a = {"p": torch.rand(30, 7, generator=g) < 0.3, "q": torch.rand(11, generator=g) < 0.5}
    b = {"p": torch.rand(30, 7, generator=g) < 0.2, "q": torch.rand(11, generator=g) < 0.5}

    def as_set(mask):
        return {(n, i) for n, m in mask.items() for i, v in enumerate(m.reshape(-1).tolist()) if v}

    sa, sb_ = as_set(a), as_set(b)
    assert sb.jaccard(a, b) == len(sa & sb_) / len(sa | sb_)
    assert sb.overlap_coefficient(a, b) == len(sa & sb_) / min(len(sa), len(sb_))
    assert sb.jaccard(a["p"], a["p"]) == 1.0
    assert math.isnan(sb.jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))


def test_chance_jaccard_matches_simulation():
    d, n = 0.1, 200_000
    g = torch.Generator().manual_seed(0)
    sims = [sb.jaccard(torch.rand(n, generator=g) < d, torch.rand(n, generator=g) < d) for _ in range(5)]
    assert np.mean(sims) == pytest.approx(sb.chance_jaccard(d), rel=0.02)


def test_mismatched_inputs_raise():
    with pytest.raises(sb.SalienceBenchError, match="shape mismatch"):
        sb.spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(sb.SalienceBenchError, match="different tensors"):
        sb.jaccard({"a": torch.ones(2, dtype=torch.bool)}, {"b": torch.ones(2, dtype=torch.bool)})


def test_mean_ci_equals_scipy_t_interval():
    from salience_bench.stats import mean_ci

    values = [0.81, 0.79, 0.835, 0.802]
    mean, half, n = mean_ci(values)
    low, high = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert n == 4 and mean == pytest.approx(np.mean(values))
    assert half == pytest.approx((high - low) / 2, rel=1e-12)
    assert math.isnan(mean_ci([0.5])[1])


@pytest.mark.parametrize("differences, expected", [
    ([0.01, 0.012, 0.011], "holds"),
    ([-0.004, -0.003, -0.0035], "holds"),  # below 0, but the whole interval within the half-point margin
    ([-0.02, -0.021, -0.019], "does not hold"),
    ([-0.02, 0.03, 0.0], "inconclusive"),
    ([-0.01, -0.004, -0.006, 0.001], "inconclusive"),  # upper bound above 0, lower below the margin
    ([0.5], "inconclusive"),  # one pair: no interval
])
def test_claim_verdict_follows_the_rule_on_scipys_interval(differences, expected):
    from salience_bench.stats import CLAIM_MARGIN, claim_verdict

    word, mean, low, high = claim_verdict(differences)
    assert word == expected
    if len(differences) > 1:  # the bounds are scipy's t-interval, and the word follows from them
        ref = scipy.stats.t.interval(0.95, len(differences) - 1, loc=np.mean(differences),
                                     scale=scipy.stats.sem(differences))
        assert (low, high) == pytest.approx(ref, rel=1e-12)
        assert word == ("holds" if ref[0] > -CLAIM_MARGIN else "does not hold" if ref[1] < 0 else "inconclusive")


@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros", "heavy top tie"])
def test_bucketed_ranks_of_large_inputs_equal_scipy(monkeypatch, kind):
    """Above SORTED_RANKS_MAX the ranks come from value buckets; forced on here at a small size."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200_000, generator=g)
    if kind == "ties":
        x = (x * 3).round()
    elif kind == "zeros":
        x[::2], x[1::7] = 0.0, -0.0
    elif kind == "heavy top tie":
        x = torch.rand(200_000, generator=g).clamp(max=0.3)
    monkeypatch.setattr(stats, "SORTED_RANKS_MAX", 1000)
    monkeypatch.setattr(stats, "SORT_BUDGET_BYTES", 0)  # however small: by value ranges
    monkeypatch.setattr(stats, "RANK_BUCKETS", 16)
    np.testing.assert_array_equal(stats.doubled_ranks(x).numpy(), 2 * scipy.stats.rankdata(x.numpy()))


def test_sample_of_a_huge_population_is_drawn_without_touching_it():
    """O(max_n): a population of 10^15 positions (a randperm of it could never run)."""
    pick = stats.sample_indices(10**15, 100_000, seed=4)
    assert pick.numel() == 100_000 and torch.equal(pick, pick.unique())  # sorted and distinct
    assert torch.equal(pick, stats.sample_indices(10**15, 100_000, seed=4))
    # Uniform: the deciles of the sample hold about a tenth each.
    counts = torch.bincount((pick // 10**14).long(), minlength=10)
    assert ((counts - 10_000).abs() < 600).all(), counts


def test_global_spearman_beyond_the_memory_budget_is_sampled_with_its_standard_error():
    from salience_bench import analysis

    g = torch.Generator().manual_seed(5)
    base = {f"t{i}": torch.randn(50_000, generator=g) for i in range(4)}
    scores = {"a": base, "b": {n: s + 0.8 * torch.randn(s.shape, generator=g) for n, s in base.items()}}
    exact = analysis.rank_correlation_frame(scores, kendall_max_n=1000)
    sampled = analysis.rank_correlation_frame(scores, kendall_max_n=1000, max_memory=5_000_000)
    e, s = exact[exact.layer == "all"].iloc[0], sampled[sampled.layer == "all"].iloc[0]
    assert e.n == 200_000 and math.isnan(e.spearman_se)
    assert s.n < 200_000 and 0 < s.spearman_se < 0.01
    assert abs(s.spearman - e.spearman) < 4 * s.spearman_se
    assert e.spearman == pytest.approx(scipy.stats.spearmanr(torch.cat(list(base.values())).numpy(),
                                                             torch.cat(list(scores["b"].values())).numpy()).statistic, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_the_torch_kendall_route_equals_scipy(ties):
    """The GPU route, run here on the CPU tensors, against scipy (the CPU route calls scipy itself)."""
    for n in (2, 3, 17, 1000, 20_000):
        x, y = pairs(n + 7, n, ties)
        assert stats.kendall_tau_b_torch(x, y) == pytest.approx(scipy.stats.kendalltau(x.numpy(), y.numpy()).statistic,
                                                                abs=1e-12)


def test_inversion_count_equals_the_pairwise_definition():
    """The radix-partition count against counting every pair i < j with y[i] > y[j]."""
    g = torch.Generator().manual_seed(11)
    for n in (1, 2, 3, 5, 17, 64, 257):
        for levels in (1, 2, 3, 10, 1000):
            y = torch.randint(0, levels, (n,), generator=g)
            pairwise = int((y[:, None] > y[None, :]).triu(1).sum())
            assert stats._count_inversions(y) == pairwise, (n, levels)
