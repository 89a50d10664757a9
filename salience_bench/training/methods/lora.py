"""LoRA through peft on the linear layers owning the eligible weights, rank matched to the sparse count."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from ...errors import SalienceBenchError
from ...models import weight_is_transposed
from .base import MethodOptions, TrainingMethod, freeze_all_but, head_modules, head_parameters, register_method


def lora_parameters_per_rank(params: Mapping[str, nn.Parameter]) -> int:
    """Trainable parameters that one unit of LoRA rank adds: Σ (in + out) over the adapted weights."""
    return sum(p.shape[0] + p.shape[1] for p in params.values())


def matched_lora_rank(k: int, params: Mapping[str, nn.Parameter]) -> int:
    """The LoRA rank whose trainable count is closest to ``k`` on these weights (at least 1)."""
    return max(1, round(k / lora_parameters_per_rank(params)))


def peft_targets(model: nn.Module, params: Mapping[str, nn.Parameter],
                 head: Mapping[str, nn.Parameter] | None = None) -> tuple[list[str], list[str] | None]:
    """(the modules owning ``params``, the head modules peft trains densely as ``modules_to_save``; ``head``
    defaults to the model's newly initialised parameters)."""
    heads = head_modules(head_parameters(model) if head is None else head)
    return sorted({name.rsplit(".", 1)[0] for name in params}), heads or None


def with_peft(model: nn.Module, config, method: str) -> nn.Module:
    """``get_peft_model(model, config)``; a clear error when peft lacks what ``method`` needs."""
    try:
        from peft import get_peft_model
    except ImportError as err:
        raise SalienceBenchError(f"the {method} baseline needs peft: pip install -U peft") from err
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def wrap_lora(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    *,
    rank: int,
    alpha: float | None = None,
    init: str | bool = True,
    head: Mapping[str, nn.Parameter] | None = None,
) -> nn.Module:
    """A peft LoRA (or PiSSA, with ``init="pissa_niter_4"``) model on the modules owning ``params``;
    the head is trained densely (peft ``modules_to_save``)."""
    try:
        from peft import LoraConfig
    except ImportError as err:
        raise SalienceBenchError("the LoRA and PiSSA baselines need peft: pip install peft") from err
    targets, heads = peft_targets(model, params, head)
    # Conv1D (GPT-2 family) stores its weight in × out: peft must be told.
    transposed = any(weight_is_transposed(model.get_submodule(target)) for target in targets)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                        target_modules=targets, modules_to_save=heads, init_lora_weights=init, fan_in_fan_out=transposed)
    return with_peft(model, config, "LoRA")


@dataclass(frozen=True)
class LoRAOptions(MethodOptions):
    alpha_ratio: float = field(default=2.0, metadata={"help": "LoRA and PiSSA scaling α = ratio · r (SPEFT's GLUE "
                                                             "recipe: 1)"})


@register_method
class LoRA(TrainingMethod):
    name = "lora"
    Options = LoRAOptions
    init: str | bool = True  # peft's init_lora_weights
    adapter_prefix = "lora_"  # names of the method's own trainable parameters

    def prepare(self) -> nn.Module:
        self.rank = matched_lora_rank(self.setup.target_count, self.setup.params)
        freeze_all_but(self.setup.model, {})
        self.model = wrap_lora(self.setup.model, self.setup.params, rank=self.rank, init=self.init,
                               alpha=self.options.alpha_ratio * self.rank, head=self.setup.head)
        return self.model

    def trainable_count(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if p.requires_grad and self.adapter_prefix in n)

    def record(self) -> dict:
        return {**super().record(), "lora_rank": self.rank}

    @classmethod
    def label(cls, row) -> str:
        return f"{cls.name} r={int(float(row['lora_rank']))}"
