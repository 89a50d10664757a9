"""The scorer registry: one decorator per kind of scorer, one name, discoverable by name or glob.

Two kinds of scorer:

- a **tensor scorer** (:func:`register`) is a small pure function ``fn(stats: TensorStats) -> Tensor``
  that turns the accumulators gathered by the scoring pass for one weight tensor into a float32
  score shaped like that tensor. It declares the accumulators it needs (``needs``), so one pass over
  the data can feed every requested scorer;
- a **model scorer** (:func:`register_model_scorer`) reruns the model its own way
  (``fn(ctx: ModelContext)``) and returns per-tensor scores, or, when ``network_level=True``, one
  number for the whole network that is reported but never masked.

Scorer settings are declared as typed :class:`Option` s; ``score(..., options=...)`` rejects
unknown names and values of the wrong type or range.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..accumulators import get_accumulator, list_accumulators
from ..errors import SalienceBenchError, is_int, is_number
from ..registry import Registry

__all__ = [
    "ModelContext", "Option", "Scorer", "TensorStats", "describe_metrics", "get_scorer", "list_metrics", "register",
    "register_model_scorer", "resolve_metrics", "resolve_options", "scorer_options",
]


@dataclass(frozen=True)
class Option:
    """A typed scorer setting: its type, default, smallest allowed value and a one-line help."""

    type: type
    default: Any
    help: str
    minimum: int | float | None = None

    def check(self, name: str, value: Any) -> Any:
        if self.type is int and not is_int(value):
            raise SalienceBenchError(f"scorer option {name}={value!r} must be an integer")
        if self.type is float and not is_number(value):
            raise SalienceBenchError(f"scorer option {name}={value!r} must be a number")
        if self.type is str and not isinstance(value, str):
            raise SalienceBenchError(f"scorer option {name}={value!r} must be a string")
        if self.minimum is not None and not value >= self.minimum:
            raise SalienceBenchError(f"scorer option {name}={value!r} must be ≥ {self.minimum}")
        return self.type(value)


@dataclass(frozen=True)
class TensorStats:
    """Everything a tensor scorer may read about one weight tensor. All tensors are float32.

    The accumulators a scorer declared in ``needs`` are attributes by name (``t.mean_grad``,
    ``t.example_sq_grad`` …); ``options`` holds every scorer option, defaults filled in.
    """

    name: str
    weight: torch.Tensor
    seed: int
    num_batches: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    accumulated: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, item: str) -> torch.Tensor:
        accumulated = self.__dict__.get("accumulated", {})
        if item in accumulated:
            return accumulated[item]
        raise AttributeError(
            f"TensorStats has no {item!r}: a scorer reads only the accumulators it declares in needs= "
            f"(available: {', '.join(list_accumulators())})"
        )


@dataclass(frozen=True)
class ModelContext:
    """What a model scorer receives: the model, the scored tensors, the data, the options."""

    model: nn.Module
    params: Mapping[str, nn.Parameter]
    batches: Sequence[Mapping[str, torch.Tensor]] | None
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: Callable
    description: str
    needs: frozenset[str] = frozenset()  # tensor scorers: accumulators
    aliases: tuple[str, ...] = ()
    source: str = ""
    whole_model: bool = False  # fn(ModelContext) instead of fn(TensorStats)
    network_level: bool = False  # one number per network: reported, never masked
    needs_data: bool = False  # model scorers: whether they need scoring batches
    options: Mapping[str, Option] = field(default_factory=dict)
    # fn(shapes by tensor name, resolved options): refuses, before the scoring pass, tensors it cannot score
    check_shapes: Callable[[Mapping[str, Sequence[int]], Mapping[str, Any]], None] | None = None

    def __call__(self, stats):
        return self.fn(stats)

    @property
    def maskable(self) -> bool:
        return not self.network_level

    @property
    def uses_data(self) -> bool:
        return bool(self.needs) or self.needs_data


_REGISTRY: Registry[Scorer] = Registry("metric")


def _add(fn: Callable, name: str, aliases: Iterable[str], **fields) -> None:
    key = name.lower()
    alias_keys = tuple(a.lower() for a in aliases)
    for option, spec in fields.get("options", {}).items():
        clash = next((s.name for s in _REGISTRY.entries.values() if option in s.options
                      and s.options[option].type is not spec.type), None)
        if clash:
            raise ValueError(f"option {option!r} of {key!r} has another type than the same option of {clash!r}")
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTRY.add(key, Scorer(name=key, fn=fn, description=doc[0] if doc else "", aliases=alias_keys, **fields),
                  aliases=alias_keys)


def register(
    name: str,
    *,
    needs: Iterable[str] = (),
    aliases: Iterable[str] = (),
    source: str = "",
    options: Mapping[str, Option] | None = None,
    check_shapes: Callable[[Mapping[str, Sequence[int]], Mapping[str, Any]], None] | None = None,
) -> Callable[[Callable[[TensorStats], torch.Tensor]], Callable[[TensorStats], torch.Tensor]]:
    """Register ``fn(stats: TensorStats) -> Tensor`` as the tensor scorer ``name``.

    The first line of the function's docstring is the one-line description shown by
    ``--list-metrics``. Names and aliases are case-insensitive and must be unique. ``needs``
    names the accumulators it reads (see ``salience_bench.accumulators``). ``check_shapes(shapes, options)``
    refuses, before any data is scored, tensors the scorer cannot score with these options.
    """
    needs = frozenset(needs)
    for need in needs:
        try:
            get_accumulator(need)
        except SalienceBenchError:
            raise ValueError(f"scorer {name!r} needs unknown accumulators {sorted(needs)}; "
                             f"valid: {list_accumulators()}") from None

    def decorator(fn: Callable[[TensorStats], torch.Tensor]) -> Callable[[TensorStats], torch.Tensor]:
        _add(fn, name, aliases, needs=needs, source=source, options=dict(options or {}), check_shapes=check_shapes)
        return fn

    return decorator


def register_model_scorer(
    name: str,
    *,
    aliases: Iterable[str] = (),
    source: str = "",
    needs_data: bool = False,
    network_level: bool = False,
    options: Mapping[str, Option] | None = None,
) -> Callable[[Callable[[ModelContext], Any]], Callable[[ModelContext], Any]]:
    """Register ``fn(ctx: ModelContext)`` as the model scorer ``name``: it returns
    ``{param_name: score}``, or a float when ``network_level`` (one number per network, reported in
    ``Scores.network`` and never masked). ``needs_data``: whether it needs scoring batches."""

    def decorator(fn: Callable[[ModelContext], Any]) -> Callable[[ModelContext], Any]:
        _add(fn, name, aliases, whole_model=True, source=source, needs_data=needs_data,
             network_level=network_level, options=dict(options or {}))
        return fn

    return decorator


def scorer_options() -> dict[str, Option]:
    """Every option any registered scorer declares, by name."""
    merged: dict[str, Option] = {}
    for scorer in _REGISTRY.entries.values():
        merged.update(scorer.options)
    return dict(sorted(merged.items()))


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against the declared scorer options, with defaults filled in."""
    known = scorer_options()
    resolved = {name: spec.default for name, spec in known.items()}
    for name, value in (options or {}).items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SalienceBenchError(f"unknown scorer option {name!r}.{hint} Valid options: {', '.join(known) or 'none'}")
        resolved[name] = known[name].check(name, value)
    return resolved


def list_metrics() -> list[str]:
    """Sorted canonical metric names (aliases resolved, so each metric appears once)."""
    return sorted(_REGISTRY.entries)


def get_scorer(name: str) -> Scorer:
    """The scorer registered under ``name`` or one of its aliases."""
    key = str(name).strip().lower()
    key = _REGISTRY.aliases.get(key, key)
    if key not in _REGISTRY.entries:
        every_name = sorted([*_REGISTRY.entries, *_REGISTRY.aliases])
        close = difflib.get_close_matches(key, every_name, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SalienceBenchError(
            f"unknown metric {name!r}.{hint} Valid metrics: {', '.join(list_metrics())}"
        )
    return _REGISTRY.entries[key]


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
            every_name = [*_REGISTRY.entries, *_REGISTRY.aliases]
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
        (s.name, ", ".join(s.aliases), s.description + (" [network-level: reported, never masked]" if s.network_level else ""))
        for s in (_REGISTRY.entries[n] for n in list_metrics())
    ]
