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
from ..data import (Dataset, PromptDataset, batch_examples, encode_prompts, final_number, loss_units, make_batches,
                    training_stream)
from ..errors import SalienceBenchError, check_at_least, is_int, is_number
from ..masks import MaskSpec
from ..models import eligible_parameters
from ..runtime import to_device
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
# Added for causal LMs, whose eval_accuracy is the exact match of generated answers: how many prompts it was
# measured on and its 95% Wilson interval (binomial), beside the perplexity of the reference answers.
LM_COLUMNS = ["eval_perplexity", "exact_match_n", "exact_match_low", "exact_match_high"]
# added for classifiers: two-class MCC and F1 (CoLA, MRPC), a regression head's correlations (STS-B); NaN elsewhere
TASK_COLUMNS = ["eval_mcc", "eval_f1", "eval_pearson", "eval_spearman"]


def check_schedule(lr_schedule: str, warmup_ratio: float) -> None:
    """A known schedule and a warm-up fraction in [0, 1), else a clear error."""
    if lr_schedule not in LR_SCHEDULES:
        raise SalienceBenchError(f"unknown lr schedule {lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if not (is_number(warmup_ratio) and 0 <= warmup_ratio < 1):
        raise SalienceBenchError(f"warmup-ratio {warmup_ratio!r} must be in [0, 1)")


def _extra_columns(task: str) -> list[str]:
    return LM_COLUMNS if task == "causal-lm" else TASK_COLUMNS


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


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[dict], device: torch.device) -> dict[str, float]:
    """Classification: ``eval_accuracy``, the mean loss per example, and for two classes ``eval_mcc`` (Matthews
    correlation, CoLA's metric) and ``eval_f1`` (of class 1, MRPC's). Float targets (a regression head, STS-B):
    ``eval_pearson`` and ``eval_spearman`` (``eval_accuracy`` NaN). Token labels (a causal LM): the mean loss
    per target token and its perplexity (``eval_accuracy`` NaN; see :func:`exact_match`)."""
    was_training = model.training
    model.eval()
    total = 0
    loss_sum = 0.0
    predictions, targets = [], []
    for batch in batches:
        batch = to_device(batch, device)
        out = model(**batch)
        n = _units(batch)  # a causal LM's loss is the mean over its target tokens, a classifier's over examples
        if loss_units(batch) is None:
            regression = batch["labels"].is_floating_point()
            predictions.append((out.logits.reshape(-1) if regression else out.logits.argmax(-1)).float().cpu())
            targets.append(batch["labels"].float().cpu())
        loss_sum += float(out.loss) * n
        total += n
    model.train(was_training)
    if batches and batches[0]["labels"].dim() == 2:
        loss = loss_sum / max(total, 1)
        return dict(eval_accuracy=math.nan, eval_loss=loss, eval_perplexity=math.exp(min(loss, 700.0)))
    return dict(eval_loss=loss_sum / total, **task_metrics(torch.cat(predictions), torch.cat(targets),
                                                           regression=batches[0]["labels"].is_floating_point()))


def task_metrics(predictions: torch.Tensor, targets: torch.Tensor, *, regression: bool) -> dict[str, float]:
    """GLUE's metrics from predicted classes (or values, ``regression``) and targets."""
    if regression:
        from scipy import stats

        x, y = predictions.double().numpy(), targets.double().numpy()
        constant = x.std() == 0 or y.std() == 0
        return dict(eval_accuracy=math.nan,
                    eval_pearson=math.nan if constant else float(stats.pearsonr(x, y).statistic),
                    eval_spearman=math.nan if constant else float(stats.spearmanr(x, y).statistic))
    values = dict(eval_accuracy=float((predictions == targets).double().mean()))
    if int(targets.max()) <= 1 and int(predictions.max()) <= 1:  # two classes
        tp = float(((predictions == 1) & (targets == 1)).sum())
        tn = float(((predictions == 0) & (targets == 0)).sum())
        fp = float(((predictions == 1) & (targets == 0)).sum())
        fn = float(((predictions == 0) & (targets == 1)).sum())
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        values["eval_mcc"] = (tp * tn - fp * fn) / denominator if denominator else 0.0  # sklearn's convention
        values["eval_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return values


@torch.no_grad()
def exact_match(model: nn.Module, tokenizer, data: PromptDataset, *, examples: int, max_length: int,
                max_new_tokens: int, chat_template: bool, device: torch.device, batch_size: int = 16,
                progress: bool = False) -> float:
    """Fraction of the first ``examples`` evaluation prompts whose greedy completion ends in the reference's
    final number (GSM8K's ``#### <number>``). Prompts are generated longest first in batches of ``batch_size``, so a
    batch holds prompts of similar length (little padding) and a batch too large for memory fails at once."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    order = sorted(range(examples), key=lambda i: -len(data.prompts[i]))
    hits = 0
    try:
        for start in tqdm(range(0, examples, batch_size), desc=f"exact match on {examples} prompts", unit="batch",
                          disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = to_device(encode_prompts(tokenizer, [data.prompts[i] for i in idx], None, max_length=max_length,
                                             chat_template=chat_template), device)
            out = model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            for row, i in zip(out[:, batch["input_ids"].shape[1]:], idx):
                answer = final_number(tokenizer.decode(row, skip_special_tokens=True))
                hits += answer is not None and answer == final_number(data.completions[i])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return hits / max(examples, 1)


def exact_match_columns(accuracy: float, examples: int) -> dict[str, float]:
    """The exact match's sample size and 95% Wilson interval (``scipy.stats.binomtest``); NaN without prompts."""
    if examples < 1:
        return dict(exact_match_n=0, exact_match_low=math.nan, exact_match_high=math.nan)
    from scipy import stats

    interval = stats.binomtest(round(accuracy * examples), examples).proportion_ci(0.95, method="wilson")
    return dict(exact_match_n=examples, exact_match_low=float(interval.low), exact_match_high=float(interval.high))


def exact_match_examples(config: TrainConfig, data: Dataset) -> int:
    """How many evaluation prompts are generated for exact match: ``eval_examples`` (None: all) of a causal LM's."""
    if data.task != "causal-lm":
        return 0
    return len(data) if config.eval_examples is None else min(config.eval_examples, len(data))


def loss_eval_batch_size(config: TrainConfig, vocab_size: int, task: str, device: torch.device) -> int:
    """``eval_batch_size``, fewer for a causal LM whose logits would not fit: a batch of B × L tokens holds B·L·V
    float32 logits and about two more copies in the loss (upcast, log-softmax), 3.2 GB per 512-token example of
    Gemma-3's 262,144-token vocabulary. They get 10% of a GPU's memory, or 4 GiB elsewhere."""
    if task != "causal-lm":
        return config.eval_batch_size
    budget = 0.1 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 4 * 2**30
    per_example = 3 * 4 * config.max_length * max(vocab_size, 1)
    return max(1, min(config.eval_batch_size, int(budget // per_example)))


def parameter_groups(trainer, params: list[nn.Parameter], head_lr: float | None) -> list[dict]:
    """The optimizer's groups: the method's parameters at its rate, and (``head_lr``) the head at that rate."""
    if head_lr is None:
        return [{"params": params}]
    heads = {id(p) for p in trainer.head_parameters()}
    groups = [{"params": [p for p in params if id(p) not in heads]},
              {"params": [p for p in params if id(p) in heads], "lr": head_lr}]
    return [g for g in groups if g["params"]]


def _units(batch: dict) -> int:
    units = loss_units(batch)
    return int(units.sum()) if units is not None else batch_examples(batch)


def run_one(method: str, metric: str | None, seed: int, config: TrainConfig, inputs: RunInputs, *,
            progress: bool = True) -> RunResult:
    """Fine-tune a fresh model (``inputs.load_model(seed)``) with ``method`` and measure it."""
    method_class = get_method(method)
    train_data, device = inputs.train_data, inputs.device
    model, tokenizer = inputs.load_model(seed)
    model.to(device)
    params = eligible_parameters(model, config.include, config.exclude)
    head = head_parameters(model)
    eval_size = loss_eval_batch_size(config, model.config.vocab_size, inputs.eval_data.task, device)
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
        values = evaluate(model, eval_batches, device)
        curve.append(dict(**ids, step=step_number, **values))
        return values

    label = f"{method}{'/' + record['metric'] if record['metric'] else ''} seed {seed}"
    steps = config.steps if method_class.trains else 0
    with PeakMemory(device) as peak:
        cost = _train(trainer, model, tokenizer, config, inputs, seed, label, evaluate_into_curve,
                      progress=progress) if steps else _TrainingCost()
    results = {**evaluate_into_curve(steps), **_exact_match(model, tokenizer, config, inputs, progress=progress)}
    timed_steps = max(steps - 1, 1)
    row = dict(
        method=method, **{k: record[k] for k in ("metric", "density", "scope", "mask_schedule")}, seed=seed,
        trainable_params=trainer.trainable_count(), head_params=sum(p.numel() for p in head.values()),
        lora_rank=record["lora_rank"], optimizer_state_bytes=cost.state_bytes, steps=steps,
        train_seconds=cost.step_seconds * steps / timed_steps, seconds_per_step=cost.step_seconds / timed_steps,
        peak_memory_bytes=peak.peak_bytes, train_flops=cost.flops_per_step * steps,
        eval_accuracy=results["eval_accuracy"], eval_loss=results["eval_loss"], device=str(device),
        **{k: results.get(k, math.nan) for k in _extra_columns(inputs.eval_data.task)},
    )
    losses = [dict(**ids, step=i, train_loss=loss) for i, loss in enumerate(cost.losses, 1)]
    return RunResult(row, trainer.drift, curve, losses)


def _exact_match(model: nn.Module, tokenizer, config: TrainConfig, inputs: RunInputs, *, progress: bool) -> dict:
    """A causal LM's exact match on ``eval_examples`` prompts (``eval_accuracy``), its count and Wilson interval;
    nothing for a classifier."""
    if inputs.eval_data.task != "causal-lm":
        return {}
    examples = exact_match_examples(config, inputs.eval_data)
    accuracy = exact_match(
        model, tokenizer, inputs.eval_data, examples=examples, max_length=config.max_length,
        max_new_tokens=config.max_new_tokens, chat_template=config.chat_template, device=inputs.device,
        batch_size=config.eval_batch_size, progress=progress) if examples else math.nan
    return dict(eval_accuracy=accuracy, **exact_match_columns(accuracy, examples))


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
