"""How scores become a mask: :class:`MaskSpec` (a size, a scope and a structure, checked once) and :func:`make_mask`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Collection, Mapping, Sequence

import torch

from ..errors import SalienceBenchError, is_int
from ..tensors import ShapedTensors
from .scopes import LoRAScope, MaskScope, get_scope
from .select import MaskSet, _as_2d_shape, _non_finite, _triton_source
from .structures import MaskStructure, get_structure


@dataclass(frozen=True)
class MaskSpec:
    """How scores become a mask: size (``density`` or ``k``), ``scope``, ``structure`` and its settings.

    Validated once, here, whoever builds it (the CLI, :func:`make_mask`, a study or training), by the registered
    scope and structure (:mod:`.scopes`, :mod:`.structures`). ``density`` d ∈ (0, 1] selects exactly round(d·N)
    entries (N = all eligible weights for ``scope="global"``, each tensor's own size for ``scope="layer"``); ``k``
    selects exactly k entries globally. Give one of the two (neither where the scope or structure fixes the size:
    ``scope="lora"``, ``structure="nm"``).
    """

    density: float | None = None
    k: int | None = None
    scope: str = "global"
    structure: str = "unstructured"
    block_size: int = 64
    nm: tuple[int, int] = (2, 4)
    rank: int | None = None  # scope "lora": each tensor gets exactly rank·(rows + columns) entries

    def __post_init__(self) -> None:
        scope = get_scope(self.scope)
        scope.check(self)
        if scope.sizes_itself:
            return
        get_structure(self.structure)  # an unknown structure is named before its settings are checked
        if not is_int(self.block_size) or self.block_size < 1:
            raise SalienceBenchError(f"block size {self.block_size!r} must be an integer ≥ 1")
        nm = tuple(self.nm) if isinstance(self.nm, (tuple, list)) else self.nm
        if not (isinstance(nm, tuple) and len(nm) == 2 and all(is_int(x) for x in nm) and 0 < nm[0] <= nm[1]):
            raise SalienceBenchError(f"N:M must be two integers with 0 < N ≤ M, got {self.nm!r}")
        object.__setattr__(self, "nm", nm)
        self.structure_kind.check(self, scope)

    @property
    def scope_kind(self) -> MaskScope:
        return get_scope(self.scope)

    @property
    def structure_kind(self) -> MaskStructure:
        return get_structure(self.structure)

    @property
    def sizes_itself(self) -> bool:
        """Whether the scope or the structure fixes the size (neither density nor k is given)."""
        return self.scope_kind.sizes_itself or get_structure(self.structure).sizes_itself

    @property
    def one_top_k(self) -> bool:
        """Whether the mask is one top-k over every entry of every tensor (the multi-tensor Triton route's case)."""
        return self.scope_kind.one_threshold and not self.sizes_itself and self.structure_kind.free_entries

    @property
    def target_density(self) -> float | None:
        """The fraction asked for (N/M for ``nm``); None when sized by ``k`` or by a LoRA rank."""
        return None if self.scope_kind.sizes_itself else self.structure_kind.target_density(self)

    def count(self, total: int, shapes: Mapping[str, Sequence[int]] | None = None) -> int:
        """The number of weights this spec aims at among ``total`` eligible ones (scope "lora": needs ``shapes``)."""
        return self.scope_kind.count(self, total, shapes or {})

    def lora_count(self, shape: Sequence[int]) -> int:
        """rank · (rows + columns): LoRA's trainable count on a weight of this shape (LIFT's and SHiRA's budget)."""
        return LoRAScope.lora_count(self, shape)

    def check_shapes(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Refuse, before anything is scored, a spec that cannot make a mask for tensors of these shapes:
        ``k`` above the eligible count, a block larger than every tensor, a density that selects nothing."""
        if not shapes:
            raise SalienceBenchError("no tensors to mask")
        if not self.scope_kind.check_shapes(self, shapes):
            return
        sides = {name: _as_2d_shape(shape) for name, shape in shapes.items()}
        total = sum(r * c for r, c in sides.values())
        if self.k is not None and self.k > total:
            raise SalienceBenchError(f"k={self.k} is larger than the {total} eligible weights")
        self.structure_kind.check_shapes(self, self.scope_kind, sides)

    def apply(self, scores: Mapping[str, torch.Tensor], *, transposed: Collection[str] = ()) -> MaskSet:
        """The masks for ``scores`` (see :func:`make_mask`), kept as selected positions per tensor. ``transposed``
        names the tensors stored input × output (transformers' ``Conv1D``; :attr:`Scores.transposed` lists a scored
        model's), whose output rows are columns: structures ``row`` and ``nm`` select along them."""
        shapes = _checked_shapes(self, scores)
        self.check_shapes(shapes)
        if self.scope_kind.sizes_itself:
            return self.scope_kind.select(self, scores, shapes, None, None)
        return self.structure_kind.select(self, self.scope_kind, scores, shapes, transposed)

    def describe(self, realised_density: float | None = None) -> str:
        """A short label for titles: "top-1.00% masks (global)", "2:4 masks" …"""
        density = realised_density if realised_density is not None else self.density
        if self.scope_kind.sizes_itself:
            return self.scope_kind.describe(self, density)
        return self.structure_kind.describe(self, self.scope_kind, density)

    def to_dict(self) -> dict:
        return asdict(self)


def _checked_shapes(spec: MaskSpec, scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    """The shape of every score tensor, and every score finite (one host read for all of them)."""
    if not isinstance(scores, Mapping) or not scores:
        raise SalienceBenchError(f"scores must be a non-empty dict of tensors by name, got {type(scores).__name__}"
                                 + (" (empty)" if isinstance(scores, Mapping) else ""))
    shapes, bad = {}, None
    # The Triton route of the global top-k counts NaN and inf in its own pass over the scores.
    on_triton = spec.one_top_k and _triton_source(scores) is not None
    if on_triton and isinstance(scores, ShapedTensors):
        # scores computed on access: not computed an extra time here; shapes come from the mapping
        return {name: scores.shape_of(name) for name in scores}
    for name, s in scores.items():  # one tensor at a time (scores may be computed on access)
        if not isinstance(s, torch.Tensor):
            raise SalienceBenchError(f"scores of {name!r} must be a tensor, got {type(s).__name__}")
        if s.is_floating_point() and not on_triton:  # a running count on the device: one host read
            count = s.numel() - torch.isfinite(s).count_nonzero()
            bad = count if bad is None else bad + count
        shapes[name] = s.shape
    if bad is not None and int(bad):
        raise _non_finite(next(n for n, s in scores.items() if s.is_floating_point() and not torch.isfinite(s).all()))
    return shapes


def make_mask(
    scores: Mapping[str, torch.Tensor],
    density: float | None = None,
    *,
    k: int | None = None,
    scope: str = "global",
    structure: str = "unstructured",
    block_size: int = 64,
    nm: tuple[int, int] = (2, 4),
    rank: int | None = None,
    transposed: Collection[str] = (),
) -> MaskSet:
    """Masks selecting the highest-scoring weights (the options are those of :class:`MaskSpec`): a mapping
    from tensor name to a boolean mask shaped like it, kept compactly as selected positions.

    Structures: ``unstructured``; ``row`` (round(d·columns) entries in every output row, as
    Wanda; exact per row); ``block`` (block_size² tiles ranked by their summed score, SMT-style:
    exactly round(d·number of tiles) tiles, or round(k / block_size²); edge tiles may be
    smaller, so the realised density can differ slightly from d); ``nm`` (in every group of M
    consecutive entries along the input dimension keep the N largest: density N/M, exact when
    the input size is a multiple of M). ``scope="lora"`` with ``rank=r``: exactly r·(rows + columns) entries
    in every tensor, LoRA's count layer by layer (the budget of LIFT and peft's SHiRA). Ties always go to the
    lower position. ``transposed``: the tensors stored input × output (see :meth:`MaskSpec.apply`).
    """
    spec = MaskSpec(density=density, k=k, scope=scope, structure=structure, block_size=block_size, nm=nm, rank=rank)
    return spec.apply(scores, transposed=transposed)


__all__ = ["MaskSpec", "make_mask"]
