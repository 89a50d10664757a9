"""The task protocol and its registry: what a model is trained and evaluated for (a classifier's labels, a causal
LM's completions), each owning how its model is loaded, how it is evaluated, and its columns."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..data import batch_examples, loss_units
from ..errors import SalienceBenchError
from ..registry import Registry


class Task:
    """One kind of downstream task. Subclasses set the class attributes and implement :meth:`load_model` and
    :meth:`evaluate`; a task that scores generated answers implements :meth:`final_metrics` too."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    default_max_length: ClassVar[int] = 64  # tokens per example when --max-length is not given
    columns: ClassVar[list[str]] = []  # its own columns of downstream.csv and eval_curve.csv
    zero_point: ClassVar[bool] = False  # True: the untrained model is a row of its own (method 'base')
    fallback: ClassVar[bool] = False  # True: the task of a checkpoint no other task recognises
    datasets: ClassVar[str] = ""  # examples of its datasets, for errors

    def recognises(self, config: Any) -> bool:
        """Whether a checkpoint's saved config (``architectures``) is a model for this task."""
        return False

    def load_model(self, path: str, *, num_labels: int, options: Mapping[str, Any]) -> tuple[nn.Module, dict]:
        """(the model for this task from ``path``, transformers' loading info)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Sequence[dict], device: torch.device) -> dict[str, float]:
        """``eval_loss`` and the task's metrics on the evaluation batches (``eval_accuracy`` always present)."""
        raise NotImplementedError

    def final_metrics(self, model: nn.Module, tokenizer, config, data, device: torch.device, *,
                      progress: bool) -> dict[str, float]:
        """Metrics measured once, after training (a causal LM's exact match); none by default."""
        return {}

    def eval_batch_size(self, config, vocab_size: int, device: torch.device) -> int:
        """Examples per evaluation batch (``config.eval_batch_size`` unless they would not fit)."""
        return config.eval_batch_size

    def wrong_dataset(self, dataset: str) -> str:
        """The error for a dataset of another task."""
        return f"dataset {dataset!r} is not for {self.name}; use one of {self.datasets}"


TASKS: Registry[Task] = Registry("task")
register_task = TASKS.instances()  # class decorator: the task ``cls.name``
get_task = TASKS.get


def list_tasks() -> list[str]:
    return list(TASKS.entries)


def check_task_name(task: str) -> str:
    """``task`` if it is ``auto`` or a task registered now, else a one-line error listing them."""
    if task != "auto" and task not in TASKS.entries:
        raise SalienceBenchError(f"unknown task {task!r}; valid: auto, {', '.join(TASKS.entries)}")
    return task


def infer_task(config: Any) -> str:
    """The task a checkpoint's saved config is for: the first task that recognises it, else the fallback one."""
    specific = [t for t in TASKS.entries.values() if not t.fallback]
    return next((t.name for t in specific if t.recognises(config)),
                next(t.name for t in TASKS.entries.values() if t.fallback))


def loss_units_of(batch: dict) -> int:
    """What a batch's mean loss averages over: its target tokens (a causal LM) or its examples."""
    units = loss_units(batch)
    return int(units.sum()) if units is not None else batch_examples(batch)
