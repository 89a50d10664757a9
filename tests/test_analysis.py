import pytest
import torch

import salience_bench as sb
from salience_bench import analysis


@pytest.fixture
def scores():
    g = torch.Generator().manual_seed(0)
    base = {"l0": torch.randn(20, 10, generator=g), "l1": torch.randn(50, generator=g)}
    return {
        "m1": base,
        "m2": {n: s + 0.5 * torch.randn(s.shape, generator=g) for n, s in base.items()},
        "m3": {n: torch.randn(s.shape, generator=g) for n, s in base.items()},
    }


def test_frames_have_one_row_per_pair_and_layer(scores):
    masks = {m: sb.make_mask(s, density=0.2) for m, s in scores.items()}
    overlap = analysis.overlap_frame(masks)
    ranks = analysis.rank_correlation_frame(scores, kendall_max_n=None)
    for frame, cols in [(overlap, analysis.OVERLAP_COLUMNS), (ranks, analysis.RANK_COLUMNS)]:
        assert list(frame.columns) == cols
        assert len(frame) == 3 * 3  # 3 unordered pairs × (all, l0, l1)
        assert set(frame["layer"]) == {"all", "l0", "l1"}
    row = overlap[(overlap.metric_a == "m1") & (overlap.metric_b == "m2") & (overlap.layer == "l0")].iloc[0]
    assert row.jaccard == sb.jaccard(masks["m1"]["l0"], masks["m2"]["l0"])
    glob = ranks[(ranks.metric_a == "m1") & (ranks.metric_b == "m3") & (ranks.layer == "all")].iloc[0]
    assert glob.spearman == pytest.approx(sb.spearman(scores["m1"], scores["m3"]))
    assert glob.kendall == pytest.approx(sb.kendall(scores["m1"], scores["m3"]))
    assert glob.n == glob.kendall_n == 250


def test_allocation_counts_add_up(scores):
    masks = {m: sb.make_mask(s, k=37) for m, s in scores.items()}
    alloc = analysis.allocation_frame(masks)
    assert list(alloc.columns) == analysis.ALLOCATION_COLUMNS
    for metric in scores:
        rows = alloc[alloc.metric == metric]
        per_layer = rows[rows.layer != "all"]
        assert per_layer.selected.sum() == 37 == rows[rows.layer == "all"].selected.iloc[0]
        assert (per_layer.density == per_layer.selected / per_layer.numel).all()


def test_pair_matrix_is_symmetric(scores):
    masks = {m: sb.make_mask(s, density=0.3) for m, s in scores.items()}
    matrix = analysis.pair_matrix(analysis.overlap_frame(masks), "jaccard", list(scores))
    assert (matrix.values == matrix.values.T).all()
    assert (matrix.values.diagonal() == 1).all()
