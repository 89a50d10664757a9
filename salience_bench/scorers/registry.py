"""The scorer registry: one decorator, one name, discoverable by name or glob.

A scorer is a small pure function ``fn(stats: TensorStats) -> Tensor`` that turns
the accumulators gathered by :mod:`salience_bench.scoring` for one weight tensor
into a float32 score shaped like that tensor. It declares which accumulators it
needs, so one pass over the data can feed every requested scorer.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import SalienceBenchError

# What a scorer can ask the scoring pass for.
MEAN_GRAD = "mean_grad"  # ḡ: mean over scoring batches of the gradient of each batch's mean loss
EXAMPLE_SQ_GRAD = "example_sq_grad"  # (1/N) Σ_n g_n² over single examples (per-example gradients)
ABS_GRAD = "abs_grad"  # (1/B) Σ_b |g_b|: mean over batches of the absolute batch gradient
INPUT_SQ_NORM = "input_sq_norm"  # Σ over (unpadded) tokens of x_j², per input column of a linear layer
HESSIAN_GRAD = "hessian_grad"  # H ḡ: Hessian of the mean loss times ḡ (ḡ held constant); a second pass
NEEDS = frozenset({MEAN_GRAD, EXAMPLE_SQ_GRAD, ABS_GRAD, INPUT_SQ_NORM, HESSIAN_GRAD})


@dataclass(frozen=True)
class TensorStats:
    """Everything a scorer may read about one weight tensor. All tensors are float32."""

    name: str
    weight: torch.Tensor
    seed: int
    num_batches: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    mean_grad: torch.Tensor | None = None
    example_sq_grad: torch.Tensor | None = None
    abs_grad: torch.Tensor | None = None
    input_sq_norm: torch.Tensor | None = None
    hessian_grad: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelContext:
    """What a whole-model scorer receives: the model, the scored tensors, the data, the options."""

    model: nn.Module
    params: Mapping[str, nn.Parameter]
    batches: Sequence[Mapping[str, torch.Tensor]] | None
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: Callable[[TensorStats], torch.Tensor]
    needs: frozenset[str]
    description: str
    aliases: tuple[str, ...] = ()
    source: str = ""
    maskable: bool = True  # False for network-level scores (one number per model)
    whole_model: bool = False  # fn(ModelContext) instead of fn(TensorStats), for scores that rerun the model
    needs_data: bool = False  # whole-model scorers: whether they need scoring batches

    def __call__(self, stats):
        return self.fn(stats)

    @property
    def uses_data(self) -> bool:
        return bool(self.needs) or self.needs_data


@dataclass
class _Registry:
    scorers: dict[str, Scorer] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


_REGISTRY = _Registry()


def register(
    name: str,
    *,
    needs: Iterable[str] = (),
    aliases: Iterable[str] = (),
    source: str = "",
    maskable: bool = True,
    whole_model: bool = False,
    needs_data: bool = False,
) -> Callable[[Callable[[TensorStats], torch.Tensor]], Callable[[TensorStats], torch.Tensor]]:
    """Register ``fn`` as the scorer ``name``.

    The first line of the function's docstring is the one-line description shown by
    ``--list-metrics``. Names and aliases are case-insensitive and must be unique.
    ``maskable=False`` marks a network-level score (one number per model) that is reported
    but never turned into a mask or used to drive training. ``whole_model=True`` scorers take a
    :class:`ModelContext` and return ``{param_name: score}`` (or a float when not maskable);
    ``needs_data`` says whether they need scoring batches.
    """
    needs = frozenset(needs)
    unknown = needs - NEEDS
    if unknown:
        raise ValueError(f"scorer {name!r} needs unknown accumulators {sorted(unknown)}; valid: {sorted(NEEDS)}")

    def decorator(fn: Callable[[TensorStats], torch.Tensor]) -> Callable[[TensorStats], torch.Tensor]:
        key = name.lower()
        alias_keys = tuple(a.lower() for a in aliases)
        for taken in (key, *alias_keys):
            if taken in _REGISTRY.scorers or taken in _REGISTRY.aliases:
                raise ValueError(f"metric name {taken!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY.scorers[key] = Scorer(
            name=key,
            fn=fn,
            needs=needs,
            description=doc[0] if doc else "",
            aliases=alias_keys,
            source=source,
            maskable=maskable,
            whole_model=whole_model,
            needs_data=needs_data,
        )
        for alias in alias_keys:
            _REGISTRY.aliases[alias] = key
        return fn

    return decorator


def list_metrics() -> list[str]:
    """Sorted canonical metric names (aliases resolved, so each metric appears once)."""
    return sorted(_REGISTRY.scorers)


def get_scorer(name: str) -> Scorer:
    """The scorer registered under ``name`` or one of its aliases."""
    key = name.strip().lower()
    key = _REGISTRY.aliases.get(key, key)
    if key not in _REGISTRY.scorers:
        every_name = sorted([*_REGISTRY.scorers, *_REGISTRY.aliases])
        close = difflib.get_close_matches(key, every_name, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SalienceBenchError(
            f"unknown metric {name!r}.{hint} Valid metrics: {', '.join(list_metrics())}"
        )
    return _REGISTRY.scorers[key]


def resolve_metrics(spec: str | Iterable[str]) -> list[str]:
    """Canonical names for a comma-separated string or list of names, aliases and globs.

    ``all`` selects every metric; ``grad*`` selects by glob. Order follows the request,
    duplicates are dropped.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise SalienceBenchError(f"no metrics requested; valid metrics: {', '.join(list_metrics())}")
    resolved: list[str] = []
    for item in items:
        if item.lower() == "all":
            matches = list_metrics()
        elif any(ch in item for ch in "*?["):
            every_name = [*_REGISTRY.scorers, *_REGISTRY.aliases]
            matches = sorted({get_scorer(n).name for n in fnmatch.filter(every_name, item.lower())})
            if not matches:
                raise SalienceBenchError(
                    f"metric pattern {item!r} matches no metric; valid metrics: {', '.join(list_metrics())}"
                )
        else:
            matches = [get_scorer(item).name]
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def describe_metrics() -> list[tuple[str, str, str]]:
    """(name, aliases, description) for every metric, sorted by name; network-level ones say so."""
    return [
        (s.name, ", ".join(s.aliases), s.description + ("" if s.maskable else " [network-level: reported, never masked]"))
        for s in (_REGISTRY.scorers[n] for n in list_metrics())
    ]
