"""Scores that rerun the model their own way: SynFlow (data-free) and the network-level jacob_cov."""

from __future__ import annotations

import math

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .. import distributed
from ..model_state import ScoringMode
from ..runtime import to_device
from ..errors import SalienceBenchError
from .registry import ModelContext, Option, register_model_scorer

_NONLINEAR = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.LayerNorm, nn.GroupNorm,
              nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def _is_nonlinearity(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, _NONLINEAR) or name.endswith("Activation") or "RMSNorm" in name or "LayerNorm" in name


class _Removed(nn.Module):
    """Stands in for an activation or normalisation inside :func:`linearised`: returns its input."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.replaces = type(original).__name__

    def forward(self, x, *args, **kwargs):
        return x

    def extra_repr(self) -> str:
        return f"replaces={self.replaces}"


@contextmanager
def linearised(model: nn.Module) -> Iterator[list[str]]:
    """Activations and normalisations are swapped for pass-through modules inside the block
    (softmax stays); the original modules are put back on exit. Yields the swapped names."""
    swapped: list[tuple[nn.Module, str, nn.Module, str]] = []
    for parent_name, parent in model.named_modules():
        for child_name, child in list(parent.named_children()):
            if _is_nonlinearity(child):
                setattr(parent, child_name, _Removed(child))
                swapped.append((parent, child_name, child, f"{parent_name}.{child_name}".lstrip(".")))
    try:
        yield [name for *_, name in swapped]
    finally:
        for parent, child_name, child, _ in reversed(swapped):
            setattr(parent, child_name, child)


@contextmanager
def absolute_float64(model: nn.Module) -> Iterator[None]:
    """Every parameter and float buffer as float64 |value|; restored bit for bit afterwards."""
    params = list(model.parameters())
    dtypes = [p.dtype for p in params]
    negative = [torch.signbit(p.detach()) for p in params]
    buffers = [(b, b.dtype) for b in model.buffers() if b.is_floating_point()]
    with torch.no_grad():
        for p in params:
            p.data = p.data.double().abs_()
        for b, _ in buffers:
            b.data = b.data.double()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, dtype, neg in zip(params, dtypes, negative):
                p.data = torch.where(neg, -p.data, p.data).to(dtype)
            for b, dtype in buffers:
                b.data = b.data.to(dtype)


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def log_score(x: torch.Tensor) -> torch.Tensor:
    """Natural log of a non-negative float64 score as float32 (zeros → float32's lowest value).

    SynFlow's products span far more than float32's range (1e40 and more on a 6-layer BERT);
    the log keeps their order exactly, which is all that masks and rank statistics use.
    """
    lowest = torch.finfo(torch.float32).min
    return torch.where(x > 0, torch.log(x.clamp(min=torch.finfo(torch.float64).tiny)), lowest).float()


@register_model_scorer("synflow", source="Tanaka et al. 2020 (SynFlow); zero-cost-nas",
                       options={"synflow_tokens": Option(int, 8, "length of synflow's all-ones input", minimum=1),
                                "synflow_input_shape": Option(str, "", "synflow's all-ones input shape for a model "
                                                              "without input embeddings (a CNN: 'C,H,W')")})
def synflow(ctx: ModelContext) -> dict[str, torch.Tensor]:
    """log |W ⊙ ∂R/∂W|, R = sum of outputs with weights |W|, no nonlinearities, all-ones input; data-free, float64 (log: same order, fits float32)."""
    model, params = ctx.model, ctx.params
    tokens = ctx.options["synflow_tokens"]
    device = next(iter(params.values())).device
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shape = ctx.options["synflow_input_shape"]
    if embeddings is None and not shape:
        raise SalienceBenchError("synflow on a model without input embeddings needs its input shape: "
                                 "options={'synflow_input_shape': 'C,H,W'}")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if embeddings is not None and positions and tokens > positions:
        raise SalienceBenchError(f"synflow_tokens {tokens} is longer than the model's {positions} positions; "
                                 f"valid: 1 … {positions}")
    if embeddings is None:
        try:
            dims = [int(x) for x in shape.split(",")]
        except ValueError:
            dims = []
        if not dims or min(dims) < 1:
            raise SalienceBenchError(f"synflow_input_shape {shape!r} must be comma-separated sizes ≥ 1, e.g. '3,32,32'")
    with ScoringMode(model, params), absolute_float64(model), linearised(model), torch.enable_grad():
        if embeddings is not None:  # a transformer: all-ones input embeddings of ``tokens`` positions
            ones = torch.ones(1, tokens, embeddings.embedding_dim, dtype=torch.float64, device=device)
            output = model(inputs_embeds=ones, attention_mask=torch.ones(1, tokens, dtype=torch.long, device=device))
        else:
            output = model(torch.ones(1, *dims, dtype=torch.float64, device=device))
        total = _logits(output).sum()
        names = list(params)
        grads = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
        return {
            n: log_score((params[n].detach() * (g if g is not None else torch.zeros_like(params[n]))).abs())
            for n, g in zip(names, grads)
        }


def jacobian_covariance_score(jacobian: torch.Tensor, eps: float = 1e-5) -> float:
    """−Σ (log(λ + ε) + 1/(λ + ε)) over the eigenvalues λ of the correlation matrix of the rows."""
    corr = torch.corrcoef(jacobian.double())
    eigenvalues = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(eigenvalues + eps) + 1.0 / (eigenvalues + eps)).sum())


@register_model_scorer("jacob_cov", needs_data=True, network_level=True,
          source="Mellor et al. 2021; Abdelfattah et al. 2021 (zero-cost-nas)")
def jacob_cov(ctx: ModelContext) -> float:
    """Network-level: correlation of per-example input-embedding Jacobians of the summed outputs, mean over batches."""
    model = ctx.model
    device = next(iter(ctx.params.values())).device
    embed = model.get_input_embeddings()
    values = []
    with ScoringMode(model, ctx.params), torch.enable_grad():
        for batch in ctx.batches:
            batch = {k: v for k, v in to_device(batch, device).items() if isinstance(v, torch.Tensor)}
            ids = batch.pop("input_ids")
            batch.pop("labels", None)
            inputs = embed(ids).detach().requires_grad_(True)
            total = _logits(model(inputs_embeds=inputs, **batch)).sum()
            (jac,) = torch.autograd.grad(total, [inputs])
            values.append(jacobian_covariance_score(jac.reshape(jac.shape[0], -1)))
    # A mean over every rank's batches; math.fsum is exactly rounded, so the split over ranks cannot change it.
    every = distributed.gather_values(values)
    return math.fsum(every) / len(every)
