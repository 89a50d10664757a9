"""peft's SHiRA: a fixed random sparse mask with exactly r·(m+n) trainable entries per layer (LoRA's count),
r matched to the target trainable count as for LoRA."""

from __future__ import annotations

import warnings

from torch import nn

from ...errors import SalienceBenchError
from .base import TrainingMethod, freeze_all_but, head_parameters, register_method
from .lora import matched_lora_rank


@register_method
class SHiRA(TrainingMethod):
    name = "shira"

    def prepare(self) -> nn.Module:
        try:
            from peft import ShiraConfig, get_peft_model
        except ImportError as err:
            raise SalienceBenchError("the SHiRA baseline needs peft ≥ 0.17: pip install -U peft") from err
        self.rank = matched_lora_rank(self.setup.target_count, self.setup.params)
        freeze_all_but(self.setup.model, {})
        heads = sorted({n.rsplit(".", 1)[0] for n in head_parameters(self.setup.model)}) or None
        config = ShiraConfig(r=self.rank, target_modules=sorted({n.rsplit(".", 1)[0] for n in self.setup.params}),
                             modules_to_save=heads, random_seed=self.setup.seed)
        with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.model = get_peft_model(self.setup.model, config)
        return self.model

    def trainable_count(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if p.requires_grad and "shira_" in n)

    def record(self) -> dict:
        return {**super().record(), "lora_rank": self.rank}

    @classmethod
    def label(cls, row) -> str:
        return f"shira r={int(float(row['lora_rank']))}"
