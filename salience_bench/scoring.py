"""One pass over the scoring batches feeds every requested scorer.

Each batch costs one forward and one backward. The signed mean gradient ḡ (and the mean
absolute batch gradient) are accumulated in float32 whenever a scorer needs them;
per-example squared gradients (``fisher``) and input-activation norms (``wanda``) are
gathered by hooks in that same pass. Only ``grasp`` needs a second pass (Hessian-vector
products need ḡ first). Whole-model scorers (``synflow``, ``jacob_cov``) run the model
their own way. Scorers then turn the accumulators into scores tensor by tensor.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .errors import SalienceBenchError
from .model_state import ScoringMode
from .models import eligible_parameters
from .per_example import ExampleSquaredGradients, InputSquaredNorms, linear_modules_for
from .scorers import (
    ABS_GRAD,
    EXAMPLE_SQ_GRAD,
    HESSIAN_GRAD,
    INPUT_SQ_NORM,
    MEAN_GRAD,
    ModelContext,
    TensorStats,
    get_scorer,
    resolve_metrics,
)

Scores = dict[str, dict[str, torch.Tensor]]
NETWORK = "network"
"""Key of the single 0-dim score that a network-level metric (e.g. jacob_cov) returns."""

BACKWARD_NEEDS = {MEAN_GRAD, EXAMPLE_SQ_GRAD, ABS_GRAD, HESSIAN_GRAD}


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise SalienceBenchError("a scoring batch holds no tensors; batches must be dicts accepted by model(**batch)")


def _loss(model: nn.Module, batch: Mapping[str, torch.Tensor], index: int) -> torch.Tensor:
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise SalienceBenchError(
            "the model returned no .loss; scoring batches must include labels "
            "(the Hugging Face convention: model(**batch).loss)"
        )
    if not torch.isfinite(loss):
        raise SalienceBenchError(f"the loss of scoring batch {index} is {loss.item()}")
    return loss


def accumulate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    params: Mapping[str, nn.Parameter],
    needs: Iterable[str] = (MEAN_GRAD,),
    *,
    progress: bool | str = False,
) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Run the model over ``batches`` and return (the requested float32 accumulators, batch count).

    The model runs in eval mode (no dropout) so scores are deterministic; its training
    mode, ``requires_grad`` flags and ``.grad`` fields are restored afterwards. Under
    torch.distributed each rank passes its own share of the batches; sums and counts are
    all-reduced once at the end, so every rank gets the scores of all batches.
    """
    needs = set(needs)
    device = next(iter(params.values())).device
    backward = bool(needs & BACKWARD_NEEDS)
    if HESSIAN_GRAD in needs:
        batches = list(batches)  # walked twice: ḡ first, then Hessian-vector products with it
    grad_needed = needs & {MEAN_GRAD, HESSIAN_GRAD}
    grad_sums = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()} if grad_needed else {}
    abs_sums = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()} if ABS_GRAD in needs else {}
    per_example = ExampleSquaredGradients(linear_modules_for(model, params)) if EXAMPLE_SQ_GRAD in needs else None
    norms = (InputSquaredNorms(linear_modules_for(model, params, "wanda needs input-activation norms, which are"))
             if INPUT_SQ_NORM in needs else None)
    num_batches = 0
    desc = progress if isinstance(progress, str) else "scoring"
    with ScoringMode(model, params), ExitStack() as hooks:
        for hook in (per_example, norms):
            if hook is not None:
                hooks.enter_context(hook.hooked())
        with torch.set_grad_enabled(backward):
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                if per_example is not None:
                    per_example.start_batch(_batch_size(batch))
                if norms is not None:
                    norms.start_batch(batch.get("attention_mask"))
                loss = _loss(model, batch, num_batches)
                if backward:
                    loss.backward()
                    for name, p in params.items():
                        if p.grad is not None:
                            g = p.grad.float()
                            if grad_sums:
                                grad_sums[name].add_(g)
                            if abs_sums:
                                abs_sums[name].add_(g.abs())
                            p.grad = None
                num_batches += 1
        sums = [*grad_sums.values(), *abs_sums.values(), *(per_example.sums.values() if per_example else ()),
                *(norms.sums.values() if norms else ())]
        distributed.all_reduce_sum_(sums)
        num_batches = int(distributed.all_reduce_count(num_batches, device))
        if per_example is not None:
            per_example.examples = int(distributed.all_reduce_count(per_example.examples, device))
        if num_batches == 0:
            raise SalienceBenchError("no scoring batches: the data iterable was empty")
        result: dict[str, dict[str, torch.Tensor]] = {}
        if grad_sums:
            result[MEAN_GRAD] = {n: s.div_(num_batches) for n, s in grad_sums.items()}
        if abs_sums:
            result[ABS_GRAD] = {n: s.div_(num_batches) for n, s in abs_sums.items()}
        if per_example is not None:
            result[EXAMPLE_SQ_GRAD] = per_example.mean()
        if norms is not None:
            result[INPUT_SQ_NORM] = norms.sums
    if HESSIAN_GRAD in needs:
        result[HESSIAN_GRAD] = hessian_gradient_products(model, batches, params, result[MEAN_GRAD], progress=progress)
    return result, num_batches


def hessian_gradient_products(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    params: Mapping[str, nn.Parameter],
    direction: Mapping[str, torch.Tensor],
    *,
    progress: bool | str = False,
) -> dict[str, torch.Tensor]:
    """H v for the mean loss over ``batches``, by double backward (v held constant), in float32."""
    device = next(iter(params.values())).device
    names = list(params)
    totals = {n: torch.zeros(params[n].shape, dtype=torch.float32, device=device) for n in names}
    # Fused attention kernels have no double backward; the math kernel is plain differentiable ops.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with ScoringMode(model, params), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        for i, batch in enumerate(tqdm(batches, desc="Hessian-vector products", unit="batch",
                                       disable=not progress, leave=False)):
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            loss = _loss(model, batch, i)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
            inner = sum((g.float() * direction[n]).sum() for n, g in zip(names, grads))
            products = torch.autograd.grad(inner, [params[n] for n in names], allow_unused=True)
            for n, hv in zip(names, products):
                if hv is not None:
                    totals[n].add_(hv.float())
    distributed.all_reduce_sum_(totals.values())
    count = distributed.all_reduce_count(len(batches), device)
    return {n: t.div_(count) for n, t in totals.items()}


def score(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None,
    metrics: str | Sequence[str] = ("grad",),
    *,
    params: Mapping[str, nn.Parameter] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Scores:
    """Scores of every requested metric for every eligible tensor.

    Returns ``{metric: {param_name: float32 tensor shaped like the parameter}}``; a
    network-level metric (``jacob_cov``) returns ``{metric: {"network": 0-dim tensor}}``.
    All per-tensor gradient metrics come from a single pass over ``batches`` (one backward
    per batch); metrics that need no data (magnitude, random, lift, synflow) need no batches.
    ``params`` overrides the include/exclude selection with an explicit name→parameter map;
    ``options`` passes metric settings (``lift_rank``, ``block_size``).
    """
    names = resolve_metrics(metrics)
    scorers = [get_scorer(n) for n in names]
    options = dict(options or {})
    params = dict(params) if params is not None else eligible_parameters(model, include, exclude)
    needs = set().union(*(s.needs for s in scorers if not s.whole_model))
    data_users = sorted(s.name for s in scorers if s.uses_data)
    if data_users and batches is None:
        raise SalienceBenchError(f"metrics {data_users} need scoring batches")
    if any(s.whole_model and s.needs_data for s in scorers) and batches is not None:
        batches = list(batches)  # more than one pass will walk them
    accumulators: dict[str, dict[str, torch.Tensor]] = {}
    num_batches = 0
    if needs:
        accumulators, num_batches = accumulate(
            model, batches, params, needs, progress=f"scoring {','.join(names)}" if progress else False
        )
    scores: Scores = {}
    for scorer in scorers:
        if scorer.whole_model:
            result = scorer(ModelContext(model=model, params=params, batches=batches, seed=seed, options=options))
            if not scorer.maskable:
                value = torch.as_tensor(float(result), dtype=torch.float32)
                if not torch.isfinite(value):
                    raise SalienceBenchError(f"metric {scorer.name!r} produced {value.item()}")
                scores[scorer.name] = {NETWORK: value}
                continue
            per_tensor = dict(result)
        else:
            per_tensor = {}
            for pname, p in params.items():
                stats = TensorStats(
                    name=pname, weight=p.detach().float(), seed=seed, num_batches=num_batches, options=options,
                    **{need: accumulators[need][pname] for need in scorer.needs},
                )
                per_tensor[pname] = scorer(stats)
        non_finite = []
        for pname, p in params.items():
            s = per_tensor[pname] = per_tensor[pname].to(torch.float32)
            if s.shape != p.shape:
                raise SalienceBenchError(f"metric {scorer.name!r} returned shape {tuple(s.shape)} for {pname!r} {tuple(p.shape)}")
            non_finite.append(s.numel() - torch.isfinite(s).count_nonzero())
        # One read per metric rather than one host sync per tensor.
        for pname, bad in zip(params, torch.stack(non_finite).tolist()):
            if bad:
                raise SalienceBenchError(f"metric {scorer.name!r} produced {bad} NaN/inf scores in {pname!r}")
        scores[scorer.name] = per_tensor
    return scores


def maskable(scores: Scores) -> Scores:
    """The per-tensor scores only (network-level metrics dropped)."""
    return {m: s for m, s in scores.items() if get_scorer(m).maskable}


def network_scores(scores: Scores) -> dict[str, float]:
    """The network-level metrics' single numbers."""
    return {m: float(s[NETWORK]) for m, s in scores.items() if not get_scorer(m).maskable}
