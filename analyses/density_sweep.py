"""Downstream accuracy against density: each metric's sparse fine-tuning and LoRA at the matched
trainable count, over several seeds (mean with 95% t-intervals), on SST-2."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from salience_bench import studies as _common
import salience_bench as sb
from salience_bench.report import figures
from salience_bench.stats import claim_rule, mean_ci
from salience_bench.training import TrainConfig

STUDY = "density_sweep"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (label, density), group in rows.groupby(["label", "target_density"], sort=False):
        mean, half, n = mean_ci(group["eval_accuracy"])
        out.append(dict(label=label, density=density, seeds=n, accuracy=mean, ci95=half,
                        trainable_params=int(group["trainable_params"].iloc[0])))
    return pd.DataFrame(out)


def main(argv=None) -> None:
    args, device, out, started = _common.start(STUDY, __doc__, argv)
    metrics = ["grad", "random"] if args.quick else ["grad", "snip", "fisher", "magnitude", "random", "lift"]
    densities = [0.01, 0.05] if args.quick else [0.001, 0.01, 0.05]
    seeds = [0, 1] if args.quick else [0, 1, 2]
    steps = args.steps or (30 if args.quick else 300)
    batch = 8 if args.quick else 32
    specs = [dict(method="sparse", metric=m, target_density=d, seed=s, dataset="sst2", label=f"sparse {m}")
             for d in densities for s in seeds for m in metrics]
    specs += [dict(method="lora", metric="", target_density=d, seed=s, dataset="sst2", label="LoRA (matched)")
              for d in densities for s in seeds]

    def config(spec) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=batch, score_batch_size=batch, score_batches=8 if not args.quick else 2,
                           mask=sb.MaskSpec(density=spec["target_density"]))

    data = {"sst2": (sb.load_dataset("sst2", "train"), sb.load_dataset("sst2", "validation"))}
    rows, _ = _common.run_grid(out, "runs", specs, config, model=args.model, device=device, datasets=data)
    summary = summarise(rows)
    from salience_bench.report import io as report_io

    report_io.write_csv(summary, out / "summary.csv")

    figures.paper_style()
    fig, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.6))
    for label, group in summary.groupby("label", sort=False):
        style = dict(linestyle="--", color="black") if label.startswith("LoRA") else {}
        ax.errorbar(group["density"], group["accuracy"], yerr=group["ci95"].fillna(0), marker="o", markersize=3,
                    capsize=2, linewidth=1, label=label, **style)
    ax.set_xscale("log")
    ax.set_xlabel("density (fraction of block linear weights trained)")
    ax.set_ylabel(f"SST-2 accuracy (mean ± 95% CI, {len(seeds)} seeds)")
    ax.set_title(f"Accuracy vs density, {steps} steps", fontsize=8)
    ax.legend(fontsize=5, ncols=2, frameon=False)
    fig.tight_layout()
    _common.save(fig, out, "accuracy_vs_density")

    verdict = [f"Decision rule for each claim (the one `fair_speft` states before its runs): {claim_rule()}. "
               "This sweep's recipe is not that study's fair one: one shared untuned rate, a constant schedule, "
               f"{steps} steps, and LoRA's counts matched only as closely as an integer rank allows."]
    for density, group in summary.groupby("density"):
        sparse = group[group.label.str.startswith("sparse")].sort_values("accuracy", ascending=False)
        grad = sparse[sparse.label == "sparse grad"].iloc[0]
        best = sparse[sparse.label != "sparse grad"].iloc[0]  # the best other metric, by mean
        lora = group[group.label.str.startswith("LoRA")].iloc[0]
        at = rows[rows.target_density == density]
        runs = {label: at[at.label == label] for label in (grad.label, best.label, lora.label)}
        vs_best = _common.claim(_common.paired_by_seed(runs[grad.label], runs[best.label], "eval_accuracy"),
                                f"grad − {best.label.removeprefix('sparse ')} (best other metric)")
        vs_lora = _common.claim(_common.paired_by_seed(runs[grad.label], runs[lora.label], "eval_accuracy"),
                                "sparse grad − LoRA")
        verdict.append(
            f"- density {density:g} ({int(grad.trainable_params):,} weights; LoRA {int(lora.trainable_params):,}): grad "
            f"{_common.fmt_ci(grad.accuracy, grad.ci95)}; best other metric {best.label.removeprefix('sparse ')} "
            f"{_common.fmt_ci(best.accuracy, best.ci95)}; LoRA r matched {_common.fmt_ci(lora.accuracy, lora.ci95)}. "
            f"{vs_best['text']}; {vs_lora['text']}."
        )
    _common.write_readme(out, "Accuracy vs density", __doc__.replace("\n", " "), verdict, args, device, started,
                         tables={"Summary": summary.round(4)}, figures=["accuracy_vs_density"], runs=rows)
    print("\n".join(verdict))


if __name__ == "__main__":
    main()
