"""The untrained model as a row of its own: every fine-tuned number's zero point (exact match, perplexity)."""

from __future__ import annotations

from .base import TrainingMethod, freeze_all_but, register_method


@register_method
class BaseModel(TrainingMethod):
    """No training: the pretrained model (and, for a classifier, its newly initialised head) evaluated as loaded."""

    name = "base"
    trains = False
    seeded = False  # one run, at the first seed: a causal LM evaluated greedily is the same at every seed

    def prepare(self):
        freeze_all_but(self.model, {})
        return self.model

    def trainable_count(self) -> int:
        return 0

    def record(self) -> dict:
        return {**super().record(), "density": 0.0}
