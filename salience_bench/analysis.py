"""Tidy frames comparing metrics: overlap, rank correlation, per-layer allocation.

One row per (metric pair or metric) × layer, with ``layer = "all"`` for the global row.
Ranks are computed once per metric and reused across pairs.
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import stats

ALL_LAYERS = "all"
OVERLAP_COLUMNS = ["metric_a", "metric_b", "layer", "jaccard", "overlap_coefficient"]
RANK_COLUMNS = ["metric_a", "metric_b", "layer", "spearman", "kendall", "n", "kendall_n"]
ALLOCATION_COLUMNS = ["metric", "layer", "numel", "selected", "density"]

Nested = Mapping[str, Mapping[str, torch.Tensor]]


def _layers(nested: Nested) -> list[str]:
    return list(next(iter(nested.values())))


def overlap_frame(masks: Nested) -> pd.DataFrame:
    """Jaccard and overlap coefficient for every unordered pair of metrics, globally and per layer."""
    rows = []
    layers = _layers(masks)
    for a, b in combinations(masks, 2):
        rows.append((a, b, ALL_LAYERS, stats.jaccard(masks[a], masks[b]), stats.overlap_coefficient(masks[a], masks[b])))
        for layer in layers:
            ma, mb = masks[a][layer], masks[b][layer]
            rows.append((a, b, layer, stats.jaccard(ma, mb), stats.overlap_coefficient(ma, mb)))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def rank_correlation_frame(
    scores: Nested, *, kendall_max_n: int | None = 20_000, seed: int = 0, progress: bool = False
) -> pd.DataFrame:
    """Spearman ρ (exact, all entries) and Kendall τ-b (on a seeded subsample of at most
    ``kendall_max_n`` entries, size in ``kendall_n``) for every pair, globally and per layer."""
    metrics = list(scores)
    layers = _layers(scores)
    flat = {m: torch.cat([scores[m][l].reshape(-1) for l in layers]) for m in metrics}

    def values(m: str, layer: str) -> torch.Tensor:
        return flat[m] if layer == ALL_LAYERS else scores[m][layer].reshape(-1)

    # Ranks and the Kendall subsample are computed once per metric and layer, not once per pair;
    # every pair uses the same sampled positions.
    ranks = {m: {layer: stats.average_ranks(values(m, layer)) for layer in (ALL_LAYERS, *layers)} for m in metrics}
    picks = {layer: stats.sample_indices(values(metrics[0], layer).numel(), kendall_max_n, seed)
             for layer in (ALL_LAYERS, *layers)}
    sampled = {m: {layer: values(m, layer) if picks[layer] is None else values(m, layer)[picks[layer]]
                   for layer in picks} for m in metrics}
    rows = []
    pairs = list(combinations(metrics, 2))
    for a, b in tqdm(pairs, desc="rank correlation", unit="pair", disable=not progress, leave=False):
        for layer in (ALL_LAYERS, *layers):
            rho = stats.pearson(ranks[a][layer], ranks[b][layer])
            tau = stats.kendall_tau_b(sampled[a][layer], sampled[b][layer])
            rows.append((a, b, layer, rho, tau, values(a, layer).numel(), sampled[a][layer].numel()))
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


def allocation_frame(masks: Nested) -> pd.DataFrame:
    """How each metric's mask spreads over the layers: selected count and realised density per layer."""
    rows = []
    for metric, per_layer in masks.items():
        for layer, mask in per_layer.items():
            selected = int(mask.sum().item())
            rows.append((metric, layer, mask.numel(), selected, selected / mask.numel()))
        numel = sum(m.numel() for m in per_layer.values())
        selected = sum(int(m.sum().item()) for m in per_layer.values())
        rows.append((metric, ALL_LAYERS, numel, selected, selected / numel))
    return pd.DataFrame(rows, columns=ALLOCATION_COLUMNS)


def pair_matrix(frame: pd.DataFrame, value: str, metrics: list[str], diagonal: float = 1.0) -> pd.DataFrame:
    """The global rows of a pairwise frame as a symmetric metric × metric matrix."""
    glob = frame[frame["layer"] == ALL_LAYERS]
    matrix = pd.DataFrame(diagonal, index=metrics, columns=metrics, dtype=float)
    for row in glob.itertuples(index=False):
        a, b, v = getattr(row, "metric_a"), getattr(row, "metric_b"), getattr(row, value)
        matrix.loc[a, b] = matrix.loc[b, a] = v
    return matrix


def cluster_order(matrix: pd.DataFrame) -> list[str]:
    """Metric order from average-linkage hierarchical clustering on 1 − similarity (scipy),
    so that similar metrics sit next to each other in a heatmap."""
    if len(matrix) < 3:
        return list(matrix.index)
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    similarity = matrix.fillna(0.0).to_numpy()
    distance = 1.0 - (similarity + similarity.T) / 2
    distance[range(len(distance)), range(len(distance))] = 0.0
    order = leaves_list(linkage(squareform(distance.clip(min=0.0), checks=False), method="average"))
    return [matrix.index[i] for i in order]
