"""The training-method interface and its registry.

A method turns a freshly loaded model into something to fine-tune: it freezes and wraps what it
needs, says what the optimizer trains and at what learning rate, reports its trainable count
(the task head is counted separately; every method trains it densely), and may act after each
step (the sparse method's dynamic mask updates). :func:`salience_bench.training.loop.run_one` is a
plain loop over these calls, so a new baseline is one module with one decorated class.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ...data import Dataset
from ...errors import SalienceBenchError, is_number
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


@dataclass(frozen=True)
class MethodOptions:
    """A method's own hyperparameters: subclass it as a frozen dataclass (each field's ``metadata["help"]`` is its
    ``--help`` line) and set it as the method's ``Options``. Numbers must be finite and > 0 unless a field's
    metadata says ``minimum``; the command line gets ``--<method>-<field>`` for each field."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.type in (float, "float", int, "int"):
                floor = spec.metadata.get("minimum")
                ok = is_number(value) and math.isfinite(value) and (value > 0 if floor is None else value >= floor)
                if not ok:
                    raise SalienceBenchError(f"{spec.name.replace('_', '-')} {value!r} must be a finite number "
                                             + ("> 0" if floor is None else f"≥ {floor}"))


class TrainingMethod:
    """Base class of a fine-tuning method; subclasses set ``name`` and implement :meth:`prepare`.

    A method with hyperparameters of its own declares them as ``Options`` (a :class:`MethodOptions` dataclass) and
    reads them as ``self.options``; subclasses share their parent's (PiSSA reads LoRA's ``alpha_ratio``)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    uses_metric: ClassVar[bool] = False  # True: a salience metric drives it (runs once per metric)
    trains: ClassVar[bool] = True  # False: evaluated as loaded, no optimizer and no steps (the ``base`` row)
    seeded: ClassVar[bool] = True  # False: one run at the first seed stands for all (its result does not vary)
    # False: cannot adapt weights stored input × output (transformers' Conv1D, the GPT-2 family): peft's SHiRA and
    # Super-Tuning take nn.Linear only, and a run is refused before anything is scored
    adapts_transposed: ClassVar[bool] = True

    def __init__(self, setup: RunSetup):
        self.setup = setup
        self.config = setup.config
        self.options = self.options_from(getattr(self.config, "method_options", {}))
        self.drift: list[dict] = []
        self.model: nn.Module = setup.model

    @classmethod
    def options_owner(cls) -> str:
        """The name of the method that declares this method's ``Options`` (itself, or the parent it inherits from)."""
        owner = next(c for c in cls.__mro__ if "Options" in c.__dict__ or c is TrainingMethod)
        return owner.name if owner is not TrainingMethod else cls.name

    @classmethod
    def options_from(cls, method_options: Mapping[str, Mapping[str, Any]]) -> MethodOptions:
        """This method's options out of ``{method: {option: value}}`` (defaults for what is not given), checked."""
        given = dict(method_options.get(cls.options_owner(), {}))
        known = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise SalienceBenchError(f"unknown option {unknown[0]!r} of method {cls.options_owner()!r}; valid: "
                                     f"{', '.join(known) or 'none'}")
        try:
            return cls.Options(**given)
        except SalienceBenchError as err:  # "lora alpha-ratio 0 must be …", as the flag reads
            raise SalienceBenchError(f"{cls.options_owner()} {err}") from None

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


def method_options() -> dict[str, type[MethodOptions]]:
    """Every registered method that declares options of its own → its ``Options`` dataclass."""
    return {name: cls.Options for name, cls in _METHODS.entries.items() if "Options" in cls.__dict__}


def check_method_options(given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``{method: {option: value}}`` checked against the methods' ``Options`` (unknown names and bad values are
    one-line errors); returned as plain dicts (they serialise into the run configuration)."""
    declared = method_options()
    out = {}
    for method, values in (given or {}).items():
        if method not in declared:
            raise SalienceBenchError(f"method {method!r} has no options; methods with options: "
                                     f"{', '.join(declared) or 'none'}")
        get_method(method).options_from({method: values})
        out[method] = dict(values)
    return out


def list_baselines() -> list[str]:
    """Methods that need no metric (full, lora, pissa …)."""
    return [n for n, c in _METHODS.entries.items() if not c.uses_metric]
