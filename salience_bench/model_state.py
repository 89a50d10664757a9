"""Run a model for scoring without leaving a trace on it."""

from __future__ import annotations

from typing import Mapping

from torch import nn


class ScoringMode:
    """Eval mode, gradients only on the scored tensors; everything restored on exit."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self.model, self.scored = model, {id(p) for p in params.values()}

    def __enter__(self):
        self.was_training = self.model.training
        self.requires_grad = {id(p): p.requires_grad for p in self.model.parameters()}
        self.grads = {id(p): p.grad for p in self.model.parameters()}
        self.model.eval()
        for p in self.model.parameters():
            # Only scored tensors need .grad; skipping the rest saves the embedding gradient.
            p.requires_grad_(id(p) in self.scored)
            p.grad = None
        return self

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        for p in self.model.parameters():
            p.requires_grad_(self.requires_grad[id(p)])
            p.grad = self.grads[id(p)]
        return False
