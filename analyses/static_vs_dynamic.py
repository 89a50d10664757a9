"""Is a static mask (chosen once before training) as good as a dynamic one (re-scored and
re-selected every U steps)? grad and snip at 1% density on SST-2, several seeds: accuracy with
95% t-intervals, paired differences, mask drift over training, and the cost of updating."""

from __future__ import annotations

import pandas as pd

from salience_bench import studies as _common
import salience_bench as sb
from salience_bench.report import figures
from salience_bench.stats import claim_rule, mean_ci
from salience_bench.training import TrainConfig

STUDY = "static_vs_dynamic"


def main(argv=None) -> None:
    args, device, out, started = _common.start(STUDY, __doc__, argv)
    steps = args.steps or (20 if args.quick else 300)
    update_every = 5 if args.quick else 50
    seeds = [0, 1] if args.quick else [0, 1, 2]
    batch = 8 if args.quick else 32
    specs = [dict(method="sparse", metric=m, schedule=sched, seed=s, dataset="sst2")
             for m in ("grad", "snip") for sched in ("static", "dynamic") for s in seeds]

    def config(spec) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=batch, score_batch_size=batch, score_batches=8 if not args.quick else 2,
                           mask=sb.MaskSpec(density=0.01),
                           mask_update_every=update_every if spec["schedule"] == "dynamic" else None)

    data = {"sst2": (sb.load_dataset("sst2", "train"), sb.load_dataset("sst2", "validation"))}
    rows, drift = _common.run_grid(out, "runs", specs, config, model=args.model, device=device, datasets=data)
    summary, verdict = [], [f"Decision rule for \"static is as good as dynamic\", on static − dynamic (the rule "
                            f"`fair_speft` states before its runs): {claim_rule()}."]
    for metric, group in rows.groupby("metric", sort=False):
        stat = group[group.schedule == "static"].sort_values("seed")
        dyn = group[group.schedule == "dynamic"].sort_values("seed")
        s_mean, s_half, n = mean_ci(stat.eval_accuracy)
        d_mean, d_half, _ = mean_ci(dyn.eval_accuracy)
        judged = _common.claim(_common.paired_by_seed(stat, dyn, "eval_accuracy"), "static − dynamic")
        cost = dyn.seconds_per_step.mean() / stat.seconds_per_step.mean()
        summary.append(dict(metric=metric, seeds=n, static=s_mean, static_ci95=s_half, dynamic=d_mean, dynamic_ci95=d_half,
                            static_minus_dynamic=judged["mean"], difference_low=judged["low"], difference_high=judged["high"],
                            verdict=judged["verdict"],
                            dynamic_cost=cost))
        last = drift[(drift.metric == metric)] if len(drift) else drift
        final = last[last.step == last.step.max()] if len(last) else last
        verdict.append(
            f"- {metric}: static {_common.fmt_ci(s_mean, s_half)}, dynamic (every {update_every} steps) "
            f"{_common.fmt_ci(d_mean, d_half)}; {judged['text']} (static as good as dynamic). "
            f"Dynamic updates cost {cost:.2f}× the static step time"
            + (f"; by the last update the mask keeps Jaccard {final.jaccard_initial.mean():.3f} with the initial one and "
               f"{final.ever_selected_fraction.mean():.4f} of all weights were ever selected." if len(final) else ".")
        )
    summary = pd.DataFrame(summary)
    from salience_bench.report import io as report_io

    report_io.write_csv(summary, out / "summary.csv")
    if len(drift):
        fig = figures.drift_plot(drift, title=f"Mask drift, update every {update_every} steps (1% density)")
        _common.save(fig, out, "drift")
    import matplotlib.pyplot as plt

    figures.paper_style()
    fig, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.2))
    labels, means, halves = [], [], []
    for r in summary.itertuples():
        for sched in ("static", "dynamic"):
            labels.append(f"{r.metric} {sched}")
            means.append(getattr(r, sched))
            halves.append(getattr(r, f"{sched}_ci95"))
    ax.barh(labels, means, xerr=[0 if h != h else h for h in halves], capsize=2, height=0.6,
            color=["#4c72b0", "#dd8452"] * len(summary))
    ax.invert_yaxis()
    ax.set_xlim(max(0.0, min(means) - 0.05), min(1.0, max(means) + 0.03))
    ax.set_xlabel(f"SST-2 accuracy (mean ± 95% CI, {len(seeds)} seeds)")
    ax.set_title("Static vs dynamic masks", fontsize=8)
    fig.tight_layout()
    _common.save(fig, out, "accuracy")
    _common.write_readme(out, "Static vs dynamic masks", __doc__.replace("\n", " "), verdict, args, device, started,
                         tables={"Summary": summary.round(4)}, figures=["accuracy", "drift"] if len(drift) else ["accuracy"], runs=rows)
    print("\n".join(verdict))


if __name__ == "__main__":
    main()
