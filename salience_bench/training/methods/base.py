"""The training-method interface and its registry.

A method turns a freshly loaded model into something to fine-tune: it freezes and wraps what it
needs, says what the optimizer trains and at what learning rate, reports its trainable count
(the task head is counted separately; every method trains it densely), and may act after each
step (the sparse method's dynamic mask updates). :func:`salience_bench.training.loop.run_one` is a
plain loop over these calls, so a new baseline is one module with one decorated class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ...data import Dataset
from ...models import new_parameters
from ...registry import Registry


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The newly initialised task head (see :func:`salience_bench.models.new_parameters`): trained densely by
    every method."""
    return new_parameters(model)


def head_modules(head: Iterable[str]) -> list[str]:
    """The modules owning the head's parameters (what peft trains densely as ``modules_to_save``)."""
    return sorted({name.rsplit(".", 1)[0] for name in head})


def in_modules(name: str, modules: Iterable[str]) -> bool:
    """Whether parameter ``name`` of a (possibly wrapped) model lies inside one of ``modules``, named as in the
    unwrapped model: peft's ``base_model.model.classifier.modules_to_save.default.weight`` lies in ``classifier``,
    ``pre_classifier.weight`` does not."""
    return any(f".{module}." in f".{name}" for module in modules)


def freeze_all_but(model: nn.Module, keep: Mapping[str, nn.Parameter]) -> None:
    keep_ids = {id(p) for p in keep.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep_ids)


@dataclass
class RunSetup:
    """What a method needs to prepare one run: the fresh model and everything around it."""

    model: nn.Module
    tokenizer: Any
    params: dict[str, nn.Parameter]  # the eligible weights
    head: dict[str, nn.Parameter]
    metric: str | None
    seed: int
    config: Any  # TrainConfig
    train_data: Dataset
    device: torch.device

    @property
    def total(self) -> int:
        """Eligible weights."""
        return sum(p.numel() for p in self.params.values())

    @property
    def target_count(self) -> int:
        """The trainable count the mask specification asks for (LoRA ranks are matched to it)."""
        return self.config.mask.count(self.total, {n: p.shape for n, p in self.params.items()})


class TrainingMethod:
    """Base class of a fine-tuning method; subclasses set ``name`` and implement :meth:`prepare`."""

    name: ClassVar[str] = ""
    uses_metric: ClassVar[bool] = False  # True: a salience metric drives it (runs once per metric)
    trains: ClassVar[bool] = True  # False: evaluated as loaded, no optimizer and no steps (the ``base`` row)
    seeded: ClassVar[bool] = True  # False: one run at the first seed stands for all (its result does not vary)

    def __init__(self, setup: RunSetup):
        self.setup = setup
        self.config = setup.config
        self.drift: list[dict] = []
        self.model: nn.Module = setup.model

    def prepare(self) -> nn.Module:
        """Freeze and wrap ``setup.model``; return the model to train."""
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains (the head included)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def learning_rate(self) -> float:
        return self.config.lr

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable task-head parameters of the prepared model (a peft wrapper's trainable copy included), so
        that every method can train its head at one shared rate (``TrainConfig.head_lr``)."""
        modules = head_modules(self.setup.head)
        return [p for n, p in self.model.named_parameters() if p.requires_grad and in_modules(n, modules)]

    def trainable_count(self) -> int:
        """Trainable weights of the method itself, the head excluded."""
        raise NotImplementedError

    def record(self) -> dict:
        """Method-specific columns of the downstream row."""
        return dict(metric="", density=self.setup.target_count / self.setup.total, scope="", mask_schedule="",
                    lora_rank=None)

    @classmethod
    def label(cls, row: Mapping[str, Any]) -> str:
        """How a finished run (a downstream row) is named in tables and figures."""
        return cls.name

    # Step hooks: called by the loop around each step (no-ops unless a method needs them).
    def observe(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Each training batch, before its step."""

    def after_optimizer_step(self) -> None:
        """Right after ``optimizer.step()``."""

    def update_due(self, step: int) -> bool:
        """Whether :meth:`update` runs after this step (its time counts as training time)."""
        return False

    def update(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Work between steps, e.g. re-selecting a dynamic mask."""


_METHODS: Registry[type[TrainingMethod]] = Registry("method")


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make ``cls`` a training method under ``cls.name``."""
    return _METHODS.add(cls.name, cls)


def get_method(name: str) -> type[TrainingMethod]:
    return _METHODS.get(name)


def list_methods() -> list[str]:
    """Registered methods: the metric-driven ones first, then the baselines, each in registration order."""
    entries = _METHODS.entries
    return [n for n, c in entries.items() if c.uses_metric] + list_baselines()


def list_baselines() -> list[str]:
    """Methods that need no metric (full, lora, pissa …)."""
    return [n for n, c in _METHODS.entries.items() if not c.uses_metric]
