"""Mask scopes: over which entries one selection runs (all tensors, each tensor, or LoRA's count per tensor).

A scope is one registered class: it checks the size a :class:`~salience_bench.masks.MaskSpec` gives it, counts what
it will select, and selects among entries (or, under the block structure, among tiles). ``--scope`` lists them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence

import torch

from ..errors import SalienceBenchError, is_int
from ..registry import Registry
from .select import MaskSet, _as_2d_shape, _numel, _top_k_per_tensor, selection_count, top_k_mask

if TYPE_CHECKING:
    from .spec import MaskSpec


class MaskScope:
    """Base class of a scope; subclasses set ``name`` and ``help`` and implement :meth:`select`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    sizes_itself: ClassVar[bool] = False  # True: the scope fixes every tensor's count (no density or k)
    takes_k: ClassVar[bool] = False  # whether an absolute count k is meaningful for it
    one_threshold: ClassVar[bool] = False  # one score threshold for every tensor (figures draw its density)

    def check(self, spec: "MaskSpec") -> None:
        """Refuse settings the scope cannot use (the structure checks the size: a density, or k where
        :attr:`takes_k`)."""
        if spec.rank is not None:
            raise SalienceBenchError(f"rank={spec.rank} applies to scope 'lora' only (got scope {self.name!r})")

    def count(self, spec: "MaskSpec", total: int, shapes: Mapping[str, Sequence[int]]) -> int:
        """The number of weights selected among ``total`` eligible ones of these ``shapes``."""
        return spec.k if spec.k is not None else selection_count(total, spec.target_density)

    def check_shapes(self, spec: "MaskSpec", shapes: Mapping[str, Sequence[int]]) -> bool:
        """Refuse shapes the scope cannot fill; True when the structure's own checks are still to run."""
        return True

    def check_selects(self, spec: "MaskSpec", counts: Mapping[str, int], unit: str) -> None:
        """Refuse a density that selects none of ``counts`` (entries or tiles per tensor)."""

    def select(self, spec: "MaskSpec", scores: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]],
               density: float | None, k: int | None) -> MaskSet:
        """The selection among ``scores`` (entries, or tiles' summed scores; ``shapes`` those of the weights):
        ``k`` of them, or ``density``."""
        raise NotImplementedError

    def describe(self, spec: "MaskSpec", density: float | None) -> str:
        size = f"top-{density:.2%}" if density is not None else f"top-{spec.k:,}"
        suffix = "" if spec.structure_kind.free_entries else ", " + spec.structure
        return f"{size} masks ({self.name}{suffix})"


MASK_SCOPES: Registry[MaskScope] = Registry("scope")
register_scope = MASK_SCOPES.instances()  # class decorator: the scope ``cls.name``
get_scope = MASK_SCOPES.get


@register_scope
class GlobalScope(MaskScope):
    name = "global"
    help = "one top-k over all tensors (SPEFT)"
    takes_k = True
    one_threshold = True

    def check_selects(self, spec, counts, unit):
        total = sum(counts.values())
        if spec.k is None and selection_count(total, spec.density) == 0:
            raise SalienceBenchError(f"density={spec.density} selects 0 of {total} {unit}; raise it")

    def select(self, spec, scores, shapes, density, k):
        if k is not None:
            return top_k_mask(scores, k)
        return top_k_mask(scores, selection_count(sum(_numel(scores, n) for n in scores), density))


@register_scope
class LayerScope(MaskScope):
    name = "layer"
    help = "each tensor keeps its own fraction"

    def check_selects(self, spec, counts, unit):
        if spec.k is None and not any(selection_count(n, spec.density) for n in counts.values()):
            raise SalienceBenchError(f"density={spec.density} selects 0 {unit} in every tensor; raise it")

    def select(self, spec, scores, shapes, density, k):
        return _top_k_per_tensor(scores, {n: selection_count(_numel(scores, n), density) for n in scores})


@register_scope
class LoRAScope(MaskScope):
    name = "lora"
    help = "each tensor gets exactly r·(m+n) entries, LoRA's count layer by layer (--rank)"
    sizes_itself = True

    def check(self, spec):
        if not is_int(spec.rank) or spec.rank < 1:
            raise SalienceBenchError(f"scope 'lora' needs rank (--rank) as an integer ≥ 1, got {spec.rank!r}")
        from .structures import MASK_STRUCTURES  # structures build on scopes

        structure = MASK_STRUCTURES.entries.get(spec.structure)
        if spec.density is not None or spec.k is not None or structure is None or not structure.free_entries:
            raise SalienceBenchError("scope 'lora' sizes each tensor by its rank: give neither density nor k, "
                                     "and no structure")

    def count(self, spec, total, shapes):
        return sum(self.lora_count(spec, shape) for shape in shapes.values())

    @staticmethod
    def lora_count(spec: "MaskSpec", shape: Sequence[int]) -> int:
        rows, cols = _as_2d_shape(shape)
        return spec.rank * (rows + cols)

    def check_shapes(self, spec, shapes):
        for name, shape in shapes.items():
            if self.lora_count(spec, shape) > math.prod(shape):
                rows, cols = _as_2d_shape(shape)
                raise SalienceBenchError(
                    f"rank {spec.rank} asks {self.lora_count(spec, shape):,} entries of {name!r}, which has "
                    f"{math.prod(shape):,}; use a rank ≤ {max(1, math.prod(shape) // (rows + cols))}")
        return False

    def select(self, spec, scores, shapes, density, k):
        return _top_k_per_tensor(scores, {name: self.lora_count(spec, shapes[name]) for name in scores})

    def describe(self, spec, density):
        return f"LoRA-matched masks (rank {spec.rank}: r·(m+n) per tensor)"
