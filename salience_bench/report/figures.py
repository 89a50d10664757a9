"""Paper-ready figures (one column wide, PNG at 300 dpi and vector PDF) drawn from the tidy frames."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..analysis import ALL_LAYERS  # noqa: E402
from .io import atomic_path  # noqa: E402

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper (ACL, NeurIPS, ICML)
FORMATS = ("png", "pdf")
_BLOCK = re.compile(r"(?:^|\.)(\d+)\.")


def paper_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.8)
    plt.rcParams.update({"figure.dpi": 150, "savefig.dpi": 300, "savefig.bbox": "tight", "pdf.fonttype": 42})


def save(fig: plt.Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        target = out_dir / f"{stem}.{fmt}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt)
        paths.append(target)
    plt.close(fig)
    return paths


def pair_heatmap(matrix: pd.DataFrame, *, title: str, colorbar_label: str, vmin: float, vmax: float, cmap: str) -> plt.Figure:
    """A metric × metric heatmap, annotated when there are few enough metrics to read the numbers."""
    paper_style()
    n = len(matrix)
    side = max(COLUMN_WIDTH_IN * 0.8, min(0.45 * n + 1.2, COLUMN_WIDTH_IN * 2))
    fig, ax = plt.subplots(figsize=(side + 0.6, side))
    sns.heatmap(
        matrix, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, square=True, annot=n <= 10, fmt=".2f",
        annot_kws={"size": 6}, linewidths=0.5, linecolor="white", cbar_kws={"label": colorbar_label, "shrink": 0.8},
    )
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(axis="x", rotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def allocation_plot(allocation: pd.DataFrame, *, density: float | None, title: str) -> plt.Figure:
    """Fraction of each tensor selected by each metric's mask, tensors in model order."""
    paper_style()
    per_layer = allocation[allocation["layer"] != ALL_LAYERS]
    layers = list(dict.fromkeys(per_layer["layer"]))
    position = {layer: i for i, layer in enumerate(layers)}
    frame = per_layer.assign(position=per_layer["layer"].map(position))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN * 1.6, COLUMN_WIDTH_IN * 0.75))
    sns.lineplot(data=frame, x="position", y="density", hue="metric", style="metric", markers=True,
                 dashes=False, markersize=3, linewidth=1, ax=ax)
    if density is not None:
        ax.axhline(density, color="grey", linestyle="--", linewidth=0.8, label=f"global density {density:.2%}")
    # Label block boundaries rather than 36+ tensor names, which would be unreadable.
    starts, labels, seen = [], [], set()
    for layer in layers:
        match = _BLOCK.search(layer)
        block = match.group(1) if match else None
        if block not in seen:
            seen.add(block)
            starts.append(position[layer])
            labels.append(f"block {block}" if block is not None else layer)
    ax.set_xticks(starts, labels, rotation=45, ha="right")
    ax.set_xlabel("weight tensor (model order)")
    ax.set_ylabel("fraction of tensor selected")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, ncols=2, frameon=False)
    fig.tight_layout()
    return fig


def _measure(summary: pd.DataFrame) -> str:
    return str(summary["measure"].iloc[0]) if "measure" in summary and len(summary) else "accuracy"


def accuracy_plot(summary: pd.DataFrame, *, title: str) -> plt.Figure:
    """Mean accuracy per method, with 95% t-interval error bars when several seeds ran."""
    paper_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 0.28 * len(summary) + 0.9))
    y = range(len(summary))
    errors = summary["accuracy_ci95"].fillna(0).to_numpy()
    colors = sns.color_palette("colorblind", len(summary))
    ax.barh(list(y), summary["accuracy_mean"], xerr=errors, color=colors, capsize=2, height=0.6,
            error_kw={"linewidth": 0.8})
    ax.set_yticks(list(y), summary["run"])
    ax.invert_yaxis()
    measure = _measure(summary)
    if measure != "perplexity":  # fractions in [0, 1], correlations (mcc, pearson) in [-1, 1]: zoom in
        floor = 0.0 if measure in ("accuracy", "exact match") else -1.0
        low = max(floor, float((summary["accuracy_mean"] - errors).min()) - 0.05)
        ax.set_xlim(low, min(1.0, float((summary["accuracy_mean"] + errors).max()) + 0.02))
    seeds = int(summary["seeds"].max())
    ax.set_xlabel(measure + (f" (mean of {seeds} seeds, 95% t-interval)" if seeds > 1 else " (one seed)"))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_memory_plot(summary: pd.DataFrame, *, title: str, memory_label: str) -> plt.Figure:
    """Accuracy against peak training memory, one labelled point per method."""
    paper_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, COLUMN_WIDTH_IN * 0.75))
    colors = sns.color_palette("colorblind", len(summary))
    mib = summary["peak_memory_bytes"] / 2**20
    errors = summary["accuracy_ci95"].fillna(0)
    for i, row in enumerate(summary.itertuples(index=False)):
        ax.errorbar(mib.iloc[i], row.accuracy_mean, yerr=errors.iloc[i], fmt="o", color=colors[i], markersize=4,
                    capsize=2, label=row.run)
    ax.set_xlabel(memory_label)
    ax.set_ylabel(_measure(summary))
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def drift_plot(drift: pd.DataFrame, *, title: str) -> plt.Figure:
    """Dynamic-mask drift: Jaccard with the initial and previous mask, and the fraction ever selected."""
    paper_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH_IN * 1.6, COLUMN_WIDTH_IN * 0.65))
    long = drift.melt(id_vars=["metric", "seed", "step"], value_vars=["jaccard_initial", "jaccard_previous"],
                      var_name="against", value_name="jaccard")
    long["against"] = long["against"].map({"jaccard_initial": "initial mask", "jaccard_previous": "previous mask"})
    sns.lineplot(data=long, x="step", y="jaccard", hue="metric", style="against", markers=True, markersize=3,
                 linewidth=1, ax=left, errorbar=("ci", 95))
    left.set_ylim(0, 1.02)
    left.set_ylabel("Jaccard")
    left.legend(fontsize=5, frameon=False)
    sns.lineplot(data=drift, x="step", y="ever_selected_fraction", hue="metric", markers=True, marker="o",
                 markersize=3, linewidth=1, ax=right, errorbar=("ci", 95), legend=False)
    right.set_ylabel("fraction of weights ever selected")
    right.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
