"""The headline table: sparse fine-tuning (grad mask, 1%) against full fine-tuning, LoRA and
PiSSA at the matched trainable count, on SST-2 and AG News: accuracy (95% t-intervals over
seeds), trainable parameters, peak memory, FLOPs and time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from salience_bench import studies as _common
import salience_bench as sb
from salience_bench.report import figures
from salience_bench.stats import claim_rule, mean_ci
from salience_bench.training import TrainConfig

STUDY = "sparse_vs_lora_vs_full"
EVAL_SPLIT = {"sst2": "validation", "ag_news": "test"}


def main(argv=None) -> None:
    args, device, out, started = _common.start(STUDY, __doc__, argv)
    steps = args.steps or (20 if args.quick else 300)
    seeds = [0] if args.quick else [0, 1, 2]
    batch = 8 if args.quick else 32
    methods = [("sparse", "grad"), ("full", ""), ("lora", ""), ("pissa", "")]
    specs = [dict(method=m, metric=metric, seed=s, dataset=d) for d in EVAL_SPLIT for s in seeds for m, metric in methods]

    def config(spec) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=batch, score_batch_size=batch, score_batches=8 if not args.quick else 2,
                           mask=sb.MaskSpec(density=0.01))

    data = {d: (sb.load_dataset(d, "train"), sb.load_dataset(d, split)) for d, split in EVAL_SPLIT.items()}
    rows, _ = _common.run_grid(out, "runs", specs, config, model=args.model, device=device, datasets=data)
    table = []
    for (dataset, method), group in rows.groupby(["dataset", "method"], sort=False):
        mean, half, n = mean_ci(group.eval_accuracy)
        table.append(dict(dataset=dataset, method=method + (" grad 1%" if method == "sparse" else ""), seeds=n,
                          accuracy=mean, ci95=half, trainable=int(group.trainable_params.iloc[0]),
                          peak_memory_MiB=group.peak_memory_bytes.mean() / 2**20,
                          train_TFLOPs=group.train_flops.mean() / 1e12, seconds_per_step=group.seconds_per_step.mean()))
    table = pd.DataFrame(table)
    from salience_bench.report import io as report_io

    report_io.write_csv(table, out / "summary.csv")
    figures.paper_style()
    fig, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.barplot(data=rows.assign(method=rows.method.map(lambda m: "sparse grad" if m == "sparse" else m)),
                x="dataset", y="eval_accuracy", hue="method", errorbar=("ci", 95), capsize=0.1, err_kws={"linewidth": 0.8}, ax=ax)
    low = max(0.0, float(rows.eval_accuracy.min()) - 0.05)
    ax.set_ylim(low, 1.0)
    ax.set_ylabel(f"accuracy ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    ax.set_title(f"Sparse vs LoRA vs full, {steps} steps", fontsize=8)
    ax.legend(fontsize=6, frameon=False, ncols=2)
    fig.tight_layout()
    _common.save(fig, out, "accuracy")
    verdict = [f"Decision rule for \"sparse ≥ LoRA\" (the one `fair_speft` states before its runs): {claim_rule()}. "
               "This table's recipe is not that study's fair one: one shared untuned rate, a constant schedule, "
               f"{steps} steps, and counts matched only as closely as an integer rank allows."]
    for dataset, group in table.groupby("dataset", sort=False):
        get = {r.method: r for r in group.itertuples()}
        sparse, lora, full = get["sparse grad 1%"], get["lora"], get["full"]
        runs_of = rows[rows.dataset == dataset]
        judged = _common.claim(_common.paired_by_seed(runs_of[runs_of.method == "sparse"],
                                                      runs_of[runs_of.method == "lora"], "eval_accuracy"),
                               "sparse − LoRA")
        verdict.append(
            f"- {dataset}: sparse {_common.fmt_ci(sparse.accuracy, sparse.ci95)} ({sparse.trainable:,} trainable), "
            f"LoRA {_common.fmt_ci(lora.accuracy, lora.ci95)} ({lora.trainable:,}, "
            f"{lora.trainable / sparse.trainable - 1:+.0%} weights), PiSSA "
            f"{_common.fmt_ci(get['pissa'].accuracy, get['pissa'].ci95)}, full {_common.fmt_ci(full.accuracy, full.ci95)}. "
            f"{judged['text']}; "
            f"peak memory sparse/LoRA/full: {sparse.peak_memory_MiB:.0f}/{lora.peak_memory_MiB:.0f}/{full.peak_memory_MiB:.0f} MiB."
        )
    _common.write_readme(out, "Sparse vs LoRA vs full fine-tuning", __doc__.replace("\n", " "), verdict, args, device,
                         started, tables={"Headline table": table.round(4)}, figures=["accuracy"], runs=rows)
    print("\n".join(verdict))


if __name__ == "__main__":
    main()
