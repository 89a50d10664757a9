"""GraSP: gradient signal preservation through a Hessian-gradient product, as zero-cost-nas computes it.

ḡ and H·ḡ are taken with respect to *every* linear-layer weight of the network (task head and pooler
included, whatever the scored selection is): restricting them to a subset would change every score.
The selected tensors are then scored −W ⊙ (H ḡ) (zero-cost-nas's sign: higher = keep).
"""

from __future__ import annotations

import torch

from .. import distributed
from ..model_state import ScoringMode, batch_loss
from ..models import is_linear
from ..runtime import to_device
from .registry import ModelContext, register_model_scorer


def network_weights(model: torch.nn.Module, scored) -> dict[str, torch.nn.Parameter]:
    """Every linear-layer weight of the model, plus any scored tensor that is not one, in model order."""
    owned = {id(m.weight) for m in model.modules() if is_linear(m)} | {id(p) for p in scored.values()}
    return {n: p for n, p in model.named_parameters() if id(p) in owned}


@register_model_scorer("grasp", needs_data=True, source="Wang et al. 2020 (GraSP); zero-cost-nas grasp.py")
def grasp(ctx: ModelContext) -> dict[str, torch.Tensor]:
    """−W ⊙ (H ḡ), ḡ and H ḡ over every linear weight of the network (head included), ḡ held constant; zero-cost-nas sign."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, device = ctx.model, next(iter(ctx.params.values())).device
    weights = network_weights(model, ctx.params)
    names, tensors = list(weights), list(weights.values())
    # float64 sums: the same result however the batches are split over processes (see scoring.accumulate)
    gbar = {n: torch.zeros(p.shape, dtype=torch.float64, device=device) for n, p in weights.items()}
    hg = {n: torch.zeros(p.shape, dtype=torch.float64, device=device) for n, p in weights.items()}
    # Fused attention kernels have no double backward; the math kernel is plain differentiable ops.
    with ScoringMode(model, weights), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        for i, batch in enumerate(ctx.batches):
            loss = batch_loss(model, to_device(batch, device), i)
            for n, g in zip(names, torch.autograd.grad(loss, tensors, allow_unused=True)):
                if g is not None:
                    gbar[n].add_(g.float())
        distributed.all_reduce_sum_(gbar.values())
        count = distributed.all_reduce_count(len(ctx.batches), device)
        gbar = {n: g.div_(count).float() for n, g in gbar.items()}
        for i, batch in enumerate(ctx.batches):
            loss = batch_loss(model, to_device(batch, device), i)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            inner = sum((g.float() * gbar[n]).sum() for n, g in zip(names, grads) if g is not None)
            for n, hv in zip(names, torch.autograd.grad(inner, tensors, allow_unused=True)):
                if hv is not None:
                    hg[n].add_(hv.float())
    distributed.all_reduce_sum_(hg.values())
    return {n: -(p.detach().float() * (hg[n] / count).float()) for n, p in ctx.params.items()}
