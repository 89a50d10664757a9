"""Tidy frames comparing metrics: overlap, rank correlation, per-layer allocation.

One row per (metric pair or metric) × layer, with ``layer = "all"`` for the global row.
Ranks are computed once per metric and layer and reused across pairs; scores and masks are read one
tensor at a time, so they may be computed on access (lazy scores) or kept compactly (index masks).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import stats
from .runtime import available_memory
from .tensors import CompactMasks, shape_of

ALL_LAYERS = "all"
OVERLAP_COLUMNS = ["metric_a", "metric_b", "layer", "jaccard", "overlap_coefficient"]
RANK_COLUMNS = ["metric_a", "metric_b", "layer", "spearman", "kendall", "n", "kendall_n", "spearman_se"]
ALLOCATION_COLUMNS = ["metric", "layer", "numel", "selected", "density"]

Nested = Mapping[str, Mapping[str, torch.Tensor]]


def _layers(nested: Nested) -> list[str]:
    return list(next(iter(nested.values())))


def overlap_frame(masks: Nested) -> pd.DataFrame:
    """Jaccard and overlap coefficient for every unordered pair of metrics, globally and per layer
    (the global row from the per-layer counts: each tensor's masks are read once per pair)."""
    rows = []
    layers = _layers(masks)
    for a, b in combinations(masks, 2):
        counts = {layer: stats.intersection_and_sizes(_one(masks[a], layer), _one(masks[b], layer)) for layer in layers}
        total = tuple(sum(c[i] for c in counts.values()) for i in range(3))
        for layer, (inter, size_a, size_b) in [(ALL_LAYERS, total), *counts.items()]:
            rows.append((a, b, layer, stats.jaccard_from_counts(inter, size_a, size_b),
                         stats.overlap_from_counts(inter, size_a, size_b)))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def _one(mapping: Mapping[str, torch.Tensor], name: str) -> Mapping[str, torch.Tensor]:
    """A one-tensor view of a score or mask mapping that keeps its compact form (no materialising)."""
    return (_MaskSubset if isinstance(mapping, CompactMasks) else _Subset)(mapping, [name])


class _Subset(Mapping[str, torch.Tensor]):
    def __init__(self, mapping: Mapping[str, torch.Tensor], names: list[str]):
        self.mapping, self.names = mapping, names

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.mapping[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shape_of(self, name: str) -> torch.Size:
        return shape_of(self.mapping, name)


class _MaskSubset(_Subset):
    """A one-tensor view of compact masks, still compact."""

    def indices(self, name: str) -> torch.Tensor:
        return self.mapping.indices(name)

    def count(self, name: str | None = None) -> int:
        return sum(self.mapping.count(n) for n in ([name] if name is not None else self.names))


def rank_correlation_frame(
    scores: Nested, *, kendall_max_n: int | None = 20_000, seed: int = 0, progress: bool = False,
    max_memory: int | None = None,
) -> pd.DataFrame:
    """Spearman ρ and Kendall τ-b for every pair of metrics, globally and per layer.

    Spearman is exact over all ``n`` entries of a layer. Globally it is exact while the ranks fit in
    ``max_memory`` bytes (default: 80% of the device's free memory): about 4 bytes per entry and metric,
    or 28 bytes per entry a pair at a time; beyond that it is computed on a seeded uniform sample of ``n``
    entries, with its standard error in ``spearman_se`` (empty when exact). Kendall τ-b is exact on a
    seeded subsample of at most ``kendall_max_n`` entries (``kendall_n``), the same positions for every pair.
    """
    metrics = list(scores)
    layers = _layers(scores)
    first = scores[metrics[0]]
    sizes = {layer: math.prod(shape_of(first, layer)) for layer in layers}
    device = first[layers[0]].device
    results: dict[tuple[str, str, str], tuple] = {}
    pairs = list(combinations(metrics, 2))
    for layer in tqdm(layers, desc="rank correlation", unit="tensor", disable=not progress, leave=False):
        values = {m: scores[m][layer].reshape(-1) for m in metrics}
        ranks = {m: stats.ranks_of(v) for m, v in values.items()}
        pick = stats.sample_indices(sizes[layer], kendall_max_n, seed, device)
        sampled = {m: v if pick is None else v[pick.to(v.device)] for m, v in values.items()}
        del values
        for a, b in pairs:
            results[a, b, layer] = (stats.spearman_from_ranks(ranks[a], ranks[b]), _tau(sampled[a], sampled[b]), sizes[layer],
                                    sampled[a].numel(), math.nan)
        del ranks, sampled
    results.update(_global_rows(scores, metrics, pairs, sum(sizes.values()), kendall_max_n, seed, device, max_memory))
    rows = [(a, b, layer, *results[a, b, layer]) for a, b in pairs for layer in (ALL_LAYERS, *layers)]
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


def _tau(x: torch.Tensor, y: torch.Tensor) -> float:
    return math.nan if stats.has_nan([x, y]) else stats.kendall_tau_b(x, y)


def _global_rows(scores: Nested, metrics: list[str], pairs: list[tuple[str, str]], n: int, kendall_max_n: int | None,
                 seed: int, device: torch.device, max_memory: int | None) -> dict:
    budget = max_memory if max_memory is not None else int(0.8 * available_memory(device))
    out = {}
    pick = stats.sample_indices(n, kendall_max_n, seed, device)
    kendall_values = {m: stats.values_at(scores[m], pick) for m in metrics}
    taus = {(a, b): _tau(kendall_values[a], kendall_values[b]) for a, b in pairs}
    kendall_n = kendall_values[metrics[0]].numel()
    del kendall_values
    if n * (4 * len(metrics) + 20) <= budget:  # every metric's ranks at once, each computed once
        ranks = {m: stats.ranks_of(scores[m]) for m in metrics}
        for a, b in pairs:
            out[a, b, ALL_LAYERS] = (stats.spearman_from_ranks(ranks[a], ranks[b]), taus[a, b], n, kendall_n, math.nan)
    elif n * 28 <= budget:  # two metrics' ranks at a time
        for a, b in pairs:
            out[a, b, ALL_LAYERS] = (stats.spearman_from_ranks(stats.ranks_of(scores[a]), stats.ranks_of(scores[b])), taus[a, b], n,
                                     kendall_n, math.nan)
    else:  # exact Spearman does not fit: a seeded uniform sample, with its standard error
        size = max(2, min(n, budget // (4 * len(metrics) + 64)))  # ranks, their sort, and drawing the sample
        positions = stats.sample_indices(n, size, seed + 1, device)
        ranks = {m: stats.ranks_of(stats.values_at(scores[m], positions)) for m in metrics}
        for a, b in pairs:
            rho = stats.spearman_from_ranks(ranks[a], ranks[b])
            out[a, b, ALL_LAYERS] = (rho, taus[a, b], size, kendall_n, stats.spearman_standard_error(rho, size, n))
    return out


def allocation_frame(masks: Nested) -> pd.DataFrame:
    """How each metric's mask spreads over the layers: selected count and realised density per layer."""
    rows = []
    for metric, per_layer in masks.items():
        total_numel = total_selected = 0
        for layer in per_layer:
            numel = math.prod(shape_of(per_layer, layer))
            selected = (per_layer.count(layer) if isinstance(per_layer, CompactMasks)
                        else int(per_layer[layer].sum().item()))
            rows.append((metric, layer, numel, selected, selected / numel))
            total_numel, total_selected = total_numel + numel, total_selected + selected
        rows.append((metric, ALL_LAYERS, total_numel, total_selected, total_selected / total_numel))
    return pd.DataFrame(rows, columns=ALLOCATION_COLUMNS)


def pair_matrix(frame: pd.DataFrame, value: str, metrics: list[str], diagonal: float = 1.0) -> pd.DataFrame:
    """The global rows of a pairwise frame as a symmetric metric × metric matrix (NaN where a pair has no row)."""
    glob = frame[frame["layer"] == ALL_LAYERS]
    matrix = pd.DataFrame(float("nan"), index=metrics, columns=metrics, dtype=float)
    for metric in metrics:
        matrix.loc[metric, metric] = diagonal
    for row in glob.itertuples(index=False):
        a, b, v = getattr(row, "metric_a"), getattr(row, "metric_b"), getattr(row, value)
        if a in matrix.index and b in matrix.index:
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
