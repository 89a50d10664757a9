"""Full fine-tuning: AdamW on every weight, at its own learning rate (``full_lr``)."""

from __future__ import annotations

from .base import TrainingMethod, freeze_all_but, register_method


@register_method
class FullFineTuning(TrainingMethod):
    name = "full"

    def prepare(self):
        model = self.setup.model
        freeze_all_but(model, dict(model.named_parameters()))
        self.model = model
        return model

    def learning_rate(self) -> float:
        return self.config.full_lr

    def trainable_count(self) -> int:
        head = sum(p.numel() for p in self.setup.head.values())
        return sum(p.numel() for p in self.parameters()) - head

    def record(self) -> dict:
        return {**super().record(), "density": 1.0}
