"""Run a model for scoring without leaving a trace on it, on batches checked first."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .data import batch_examples
from .errors import SalienceBenchError


class ScoringMode:
    """Eval mode, gradients only on the scored tensors, and (``deterministic``) kernels that add in a fixed
    order; everything restored on exit.

    Deterministic kernels make each batch's gradient repeat bit for bit on a GPU (fused attention backward
    kernels otherwise accumulate with atomics in a varying order), which masks that do not depend on the
    run or on the number of processes need. An operation with no deterministic kernel is a clear error."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], deterministic: bool = True):
        self.model, self.scored, self.deterministic = model, {id(p) for p in params.values()}, deterministic

    def __enter__(self):
        self.was_deterministic = (torch.are_deterministic_algorithms_enabled(),
                                  torch.is_deterministic_algorithms_warn_only_enabled())
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable results
            torch.use_deterministic_algorithms(True)
        self.was_training = self.model.training
        self.requires_grad = {id(p): p.requires_grad for p in self.model.parameters()}
        self.grads = {id(p): p.grad for p in self.model.parameters()}
        self.model.eval()
        for p in self.model.parameters():
            # Only scored tensors need .grad; skipping the rest saves the embedding gradient.
            p.requires_grad_(id(p) in self.scored)
            p.grad = None
        return self

    def __exit__(self, exc_type, exc, tb):
        torch.use_deterministic_algorithms(self.was_deterministic[0], warn_only=self.was_deterministic[1])
        self.model.train(self.was_training)
        for p in self.model.parameters():
            if id(p) in self.requires_grad:  # (a sharding engine may show other tensors after a failed pass)
                p.requires_grad_(self.requires_grad[id(p)])
                p.grad = self.grads[id(p)]
        if exc_type is RuntimeError and self.deterministic and "deterministic" in str(exc):
            raise SalienceBenchError(f"this model runs an operation with no deterministic kernel ({str(exc).splitlines()[0]}); "
                                     "score with --nondeterministic (deterministic=False): masks may then change "
                                     "from run to run in near-ties") from exc
        return False


def check_batch(model: nn.Module, batch: Any, index: int) -> None:
    """A clear error for a batch the model cannot take: not a dict, no examples, labels out of range."""
    if not isinstance(batch, Mapping):
        raise SalienceBenchError(f"scoring batch {index} is a {type(batch).__name__}; batches must be dicts "
                                 "accepted by model(**batch), e.g. from salience_bench.make_batches")
    if batch_examples(batch) == 0:
        raise SalienceBenchError(f"scoring batch {index} holds no examples")
    labels = batch.get("labels")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    # One integer label per example (token labels of a language model are 2-D): class indices.
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point() and num_labels:
        low, high = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
        if low < 0 or high >= num_labels:
            bad = low if low < 0 else high
            raise SalienceBenchError(f"scoring batch {index} has label {bad}, but the model has {num_labels} classes "
                                     f"(valid labels: 0 … {num_labels - 1})")


def batch_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], index: int) -> torch.Tensor:
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise SalienceBenchError(
            "the model returned no .loss; scoring batches must include labels "
            "(the Hugging Face convention: model(**batch).loss)"
        )
    if not torch.isfinite(loss):
        raise SalienceBenchError(f"the loss of scoring batch {index} is {loss.item()}")
    return loss
