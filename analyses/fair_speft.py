"""Does sparse fine-tuning match LoRA when the comparison is fair — trainable counts matched exactly,
learning rates tuned per method on held-out training data, warm-up and linear decay for every method,
enough steps and seeds for paired intervals — and does the verdict depend on SPEFT's own recipe?

Protocol (fixed before any run):
- Data: each task's training split is cut (seeded) into 90% for training and 10% held out for tuning;
  learning rates are chosen on the held-out 10% only; results are reported on the validation split
  (AG News: test), which no choice ever sees.
- Arms at LoRA's trainable count at rank r, layer by layer (r·(m+n) per tensor; the head is trained
  densely by every arm at one shared rate, `--head-lr`, 1e-3 by default): sparse fine-tuning with grad, fisher and random masks
  (random is the control; `--scope lora`), LoRA and PiSSA at rank r, peft's SHiRA (random, r·(m+n) per
  layer) and Super-Tuning (per-layer magnitude top-k at the mask's density), and full fine-tuning.
- Rates: a sweep per method (sparse-like 5e-4…1e-2, LoRA/PiSSA 1e-4…2e-3, full 2e-5…1e-4); the best mean
  headline metric over the sweep seeds on the held-out slice wins. Schedule: 6% linear warm-up, linear decay.
- Budget: min(2000 steps, 3 epochs), at least one epoch; evaluation curves every tenth of the run.
- SPEFT's recipe as its own arm: attention query and value weights only, LoRA r=8 with α=8, sparse k = LoRA's
  count, at SPEFT's shared rate 5e-5 and at the rates tuned above for the all-layer arms (not retuned).
- Decision rule for "sparse (grad) ≥ LoRA": over paired seeds, the 95% t-interval of (sparse − LoRA) in the
  headline metric; **holds** if its lower bound is above −0.5 points, **does not hold** if its upper bound is
  below 0, otherwise **inconclusive**. The same rule for grad against the best other metric.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from salience_bench import studies as _common
import salience_bench as sb
from salience_bench.data import EVAL_SPLIT, headline_metric, hold_out
from salience_bench.report import io as report_io
from salience_bench.stats import claim_rule, mean_ci
from salience_bench.training import TrainConfig

STUDY = "fair_speft"
TASKS = ("sst2", "ag_news", "cola", "mrpc", "rte", "stsb")
# arm → (training method, metric)
ARMS = {"sparse grad": ("sparse", "grad"), "sparse fisher": ("sparse", "fisher"), "sparse random": ("sparse", "random"),
        "lora": ("lora", ""), "pissa": ("pissa", ""), "shira": ("shira", ""), "supertuning": ("supertuning", ""),
        "full": ("full", "")}
SPARSE_RATES = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
LORA_RATES = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
RATES = {"sparse": SPARSE_RATES, "shira": SPARSE_RATES, "supertuning": SPARSE_RATES, "lora": LORA_RATES,
         "pissa": LORA_RATES, "full": (2e-5, 5e-5, 1e-4)}
SETTLED_TAU = 0.9  # the arms' ranking counts as settled when Kendall's τ with the end's stays at or above this
SPEFT_RATE = 5e-5
SPEFT_RANK = 8
SPEFT_INCLUDE = ("*attention.self.query.weight", "*attention.self.value.weight", "*q_proj.weight", "*v_proj.weight")


def with_headline(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``headline`` column: each run's task metric (accuracy, CoLA's MCC, STS-B's Pearson)."""
    return rows.assign(headline=[row[f"eval_{headline_metric(row['task'])}"] for row in rows.to_dict("records")])


def paired(rows: pd.DataFrame, a: str, b: str, column: str) -> list[float]:
    """Per-seed differences a − b of the runs both arms finished."""
    return _common.paired_by_seed(rows[rows.arm == a], rows[rows.arm == b], column)


def _arguments() -> argparse.ArgumentParser:
    p = _common.parser(STUDY, __doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all six)")
    p.add_argument("--seeds", type=int, default=5, help="final seeds per arm (default: 5)")
    p.add_argument("--sweep-seeds", type=int, default=2, help="seeds per rate in the sweep (default: 2)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated from {', '.join(ARMS)} (default: all)")
    p.add_argument("--rank", type=int, default=SPEFT_RANK, help="LoRA rank whose count every arm matches (default: 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-lr", type=float, default=1e-3, help="the task head's rate in every arm (default: 1e-3)")
    p.add_argument("--workers", type=int, default=1,
                   help="training processes side by side (default: 1), pulling runs from one queue; several fit one "
                        "GPU for a small model, and where several GPUs are visible they are spread over them. The "
                        "tables and verdicts are written once every run is logged")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no run that would not finish within this many seconds of the start (estimated from "
                        "the runs finished so far), then stop; rerun the same command to resume (e.g. in a batch job)")
    p.add_argument("--no-figures", action="store_true",
                   help="write the tables and verdicts without the figure (no matplotlib needed, e.g. on a GPU "
                        "machine without it); rerun the same command elsewhere to draw it: every run is found logged")
    p.add_argument("--worker", type=_common.worker_option, default=None, help=argparse.SUPPRESS)  # i/n: one of them
    p.add_argument("--claims", type=Path, default=None, help=argparse.SUPPRESS)  # the workers' shared claim folder
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # the parent's time limit
    return p


@dataclass
class _Plan:
    """The grid the options ask for: tasks, arms, seeds, rates, data, budgets, and how each run is configured."""

    args: argparse.Namespace
    tasks: list[str]
    arms: dict[str, tuple[str, str]]
    seeds: int
    sweep_seeds: int
    batch: int
    rates: dict[str, tuple[float, ...]]
    data: dict
    steps_for: dict[str, int]

    def config(self, spec: dict) -> TrainConfig:
        steps, quick = self.steps_for[spec["task"]], self.args.quick
        recipe = spec.get("recipe") == "speft"
        # The sweep needs only each run's last evaluation (evaluating changes nothing in training: no randomness);
        # the final runs log the curve that shows whether the ranking has settled.
        curve = spec["dataset"].endswith(":report")
        return TrainConfig(steps=steps, batch_size=self.batch, lr=spec["lr"], full_lr=spec["lr"], lr_schedule="linear",
                           warmup_ratio=0.06, eval_every=max(1, steps // (2 if quick else 10)) if curve else 0,
                           score_batch_size=self.batch, score_batches=2 if quick else 8,
                           mask=sb.MaskSpec(scope="lora", rank=self.args.rank),
                           method_options={"lora": {"alpha_ratio": 1.0 if recipe else 2.0}},
                           include=SPEFT_INCLUDE if recipe else None, head_lr=self.args.head_lr,
                           max_length=128 if not quick else 32)

    def spec(self, task: str, arm: str, lr: float, seed: int, split: str, recipe: str = "fair") -> dict:
        method, metric = self.arms.get(arm, ARMS[arm])
        return dict(task=task, dataset=task if split == "tune" else task + ":report", arm=arm, method=method,
                    metric=metric, lr=lr, seed=seed, recipe=recipe)

    def finals(self, task: str, rate: dict) -> list[dict]:
        """The task's final runs at its chosen rates, and SPEFT's recipe beside them."""
        specs = [self.spec(task, arm, rate[task, arm], s, "report") for arm in self.arms for s in range(self.seeds)]
        for arm in ("sparse grad", "lora"):
            for lr, which in ((SPEFT_RATE, "lr 5e-5"), (rate[task, arm], "tuned lr")):
                specs += [{**self.spec(task, arm, lr, s, "report", "speft"), "arm": f"{arm} (SPEFT q,v, {which})"}
                          for s in range(self.seeds)]
        return list({_key(s): s for s in specs}.values())

    @property
    def sweep_specs(self) -> list[dict]:
        return [self.spec(t, arm, lr, s, "tune") for t in self.tasks for arm, (method, _) in self.arms.items()
                for lr in self.rates[method] for s in range(self.sweep_seeds)]


def _plan(args: argparse.Namespace, p: argparse.ArgumentParser) -> _Plan:
    """The grid, every option checked first (one-line errors)."""
    if args.workers < 1:
        p.error(f"--workers {args.workers}: must be at least 1")
    if args.time_limit is not None and args.time_limit <= 0:
        p.error(f"--time-limit {args.time_limit:g}: must be a positive number of seconds")
    tasks = ["rte", "stsb"] if args.quick else [t.strip() for t in args.tasks.split(",")]
    if any(t not in TASKS for t in tasks):
        p.error(f"--tasks {args.tasks!r}: valid tasks are {', '.join(TASKS)}")
    chosen_arms = ("sparse grad", "lora") if args.quick else tuple(a.strip() for a in args.arms.split(","))
    unknown = [a for a in chosen_arms if a not in ARMS]
    if unknown or not {"sparse grad", "lora"} <= set(chosen_arms):
        p.error(f"--arms {args.arms!r}: valid arms are {', '.join(ARMS)}, and 'sparse grad' and 'lora' are required")
    batch = 8 if args.quick else args.batch_size
    data = {}
    for task in tasks:
        rest, held = hold_out(sb.load_dataset(task, "train"), 0.1, seed=0)
        data[task] = rest, held
        data[task + ":report"] = rest, sb.load_dataset(task, EVAL_SPLIT[task])
    steps_for = {t: args.steps or (10 if args.quick else min(2000, max(-(-len(data[t][0]) // batch),
                                                                      -(-3 * len(data[t][0]) // batch)))) for t in tasks}
    seeds, sweep_seeds = (2, 1) if args.quick else (args.seeds, args.sweep_seeds)
    return _Plan(args=args, tasks=tasks, arms={k: ARMS[k] for k in chosen_arms}, seeds=seeds, sweep_seeds=sweep_seeds,
                 batch=batch, rates={m: (r[1], r[-1]) if args.quick else r for m, r in RATES.items()}, data=data,
                 steps_for=steps_for)


def main(argv=None) -> None:
    p = _arguments()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, device, out, started = _common.start(STUDY, "", argv, arguments=p)
    plan = _plan(args, p)
    deadline = args.deadline or (started + args.time_limit if args.time_limit else None)
    spawned = args.workers > 1 and args.worker is None
    if spawned:
        argv = _without_workers(argv) + (["--deadline", repr(deadline)] if deadline else [])
        code = _common.spawn_workers(__file__, argv, args.workers)
        if code:
            sys.exit(f"error: a worker exited with {code}; rerun the same command to resume")
    share = _common.Share(index=args.worker[0] if args.worker else None, claims=args.claims, deadline=deadline)
    sweep, rows, rate, logged, complete = _run_until_logged(plan, out, device, share, spawned)
    if args.worker is not None:
        return  # the parent process writes the tables
    if not complete:
        total = len(plan.sweep_specs) + sum(len(plan.finals(t, defaultdict(float))) for t in plan.tasks)  # rates do not change the count
        print(f"stopped before the end (time limit): {len(logged)} of {total} runs logged in {out}; rerun the "
              "same command to resume")
        return
    _report(plan, out, device, started, sweep, rows, rate)


def _run_until_logged(plan: _Plan, out: Path, device, share, spawned: bool):
    """Run what is open, one run at a time: (1) the sweep, on the held-out slice of the training split; (2) each
    task's final runs at its chosen rates, reported on the validation split, as soon as its sweep is logged, with
    (3) SPEFT's recipe beside them. Returns (sweep, final rows, chosen rates, logged run ids, whether complete)."""
    sweep_specs, args = plan.sweep_specs, plan.args
    # The smallest tasks first, each task's final runs before the next task's sweep: a grid stopped part-way
    # (a time limit) leaves whole tasks with verdicts rather than every task's sweep half done.
    order = sorted(plan.tasks, key=lambda t: plan.steps_for[t])
    while True:
        ran = share.ran
        rate = _chosen_rates(_only(_common.logged(out, "sweep"), sweep_specs), sweep_specs)
        for t in order if not spawned else ():  # one run at a time, from the first task with one open
            _common.run_grid(out, "sweep", [s for s in sweep_specs if s["task"] == t], plan.config, model=args.model,
                             device=device, datasets=plan.data, share=share, max_runs=1)
            if share.ran == ran and all((t, arm) in rate for arm in plan.arms):
                _common.run_grid(out, "runs", plan.finals(t, rate), plan.config, model=args.model, device=device,
                                 datasets=plan.data, share=share, max_runs=1)
            if share.ran > ran:
                break
        if share.ran > ran:
            continue  # back to the first task, with the logs as they are now
        sweep = _only(_common.logged(out, "sweep"), sweep_specs)  # a shared folder may hold other grids' runs
        rate = _chosen_rates(sweep, sweep_specs)
        ready = [t for t in plan.tasks if all((t, arm) in rate for arm in plan.arms)]
        final_specs = [s for t in ready for s in plan.finals(t, rate)]
        rows = _only(_common.logged(out, "runs"), final_specs)
        logged = set(rows.get("run_id", ())) | set(sweep.get("run_id", ()))
        pending = [_key(s) for s in sweep_specs + final_specs if _key(s) not in logged]
        complete = len(ready) == len(plan.tasks) and not pending
        # Done, out of time, or every open run was claimed by a process that has ended: stop. Otherwise runs are
        # still open (another worker's, or freed since this pass read the logs, e.g. a task's final runs).
        if complete or spawned or share.out_of_time or not any(map(share.open, pending)):
            return sweep, rows, rate, logged, complete
        time.sleep(2)


def _report(plan: _Plan, out: Path, device, started: float, sweep: pd.DataFrame, rows: pd.DataFrame, rate: dict) -> None:
    """The tables, the verdicts by the stated rule, the ranking and gap along training, the figures and README."""
    args, tasks = plan.args, plan.tasks
    sweep_table, chosen = _sweep_tables(sweep)
    report_io.write_csv(sweep_table, out / "sweep_summary.csv")
    report_io.write_csv(chosen, out / "chosen_rates.csv")
    rows = with_headline(rows)
    arm_order = {a: i for i, a in enumerate(dict.fromkeys(s["arm"] for t in tasks for s in plan.finals(t, rate)))}
    rows = rows.assign(_task=rows.task.map(tasks.index), _arm=rows.arm.map(arm_order)).sort_values(
        ["_task", "_arm", "seed"], kind="stable").drop(columns=["_task", "_arm"])
    summary = pd.DataFrame([
        dict(task=task, arm=arm, measure=headline_metric(task), seeds=n, mean=mean, ci95=half, lr=group.lr.iloc[0],
             trainable=int(group.trainable_params.iloc[0]))
        for (task, arm), group in rows.groupby(["task", "arm"], sort=False)
        for mean, half, n in [mean_ci(group.headline)]])
    report_io.write_csv(summary, out / "summary.csv")
    lines = [f"Decision rule (stated before the runs): {claim_rule()}. The model is {args.model!r}" + (" (MiniLM-L6, 22M parameters: the only pretrained model available "
                                                 "offline; rerun with --model roberta-base for a bigger one)."
                                                 if args.model == "bundled" else ".")]
    verdict_table, verdict_lines = _verdicts(plan, rows)
    lines += verdict_lines
    report_io.write_csv(verdict_table, out / "verdicts.csv")
    edges = chosen[chosen.edge != ""]
    if len(edges):
        lines.append(f"- {len(edges)} of {len(chosen)} chosen rates lie at an end of their sweep (see Chosen rates): "
                     "the best rate for those arms may lie beyond the range the protocol fixed.")
    curves = with_headline(_only(_common.logged(out, "runs", "_curve"), [s for t in tasks for s in plan.finals(t, rate)]))
    settled = _ranking_settled(curves)
    report_io.write_csv(settled, out / "ranking_vs_final.csv")
    gap = _gap_along_training(curves, "sparse grad", "lora")
    report_io.write_csv(gap, out / "gap_vs_step.csv")
    lines += _along_training_lines(settled, gap)
    lines.append(f"- Final runs trained on: {_common.trained_on(rows)}; train_seconds are not timings where several "
                 "processes shared a device (--workers).")
    if not args.no_figures:
        _summary_figure(summary, tasks, out)
        _curve_figure(curves, tasks, out)
    _common.write_readme(out, "A fair test of the SPEFT claims", __doc__.split("\n\n")[0].replace("\n", " "), lines,
                         args, device, started, tables={"Verdicts": verdict_table.round(4), "Chosen rates": chosen,
                                                        "Summary": summary.round(4).assign(lr=summary.lr.map("{:g}".format)),
                                                        "Ranking vs the end": settled.round(3)},
                         figures=[] if args.no_figures else ["summary", "curves"],
                         runs=pd.concat([sweep, rows], ignore_index=True))
    print("\n".join(lines))


def _verdicts(plan: _Plan, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every comparison's verdict by the stated rule, per task: (the table, its README lines)."""
    comparisons = [("sparse grad", "lora"), *[(f"sparse grad (SPEFT q,v, {which})", f"lora (SPEFT q,v, {which})")
                                               for which in ("lr 5e-5", "tuned lr")]]
    verdicts = []
    for task, group in rows.groupby("task", sort=False):
        floor = constant_prediction_score(plan.data[task + ":report"][1])
        others = [a for a in ("sparse fisher", "sparse random") if a in set(group.arm)]
        if others and "sparse grad" in set(group.arm):
            best = max(others, key=lambda a: group[group.arm == a].headline.mean())
            comparisons_here = [*comparisons, ("sparse grad", best)]
        else:
            comparisons_here = comparisons
        for a, b in comparisons_here:
            diffs = paired(group, a, b, "headline")
            if not diffs:
                continue
            both = group[group.arm.isin((a, b))].headline
            # The rule was fixed before the runs; this only says when both arms never beat predicting one value
            note = ("both arms at the constant-prediction score on every seed: no evidence either way"
                    if floor is not None and (both - floor).abs().max() < 1e-9 else "")
            name = f"{a} − {b}" + (" (best other metric)" if (a, b) not in comparisons else "")
            verdicts.append(dict(task=task, **_common.claim(diffs, name), note=note))
    lines = [f"- {v['task']}: {v['text']}" + (f" ({v['note']})" if v["note"] else "") for v in verdicts]
    return pd.DataFrame(verdicts).drop(columns="text"), lines


def _along_training_lines(settled: pd.DataFrame, gap: pd.DataFrame) -> list[str]:
    """Whether each task's ranking of the arms settled, and the sparse grad − lora gap along training."""
    lines = []
    for task, part in settled.groupby("task", sort=False):
        at = [_nearest(part, f) for f in (0.5, 0.8)]
        late = part[(part.fraction >= 0.79) & (part.step < part.step.max())].kendall_tau
        lines.append(f"- {task}: the arms' ranking vs the end's, Kendall τ: " +
                     ", ".join(f"{r.kendall_tau:+.2f} at step {r.step} ({r.fraction:.0%})" for r in at) +
                     (f" — settled (τ ≥ {SETTLED_TAU} at every evaluation from 80% on)" if len(late) and
                      (late >= SETTLED_TAU).all() else f" — **not settled** (τ {late.min():+.2f} after 80%): longer "
                      "training could change this task's verdicts"))
    for task, part in gap.groupby("task", sort=False):
        later = part[part.fraction >= 0.5].difference
        signs = set((later > 0).tolist()) if len(later) else set()
        lines.append(f"- {task}: sparse grad − lora along training (mean over seeds): " +
                     ", ".join(f"{_nearest(part, f).difference:+.3f} at {f:.0%}"
                               for f in (0.5, 0.8, 1.0)) +
                     (" — same sign from 50% on" if len(signs) == 1 else " — changes sign after 50%"))
    return lines


def _summary_figure(summary: pd.DataFrame, tasks: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    from salience_bench.report import figures

    figures.paper_style()
    fig, axes = plt.subplots(1, len(tasks), figsize=(2 * figures.COLUMN_WIDTH_IN, 2.6), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        part = summary[summary.task == task]
        # points with 95% intervals on each task's own scale: bars from 0 would hide differences of a point or two
        ax.errorbar(part["mean"], list(part.arm), xerr=part.ci95.fillna(0), fmt="o", ms=2, capsize=2, lw=0.8)
        ax.set_title(f"{task} ({part.measure.iloc[0]})", fontsize=7)
        ax.tick_params(labelsize=5)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    _common.save(fig, out, "summary")


def _curve_figure(curves: pd.DataFrame, tasks: list[str], out: Path) -> None:
    """Each arm's mean headline metric over seeds along training (the fair recipe's final runs)."""
    import matplotlib.pyplot as plt

    from salience_bench.report import figures

    figures.paper_style()
    fig, axes = plt.subplots(1, len(tasks), figsize=(2 * figures.COLUMN_WIDTH_IN, 2.2), squeeze=False)
    fair = curves[curves.recipe == "fair"]
    for ax, task in zip(axes[0], tasks):
        for arm in (a for a in ARMS if a in set(fair.arm)):  # one order, so each arm keeps its colour
            mean = fair[(fair.task == task) & (fair.arm == arm)].groupby("step").headline.mean()
            ax.plot(mean.index, mean.values, label=arm, lw=0.8)
        ax.set_title(f"{task} ({headline_metric(task)})", fontsize=7)
        ax.set_xlabel("step", fontsize=6)
        ax.tick_params(labelsize=5)
    axes[0][0].legend(fontsize=4)
    fig.tight_layout()
    _common.save(fig, out, "curves")


def _arm_means_by_step(curves: pd.DataFrame):
    """(task, means) per task of the fair recipe's final runs: each arm's mean headline metric over seeds (columns)
    at each evaluation step (rows)."""
    for task, part in curves[curves.recipe == "fair"].groupby("task", sort=False):
        yield task, part.groupby(["step", "arm"]).headline.mean().unstack("arm")


def _gap_along_training(curves: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per task and evaluation point: arm ``a``'s mean headline metric over seeds minus arm ``b``'s (the fair
    recipe's final runs) — whether the verdict's difference had its final sign well before the end."""
    rows = [dict(task=task, step=int(step), fraction=round(step / means.index[-1], 2), difference=at[a] - at[b])
            for task, means in _arm_means_by_step(curves) if a in means and b in means
            for step, at in means.iterrows()]
    return pd.DataFrame(rows, columns=["task", "step", "fraction", "difference"])


def _ranking_settled(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task and evaluation point: Kendall's τ between the arms' ranking there (mean over seeds of the fair
    recipe's final runs) and at the end — 1 once the ranking no longer changes."""
    from scipy.stats import kendalltau

    rows = [dict(task=task, step=int(step), fraction=round(step / means.index[-1], 2),
                 kendall_tau=kendalltau(at, means.iloc[-1]).statistic)
            for task, means in _arm_means_by_step(curves) for step, at in means.iterrows()]
    return pd.DataFrame(rows, columns=["task", "step", "fraction", "kendall_tau"])


def _nearest(part: pd.DataFrame, fraction: float) -> pd.Series:
    """The row of ``part`` (one task's evaluations) whose fraction of training is closest to ``fraction``."""
    return part.loc[(part.fraction - fraction).abs().idxmin()]


def _sweep_tables(sweep: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean headline metric per task, arm and rate; each (task, arm)'s best rate, with ``edge`` saying whether it is
    the lowest or highest rate swept)."""
    table = with_headline(sweep).groupby(["task", "arm", "lr"], as_index=False)["headline"].mean()
    chosen = table.loc[table.groupby(["task", "arm"])["headline"].idxmax()].reset_index(drop=True)
    bounds = table.groupby(["task", "arm"]).lr.agg(["min", "max"])
    chosen["edge"] = [("lowest" if r.lr == bounds.loc[(r.task, r.arm), "min"] else
                       "highest" if r.lr == bounds.loc[(r.task, r.arm), "max"] else "") for r in chosen.itertuples()]
    return table, chosen


def constant_prediction_score(evaluation) -> float | None:
    """The headline score of predicting one value for every example: the majority class's share (accuracy), 0
    (Matthews correlation); None where it is undefined (a correlation with a constant, STS-B)."""
    measure = headline_metric(evaluation.name)
    if measure == "mcc":
        return 0.0
    if measure == "accuracy" and not evaluation.regression:
        return max(pd.Series(evaluation.labels).value_counts()) / len(evaluation)
    return None


def _without_workers(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept


_key = _common.run_id


def _only(rows: pd.DataFrame, specs: list[dict]) -> pd.DataFrame:
    """The logged runs that are among ``specs``."""
    return rows[rows.run_id.isin({_key(s) for s in specs})].reset_index(drop=True) if len(rows) else rows


def _chosen_rates(sweep: pd.DataFrame, sweep_specs: list[dict]) -> dict[tuple[str, str], float]:
    """(task, arm) → the rate with the best mean headline metric on the held-out slice, for every (task, arm) whose
    sweep runs are all logged."""
    if not len(sweep):
        return {}
    logged = set(sweep.run_id)
    expected = pd.DataFrame([dict(task=s["task"], arm=s["arm"], done=_key(s) in logged) for s in sweep_specs])
    complete = {(r.task, r.arm) for r in expected.groupby(["task", "arm"], as_index=False)["done"].all().itertuples()
                if r.done}
    _, best = _sweep_tables(sweep)
    return {(r.task, r.arm): r.lr for r in best.itertuples() if (r.task, r.arm) in complete}


if __name__ == "__main__":
    main()
