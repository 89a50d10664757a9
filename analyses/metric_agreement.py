"""Do salience metrics agree? Jaccard of their masks (against chance) and Spearman of their
scores, for every pair of maskable metrics, globally and per layer type (attention vs MLP),
at densities 0.1%, 1% and 5%."""

from __future__ import annotations

from itertools import combinations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from salience_bench import studies as _common
import salience_bench as sb
from salience_bench.report import figures

STUDY = "metric_agreement"
DENSITIES = (0.001, 0.01, 0.05)
GRADIENT_FAMILY = ("grad", "snip", "fisher", "taylor_fo", "spiel_grad", "smt_block")
WEIGHT_FAMILY = ("magnitude", "wanda", "lift")


def layer_type(name: str) -> str:
    return "attention" if any(t in name for t in ("attention", "attn", "q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"


def main(argv=None) -> None:
    args, device, out, started = _common.start(STUDY, __doc__, argv)
    metrics = (["grad", "snip", "fisher", "magnitude", "random"] if args.quick
               else [m for m in sb.list_metrics() if sb.get_scorer(m).maskable])
    config = sb.CompareConfig(metrics=tuple(metrics), model=args.model, dataset="sst2", seed=0, device=str(device),
                              batch_size=32 if not args.quick else 8, batches=8 if not args.quick else 2, max_length=64)
    # The scores stay on the model's device: the statistics below run there.
    scores = sb.run_comparison(config, tables=False, progress=True).scores
    names = list(next(iter(scores.values())))
    groups = {"all": names, "attention": [n for n in names if layer_type(n) == "attention"],
              "mlp": [n for n in names if layer_type(n) == "mlp"]}
    rows = []
    for density in DENSITIES:
        masks = {m: sb.make_mask(s, density=density) for m, s in scores.items()}
        for a, b in combinations(metrics, 2):
            for group, members in groups.items():
                ma = {n: masks[a][n] for n in members}
                mb = {n: masks[b][n] for n in members}
                selected = sum(int(m.sum()) for m in ma.values()) / sum(m.numel() for m in ma.values())
                rows.append(dict(metric_a=a, metric_b=b, density=density, layer_type=group,
                                 jaccard=sb.jaccard(ma, mb), chance=sb.chance_jaccard(selected) if selected else float("nan")))
    overlap = pd.DataFrame(rows)
    overlap["times_chance"] = overlap["jaccard"] / overlap["chance"]

    from salience_bench.stats import ranks_of, spearman_from_ranks

    # Spearman = Pearson of tie-averaged ranks: rank each metric once per layer type, not once per pair.
    ranked = {(m, group): ranks_of({n: scores[m][n] for n in members}) for m in metrics for group, members in groups.items()}
    ranks = pd.DataFrame([
        dict(metric_a=a, metric_b=b, layer_type=group,
             spearman=spearman_from_ranks(ranked[a, group], ranked[b, group]))
        for a, b in combinations(metrics, 2) for group in groups
    ])
    from salience_bench.report import io as report_io

    report_io.write_csv(overlap, out / "overlap.csv")
    report_io.write_csv(ranks, out / "rank_correlation.csv")

    # Figure 1: Jaccard at 1% as a clustered heatmap. Figure 2: agreement over chance vs density.
    from salience_bench.analysis import cluster_order

    at1 = overlap[(overlap.density == 0.01) & (overlap.layer_type == "all")]
    matrix = pd.DataFrame(1.0, index=metrics, columns=metrics)
    for r in at1.itertuples():
        matrix.loc[r.metric_a, r.metric_b] = matrix.loc[r.metric_b, r.metric_a] = r.jaccard
    order = cluster_order(matrix)
    fig = figures.pair_heatmap(matrix.loc[order, order], title="Jaccard of top-1% masks (SST-2, MiniLM)\n"
                               f"chance = {sb.chance_jaccard(0.01):.4f}; order: hierarchical clustering",
                               colorbar_label="Jaccard", vmin=0, vmax=1, cmap="viridis")
    _common.save(fig, out, "jaccard_1pct")
    figures.paper_style()
    pairs = overlap[(overlap.metric_a != "random") & (overlap.metric_b != "random")]
    summary = pairs.groupby(["density", "layer_type"], as_index=False)["times_chance"].median()
    fig, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.lineplot(data=summary, x="density", y="times_chance", hue="layer_type", marker="o", ax=ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("density")
    ax.set_ylabel("median Jaccard / chance\n(all pairs without random)")
    ax.set_title("Agreement of masks above chance", fontsize=8)
    fig.tight_layout()
    _common.save(fig, out, "agreement_vs_density")

    def pair(a, b, density=0.01, group="all"):
        row = overlap[(overlap.density == density) & (overlap.layer_type == group)
                      & (((overlap.metric_a == a) & (overlap.metric_b == b)) | ((overlap.metric_a == b) & (overlap.metric_b == a)))]
        return float(row.jaccard.iloc[0]) if len(row) else float("nan")

    def family_median(family, density=0.01, group="all"):
        members = [m for m in family if m in metrics]
        values = [pair(a, b, density, group) for a, b in combinations(members, 2)]
        return float(pd.Series(values).median()) if values else float("nan")

    cross = [pair(a, b) for a in GRADIENT_FAMILY for b in WEIGHT_FAMILY if a in metrics and b in metrics]
    chance = sb.chance_jaccard(0.01)
    grad_family, weight_family = family_median(GRADIENT_FAMILY), family_median(WEIGHT_FAMILY)
    cross_median = float(pd.Series(cross).median()) if cross else float("nan")
    # "Agrees" means at least 10× the chance Jaccard: the threshold is stated with the claim.
    holds = pair("grad", "fisher") >= 10 * chance and pair("grad", "snip") >= 10 * chance
    verdict = [
        f"- At 1% density the chance Jaccard is {chance:.4f}; random vs grad gives {pair('random', 'grad'):.4f}.",
        f"- Among the gradient metrics ({', '.join(m for m in GRADIENT_FAMILY if m in metrics)}) the median pairwise "
        f"Jaccard is {grad_family:.3f} ({grad_family / chance:.0f}× chance); grad vs fisher {pair('grad', 'fisher'):.3f}, "
        f"grad vs snip {pair('grad', 'snip'):.3f}.",
        f"- Among the weight-based metrics ({', '.join(m for m in WEIGHT_FAMILY if m in metrics) or 'none run'}) the median is "
        f"{weight_family:.3f}; across the two families it is {cross_median:.4f} ({cross_median / chance:.1f}× chance).",
        "- Agreement over chance by density and layer type (median over pairs, random excluded): "
        + "; ".join(f"{r.layer_type} at {r.density:g}: {r.times_chance:.0f}×" for r in summary.itertuples()) + ".",
        f"- Claim tested: a plain gradient picks much the same weights as the costlier gradient proxies (taken as "
        f"Jaccard ≥ 10× chance with both fisher and snip at 1%). **{'Holds' if holds else 'Does not hold'} here**: "
        f"{pair('grad', 'fisher') / chance:.0f}× and {pair('grad', 'snip') / chance:.0f}× chance. "
        "Agreement is not accuracy: the downstream studies test whether the masks train equally well.",
    ]
    _common.write_readme(out, "Do salience metrics agree?", __doc__.replace("\n", " "), verdict, args, device, started,
                         figures=["jaccard_1pct", "agreement_vs_density"])
    print("\n".join(verdict))


if __name__ == "__main__":
    main()
