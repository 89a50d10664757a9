"""Dense baselines: full fine-tuning, and LoRA / PiSSA through peft at a matched parameter count."""

from __future__ import annotations

import fnmatch
import warnings
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import SalienceBenchError

HEAD_PATTERNS = ("classifier.*", "score.*")
"""Parameters of a newly initialised task head: trained densely by every method."""


def head_parameters(model: nn.Module, patterns: Sequence[str] = HEAD_PATTERNS) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}


def freeze_all_but(model: nn.Module, keep: Mapping[str, nn.Parameter]) -> None:
    keep_ids = {id(p) for p in keep.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep_ids)


def lora_parameters_per_rank(params: Mapping[str, nn.Parameter]) -> int:
    """Trainable parameters that one unit of LoRA rank adds: Σ (in + out) over the adapted weights."""
    return sum(p.shape[0] + p.shape[1] for p in params.values())


def matched_lora_rank(k: int, params: Mapping[str, nn.Parameter]) -> int:
    """The LoRA rank whose trainable count is closest to ``k`` on these weights (at least 1)."""
    per_rank = lora_parameters_per_rank(params)
    return max(1, round(k / per_rank))


def wrap_lora(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    *,
    rank: int,
    alpha: float | None = None,
    init: str | bool = True,
    head_patterns: Sequence[str] = HEAD_PATTERNS,
) -> nn.Module:
    """A peft LoRA (or PiSSA, with ``init="pissa_niter_4"``) model on the modules owning ``params``;
    the head is trained densely (peft ``modules_to_save``)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise SalienceBenchError("the LoRA and PiSSA baselines need peft: pip install peft") from err
    targets = sorted({name.rsplit(".", 1)[0] for name in params})
    head_modules = sorted({n.rsplit(".", 1)[0] for n in head_parameters(model, head_patterns)})
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=head_modules or None,
        init_lora_weights=init,
    )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count(params) -> int:
    return sum(p.numel() for p in params)


def check_lora_available() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise SalienceBenchError("the LoRA and PiSSA baselines need peft: pip install peft") from err


def dense_masked_step_reference(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply dense gradients by the masks in place (the naive reference, for tests and benchmarks)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if params[name].grad is not None:
            params[name].grad.mul_(mask.to(params[name].grad.dtype))
