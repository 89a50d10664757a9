"""Mask structures: the shape a selection takes inside each tensor (free entries, a fraction of every output row,
whole tiles, N of every M inputs).

A structure is one registered class: it checks the size a :class:`~salience_bench.masks.MaskSpec` gives it and the
tensors' shapes, and selects, through the spec's scope where it selects freely among entries or tiles. Rows are
output rows whatever the weight's layout: a tensor named in ``transposed`` (transformers' ``Conv1D``, stored
input × output) is selected along its columns. ``--structure`` lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Collection, Mapping, Sequence

import torch

from ..errors import SalienceBenchError, is_int, is_number
from ..registry import Registry
from ..tiles import block_sums, expand_tiles
from .scopes import MaskScope
from .select import MaskSet, _as_2d, _as_2d_shape, _nm_mask, _positions, _row_mask, selection_count

if TYPE_CHECKING:
    from .spec import MaskSpec

Shapes = Mapping[str, Sequence[int]]


class MaskStructure:
    """Base class of a structure; subclasses set ``name`` and ``help`` and implement :meth:`select`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    sizes_itself: ClassVar[bool] = False  # True: the structure fixes the density (no density or k)
    takes_k: ClassVar[bool] = True  # whether an absolute count k is meaningful for it
    free_entries: ClassVar[bool] = False  # True: selects entries wherever they are (the scope decides alone)

    def check(self, spec: "MaskSpec", scope: MaskScope) -> None:
        """Refuse a size this structure cannot use: exactly one of density and k, each in its range."""
        if self.sizes_itself:
            if spec.density is not None or spec.k is not None:
                raise SalienceBenchError(f"structure {self.name!r} fixes the density at "
                                         f"{self.describe_density(spec)}; give neither density nor k")
            return
        if (spec.density is None) == (spec.k is None):
            raise SalienceBenchError(f"give exactly one of density and k (got density={spec.density}, k={spec.k})")
        if spec.k is not None:
            if not is_int(spec.k) or spec.k < 1:
                raise SalienceBenchError(f"k={spec.k!r} must be an integer between 1 and the number of eligible weights")
            if not scope.takes_k:
                raise SalienceBenchError(f"k={spec.k} is a global count; use density with scope={scope.name!r}")
            if not self.takes_k:
                raise SalienceBenchError(f"structure {self.name!r} selects a fraction of every row; use density, not k")
        elif not is_number(spec.density) or not 0 < spec.density <= 1:
            raise SalienceBenchError(f"density={spec.density!r} must be in (0, 1]")

    def describe_density(self, spec: "MaskSpec") -> str:
        return ""

    def target_density(self, spec: "MaskSpec") -> float | None:
        return spec.density

    def check_shapes(self, spec: "MaskSpec", scope: MaskScope, sides: Mapping[str, tuple[int, int]]) -> None:
        """Refuse tensors (by their (rows, columns)) the spec cannot make a mask for."""
        scope.check_selects(spec, {n: r * c for n, (r, c) in sides.items()}, "eligible weights")

    def select(self, spec: "MaskSpec", scope: MaskScope, scores: Mapping[str, torch.Tensor], shapes: Shapes,
               transposed: Collection[str]) -> MaskSet:
        raise NotImplementedError

    def describe(self, spec: "MaskSpec", scope: MaskScope, density: float | None) -> str:
        return scope.describe(spec, density)


MASK_STRUCTURES: Registry[MaskStructure] = Registry("structure")
register_structure = MASK_STRUCTURES.instances()  # class decorator: the structure ``cls.name``
get_structure = MASK_STRUCTURES.get


def _per_output_row(select, scores: Mapping[str, torch.Tensor], shapes: Shapes, transposed: Collection[str]) -> MaskSet:
    """``select`` on each tensor as output rows × inputs (a transposed one's columns are its output rows)."""
    return MaskSet({name: _positions(select(s.T).T if name in transposed else select(s)) for name, s in scores.items()},
                   shapes)


@register_structure
class Unstructured(MaskStructure):
    name = "unstructured"
    help = "the highest scores wherever they are"
    free_entries = True

    def select(self, spec, scope, scores, shapes, transposed):
        return scope.select(spec, scores, shapes, spec.density, spec.k)


@register_structure
class Row(MaskStructure):
    name = "row"
    help = "the same fraction of every output row (Wanda)"
    takes_k = False

    def check_shapes(self, spec, scope, sides):
        if sum(r * selection_count(c, spec.density) for r, c in sides.values()) == 0:
            widest = max(c for _, c in sides.values())
            raise SalienceBenchError(
                f"density={spec.density} selects 0 entries of every row (the widest row has {widest}: "
                f"round({spec.density} × {widest}) = 0); raise it to at least {0.5 / widest:.2g}")

    def select(self, spec, scope, scores, shapes, transposed):
        return _per_output_row(lambda s: _row_mask(s, spec.density), scores, shapes, transposed)


@register_structure
class Block(MaskStructure):
    name = "block"
    help = "--block-size² tiles ranked by summed score (SMT)"

    def check_shapes(self, spec, scope, sides):
        largest = max(max(side) for side in sides.values())
        if spec.block_size > largest:
            raise SalienceBenchError(f"block size {spec.block_size} is larger than every eligible tensor "
                                     f"(longest side {largest}); valid: 1 … {largest}")
        block = spec.block_size
        scope.check_selects(spec, {n: -(-r // block) * -(-c // block) for n, (r, c) in sides.items()}, "tiles")

    def select(self, spec, scope, scores, shapes, transposed):
        block = spec.block_size
        tiles = {name: block_sums(_as_2d(s), block) for name, s in scores.items()}
        tile_k = None if spec.k is None else max(1, min(round(spec.k / block**2), sum(t.numel() for t in tiles.values())))
        tile_masks = scope.select(spec, tiles, shapes, spec.density if spec.k is None else None, tile_k)
        return MaskSet({name: _positions(expand_tiles(tile_masks[name], block, _as_2d_shape(shapes[name])))
                        for name in scores}, shapes)


@register_structure
class NM(MaskStructure):
    name = "nm"
    help = "N of every M consecutive inputs (--nm, density fixed at N/M)"
    sizes_itself = True

    def describe_density(self, spec):
        return f"N/M={spec.nm[0]}/{spec.nm[1]}"

    def target_density(self, spec):
        return spec.nm[0] / spec.nm[1]

    def check_shapes(self, spec, scope, sides):
        pass

    def select(self, spec, scope, scores, shapes, transposed):
        return _per_output_row(lambda s: _nm_mask(s, *spec.nm), scores, shapes, transposed)

    def describe(self, spec, scope, density):
        return f"{spec.nm[0]}:{spec.nm[1]} masks"
