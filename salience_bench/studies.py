"""What every study in ``analyses/`` shares: options, the bundled data, seeds and intervals, resumable grids of runs
and their workers, figures and the study's README. The studies run from a checkout (``pip install -e .``): their
default output folder is the checkout's ``figures/<study>``."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

import salience_bench as sb
from salience_bench.report import io as report_io
from salience_bench.report.runlog import RunLog
from salience_bench.runtime import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]  # the checkout (an editable install)


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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def fmt_ci(mean: float, half: float) -> str:
    return f"{mean:.4f}" + ("" if half != half else f" ± {half:.4f}")


def paired_by_seed(a: pd.DataFrame, b: pd.DataFrame, column: str) -> list[float]:
    """Per-seed differences a − b in ``column`` over the seeds both sets of runs finished."""
    return (a.groupby("seed")[column].mean() - b.groupby("seed")[column].mean()).dropna().tolist()


def claim(differences: list[float], name: str) -> dict:
    """The claim ``name`` ("A ≥ B") judged from paired differences A − B under the studies' decision rule
    (:func:`salience_bench.stats.claim_verdict`): comparison, seeds, mean, low, high, verdict and a one-line text."""
    from salience_bench.stats import claim_verdict

    word, mean, low, high = claim_verdict(differences)
    return dict(comparison=name, seeds=len(differences), mean=mean, low=low, high=high, verdict=word,
                text=f"{name}: {mean:+.4f} [{low:+.4f}, {high:+.4f}] over {len(differences)} paired seeds → **{word}**")


def write_readme(path: Path, title: str, question: str, verdict: list[str], args, device: torch.device,
                 started: float, tables: dict[str, pd.DataFrame] | None = None, figures: list[str] = (),
                 runs: pd.DataFrame | None = None) -> None:
    """The study's README: question, verdict with numbers, the exact command and the device. With ``runs`` (every
    finished run, resumed ones included) it also states their summed training time: a resumed invocation's wall
    time alone would understate the study."""
    lines = [f"# {title}", "", f"**Question.** {question}", "", "## Verdict", "", *verdict, ""]
    for fig in figures:
        lines += [f"![{fig}](figures/{fig}.png)", ""]
    for name, table in (tables or {}).items():
        lines += [f"### {name}", "", table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False), ""]
    lines += [
        "## How this was made", "",
        f"- command: `python {' '.join(['analyses/' + Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        f"- device: {device_name(device)}; torch {torch.__version__}; {time.time() - started:.0f} s for this invocation"
        + (f"; the {len(runs)} runs' training time sums to {runs['train_seconds'].astype(float).sum():.0f} s "
           "(train_seconds; scoring, evaluation and loading not included)"
           if runs is not None and "train_seconds" in runs else ""),
        *([f"- runs trained on: {trained_on(runs)}"] if runs is not None and len(runs) else []),
        f"- mode: {'quick (few metrics, seeds and steps: a smoke test, not evidence)' if args.quick else 'full'}",
        f"- salience_bench commit: {report_io.git_commit(ignore=path) or 'unknown'}",
        "- intervals: 95% t-intervals over seeds (mean ± half-width)",
        # facts about the logged runs that the tables do not record (e.g. the weights they travelled as), kept by hand
        # in the study folder so that rewriting the report from the logs keeps them
        *((path / "NOTES.md").read_text().strip().splitlines() if (path / "NOTES.md").exists() else []), "",
    ]
    report_io.write_text(path / "README.md", "\n".join(lines))


def trained_on(runs: pd.DataFrame) -> str:
    """Where the logged runs trained, e.g. "NVIDIA H200 (816 runs)": their ``device_name`` (older logs: ``device``),
    which may differ from the device of the invocation that writes the report."""
    names = runs["device_name"] if "device_name" in runs else runs.get("device", pd.Series(dtype=object))
    counts = names.fillna(runs.get("device", "unknown")).astype(str).value_counts()
    return ", ".join(f"{name} ({count} runs)" for name, count in counts.items()) or "unknown"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def save(fig, path: Path, stem: str) -> None:
    from salience_bench.report import figures

    figures.save(fig, path / "figures", stem)


@dataclass
class Share:
    """This process's part in a grid that several processes share, and the time it may take.

    ``index`` names this process's log files (``name.worker<index>.csv``; None: ``name.csv``). ``claims``: a folder
    where a process takes a run by creating its claim file first (exclusively), so that free processes pull the
    next run instead of waiting on a fixed share; None: every run is this process's. ``deadline`` (``time.time()``):
    start no run that would not finish by then, estimated from this process's finished runs of the same data.
    """

    index: int | None = None
    claims: Path | None = None
    deadline: float | None = None
    ran: int = 0
    out_of_time: bool = False
    seconds_per_step: dict = field(default_factory=dict)  # dataset → wall seconds per training step, this process

    def take(self, run: str) -> bool:
        """Claim ``run`` for this process; False if another process has it."""
        if self.claims is None:
            return True
        try:
            handle = os.open(self._claim(run), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        return True

    def open(self, run: str) -> bool:
        """Whether ``run`` may still be logged in this invocation: nobody has claimed it, or a live process has."""
        return self.claims is None or not self._claim(run).exists() or self.held_by_a_live_process(run)

    def held_by_a_live_process(self, run: str) -> bool:
        """Whether ``run`` is claimed by a process still running (one that is about to log it)."""
        if self.claims is None:
            return False
        try:
            pid = int(self._claim(run).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def fits(self, dataset: str, steps: int) -> bool:
        """Whether a run of ``steps`` on ``dataset`` should finish before the deadline. Unknown data is costed at
        the slowest rate seen; before any run finishes every run is started."""
        if self.deadline is None or not self.seconds_per_step:
            return True
        rate = self.seconds_per_step.get(dataset, max(self.seconds_per_step.values()))
        return time.time() + 1.2 * rate * steps < self.deadline

    def _claim(self, run: str) -> Path:
        return self.claims / hashlib.sha1(run.encode()).hexdigest()


def run_grid(out: Path, name: str, specs: list[dict], make_config, *, model: str, device: torch.device,
             datasets: dict, share: Share | None = None, max_runs: int | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every spec (method, metric, seed, dataset, plus study labels) not already logged in ``out``; each
    finished run is appended at once (``name.csv``), so a rerun resumes.

    ``make_config(spec)`` gives the TrainConfig; ``datasets[spec['dataset']]`` is (train, eval). ``share``: this
    process's part when several share the grid (see :class:`Share`); runs logged by any process count as done, and
    the tables returned hold every process's rows. ``max_runs``: return after running that many (a caller that
    ranks several grids goes back to the first).
    """
    from salience_bench.training import RunInputs, run_one

    share = share or Share()
    suffix = f".worker{share.index}" if share.index is not None else ""
    runs = None  # this process's log, read when it first has a run to add to it
    done = set(logged(out, name).get("run_id", ()))  # this process's log and every other's
    ran = 0
    for n, spec in enumerate(specs, 1):
        if max_runs is not None and ran >= max_runs:
            break
        if run_id(spec) in done:
            continue
        config = make_config(spec)
        if not share.fits(spec["dataset"], config.steps):
            share.out_of_time = True
            continue
        if not share.take(run_id(spec)):
            continue
        train, evaluation = datasets[spec["dataset"]]
        print(f"[{n}/{len(specs)}] {run_id(spec)}", file=sys.stderr, flush=True)
        started = time.time()
        result = run_one(spec["method"], spec.get("metric") or None, spec["seed"], config,
                         RunInputs(loader(model, train.num_labels), train, evaluation, device), progress=False)
        labels = {k: v for k, v in spec.items() if k not in result.row}
        labels["device_name"] = device_name(device)  # resumed grids may mix machines: each row says where it ran
        runs = runs or RunLog(out, {"drift": f"{name}{suffix}_drift.csv", "curve": f"{name}{suffix}_curve.csv",
                                    "rows": f"{name}{suffix}.csv"},
                              key=lambda row: row["run_id"])  # the main table ("rows") last: a run is done once written
        runs.add({"drift": [{**d, "run_id": run_id(spec)} for d in result.drift],
                  "curve": [{**labels, **c, "run_id": run_id(spec)} for c in result.curve],
                  "rows": [{**labels, **result.row, "run_id": run_id(spec)}]})
        share.ran += 1
        ran += 1
        rate = (time.time() - started) / max(config.steps, 1)
        share.seconds_per_step[spec["dataset"]] = max(rate, share.seconds_per_step.get(spec["dataset"], 0.0))
    return logged(out, name), logged(out, name, "_drift")


def run_id(spec: dict) -> str:
    """A run's identity in the logs: every label of its spec."""
    return "|".join(f"{k}={spec[k]}" for k in sorted(spec))


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


def spawn_workers(script: str, argv: list[str], workers: int) -> int:
    """Run ``script`` as ``workers`` processes side by side, each with ``--worker i/n --claims DIR`` added to
    ``argv``: they pull runs from one queue (a claim file per run in a fresh folder). Where several GPUs are visible
    the workers are spread over them, one GPU each; each gets an equal share of the CPU threads. Returns the
    largest exit code (0: all finished)."""
    import shutil
    import subprocess
    import tempfile

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([g for g in visible.split(",") if g.strip()] if visible is not None
            else [str(i) for i in range(torch.cuda.device_count())])
    claims = tempfile.mkdtemp(prefix="salience-bench-claims-")
    try:
        procs = []
        for i in range(workers):
            env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))}
            if len(gpus) > 1:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            procs.append(subprocess.Popen([sys.executable, script, *argv, "--worker", f"{i}/{workers}",
                                           "--claims", claims], env=env))
        return max((proc.wait() for proc in procs), key=abs)
    finally:
        shutil.rmtree(claims, ignore_errors=True)


def worker_option(text: str) -> tuple[int, int]:
    """``i/n`` with 0 ≤ i < n, else an argparse error naming the value."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected 0 <= i < n")
    return i, n
