"""What every study shares: options, the bundled data, seeds and intervals, and the study's README."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import salience_bench as sb
from salience_bench.report import io as report_io
from salience_bench.report.runlog import RunLog
from salience_bench.runtime import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]


def parser(study: str, question: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python analyses/{study}.py", description=question)
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores (fewer metrics, seeds, steps)")
    p.add_argument("--model", default="bundled", help="'bundled', a local folder or a hub name (default: bundled)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", default=None, help=f"output folder (default: figures/{study})")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: 300; --quick: 30)")
    return p


def start(study: str, question: str, argv=None, arguments: argparse.ArgumentParser | None = None):
    """(args, device, output folder, start time) for a study, with transformers kept quiet; ``arguments``: the
    study's own parser (built on :func:`parser`) when it adds options."""
    started = time.time()
    args = (arguments or parser(study, question)).parse_args(argv)
    quiet_transformers()
    try:
        device = sb.resolve_device(args.device)
    except sb.SalienceBenchError as err:
        sys.exit(f"error: {err}")
    return args, device, out_dir(args, study), started


def out_dir(args, study: str) -> Path:
    path = Path(args.out) if args.out else ROOT / "figures" / study
    path.mkdir(parents=True, exist_ok=True)
    return path


def loader(model: str, num_labels: int):
    """load(seed) → a fresh float32 model and its tokenizer (fp16 checkpoints are upcast)."""

    def load(seed: int):
        return sb.load_model_and_tokenizer(model, num_labels=num_labels, seed=seed, dtype=torch.float32)

    return load


def fmt_ci(mean: float, half: float) -> str:
    return f"{mean:.4f}" + ("" if half != half else f" ± {half:.4f}")


def write_readme(path: Path, title: str, question: str, verdict: list[str], args, device: torch.device,
                 started: float, tables: dict[str, pd.DataFrame] | None = None, figures: list[str] = (),
                 runs: pd.DataFrame | None = None) -> None:
    """The study's README: question, verdict with numbers, the exact command and the device. With ``runs`` (every
    finished run, resumed ones included) it also states their summed training time: a resumed invocation's wall
    time alone would understate the study."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# {title}", "", f"**Question.** {question}", "", "## Verdict", "", *verdict, ""]
    for fig in figures:
        lines += [f"![{fig}](figures/{fig}.png)", ""]
    for name, table in (tables or {}).items():
        lines += [f"### {name}", "", table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False), ""]
    lines += [
        "## How this was made", "",
        f"- command: `python {' '.join(['analyses/' + Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        f"- device: {device_name}; torch {torch.__version__}; {time.time() - started:.0f} s for this invocation"
        + (f"; the {len(runs)} runs' training time sums to {runs['train_seconds'].astype(float).sum():.0f} s "
           "(train_seconds; scoring, evaluation and loading not included)"
           if runs is not None and "train_seconds" in runs else ""),
        f"- mode: {'quick (few metrics, seeds and steps: a smoke test, not evidence)' if args.quick else 'full'}",
        f"- salience_bench commit: {report_io.git_commit() or 'unknown'}",
        "- intervals: 95% t-intervals over seeds (mean ± half-width)", "",
    ]
    report_io.write_text(path / "README.md", "\n".join(lines))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def save(fig, path: Path, stem: str) -> None:
    from salience_bench.report import figures

    figures.save(fig, path / "figures", stem)


def run_grid(out: Path, name: str, specs: list[dict], make_config, *, model: str, device: torch.device,
             datasets: dict, worker: tuple[int, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every spec (method, metric, seed, dataset, plus study labels) not already in
    ``out/name.csv``; each finished run is appended at once, so a rerun resumes.

    ``make_config(spec)`` gives the TrainConfig; ``datasets[spec['dataset']]`` is (train, eval).
    ``worker=(i, n)``: run only every n-th spec from the i-th, into ``name.worker<i>.csv`` (and its drift and
    curve tables), so that n processes can share the grid without writing the same file. Runs logged by any
    worker count as done, and the tables returned hold every process's rows.
    """
    from salience_bench.training import RunInputs, run_one

    def run_id(spec: dict) -> str:
        return "|".join(f"{k}={spec[k]}" for k in sorted(spec))

    suffix = f".worker{worker[0]}" if worker else ""
    runs = RunLog(out, {"drift": f"{name}{suffix}_drift.csv", "curve": f"{name}{suffix}_curve.csv",
                        "rows": f"{name}{suffix}.csv"},
                  key=lambda row: row["run_id"])  # the main table ("rows") last: a run is done once its row is written
    done = set(logged(out, name).get("run_id", ()))  # this process's log and every other's
    for n, spec in enumerate(specs, 1):
        if run_id(spec) in done or (worker and (n - 1) % worker[1] != worker[0]):
            continue
        train, evaluation = datasets[spec["dataset"]]
        print(f"[{n}/{len(specs)}] {run_id(spec)}", file=sys.stderr, flush=True)
        result = run_one(spec["method"], spec.get("metric") or None, spec["seed"], make_config(spec),
                         RunInputs(loader(model, train.num_labels), train, evaluation, device), progress=False)
        labels = {k: v for k, v in spec.items() if k not in result.row}
        runs.add({"drift": [{**d, "run_id": run_id(spec)} for d in result.drift],
                  "curve": [{**labels, **c, "run_id": run_id(spec)} for c in result.curve],
                  "rows": [{**labels, **result.row, "run_id": run_id(spec)}]})
    return logged(out, name), logged(out, name, "_drift")


def logged(out: Path, name: str, table: str = "") -> pd.DataFrame:
    """One table of a grid as every process logged it: ``name<table>.csv`` and the workers'
    ``name.worker<i><table>.csv``, one row per run (``table``: "" for the runs, "_drift", "_curve")."""
    from salience_bench.report.runlog import read_table

    pattern = re.compile(rf"{re.escape(name)}(\.worker\d+)?{re.escape(table)}\.csv")
    frames = [read_table(path) for path in sorted(out.glob(f"{name}*{table}.csv")) if pattern.fullmatch(path.name)]
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates() if table else frame.drop_duplicates("run_id", ignore_index=True)


def spawn_workers(script: str, argv: list[str], workers: int, rounds: int) -> None:
    """Run ``script`` as ``workers`` processes side by side (``--worker i/n`` added to ``argv``), ``rounds`` times
    (a study whose later stage needs an earlier stage's results runs one round per stage); exits on a failure."""
    import subprocess

    for _ in range(rounds):
        procs = [subprocess.Popen([sys.executable, script, *argv, "--worker", f"{i}/{workers}"]) for i in range(workers)]
        codes = [proc.wait() for proc in procs]
        if any(codes):
            sys.exit(f"error: a worker exited with {max(codes, key=abs)}; rerun the same command to resume")


def worker_option(text: str) -> tuple[int, int]:
    """``i/n`` with 0 ≤ i < n, else an argparse error naming the value."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected 0 <= i < n")
    return i, n
