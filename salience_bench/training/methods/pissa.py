"""PiSSA: LoRA whose factors start from the principal singular vectors of each weight (peft)."""

from __future__ import annotations

from .base import register_method
from .lora import LoRA


@register_method
class PiSSA(LoRA):
    name = "pissa"
    init = "pissa_niter_4"  # fast randomized SVD with 4 subspace iterations
