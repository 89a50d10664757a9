"""peft's Super-Tuning: each layer trains its largest-magnitude entries, at the density the mask asks for."""

from __future__ import annotations

from torch import nn

from ...errors import SalienceBenchError
from .base import TrainingMethod, freeze_all_but, register_method
from .lora import peft_targets, with_peft


@register_method
class SuperTuning(TrainingMethod):
    name = "supertuning"
    adapts_transposed = False  # peft's Super-Tuning: nn.Linear only

    def prepare(self) -> nn.Module:
        try:
            from peft import SupertuningConfig
        except ImportError as err:
            raise SalienceBenchError("the Super-Tuning baseline needs a peft with SupertuningConfig: pip install -U peft") from err
        density = self.setup.target_count / self.setup.total
        freeze_all_but(self.setup.model, {})
        targets, heads = peft_targets(self.setup.model, self.setup.params, self.setup.head)
        self.model = with_peft(self.setup.model, SupertuningConfig(target_modules=targets, modules_to_save=heads,
                                                                   sparsity=1.0 - density, select_top=True), "Super-Tuning")
        return self.model

    def trainable_count(self) -> int:
        heads = {id(p) for p in self.head_parameters()}
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad and id(p) not in heads)
