"""One pass over the scoring batches feeds every requested scorer.

Each batch costs one forward and one backward. The signed mean gradient ḡ is
accumulated in float32 whenever any scorer needs it; per-example squared gradients
(for ``fisher``) are gathered by hooks in that same backward. Scorers then turn the
accumulators into scores tensor by tensor.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import SalienceBenchError
from .models import eligible_parameters
from .per_example import ExampleSquaredGradients, linear_modules_for
from .scorers import EXAMPLE_SQ_GRAD, MEAN_GRAD, TensorStats, get_scorer, resolve_metrics

Scores = dict[str, dict[str, torch.Tensor]]


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise SalienceBenchError("a scoring batch holds no tensors; batches must be dicts accepted by model(**batch)")


def accumulate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    params: Mapping[str, nn.Parameter],
    *,
    mean_grad: bool = True,
    example_sq_grad: bool = False,
    progress: bool | str = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Run the model over ``batches`` once and return the requested float32 accumulators.

    The model runs in eval mode (no dropout) so scores are deterministic; its training
    mode, ``requires_grad`` flags and ``.grad`` fields are restored afterwards.
    """
    device = next(iter(params.values())).device
    was_training = model.training
    saved_requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    scored = {id(p) for p in params.values()}
    grad_sums = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()}
    per_example = ExampleSquaredGradients(linear_modules_for(model, params)) if example_sq_grad else None
    num_batches = 0
    try:
        model.eval()
        for p in model.parameters():
            # Only scored tensors need .grad; skipping the rest saves the embedding gradient.
            p.requires_grad_(id(p) in scored)
            p.grad = None
        desc = progress if isinstance(progress, str) else "scoring"
        with torch.enable_grad(), (per_example.hooked() if per_example else nullcontext()):
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                if per_example is not None:
                    per_example.start_batch(_batch_size(batch))
                out = model(**batch)
                loss = getattr(out, "loss", None)
                if loss is None:
                    raise SalienceBenchError(
                        "the model returned no .loss; scoring batches must include labels "
                        "(the Hugging Face convention: model(**batch).loss)"
                    )
                if not torch.isfinite(loss):
                    raise SalienceBenchError(f"the loss of scoring batch {num_batches} is {loss.item()}")
                loss.backward()
                for name, p in params.items():
                    if p.grad is not None:
                        grad_sums[name].add_(p.grad.float())
                        p.grad = None
                num_batches += 1
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(saved_requires_grad[id(p)])
            p.grad = saved_grads[id(p)]
    if num_batches == 0:
        raise SalienceBenchError("no scoring batches: the data iterable was empty")
    result: dict[str, dict[str, torch.Tensor]] = {}
    if mean_grad:
        result[MEAN_GRAD] = {n: s.div_(num_batches) for n, s in grad_sums.items()}
    if per_example is not None:
        result[EXAMPLE_SQ_GRAD] = per_example.mean()
    return result


def score(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None,
    metrics: str | Sequence[str] = ("grad",),
    *,
    params: Mapping[str, nn.Parameter] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Scores:
    """Scores of every requested metric for every eligible tensor.

    Returns ``{metric: {param_name: float32 tensor shaped like the parameter}}``.
    All gradient-based metrics come from a single pass over ``batches`` (one backward
    per batch); metrics that need no data (magnitude, random) need no batches.
    ``params`` overrides the include/exclude selection with an explicit name→parameter map.
    """
    names = resolve_metrics(metrics)
    scorers = [get_scorer(n) for n in names]
    params = dict(params) if params is not None else eligible_parameters(model, include, exclude)
    needs = set().union(*(s.needs for s in scorers))
    accumulators: dict[str, dict[str, torch.Tensor]] = {}
    if needs:
        if batches is None:
            raise SalienceBenchError(f"metrics {sorted(n for n in names if get_scorer(n).needs)} need scoring batches")
        accumulators = accumulate(
            model,
            batches,
            params,
            mean_grad=MEAN_GRAD in needs,
            example_sq_grad=EXAMPLE_SQ_GRAD in needs,
            progress=f"scoring {','.join(names)}" if progress else False,
        )
    scores: Scores = {}
    for scorer in scorers:
        per_tensor = {}
        for pname, p in params.items():
            stats = TensorStats(
                name=pname,
                weight=p.detach().float(),
                seed=seed,
                **{need: accumulators[need][pname] for need in scorer.needs},
            )
            s = scorer(stats).to(torch.float32)
            if s.shape != p.shape:
                raise SalienceBenchError(f"metric {scorer.name!r} returned shape {tuple(s.shape)} for {pname!r} {tuple(p.shape)}")
            if not torch.isfinite(s).all():
                bad = (~torch.isfinite(s)).sum().item()
                raise SalienceBenchError(f"metric {scorer.name!r} produced {bad} NaN/inf scores in {pname!r}")
            per_tensor[pname] = s
        scores[scorer.name] = per_tensor
    return scores
