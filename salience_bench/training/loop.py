"""One downstream run: fine-tune with a method, measure what it cost, evaluate.

The methods (sparse, full, lora, pissa, …) live in :mod:`salience_bench.training.methods`, one
module each; this loop only calls their interface. The task head is trained densely by all of
them and counted separately.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..data import Dataset, make_batches, training_stream
from ..errors import SalienceBenchError, check_at_least, is_int, is_number
from ..masks import MaskSpec
from ..models import eligible_parameters
from ..runtime import to_device
from ..tasks import get_task, loss_units_of
from ..tasks.causal_lm import CausalLM
from ..tasks.classification import Classification
from .measure import PeakMemory, count_flops, synchronize, timed
from .methods import RunSetup, check_method_options, get_method, head_parameters
from .sparse import optimizer_state_bytes

DOWNSTREAM_COLUMNS = [
    "method", "metric", "density", "scope", "mask_schedule", "seed", "trainable_params", "head_params",
    "lora_rank", "optimizer_state_bytes", "steps", "train_seconds", "seconds_per_step", "peak_memory_bytes",
    "train_flops", "eval_accuracy", "eval_loss", "device",
]
DRIFT_COLUMNS = ["metric", "seed", "step", "jaccard_initial", "jaccard_previous", "ever_selected", "ever_selected_fraction"]
CURVE_COLUMNS = ["method", "metric", "mask_schedule", "seed", "step", "eval_accuracy", "eval_loss"]
LOSS_COLUMNS = ["method", "metric", "mask_schedule", "seed", "step", "train_loss"]
LR_SCHEDULES = ("constant", "linear")
def check_schedule(lr_schedule: str, warmup_ratio: float) -> None:
    """A known schedule and a warm-up fraction in [0, 1), else a clear error."""
    if lr_schedule not in LR_SCHEDULES:
        raise SalienceBenchError(f"unknown lr schedule {lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if not (is_number(warmup_ratio) and 0 <= warmup_ratio < 1):
        raise SalienceBenchError(f"warmup-ratio {warmup_ratio!r} must be in [0, 1)")


def _extra_columns(task: str) -> list[str]:
    return get_task(task).columns


def downstream_columns(task: str) -> list[str]:
    return DOWNSTREAM_COLUMNS + _extra_columns(task)


def curve_columns(task: str) -> list[str]:
    return CURVE_COLUMNS + _extra_columns(task)


@dataclass
class TrainingHyperparameters:
    """The fine-tuning settings a study's runs share. Their defaults and checks live here only: the command line's
    defaults are read from these fields, :class:`~salience_bench.pipeline.TrainingPlan` (a comparison's runs) and
    :class:`TrainConfig` (one run's full settings) extend it."""

    steps: int = 300
    lr: float = 5e-4  # sparse, LoRA, PiSSA
    full_lr: float = 5e-5  # full fine-tuning
    batch_size: int = 32
    weight_decay: float = 0.0
    eval_every: int = 0  # 0: evaluate once, at the end
    eval_batch_size: int = 128
    mask_update_every: int | None = None  # dynamic masks: re-score and re-select every U steps
    group_by_length: bool = True  # batches of similar-length examples: much less padding
    eval_examples: int | None = None  # causal LMs: greedy exact match on this many eval prompts (None: all, 0: none)
    max_new_tokens: int = 256  # … generating at most this many tokens each
    lr_schedule: str = "constant"  # or "linear": decay to 0 at the last step (transformers' schedules)
    warmup_ratio: float = 0.0  # the first round(ratio · steps) steps warm the rate up linearly from 0
    method_options: dict = field(default_factory=dict)  # {method: {option: value}}, e.g. {"lora": {"alpha_ratio": 1}}
    head_lr: float | None = None  # the task head's rate for every method (None: the method's own rate)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every setting checked, each with a one-line error naming it and its valid range."""
        for name in ("steps", "batch_size", "eval_batch_size", "max_new_tokens"):
            check_at_least(self, name, 1)
        check_at_least(self, "eval_every", 0)
        if self.mask_update_every is not None:
            check_at_least(self, "mask_update_every", 1, " (or omitted for a static mask)")
        if self.eval_examples is not None and (not is_int(self.eval_examples) or self.eval_examples < 0):
            raise SalienceBenchError(f"eval-examples {self.eval_examples!r} must be an integer ≥ 0 or all")
        for name in ("lr", "full_lr", "weight_decay", *(("head_lr",) if self.head_lr is not None else ())):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and value >= 0 and (value > 0 or name == "weight_decay")):
                raise SalienceBenchError(f"{name.replace('_', '-')} {value!r} must be a finite number "
                                         f"{'≥ 0' if name == 'weight_decay' else '> 0'}")
        check_schedule(self.lr_schedule, self.warmup_ratio)
        self.method_options = check_method_options(self.method_options)

    def hyperparameters(self) -> dict[str, Any]:
        """These settings by name (what a :class:`TrainingPlan` hands each run's :class:`TrainConfig`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainingHyperparameters)}


@dataclass
class TrainConfig(TrainingHyperparameters):
    """One run's settings: the shared hyperparameters plus what the comparison fixes (mask, scoring data, tensors)."""

    max_length: int = 64
    mask: MaskSpec = field(default_factory=lambda: MaskSpec(density=0.01))
    score_batches: int = 8  # scoring batches for the initial mask
    score_batch_size: int = 32
    score_options: dict = field(default_factory=dict)  # scorer settings (lift_rank, block_size)
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    chat_template: bool = True  # prompt/completion data: the tokenizer's chat template, when it has one
    fixed_masks: dict = field(default_factory=dict)  # "file:<stem>" → a saved mask, trained as a metric's

    def validate(self) -> None:
        super().validate()
        for name in ("max_length", "score_batches", "score_batch_size"):
            check_at_least(self, name, 1)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """transformers' schedule for this run: linear warm-up over ``warmup_ratio`` of the steps, then constant
        or a linear decay to 0 at the last step."""
        import transformers

        warmup = round(self.warmup_ratio * self.steps)
        if self.lr_schedule == "linear":
            return transformers.get_linear_schedule_with_warmup(optimizer, warmup, self.steps)
        return transformers.get_constant_schedule_with_warmup(optimizer, warmup)

    @property
    def scope(self) -> str:
        return self.mask.scope

    @property
    def schedule(self) -> str:
        return "static" if self.mask_update_every is None else f"dynamic/{self.mask_update_every}"


@dataclass(frozen=True)
class RunInputs:
    """What every run of a study shares: how to load a fresh model, the data, the device."""

    load_model: Callable[[int], tuple[nn.Module, object]]  # seed → (model with a new head, tokenizer)
    train_data: Dataset
    eval_data: Dataset
    device: torch.device


@dataclass
class RunResult:
    row: dict
    drift: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)  # the training loss of every step (LOSS_COLUMNS)


def evaluate(model: nn.Module, batches: Sequence[dict], device: torch.device, task: str | None = None) -> dict[str, float]:
    """``task``'s evaluation (:meth:`salience_bench.tasks.Task.evaluate`); by default a causal LM's where the labels
    are per token, else a classifier's."""
    if task is None:
        task = CausalLM.name if batches and batches[0]["labels"].dim() == 2 else Classification.name
    return get_task(task).evaluate(model, batches, device)


def parameter_groups(trainer, params: list[nn.Parameter], head_lr: float | None) -> list[dict]:
    """The optimizer's groups: the method's parameters at its rate, and (``head_lr``) the head at that rate."""
    if head_lr is None:
        return [{"params": params}]
    heads = {id(p) for p in trainer.head_parameters()}
    groups = [{"params": [p for p in params if id(p) not in heads]},
              {"params": [p for p in params if id(p) in heads], "lr": head_lr}]
    return [g for g in groups if g["params"]]


_units = loss_units_of


def run_one(method: str, metric: str | None, seed: int, config: TrainConfig, inputs: RunInputs, *,
            progress: bool = True) -> RunResult:
    """Fine-tune a fresh model (``inputs.load_model(seed)``) with ``method`` and measure it."""
    method_class = get_method(method)
    train_data, device = inputs.train_data, inputs.device
    model, tokenizer = inputs.load_model(seed)
    model.to(device)
    params = eligible_parameters(model, config.include, config.exclude)
    head = head_parameters(model)
    task = get_task(inputs.eval_data.task)
    eval_size = task.eval_batch_size(config, model.config.vocab_size, device)
    eval_batches = make_batches(inputs.eval_data, tokenizer, batch_size=eval_size, max_length=config.max_length,
                                shuffle=False, sort_by_length=True, chat_template=config.chat_template)
    trainer = method_class(RunSetup(model=model, tokenizer=tokenizer, params=params, head=head,
                                    metric=metric if method_class.uses_metric else None, seed=seed, config=config,
                                    train_data=train_data, device=device))
    model = trainer.prepare()
    record = trainer.record()
    curve: list[dict] = []
    ids = dict(method=method, metric=record["metric"], mask_schedule=record["mask_schedule"], seed=seed)

    def evaluate_into_curve(step_number: int) -> dict[str, float]:
        values = task.evaluate(model, eval_batches, device)
        curve.append(dict(**ids, step=step_number, **values))
        return values

    label = f"{method}{'/' + record['metric'] if record['metric'] else ''} seed {seed}"
    steps = config.steps if method_class.trains else 0
    with PeakMemory(device) as peak:
        cost = _train(trainer, model, tokenizer, config, inputs, seed, label, evaluate_into_curve,
                      progress=progress) if steps else _TrainingCost()
    results = {**evaluate_into_curve(steps),
               **task.final_metrics(model, tokenizer, config, inputs.eval_data, device, progress=progress)}
    timed_steps = max(steps - 1, 1)
    row = dict(
        method=method, **{k: record[k] for k in ("metric", "density", "scope", "mask_schedule")}, seed=seed,
        trainable_params=trainer.trainable_count(), head_params=sum(p.numel() for p in head.values()),
        lora_rank=record["lora_rank"], optimizer_state_bytes=cost.state_bytes, steps=steps,
        train_seconds=cost.step_seconds * steps / timed_steps, seconds_per_step=cost.step_seconds / timed_steps,
        peak_memory_bytes=peak.peak_bytes, train_flops=cost.flops_per_step * steps,
        eval_accuracy=results["eval_accuracy"], eval_loss=results["eval_loss"], device=str(device),
        **{k: results.get(k, math.nan) for k in task.columns},
    )
    losses = [dict(**ids, step=i, train_loss=loss) for i, loss in enumerate(cost.losses, 1)]
    return RunResult(row, trainer.drift, curve, losses)


@dataclass
class _TrainingCost:
    flops_per_step: int = 0
    step_seconds: float = 0.0  # summed over the timed steps (all but the first, which is counted for FLOPs)
    state_bytes: int = 0
    losses: list[float] = field(default_factory=list)


def _train(trainer, model: nn.Module, tokenizer, config: TrainConfig, inputs: RunInputs, seed: int, label: str,
           evaluate_into_curve: Callable[[int], dict], *, progress: bool) -> _TrainingCost:
    """The optimizer steps of one run (with mask updates and intermediate evaluations), timed and counted."""
    device = inputs.device
    opt_params = trainer.parameters()
    stream = training_stream(inputs.train_data, tokenizer, batch_size=config.batch_size, max_length=config.max_length,
                             seed=seed, group_by_length=config.group_by_length, chat_template=config.chat_template)
    cost = _TrainingCost()
    model.train()
    losses: list[torch.Tensor] = []
    optimizer = torch.optim.AdamW(parameter_groups(trainer, opt_params, config.head_lr), lr=trainer.learning_rate(),
                                  weight_decay=config.weight_decay)
    schedule = config.scheduler(optimizer)

    def step(batch: dict) -> None:
        loss = model(**batch).loss
        # Each rank's mean loss weighted by its share of the global batch's loss units (examples, or target
        # tokens): the averaged gradient is then the global batch's, however unevenly the rows split.
        (loss * distributed.loss_share(_units(batch))).backward()
        distributed.average_gradients_(opt_params)  # only the trainable state travels: O(k) for sparse
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.after_optimizer_step()
        losses.append(loss.detach())

    for i in tqdm(range(1, config.steps + 1), desc=label, unit="step", disable=not progress, leave=False):
        batch = to_device(distributed.shard_rows(next(stream)), device)  # each rank: its rows of the global batch
        trainer.observe(batch)
        if i == 1:  # counted, not timed: the flop counter slows the step it watches
            cost.flops_per_step = count_flops(lambda: step(batch))
        else:
            synchronize(device)
            with timed() as t:
                step(batch)
                synchronize(device)
            cost.step_seconds += t[0]
        loss = float(losses.pop())  # read outside the timed region
        cost.losses.append(loss)
        if not math.isfinite(loss):
            raise SalienceBenchError(
                f"{label}: the training loss is {loss} at step {i}; lower the learning rate "
                f"({trainer.learning_rate():g}) or train in float32 (the model is {next(model.parameters()).dtype})")
        if trainer.update_due(i):
            synchronize(device)
            with timed() as t:
                trainer.update(i, optimizer)
                synchronize(device)
            cost.step_seconds += t[0]
        if config.eval_every and i % config.eval_every == 0 and i < config.steps:
            evaluate_into_curve(i)
    cost.state_bytes = optimizer_state_bytes(optimizer)
    return cost
