"""peft's SHiRA: a fixed random sparse mask with exactly r·(m+n) trainable entries per layer (LoRA's count),
r matched to the target trainable count as for LoRA."""

from __future__ import annotations

from torch import nn

from ...errors import SalienceBenchError
from .base import freeze_all_but, register_method
from .lora import LoRA, matched_lora_rank, peft_targets, with_peft


@register_method
class SHiRA(LoRA):
    name = "shira"
    adapts_transposed = False  # peft's SHiRA: nn.Linear only
    adapter_prefix = "shira_"

    def prepare(self) -> nn.Module:
        try:
            from peft import ShiraConfig
        except ImportError as err:
            raise SalienceBenchError("the SHiRA baseline needs peft ≥ 0.17: pip install -U peft") from err
        self.rank = matched_lora_rank(self.setup.target_count, self.setup.params)
        freeze_all_but(self.setup.model, {})
        targets, heads = peft_targets(self.setup.model, self.setup.params, self.setup.head)
        config = ShiraConfig(r=self.rank, target_modules=targets, modules_to_save=heads, random_seed=self.setup.seed)
        self.model = with_peft(self.setup.model, config, "SHiRA")
        return self.model
