"""The comparison pipeline as a library: config → scores, masks and tables → files on disk.

::

    import salience_bench as sb
    config = sb.CompareConfig(metrics=("grad", "snip", "fisher"), mask=sb.MaskSpec(density=0.01))
    result = sb.run_comparison(config)            # scores, masks, overlap / rank / allocation tables
    sb.write_comparison(result, "results/run")    # CSVs, figures, manifest (last)

``python -m salience_bench.compare`` is argparse around exactly these calls, and the studies in
``analyses/`` use them too. Under torchrun every rank scores its share of the batches; rank 0
builds masks and tables and writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from . import analysis, distributed, gguf_models
from .data import (Dataset, check_dataset_name, dataset_task, headline_metric, load_dataset, load_eval_dataset,
                   make_batches)
from .errors import SalienceBenchError, check_at_least, check_seed
from .masks import Mask, MaskSpec
from .models import check_model_name, eligible_parameters, infer_task, is_linear, load_model_and_tokenizer
from .report import io as report_io
from .report.output import OutputFolder
from .runtime import check_device_name, quiet_transformers, resolve_device
from .scorers import get_scorer, resolve_metrics, resolve_options
from .scoring import Scores, check_sum_dtype, score
from .sharding import shard_model
from .stats import chance_jaccard
from .tasks import check_task_name, get_task
from .training.methods import get_method, list_baselines
from .training.loop import RunInputs, TrainConfig, TrainingHyperparameters

DTYPES = ("float32", "bfloat16", "float16")
Log = Callable[..., None]


def _silent(*_: Any) -> None:
    pass


@dataclass
class TrainingPlan(TrainingHyperparameters):
    """The downstream runs of a comparison: sparse FT per metric plus ``baselines``, per seed, with the shared
    hyperparameters (:class:`~salience_bench.training.loop.TrainingHyperparameters`, checked there)."""

    baselines: tuple[str, ...] = ("full", "lora", "pissa")
    seeds: tuple[int, ...] | None = None  # None: the comparison's seed

    def validate(self) -> None:
        super().validate()
        baselines = tuple(dict.fromkeys(self.baselines))
        if "none" in baselines and len(baselines) > 1:
            raise SalienceBenchError(f"baselines {','.join(baselines)}: 'none' (no baseline) cannot be combined with "
                                     f"others; valid: a list from {', '.join(list_baselines())}, or none")
        self.baselines = tuple(b for b in baselines if b != "none")
        unknown = [b for b in self.baselines if b not in list_baselines()]
        if unknown:
            raise SalienceBenchError(f"unknown baseline {unknown[0]!r}; valid: {', '.join(list_baselines())}")
        if self.seeds is not None:
            self.seeds = tuple(dict.fromkeys(check_seed(s) for s in self.seeds))

    def train_config(self, compare: "CompareConfig") -> TrainConfig:
        """The per-run settings; mask, scoring data and eligible tensors come from the comparison."""
        return TrainConfig(
            **self.hyperparameters(), max_length=compare.max_length, mask=compare.mask,
            score_batches=compare.batches, score_batch_size=compare.batch_size,
            score_options=dict(compare.score_options), include=compare.include, exclude=compare.exclude,
            chat_template=compare.chat_template,
        )


@dataclass(frozen=True)
class CompareConfig:
    """Everything a comparison needs; checked when built, before any model is loaded."""

    metrics: tuple[str, ...] = ("grad", "snip", "fisher")
    model: str = "bundled"
    dataset: str = "sst2"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    mask: MaskSpec = MaskSpec(density=0.01)
    batches: int = 8
    batch_size: int = 32
    max_length: int | None = None  # None: 64 tokens for classification, 512 for prompt/completion data
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    sum_dtype: str = "float64"  # accumulators' summation dtype: float64 = the same masks on any number of processes
    deterministic: bool = True  # deterministic kernels in the scoring pass: masks repeat bit for bit on a GPU
    shard: bool = False  # under torchrun: FSDP2 shards the weights and accumulators over the processes
    score_options: Mapping[str, Any] = field(default_factory=dict)
    kendall_sample: int = 20_000
    max_memory: int | None = None  # bytes for the global rank statistics (default: 80% of the device's free memory)
    training: TrainingPlan | None = None
    task: str = "auto"  # auto: from the checkpoint (a next-token head → causal-lm); or classification, causal-lm
    chat_template: bool = True  # prompt/completion data: apply the tokenizer's chat template when it has one
    save_masks: bool = False  # write masks/<metric>.safetensors
    load_masks: tuple[str, ...] = ()  # mask files compared (and trained) beside the metrics, as "file:<stem>"
    export_peft: str | None = None  # a peft SHiRA adapter per metric in this folder (needs scope "lora")

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(resolve_metrics(self.metrics)))  # names, aliases, globs, "all"
        check_dataset_name(self.dataset)
        check_task_name(self.task)
        if self.task != "auto" and self.task != dataset_task(self.dataset):
            raise SalienceBenchError(_task_mismatch(self.task, self.dataset))
        if self.max_length is None:
            object.__setattr__(self, "max_length", get_task(dataset_task(self.dataset)).default_max_length)
        object.__setattr__(self, "load_masks", tuple(str(p) for p in self.load_masks))
        if self.export_peft is not None and self.mask.rank is None:  # SHiRA trains r·(m+n) per layer: a rank's budget
            raise SalienceBenchError("export-peft builds SHiRA adapters, which train r·(m+n) entries per layer: "
                                     "use the mask scope 'lora' with a rank (--scope lora --rank R)")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if value else None)
        if not isinstance(self.mask, MaskSpec):
            raise SalienceBenchError(f"mask must be a MaskSpec, got {type(self.mask).__name__}")
        for name in ("batches", "batch_size", "max_length", "kendall_sample", *(("max_memory",) if self.max_memory
                                                                                  is not None else ())):
            check_at_least(self, name, 1)
        if self.dtype not in DTYPES:
            raise SalienceBenchError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        check_sum_dtype(self.sum_dtype)
        if self.shard:
            clashing = [name for name, on in (("training", self.training is not None), ("save-masks", self.save_masks),
                                              ("load-mask", bool(self.load_masks)),
                                              ("export-peft", self.export_peft is not None)) if on]
            if clashing:
                raise SalienceBenchError(f"shard (sharded scoring) scores and compares only; {', '.join(clashing)} need "
                                         "the whole model on each process: run them without sharding")
        check_device_name(self.device)
        check_seed(self.seed)
        object.__setattr__(self, "score_options", resolve_options(self.score_options))
        if self.training is not None:
            unmaskable = [m for m in self.metrics if not get_scorer(m).maskable]
            if unmaskable:
                raise SalienceBenchError(f"metrics {unmaskable} give one number per network and cannot drive --train")

    def check_files(self) -> None:
        """The checks that read the disk, apart from building the configuration: every mask file exists.
        :func:`run_comparison` and :func:`run_and_write` make them first."""
        for path in self.load_masks:
            if not Path(path).is_file():
                raise SalienceBenchError(f"mask file {path!r} does not exist")
        if self.export_peft is not None:
            _check_output_folder(Path(self.export_peft).expanduser(), "export-peft folder")

    def resolved_task(self) -> str:
        """The task, with ``auto`` read from the checkpoint; it must fit the dataset."""
        task = infer_task(self.model) if self.task == "auto" else self.task
        if task != dataset_task(self.dataset):
            raise SalienceBenchError(_task_mismatch(task, self.dataset))
        return task

    @property
    def seeds(self) -> tuple[int, ...]:
        return (self.training.seeds if self.training and self.training.seeds else None) or (self.seed,)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_peft_layers(config: CompareConfig, model, params) -> None:
    """Before scoring: the SHiRA export and the training methods that take nn.Linear only meet no Conv1D weight."""
    from .export import refuse_transposed

    linear_only = [f"the {m} baseline's peft layers" for m in (config.training.baselines if config.training else ())
                   if not get_method(m).adapts_transposed]
    if config.export_peft is not None:
        linear_only.append("peft's SHiRA adapters (--export-peft)")
    if linear_only:
        owners = {id(m.weight): m for m in model.modules() if is_linear(m)}
        modules = {name: owners[id(p)] for name, p in params.items() if id(p) in owners}
        for what in linear_only:
            refuse_transposed(modules, what)


def _check_output_folder(path: Path, what: str) -> None:
    """A folder that can be written into: an existing directory one may write, or a new one inside one."""
    if path.exists():
        if not path.is_dir():
            raise SalienceBenchError(f"{what} {str(path)!r} is a file, not a folder")
        target = path
    else:
        target = path.parent
        if not target.is_dir():
            raise SalienceBenchError(f"{what} {str(path)!r} is inside {str(target)!r}, which "
                                     + ("is a file" if target.exists() else "does not exist") + "; make the folder first")
    if not os.access(target, os.W_OK | os.X_OK):
        raise SalienceBenchError(f"{what} {str(path)!r} cannot be written ({str(target)!r} is not writable)")


def _task_mismatch(task: str, dataset: str) -> str:
    return get_task(task).wrong_dataset(dataset)


@dataclass
class Comparison:
    """What :func:`run_comparison` found. On ranks other than 0 under torchrun, only the scores."""

    config: CompareConfig
    metrics: list[str]  # the per-tensor (maskable) metrics, in request order
    scores: Scores
    masks: dict[str, Mask]
    overlap: pd.DataFrame
    ranks: pd.DataFrame
    allocation: pd.DataFrame
    eligible_tensors: list[str]
    eligible_weights: int
    realised_density: float
    scoring_batches: int
    scoring_seconds: float
    device: torch.device
    model_path: str
    started: datetime
    weights_fingerprint: str = ""
    train_data: Dataset | None = field(default=None, repr=False)
    loaded_masks: dict = field(default_factory=dict, repr=False)  # "file:<stem>" → MaskSet

    @property
    def network_scores(self) -> dict[str, float]:
        return dict(self.scores.network)

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the comparison started."""
        return (datetime.now(timezone.utc) - self.started).total_seconds()

    @property
    def chance_jaccard(self) -> float:
        return chance_jaccard(self.realised_density)

    def summary_text(self) -> str:
        """The console summary: sizes, chance level, the global Jaccard and Spearman matrices, network scores."""
        lines = [f"{len(self.metrics)} metrics, {self.eligible_weights:,} eligible weights, density "
                 f"{self.realised_density:.4%} (chance-level Jaccard {self.chance_jaccard:.4f})"]
        if len(self.metrics) > 1:
            lines += ["", "Jaccard of masks (global):", self.pair_matrix("jaccard").round(3).to_string(),
                      "", "Spearman ρ of scores (global):", self.pair_matrix("spearman").round(3).to_string()]
        lines += [f"\nnetwork-level {metric}: {value:.4g}" for metric, value in self.network_scores.items()]
        return "\n".join(lines)

    def pair_matrix(self, value: str) -> pd.DataFrame:
        """``jaccard`` (from the overlap table) or ``spearman`` / ``kendall`` as a metric × metric matrix."""
        if value in analysis.OVERLAP_COLUMNS:
            return analysis.pair_matrix(self.overlap, value, self.metrics)
        return analysis.pair_matrix(self.ranks, value, list(self.scores))  # scored metrics only


def prepare_output(out: str | Path | None, *, overwrite: bool = False, config: CompareConfig | None = None,
                   started: datetime | None = None) -> OutputFolder:
    """Check, lock and stage the results folder (rank 0) before any expensive work; every rank learns
    where to write (``folder.work``). Default: ``results/compare-<UTC timestamp>``.

    The run is written into ``<out>.partial`` and swapped into ``<out>`` by ``folder.finish()``; an
    unfinished run there with the same ``config`` is resumed, with another one refused (see
    :mod:`salience_bench.report.output`).
    """
    distributed.init_from_environment()
    started = started or datetime.now(timezone.utc)
    path = Path(out) if out else Path("results") / f"compare-{started.strftime('%Y%m%d-%H%M%S')}"
    folder = OutputFolder(path, overwrite=overwrite, config=config.to_dict() if config is not None else None)
    outcome: tuple[str, bool] | SalienceBenchError = (str(path), False)
    if distributed.is_main():
        try:
            folder.open()
            outcome = (str(path), folder.resuming)
        except SalienceBenchError as err:
            outcome = err
    outcome = distributed.broadcast_object(outcome)
    if isinstance(outcome, SalienceBenchError):
        raise outcome
    if not distributed.is_main():
        folder = OutputFolder(outcome[0], overwrite=overwrite)
        folder.resuming = outcome[1]
    return folder


def run_comparison(config: CompareConfig, *, tables: bool = True, progress: bool = False, log: Log = _silent) -> Comparison:
    """Load the model and data, score every metric in one pass, build masks and (with ``tables``) the
    overlap, rank-correlation and allocation tables — all on the model's device. Scores are computed
    from the accumulators when read and masks are kept as selected positions, so memory grows with the
    accumulators the metrics share, not with the number of metrics."""
    started = datetime.now(timezone.utc)
    config.check_files()
    distributed.init_from_environment()
    device = resolve_device(config.device)
    if config.training is not None and config.dtype == "float16" and device.type == "cpu":
        raise SalienceBenchError("dtype float16 cannot train on the CPU (half-precision CPU training gives NaN "
                                 "losses); valid here: float32, bfloat16, or float16 on a GPU")
    quiet_transformers()
    log(f"loading dataset {config.dataset} and model {config.model} …")
    check_model_name(config.model, log=log)  # a GGUF model is converted here, once, with the run's progress messages
    data = load_dataset(config.dataset, "train")
    task = config.resolved_task()
    model, tokenizer = load_model_and_tokenizer(config.model, num_labels=data.num_labels or 2, seed=config.seed,
                                                dtype=getattr(torch, config.dtype), task=task)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if positions and config.max_length > positions:
        raise SalienceBenchError(f"max length {config.max_length} is longer than the model's {positions} positions; "
                                 f"use --max-length ≤ {positions}")
    if config.shard:
        if config.batches % distributed.world_size():
            raise SalienceBenchError(f"--batches {config.batches} does not split evenly over "
                                     f"{distributed.world_size()} sharded processes; use a multiple of "
                                     f"{distributed.world_size()}")
        shard_model(model, device)
    else:
        model.to(device)
    params = eligible_parameters(model, config.include, config.exclude)
    eligible = sum(p.numel() for p in params.values())
    config.mask.check_shapes({name: p.shape for name, p in params.items()})
    _check_peft_layers(config, model, params)
    needs_data = any(get_scorer(m).uses_data for m in config.metrics)
    batches = (make_batches(data, tokenizer, batch_size=config.batch_size, num_batches=config.batches,
                            max_length=config.max_length, seed=config.seed, chat_template=config.chat_template)
               if needs_data else None)
    log(f"{len(params)} tensors, {eligible:,} eligible weights; "
        + (f"{len(batches)} scoring batches of {config.batch_size}" if batches else "no data needed")
        + (f", shared by {distributed.world_size()} processes" if distributed.active() else ""))
    t_score = time.perf_counter()
    scores = score(model, distributed.shard(batches) if batches else None, config.metrics, params=params,
                   seed=config.seed, progress=progress, options=config.score_options, sum_dtype=config.sum_dtype,
                   deterministic=config.deterministic)
    try:
        return _analyse(config, model, scores, params, batches, data, device, started, time.perf_counter() - t_score,
                        tables=tables, progress=progress)
    finally:
        scores.stop()  # sharded: release the other ranks, which served rank 0's reads of their shards


def _analyse(config: CompareConfig, model, scores: Scores, params, batches, data, device, started, scoring_seconds: float,
             *, tables: bool, progress: bool) -> Comparison:
    eligible = sum(p.numel() for p in params.values())
    metrics = list(scores)
    from .export import check_masks, load_masks, weights_fingerprint

    # Hashing every eligible weight costs a pass over the model (gigabytes for an LLM): only for mask files.
    fingerprint = weights_fingerprint(params) if config.save_masks or config.load_masks else ""
    loaded = {}
    for path in config.load_masks:
        masks, metadata = load_masks(path)
        check_masks(masks, params, metadata, source=f"mask file {path!r}")
        loaded[f"file:{Path(path).stem}"] = masks
    result = Comparison(
        config=config, metrics=metrics, scores=scores, masks={}, overlap=pd.DataFrame(columns=analysis.OVERLAP_COLUMNS),
        ranks=pd.DataFrame(columns=analysis.RANK_COLUMNS), allocation=pd.DataFrame(columns=analysis.ALLOCATION_COLUMNS),
        eligible_tensors=list(params), eligible_weights=eligible, realised_density=config.mask.target_density or 0.0,
        scoring_batches=len(batches) if batches else 0, scoring_seconds=scoring_seconds, device=device,
        model_path=str(getattr(model, "name_or_path", config.model)), started=started, train_data=data,
        weights_fingerprint=fingerprint, loaded_masks=loaded,
    )
    if not distributed.is_main():  # rank 0 analyses and writes; the others only help to train (or serve their shards)
        scores.serve()
        return result
    result.masks = {**{m: config.mask.apply(s, transposed=scores.transposed) for m, s in result.scores.items()}, **loaded}
    result.metrics = list(result.masks)  # loaded masks join the overlap and allocation tables
    if result.masks:
        result.realised_density = next(iter(result.masks.values())).count() / eligible
    if tables and len(result.masks) > 1:
        result.overlap = analysis.overlap_frame(result.masks)
    if tables and len(metrics) > 1:
        result.ranks = analysis.rank_correlation_frame(result.scores, kendall_max_n=config.kendall_sample,
                                                       seed=config.seed, progress=progress, max_memory=config.max_memory)
    if tables and result.masks:
        result.allocation = analysis.allocation_frame(result.masks)
    return result


@dataclass
class Downstream:
    """The downstream runs of :func:`run_downstream`: all rows, their summary, and the files written."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    eval_split: str
    files: list[str]

    def display_table(self) -> pd.DataFrame:
        """The summary for a console: accuracy ± 95% half-width, MiB, s/step, TFLOPs."""
        summary = self.summary
        return summary.assign(
            accuracy=summary["accuracy_mean"].map("{:.4f}".format)
            + summary["accuracy_ci95"].map(lambda h: "" if h != h else f" ± {h:.4f}"),
            peak_MiB=(summary["peak_memory_bytes"] / 2**20).round(0),
            s_per_step=summary["seconds_per_step"].round(3),
            TFLOPs=(summary["train_flops"] / 1e12).round(1),
        )[["run", "seeds", "trainable_params", "accuracy", "peak_MiB", "s_per_step", "TFLOPs"]]


def run_downstream(result: Comparison, out_dir: Path, *, figures: bool = True, progress: bool = False,
                   log: Log = _silent) -> Downstream:
    """Fine-tune with each metric's mask and with the baselines (``config.training``), resuming
    from what ``out_dir`` already holds; writes downstream.csv, drift.csv, eval_curve.csv and figures."""
    from .training.suite import CURVE_CSV, DOWNSTREAM_CSV, DRIFT_CSV, LOSS_CSV, run_suite, summary_frame

    config, plan = result.config, result.config.training
    if plan is None:
        raise SalienceBenchError("this comparison has no training plan (CompareConfig.training)")
    train_config = plan.train_config(config)
    train_config.fixed_masks = dict(result.loaded_masks)
    data = result.train_data or load_dataset(config.dataset, "train")
    eval_data = load_eval_dataset(config.dataset)
    dtype = getattr(torch, config.dtype)

    task = config.resolved_task()

    def load(seed: int):
        return load_model_and_tokenizer(config.model, num_labels=data.num_labels or 2, seed=seed, dtype=dtype, task=task)

    # A causal LM's fine-tuned numbers get their zero point: the untrained model's exact match and perplexity.
    zero_point = [m for m in list_baselines() if not get_method(m).trains]  # the untrained model, as a row
    baselines = (*plan.baselines, *(m for m in zero_point if get_task(task).zero_point and m not in plan.baselines))
    rows, drift, _ = run_suite(
        out_dir, metrics=result.metrics, baselines=baselines, seeds=config.seeds, config=train_config,
        inputs=RunInputs(load, data, eval_data, result.device), progress=progress, log=log,
    )
    files = [DOWNSTREAM_CSV, DRIFT_CSV, CURVE_CSV, LOSS_CSV]
    summary = summary_frame(rows, headline_metric(config.dataset))
    if figures and distributed.is_main():
        files += _downstream_figures(out_dir / "figures", summary, drift, config, eval_data.split, result.device)
    return Downstream(rows=rows, summary=summary, eval_split=eval_data.split, files=files)


def write_comparison(result: Comparison, out_dir: str | Path, *, figures: bool = True,
                     downstream: Downstream | None = None, command: str | None = None) -> list[str]:
    """Write the tables, the figures and, last (its presence marks a finished run), the manifest.
    Returns the files written, relative to ``out_dir``."""
    out_dir = Path(out_dir)
    config = result.config
    tables = {"overlap.csv": result.overlap, "rank_correlation.csv": result.ranks, "allocation.csv": result.allocation}
    if result.network_scores:
        tables["network_scores.csv"] = pd.DataFrame(
            [(m, v, get_scorer(m).description) for m, v in result.network_scores.items()],
            columns=["metric", "score", "definition"])
    for name, frame in tables.items():
        report_io.write_csv(frame, out_dir / name)
    files = list(tables)
    if config.save_masks:
        from .export import save_masks

        (out_dir / "masks").mkdir(exist_ok=True)
        for metric in result.scores:
            save_masks(out_dir / "masks" / f"{metric}.safetensors", result.masks[metric], dict(
                metric=metric, mask=config.mask.to_dict(), seed=config.seed, model=config.model,
                model_path=result.model_path, include=config.include, exclude=config.exclude,
                weights_fingerprint=result.weights_fingerprint, scoring_batches=result.scoring_batches))
            files.append(f"masks/{metric}.safetensors")
    if figures and result.masks:
        files += _comparison_figures(out_dir / "figures", result)
    if downstream is not None:
        files += downstream.files
    manifest = {
        "command": command or "salience_bench.write_comparison",
        "config": {**config.to_dict(), "metrics": result.metrics, "device": str(result.device),
                   "model_path": result.model_path},
        "seed": config.seed,
        "eligible_tensors": result.eligible_tensors,
        "eligible_weights": result.eligible_weights,
        "selected_weights": round(result.realised_density * result.eligible_weights),
        "realised_density": result.realised_density,
        "chance_jaccard": result.chance_jaccard,
        "scoring_batches": result.scoring_batches,
        "processes": distributed.world_size(),
        "scoring_seconds": result.scoring_seconds,
        "total_seconds": result.elapsed_seconds,
        "started": result.started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "versions": report_io.package_versions(),
        "git_commit": report_io.git_commit(),
        "network_scores": result.network_scores,
        "model_source": gguf_models.model_source(result.model_path),  # a GGUF model: its file, SHA-256, conversion
        "files": files,
    }
    report_io.write_json(manifest, out_dir / report_io.MANIFEST)
    return files


def _comparison_figures(fig_dir: Path, result: Comparison) -> list[str]:
    from .report import figures

    spec, metrics, density = result.config.mask, result.metrics, result.realised_density
    what = spec.describe(density)
    written: list[Path] = []
    if len(metrics) > 1:
        jac, rho = result.pair_matrix("jaccard"), result.pair_matrix("spearman")
        clustered = len(metrics) >= 4
        if clustered:  # many metrics: similar ones side by side
            jac_order, rho_order = analysis.cluster_order(jac), analysis.cluster_order(rho)
            jac, rho = jac.loc[jac_order, jac_order], rho.loc[rho_order, rho_order]
        note = "\norder: hierarchical clustering (average linkage, 1 − value)" if clustered else ""
        written += figures.save(figures.pair_heatmap(
            jac, title=f"Mask overlap, {what}\nchance Jaccard = {chance_jaccard(density):.4f}{note}",
            colorbar_label="Jaccard", vmin=0, vmax=1, cmap="viridis"), fig_dir, "jaccard_heatmap")
        written += figures.save(figures.pair_heatmap(
            rho, title=f"Rank correlation of scores (all weights){note}",
            colorbar_label="Spearman ρ", vmin=-1, vmax=1, cmap="vlag"), fig_dir, "spearman_heatmap")
    written += figures.save(figures.allocation_plot(result.allocation, density=density if spec.scope_kind.one_threshold else None,
                                                    title=f"Per-layer allocation of {what}"), fig_dir, "allocation")
    return [str(p.relative_to(fig_dir.parent)) for p in written]


def _downstream_figures(fig_dir: Path, summary: pd.DataFrame, drift: pd.DataFrame, config: CompareConfig,
                        split: str, device: torch.device) -> list[str]:
    from .report import figures

    plan = config.training
    task = f"{config.dataset} ({split}), {plan.steps} steps"
    written = figures.save(figures.accuracy_plot(summary, title=f"Downstream accuracy, {task}"), fig_dir, "accuracy")
    memory_label = ("peak GPU memory (MiB, max_memory_allocated)" if device.type == "cuda"
                    else "peak RSS increase during training (MiB)")
    written += figures.save(figures.accuracy_vs_memory_plot(summary, title=f"Accuracy vs memory, {task}",
                                                            memory_label=memory_label), fig_dir, "accuracy_vs_memory")
    if plan.mask_update_every and len(drift):
        written += figures.save(figures.drift_plot(drift, title=f"Mask drift, update every {plan.mask_update_every} steps"),
                                fig_dir, "drift")
    return [str(p.relative_to(fig_dir.parent)) for p in written]


@dataclass
class Run:
    """A finished :func:`run_and_write`: the comparison, the downstream runs (if any) and where they are."""

    comparison: Comparison
    downstream: Downstream | None
    path: Path


def run_and_write(config: CompareConfig, out: str | Path | None = None, *, overwrite: bool = False,
                  figures: bool = True, command: str | None = None, progress: bool = False, log: Log = _silent) -> Run:
    """Everything the CLI does: stage the folder, compare, train (``config.training``), write, and swap the
    finished run into ``out``. On any error or interrupt ``out`` is unchanged, and finished downstream runs
    stay in ``<out>.partial`` for the same call to resume."""
    config.check_files()  # before the results folder is made: a missing input leaves nothing behind
    folder = prepare_output(out, overwrite=overwrite, config=config)
    log(f"salience_bench.compare: metrics {', '.join(config.metrics)} → {folder.path}"
        + (f" (resuming the unfinished run in {folder.work})" if folder.resuming else ""))
    try:
        result = run_comparison(config, progress=progress, log=log)
        downstream = (run_downstream(result, folder.work, figures=figures, progress=progress, log=log)
                      if config.training else None)
        if distributed.is_main():
            write_comparison(result, folder.work, figures=figures, downstream=downstream, command=command)
            folder.finish()
    except OSError as err:
        folder.abandon()
        raise SalienceBenchError(f"writing the results into {str(folder.work)!r} failed: {err.strerror or err}; "
                                 f"{str(folder.path)!r} is unchanged") from err
    except BaseException:
        folder.abandon()  # keeps finished downstream runs, so the same call resumes
        raise
    if config.export_peft and distributed.is_main():  # after the finished run is in place: outside its folder
        export_adapters(result, config.export_peft, log=log)
    return Run(result, downstream, folder.path)


def export_adapters(result: Comparison, folder: str | Path, *, log: Log = _silent) -> list[Path]:
    """A peft SHiRA adapter per scored metric in ``folder/<metric>``, trainable exactly on its mask."""
    from .export import to_peft_shira

    config = result.config
    written = []
    for metric in result.scores:
        model, _ = load_model_and_tokenizer(config.model, num_labels=(result.train_data.num_labels or 2)
                                            if result.train_data else 2, seed=config.seed,
                                            dtype=getattr(torch, config.dtype), task=config.resolved_task())
        masks = {n: m.cpu() for n, m in result.masks[metric].items()}
        target = Path(folder) / metric
        to_peft_shira(model, masks, config.mask.rank).save_pretrained(str(target))
        log(f"wrote a peft SHiRA adapter for {metric} to {target}")
        written.append(target)
    return written
