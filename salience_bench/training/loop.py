"""One downstream run: fine-tune with a method, measure what it cost, evaluate.

Methods: ``sparse`` (a metric's mask drives :class:`SparseDeltaEngine`, static or dynamic),
``full`` (AdamW on every weight), ``lora`` and ``pissa`` (peft, rank matched to the sparse
trainable count). The task head is trained densely by all of them and counted separately.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..data import TextDataset, make_batches
from ..errors import SalienceBenchError
from ..masks import make_mask, selection_count
from ..models import eligible_parameters
from ..scorers import get_scorer
from ..scoring import score
from ..stats import jaccard
from .baselines import freeze_all_but, head_parameters, matched_lora_rank, trainable, wrap_lora
from .measure import PeakMemory, count_flops, synchronize, timed
from .sparse import SparseDeltaEngine, optimizer_state_bytes

METHODS = ("sparse", "full", "lora", "pissa")
BASELINES = ("full", "lora", "pissa")
DOWNSTREAM_COLUMNS = [
    "method", "metric", "density", "scope", "mask_schedule", "seed", "trainable_params", "head_params",
    "lora_rank", "optimizer_state_bytes", "steps", "train_seconds", "seconds_per_step", "peak_memory_bytes",
    "train_flops", "eval_accuracy", "eval_loss", "device",
]
DRIFT_COLUMNS = ["metric", "seed", "step", "jaccard_initial", "jaccard_previous", "ever_selected", "ever_selected_fraction"]
CURVE_COLUMNS = ["method", "metric", "mask_schedule", "seed", "step", "eval_accuracy", "eval_loss"]


@dataclass
class TrainConfig:
    steps: int = 300
    lr: float = 5e-4  # sparse, LoRA, PiSSA
    full_lr: float = 5e-5  # full fine-tuning
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.0
    eval_every: int = 0  # 0: evaluate once, at the end
    eval_batch_size: int = 128
    mask_options: dict = field(default_factory=lambda: {"density": 0.01, "scope": "global"})  # make_mask kwargs
    score_batches: int = 8  # scoring batches for the initial mask
    score_batch_size: int = 32
    mask_update_every: int | None = None  # dynamic masks: re-score and re-select every U steps
    group_by_length: bool = True  # batches of similar-length examples: much less padding
    score_options: dict = field(default_factory=dict)  # scorer settings (lift_rank, block_size)
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None

    def validate(self) -> None:
        for name in ("steps", "batch_size", "max_length", "eval_batch_size", "score_batches", "score_batch_size"):
            if getattr(self, name) < 1:
                raise SalienceBenchError(f"{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.mask_update_every is not None and self.mask_update_every < 1:
            raise SalienceBenchError(f"mask-update-every must be ≥ 1 (or omitted for a static mask), got {self.mask_update_every}")
        if self.eval_every < 0:
            raise SalienceBenchError(f"eval-every must be ≥ 0, got {self.eval_every}")
        for name in ("lr", "full_lr"):
            if not getattr(self, name) > 0:
                raise SalienceBenchError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")

    @property
    def scope(self) -> str:
        return self.mask_options.get("scope", "global")

    @property
    def schedule(self) -> str:
        return "static" if self.mask_update_every is None else f"dynamic/{self.mask_update_every}"


@dataclass
class RunResult:
    row: dict
    drift: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)


def training_stream(
    data: TextDataset, tokenizer, *, batch_size: int, max_length: int, seed: int, group_by_length: bool = True
) -> Iterator[dict]:
    """Endless shuffled epochs of tokenised batches (seeded; a new order each epoch).

    With ``group_by_length`` (as Hugging Face Trainer's option of that name), each run of 50
    batches' worth of shuffled examples is sorted by length before it is cut into batches, and
    the batches are then shuffled: every batch is still a random draw of similar-length
    examples, but far less of it is padding.
    """
    lengths = [len(t.split()) for t in data.texts] if group_by_length else None
    for epoch in itertools.count():
        generator = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(len(data), generator=generator).tolist()
        usable = len(order) - len(order) % batch_size
        batches = []
        span = batch_size * 50
        for start in range(0, usable, span):
            chunk = order[start : min(start + span, usable)]
            if lengths is not None:
                chunk = sorted(chunk, key=lambda i: lengths[i])
            batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
        if lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for idx in batches:
            enc = tokenizer([data.texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            yield {**enc, "labels": torch.tensor([data.labels[i] for i in idx])}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[dict], device: torch.device) -> tuple[float, float]:
    """(accuracy, mean loss) over ``batches``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        n = batch["labels"].shape[0]
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * n
        total += n
    model.train(was_training)
    return correct / total, loss_sum / total


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def run_one(
    method: str,
    metric: str | None,
    seed: int,
    config: TrainConfig,
    *,
    load_model: Callable[[int], tuple[nn.Module, object]],
    train_data: TextDataset,
    eval_data: TextDataset,
    device: torch.device,
    progress: bool = True,
) -> RunResult:
    """Fine-tune a fresh model (``load_model(seed)``) with ``method`` and measure it."""
    if method not in METHODS:
        raise SalienceBenchError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "sparse":
        scorer = get_scorer(metric)
        if not scorer.maskable:
            raise SalienceBenchError(f"metric {metric!r} gives one number per network and cannot drive training")
    model, tokenizer = load_model(seed)
    model.to(device)
    params = eligible_parameters(model, config.include, config.exclude)
    total = sum(p.numel() for p in params.values())
    opts = config.mask_options
    k = opts["k"] if opts.get("k") else selection_count(total, opts.get("density") or _nm_density(opts))
    head = head_parameters(model)
    head_count = sum(p.numel() for p in head.values())
    eval_batches = make_batches(eval_data, tokenizer, batch_size=config.eval_batch_size, max_length=config.max_length,
                                shuffle=False, sort_by_length=True)
    engine: SparseDeltaEngine | None = None
    drift: list[dict] = []
    lora_rank = None
    if method == "sparse":
        scoring_batches = distributed.shard(make_batches(
            train_data, tokenizer, batch_size=config.score_batch_size, num_batches=config.score_batches,
            max_length=config.max_length, seed=seed))
        masks = make_mask(score(model, scoring_batches, [metric], params=params, seed=seed, options=config.score_options)[metric],
                          **opts)
        distributed.broadcast_masks_(masks)  # rank 0 decides
        freeze_all_but(model, head)
        engine = SparseDeltaEngine(model, masks)
        opt_params, lr = engine.parameters() + list(head.values()), config.lr
        trainable_count = engine.num_selected
        k = trainable_count  # the realised count (structured masks may differ from round(d·N))
        initial = previous = masks
        ever = {n: m.clone() for n, m in masks.items()}
        drift.append(_drift_row(metric, seed, 0, masks, initial, previous, ever, total))
    elif method == "full":
        freeze_all_but(model, dict(model.named_parameters()))
        opt_params, lr = trainable(model), config.full_lr
        trainable_count = sum(p.numel() for p in opt_params) - head_count
    else:
        lora_rank = matched_lora_rank(k, params)
        freeze_all_but(model, {})
        model = wrap_lora(model, params, rank=lora_rank, init="pissa_niter_4" if method == "pissa" else True)
        opt_params, lr = trainable(model), config.lr
        trainable_count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)

    stream = training_stream(train_data, tokenizer, batch_size=config.batch_size, max_length=config.max_length,
                             seed=seed, group_by_length=config.group_by_length)
    recent: deque = deque(maxlen=min(config.score_batches, config.mask_update_every or 1))
    curve: list[dict] = []

    def evaluate_into_curve(step_number: int) -> tuple[float, float]:
        acc, loss = evaluate(model, eval_batches, device)
        curve.append(dict(method=method, metric=metric, mask_schedule=_schedule(method, config), seed=seed,
                          step=step_number, eval_accuracy=acc, eval_loss=loss))
        return acc, loss

    label = f"{method}{'/' + metric if metric else ''} seed {seed}"
    model.train()
    flops_per_step = 0
    step_seconds = 0.0
    with PeakMemory(device) as peak:
        optimizer = torch.optim.AdamW(opt_params, lr=lr, weight_decay=config.weight_decay)

        def step(batch: dict) -> None:
            loss = model(**batch).loss
            loss.backward()
            distributed.average_gradients_(opt_params)  # only the trainable state travels: O(k) for sparse
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if engine is not None:
                engine.sync_weights()

        for i in tqdm(range(1, config.steps + 1), desc=label, unit="step", disable=not progress, leave=False):
            batch = _to(distributed.shard_rows(next(stream)), device)  # each rank: its rows of the global batch
            recent.append(batch)
            if i == 1:  # counted, not timed: the flop counter slows the step it watches
                flops_per_step = count_flops(lambda: step(batch))
            else:
                synchronize(device)
                with timed() as t:
                    step(batch)
                    synchronize(device)
                step_seconds += t[0]
            if engine is not None and config.mask_update_every and i % config.mask_update_every == 0 and i < config.steps:
                synchronize(device)
                with timed() as t:
                    with engine.dense():
                        fresh = score(model, list(recent), [metric], params=params, seed=seed,
                                      options=config.score_options)[metric]
                    new = make_mask(fresh, **opts)
                    distributed.broadcast_masks_(new)
                    engine.update_masks(new, optimizer)
                    synchronize(device)
                step_seconds += t[0]
                for n in ever:
                    ever[n] |= new[n]
                drift.append(_drift_row(metric, seed, i, new, initial, previous, ever, total))
                previous = new
            if config.eval_every and i % config.eval_every == 0 and i < config.steps:
                evaluate_into_curve(i)
        state_bytes = optimizer_state_bytes(optimizer)
    accuracy, eval_loss = evaluate_into_curve(config.steps)
    timed_steps = max(config.steps - 1, 1)
    row = dict(
        method=method, metric=metric if method == "sparse" else "", density=k / total if method != "full" else 1.0,
        scope=config.scope if method == "sparse" else "", mask_schedule=_schedule(method, config), seed=seed,
        trainable_params=trainable_count, head_params=head_count, lora_rank=lora_rank,
        optimizer_state_bytes=state_bytes, steps=config.steps,
        train_seconds=step_seconds * config.steps / timed_steps, seconds_per_step=step_seconds / timed_steps,
        peak_memory_bytes=peak.peak_bytes, train_flops=flops_per_step * config.steps,
        eval_accuracy=accuracy, eval_loss=eval_loss, device=str(device),
    )
    return RunResult(row, drift, curve)


def _nm_density(opts: dict) -> float:
    n, m = opts.get("nm", (2, 4))
    return n / m


def _schedule(method: str, config: TrainConfig) -> str:
    return config.schedule if method == "sparse" else ""


def _drift_row(metric, seed, step, current, initial, previous, ever, total) -> dict:
    ever_count = sum(int(m.sum()) for m in ever.values())
    return dict(metric=metric, seed=seed, step=step, jaccard_initial=jaccard(current, initial),
                jaccard_previous=jaccard(current, previous), ever_selected=ever_count,
                ever_selected_fraction=ever_count / total)
