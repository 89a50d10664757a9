"""Sparse fine-tuning: a salience metric's mask drives the compact-delta engine, static or dynamic."""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from ... import distributed
from ...data import make_batches
from ...errors import SalienceBenchError
from ...masks import MaskSet
from ...scorers import get_scorer
from ...scoring import score
from ...stats import jaccard
from ..sparse import SparseDeltaEngine
from .base import RunSetup, TrainingMethod, freeze_all_but, register_method


@register_method
class SparseFineTuning(TrainingMethod):
    """Train only the entries a metric selects (plus the head); with ``mask_update_every`` U, re-score
    on the most recent batches and re-select every U steps, recording how far the mask drifts."""

    name = "sparse"
    uses_metric = True

    def __init__(self, setup: RunSetup):
        super().__init__(setup)
        self.fixed = self.config.fixed_masks.get(setup.metric)  # a mask loaded from a file
        if self.fixed is not None and self.config.mask_update_every:
            raise SalienceBenchError(f"{setup.metric!r} is a saved mask: it has no scores to re-select from "
                                     "(drop --mask-update-every)")
        if self.fixed is None and (not setup.metric or not get_scorer(setup.metric).maskable):
            raise SalienceBenchError(f"metric {setup.metric!r} gives no per-weight scores and cannot drive training")
        self.recent: deque = deque(maxlen=min(self.config.score_batches, self.config.mask_update_every or 1))

    def _select(self, batches) -> dict[str, torch.Tensor]:
        setup = self.setup
        scores = score(setup.model, batches, [setup.metric], params=setup.params, seed=setup.seed,
                       options=self.config.score_options)
        masks = self.config.mask.apply(scores[setup.metric], transposed=scores.transposed)
        # Rank 0 decides (float sums in another order could break a near-tie differently elsewhere).
        return MaskSet({n: distributed.broadcast_from_main(masks.indices(n)) for n in masks},
                       {n: masks.shape_of(n) for n in masks})

    def prepare(self) -> nn.Module:
        setup = self.setup
        masks = self.fixed if self.fixed is not None else self._select(distributed.shard(make_batches(
            setup.train_data, setup.tokenizer, batch_size=self.config.score_batch_size,
            num_batches=self.config.score_batches, max_length=self.config.max_length, seed=setup.seed,
            chat_template=self.config.chat_template)))
        freeze_all_but(setup.model, setup.head)
        self.engine = SparseDeltaEngine(setup.model, masks)
        self.initial = self.previous = masks
        self.ever = {n: m.clone() for n, m in masks.items()}
        self._record_drift(0, masks)
        self.model = setup.model
        return setup.model

    def parameters(self) -> list[nn.Parameter]:
        return self.engine.parameters() + list(self.setup.head.values())

    def trainable_count(self) -> int:
        return self.engine.num_selected  # realised: structured masks may differ from round(d·N)

    def record(self) -> dict:
        return dict(metric=self.setup.metric, density=self.engine.num_selected / self.setup.total,
                    scope=self.config.mask.scope, mask_schedule=self.config.schedule, lora_rank=None)

    @classmethod
    def label(cls, row) -> str:
        schedule = row["mask_schedule"]
        return f"sparse {row['metric']}" + ("" if schedule == "static" else f" ({schedule})")

    def observe(self, batch) -> None:
        self.recent.append(batch)

    def after_optimizer_step(self) -> None:
        self.engine.sync_weights()

    def update_due(self, step: int) -> bool:
        every = self.config.mask_update_every
        return bool(every) and step % every == 0 and step < self.config.steps

    def update(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        with self.engine.dense():
            new = self._select(list(self.recent))
        self.engine.update_masks(new, optimizer)
        for n in self.ever:
            self.ever[n] |= new[n]
        self._record_drift(step, new)
        self.previous = new

    def _record_drift(self, step: int, current) -> None:
        ever_count = sum(int(m.sum()) for m in self.ever.values())
        self.drift.append(dict(metric=self.setup.metric, seed=self.setup.seed, step=step,
                               jaccard_initial=jaccard(current, self.initial),
                               jaccard_previous=jaccard(current, self.previous), ever_selected=ever_count,
                               ever_selected_fraction=ever_count / self.setup.total))
