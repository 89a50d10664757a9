"""peft's Super-Tuning: each layer trains its largest-magnitude entries, at the density the mask asks for."""

from __future__ import annotations

import warnings

from torch import nn

from ...errors import SalienceBenchError
from .base import TrainingMethod, freeze_all_but, head_parameters, register_method


@register_method
class SuperTuning(TrainingMethod):
    name = "supertuning"

    def prepare(self) -> nn.Module:
        try:
            from peft import SupertuningConfig, get_peft_model
        except ImportError as err:
            raise SalienceBenchError("the Super-Tuning baseline needs a peft with SupertuningConfig: pip install -U peft") from err
        density = self.setup.target_count / self.setup.total
        freeze_all_but(self.setup.model, {})
        heads = sorted({n.rsplit(".", 1)[0] for n in head_parameters(self.setup.model)}) or None
        config = SupertuningConfig(target_modules=sorted({n.rsplit(".", 1)[0] for n in self.setup.params}),
                                   modules_to_save=heads, sparsity=1.0 - density, select_top=True)
        with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.model = get_peft_model(self.setup.model, config)
        return self.model

    def trainable_count(self) -> int:
        heads = {id(p) for p in head_parameters(self.model).values()}
        return sum(p.numel() for n, p in self.model.named_parameters()
                   if p.requires_grad and id(p) not in heads and "modules_to_save" not in n)
