"""Performance regression tracking by ratios: each figure is ours / a baseline measured in the same process,
so a slower or busier machine moves both and the ratio stays put.

    python -m benchmarks.regression --check            # CI: fail if a ratio worsens beyond the tolerance
    python -m benchmarks.regression --record           # append this run to benchmarks/history.csv
    python -m benchmarks.regression --device cuda --record   # the GPU rows (through the device tool)

``benchmarks/history.csv`` (date, commit, device, figure, ours, baseline, ratio) is committed; the
reference of a figure is its latest row for the same device kind. ``--check`` measures every figure and
fails (exit 1) when a ratio exceeds its reference by more than ``--tolerance`` (default 0.5: 50% worse),
printing both numbers. A deliberate change records new rows in the same commit.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

import salience_bench as sb
from salience_bench import stats

from .common import pin_threads, score_dict, small_bert, token_batches

HISTORY = Path(__file__).resolve().parent / "history.csv"
COLUMNS = ["date", "commit", "device", "figure", "ours", "baseline", "ratio"]
SLOWDOWN_VARIABLE = "SALIENCE_BENCH_SLOWDOWN"  # "figure=factor": slow "ours" down on purpose (tests of --check)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_pair(ours: Callable, baseline: Callable, device: str, repeats: int) -> tuple[float, float]:
    """Median seconds of each, interleaved so that drift in machine load hits both."""
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    ours(), baseline()  # warm-up
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("baseline", baseline)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["baseline"])


def figures(device: str) -> dict[str, Callable[[], tuple[Callable, Callable]]]:
    """Each figure: a setup returning (ours, baseline) callables. Sizes suit a few seconds on 2 CPU cores."""
    big = device.startswith("cuda")

    def scoring(metrics: list[str]):
        model = small_bert(hidden=128 if not big else 512, layers=2).to(device)
        batches = [sb.runtime.to_device(b, device) for b in token_batches(num_batches=2, batch_size=8, length=32)]
        params = sb.eligible_parameters(model)
        return (lambda: sb.score(model, batches, metrics, params=params)["grad"]["bert.encoder.layer.0.output.dense.weight"],
                lambda: sb.score(model, batches, ["grad"], params=params)["grad"]["bert.encoder.layer.0.output.dense.weight"])

    def top_k():
        scores = {n: s.to(device) for n, s in score_dict(int(1e8 if big else 4e6), tensors=200).items()}
        k = sum(s.numel() for s in scores.values()) // 100
        return (lambda: sb.make_mask(scores, k=k),
                lambda: torch.topk(torch.cat([s.reshape(-1) for s in scores.values()]), k))

    def rank(statistic: str):
        g = torch.Generator().manual_seed(0)
        n = int(1e7 if big else (1e6 if statistic == "spearman" else 1e5))
        x = (torch.randn(n, generator=g) * 20).round()
        y = x + (torch.randn(n, generator=g) * 20).round()
        xd, yd = x.to(device), y.to(device)
        from scipy import stats as scipy_stats

        ours = (lambda: sb.spearman(xd, yd)) if statistic == "spearman" else (lambda: stats.kendall_tau_b(xd, yd))
        reference = scipy_stats.spearmanr if statistic == "spearman" else scipy_stats.kendalltau
        return ours, lambda: reference(x.numpy(), y.numpy())

    return {
        "five_metrics_over_grad": lambda: scoring(["grad", "snip", "plain", "taylor_fo", "magnitude"]),
        "fisher_over_grad": lambda: scoring(["grad", "fisher"]),
        "global_topk_over_concat_topk": top_k,
        "spearman_over_scipy": lambda: rank("spearman"),
        "kendall_over_scipy": lambda: rank("kendall"),
    }


def measure(device: str, repeats: int, only: set[str] | None = None) -> list[dict]:
    slow = dict(item.split("=") for item in os.environ.get(SLOWDOWN_VARIABLE, "").split(",") if "=" in item)
    rows = []
    for name, setup in figures(device).items():
        if only and name not in only:
            continue
        ours, baseline = setup()
        if name in slow:  # a deliberate slowdown, to show that --check catches one
            fast, factor = ours, float(slow[name])

            def ours(fast=fast, factor=factor):
                start = time.perf_counter()
                fast()
                time.sleep((factor - 1) * (time.perf_counter() - start))

        t_ours, t_base = _median_pair(ours, baseline, device, repeats)
        rows.append(dict(figure=name, ours=t_ours, baseline=t_base, ratio=t_ours / t_base))
    return rows


def device_kind(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def read_history(path: Path = HISTORY) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def references(kind: str, path: Path = HISTORY) -> dict[str, float]:
    """The latest recorded ratio of each figure for this device kind."""
    return {row["figure"]: float(row["ratio"]) for row in read_history(path) if row["device"] == kind}


def check(rows: list[dict], kind: str, tolerance: float, path: Path = HISTORY) -> list[str]:
    """One line per figure that worsened by more than ``tolerance`` against its reference."""
    refs = references(kind, path)
    failures = []
    for row in rows:
        ref = refs.get(row["figure"])
        if ref is not None and row["ratio"] > ref * (1 + tolerance):
            failures.append(f"{row['figure']}: ratio {row['ratio']:.3f} vs reference {ref:.3f} on {kind} "
                            f"(ours {row['ours'] * 1e3:.1f} ms, baseline {row['baseline'] * 1e3:.1f} ms; "
                            f"tolerance +{tolerance:.0%})")
    return failures


def record(rows: list[dict], kind: str, path: Path = HISTORY) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), commit=commit or "unknown",
                                 device=kind, figure=row["figure"], ours=f"{row['ours']:.6g}",
                                 baseline=f"{row['baseline']:.6g}", ratio=f"{row['ratio']:.4g}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated figure names")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio worsened beyond the tolerance")
    parser.add_argument("--record", action="store_true", help="append the measured rows to the history")
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--history", type=Path, default=HISTORY)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        pin_threads(1)
    kind = device_kind(args.device)
    rows = measure(args.device, args.repeats, set(args.only.split(",")) if args.only else None)
    refs = references(kind, args.history)
    print(f"device: {kind}, torch {torch.__version__}")
    print("| figure | ours | baseline | ratio | reference |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ref = refs.get(row["figure"])
        print(f"| {row['figure']} | {row['ours'] * 1e3:.2f} ms | {row['baseline'] * 1e3:.2f} ms | {row['ratio']:.3f} | "
              f"{'—' if ref is None else f'{ref:.3f}'} |")
    if args.record:
        record(rows, kind, args.history)
    if args.check:
        failures = check(rows, kind, args.tolerance, args.history)
        for line in failures:
            print("REGRESSION " + line, file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
