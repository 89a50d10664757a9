"""A set of downstream runs (metrics × baselines × seeds) written incrementally, so a rerun resumes."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from .. import distributed
from ..errors import SalienceBenchError
from ..report.runlog import RunLog
from ..stats import mean_ci
from .methods import get_method, list_methods
from .loop import DRIFT_COLUMNS, LOSS_COLUMNS, RunInputs, TrainConfig, curve_columns, downstream_columns, run_one

DOWNSTREAM_CSV, DRIFT_CSV, CURVE_CSV, LOSS_CSV = "downstream.csv", "drift.csv", "eval_curve.csv", "train_loss.csv"
_KEY = ["method", "metric", "mask_schedule", "seed"]


def planned_runs(metrics: Sequence[str], baselines: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, str, int]]:
    """(method, metric, seed) of every run: each metric-driven method (``uses_metric``: sparse FT) per metric and
    each baseline, per seed; a method whose result does not depend on the seed (``seeded = False``, such as
    ``base``) once, at the first seed."""
    driven = [m for m in list_methods() if get_method(m).uses_metric]
    return [(m, metric, seed) for i, seed in enumerate(seeds)
            for m, metric in [*((d, x) for d in driven for x in metrics), *((b, "") for b in baselines)]
            if i == 0 or get_method(m).seeded]


def run_suite(
    out_dir: Path,
    *,
    metrics: Sequence[str],
    baselines: Sequence[str],
    seeds: Sequence[int],
    config: TrainConfig,
    inputs: RunInputs,
    progress: bool = True,
    log: Callable[..., None] = lambda *a: None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run every planned (method, metric, seed) not already in ``out_dir/downstream.csv``.

    Each finished run is appended to the CSVs at once (atomic rewrite), so an interrupted
    suite resumes where it stopped when run again on the same folder.
    """
    config.validate()
    runs = RunLog(out_dir, {"drift": DRIFT_CSV, "curve": CURVE_CSV, "loss": LOSS_CSV, "rows": DOWNSTREAM_CSV},
                  key=lambda r: tuple(str(r[k]) for k in _KEY),
                  columns={"drift": DRIFT_COLUMNS, "curve": curve_columns(inputs.eval_data.task), "loss": LOSS_COLUMNS,
                           "rows": downstream_columns(inputs.eval_data.task)},
                  write=distributed.is_main())
    rows = runs.tables["rows"]
    trained = rows[[get_method(str(m)).trains for m in rows["method"]]] if len(rows) else rows
    for col, want in (("steps", config.steps), ("scope", config.scope)):
        masked = trained[[get_method(str(m)).uses_metric for m in trained["method"]]] if col == "scope" else trained
        if len(masked) and not (masked[col].astype(str) == str(want)).all():
            raise SalienceBenchError(
                f"{out_dir / DOWNSTREAM_CSV} holds runs with a different {col} ({sorted(set(masked[col].astype(str)))}"
                f" vs {want}); use another --out"
            )
    done = runs.done
    plan = planned_runs(metrics, baselines, seeds)
    todo = [(m, metric, seed) for m, metric, seed in plan
            if (m, metric, config.schedule if get_method(m).uses_metric else "", str(seed)) not in done]
    todo = distributed.broadcast_object(todo)  # every rank runs what rank 0 found missing
    if len(todo) < len(plan):
        log(f"resuming: {len(plan) - len(todo)} of {len(plan)} downstream runs already in {out_dir / DOWNSTREAM_CSV}")
    for n, (method, metric, seed) in enumerate(todo, 1):
        what = f"training {method}{'/' + metric if metric else ''}, seed {seed}, {config.steps} steps"
        log(f"[{n}/{len(todo)}] {what if get_method(method).trains else f'evaluating the {method} model'} …")
        result = run_one(method, metric or None, seed, config, inputs, progress=progress)
        runs.add({"drift": result.drift, "curve": result.curve, "loss": result.losses, "rows": [result.row]})
        r = result.row
        log(f"    accuracy {r['eval_accuracy']:.4f}"
            + "".join(f", {k[5:]} {r[k]:.4f}" for k in ("eval_mcc", "eval_f1", "eval_pearson") if r.get(k, math.nan) == r.get(k))
            + f", {r['seconds_per_step']:.3f} s/step, "
            f"trainable {r['trainable_params']:,} (+{r['head_params']:,} head)")
    return runs.tables["rows"], runs.tables["drift"], runs.tables["curve"]


def summary_frame(rows: pd.DataFrame, headline: str = "accuracy") -> pd.DataFrame:
    """Mean of the headline metric per run label with a 95% t-interval over seeds (half-width; NaN for one seed).

    ``measure`` names what the accuracy columns hold: ``accuracy`` (classification), the task's own
    ``headline`` metric where it has one (``mcc`` for CoLA, ``pearson`` for STS-B, see
    ``data.headline_metric``), ``exact match`` (a causal LM's generated answers) or, where no answers were
    generated, ``perplexity``."""
    labelled = rows.assign(run=run_labels(rows))
    column, measure = f"eval_{headline}", headline
    if "eval_perplexity" in rows:
        column, measure = (("eval_accuracy", "exact match") if rows["eval_accuracy"].notna().any()
                           else ("eval_perplexity", "perplexity"))
    out = []
    for label, group in labelled.groupby("run", sort=False):
        mean, half, n = mean_ci(group[column].astype(float))
        out.append(dict(run=label, seeds=n, accuracy_mean=mean, accuracy_ci95=half, measure=measure,
                        trainable_params=int(group["trainable_params"].iloc[0]),
                        peak_memory_bytes=group["peak_memory_bytes"].astype(float).mean(),
                        seconds_per_step=group["seconds_per_step"].astype(float).mean(),
                        train_flops=group["train_flops"].astype(float).mean()))
    return pd.DataFrame(out)


def run_labels(rows: pd.DataFrame) -> list[str]:
    """Each row's label in tables and figures, as its method names it ("sparse grad", "lora r=3" …)."""
    return [get_method(str(r["method"])).label(r) for r in rows.to_dict("records")]
