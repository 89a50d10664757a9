"""Scores → masks: exact top-k selection (:mod:`.select`), the registered scopes (:mod:`.scopes`) and structures
(:mod:`.structures`) a selection runs in, and :class:`MaskSpec` (:mod:`.spec`), which checks and applies them.

A new scope or structure is one decorated class (``register_scope``, ``register_structure``); ``--scope`` and
``--structure`` list what is registered.
"""

from .scopes import MASK_SCOPES, MaskScope, get_scope, register_scope
from .select import (
    Mask,
    MaskSet,
    _bracketed_threshold,
    _ordered_keys,
    _triton_source,
    kth_largest_key,
    radix_kth_largest_key,
    selection_count,
    top_k_mask,
)
from .spec import MaskSpec, make_mask
from .structures import MASK_STRUCTURES, MaskStructure, get_structure, register_structure

__all__ = [
    "MASK_SCOPES", "MASK_STRUCTURES", "Mask", "MaskScope", "MaskSet", "MaskSpec", "MaskStructure",
    "get_scope", "get_structure", "kth_largest_key", "make_mask", "radix_kth_largest_key",
    "register_scope", "register_structure", "selection_count", "top_k_mask", "_bracketed_threshold",
    "_ordered_keys", "_triton_source",
]
