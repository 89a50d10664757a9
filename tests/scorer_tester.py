"""One tester for every metric's whole contract, in the style of torchmetrics' ``MetricTester``.

``check_scorer(metric, reference)`` checks that the metric

1. equals an independent ``reference(model, batches, names)`` (a dict of tensors, or a float for a
   network-level metric) on a tiny BERT with padded batches of unequal lengths;
2. gives float32 scores shaped like their parameters, also for a bf16 model;
3. is deterministic (two runs, bitwise-equal scores);
4. leaves the model exactly as it found it (weights and dtypes bit for bit, training mode,
   ``requires_grad`` flags, existing ``.grad`` fields);
5. gives the same scores in two gloo processes (each scoring half the batches) as in one.

Steps 2–5 run on ``model_factory()``'s model and ``include``'s tensors too, and a metric that a test registers is
registered in the spawned processes by ``registrar`` (a module-level function, so that it pickles).
Adding a metric = the scorer + one ``check_scorer`` call with its reference.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Callable, Mapping

import torch
import torch.multiprocessing as mp

import salience_bench as sb
from salience_bench import distributed

from .conftest import gloo_group, tiny_batches, tiny_bert
from .reference import block_linear_weights

Reference = Callable[[torch.nn.Module, list, list], "Mapping[str, torch.Tensor] | float"]
TWO_PROCESS_OPTIONS = {"lift_rank": 4, "block_size": 5}


def assert_close_dicts(actual, expected, rtol=1e-4, atol_scale=None):
    """Close entry by entry, with the absolute slack scaled to each tensor's largest value."""
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == torch.float32
        scale = float(expected[name].abs().max())
        assert scale > 0, name
        atol = (atol_scale if atol_scale is not None else rtol) * scale
        torch.testing.assert_close(actual[name], expected[name].float(), rtol=rtol, atol=atol, msg=name)


def _all_metric_scores(batches):
    return sb.score(tiny_bert(), batches, "all", options=TWO_PROCESS_OPTIONS)


def _scores_of(batches, metric=None, model_factory=tiny_bert, include=None, options=None, registrar=None):
    """Every registered metric on the tiny BERT (the shared run), or ``metric`` on ``model_factory()``'s model."""
    if registrar is not None and metric not in sb.list_metrics():
        registrar()  # a metric registered by a test: spawned processes import the package, not the test
    if metric is None:
        return _all_metric_scores(batches)
    return sb.score(model_factory(), batches, [metric], options=dict(options or ()), include=include)


def _two_process_worker(rank, world, init_file, out_file, case):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    with gloo_group(rank, world, init_file):
        scores = _scores_of(distributed.shard(tiny_batches(num_batches=4)), *case).materialize()
        if rank == 0:
            torch.save((dict(scores), scores.network), out_file)


@functools.lru_cache(maxsize=None)
def two_process_scores(case: tuple = ()) -> tuple[dict, dict]:
    """Scores from 2 gloo processes (each half the batches); ``case`` = (metric, model_factory, include, options,
    registrar), all picklable, or () for every registered metric on the tiny BERT (spawned once per session)."""
    folder = tempfile.mkdtemp(prefix="sb-two-process-")
    out_file = os.path.join(folder, "rank0.pt")
    mp.spawn(_two_process_worker, args=(2, os.path.join(folder, "init"), out_file, case), nprocs=2, join=True)
    return torch.load(out_file)


@functools.lru_cache(maxsize=None)
def one_process_scores(case: tuple = ()) -> tuple[dict, dict]:
    scores = _scores_of(tiny_batches(num_batches=4), *case).materialize()
    return dict(scores), scores.network


def _result(scores: sb.Scores, metric: str):
    return scores.network[metric] if metric in scores.network else scores[metric]


def _model_state(model):
    return ({k: (v.clone(), v.dtype) for k, v in model.state_dict().items()}, model.training,
            {n: p.requires_grad for n, p in model.named_parameters()}, {n: p.grad for n, p in model.named_parameters()})


def check_scorer(
    metric: str,
    reference: Reference,
    *,
    options: Mapping | None = None,
    rtol: float = 1e-4,
    atol_scale: float | None = None,
    model_factory: Callable[[], torch.nn.Module] = tiny_bert,
    include: list[str] | None = None,
    bf16_min_spearman: float | None = None,
    two_processes: bool = True,
    registrar: Callable[[], None] | None = None,
) -> None:
    """Check ``metric``'s whole contract (see the module docstring)."""
    batches = tiny_batches()
    network_level = not sb.get_scorer(metric).maskable

    # 1. the reference
    model = model_factory()
    names = include or block_linear_weights(model)
    scores = sb.score(model, batches, [metric], options=options, include=include)
    expected = reference(model, batches, names)
    if network_level:
        assert metric not in scores and set(scores.network) == {metric}
        assert abs(scores.network[metric] - float(expected)) <= rtol * max(1.0, abs(float(expected))), metric
    else:
        assert set(scores) == {metric} and not scores.network
        assert_close_dicts(scores[metric], expected, rtol=rtol, atol_scale=atol_scale)

    # 2.–4. dtype and shape (fp32 and bf16 models), determinism, the model left as it was
    model = model_factory()
    model.train()
    scored = set(sb.score(model, None, ["magnitude"], include=include)["magnitude"])
    unscored = [p for n, p in model.named_parameters() if n not in scored]
    unscored[0].requires_grad_(False)  # a frozen parameter stays frozen …
    sentinel = unscored[-1].grad = torch.ones_like(unscored[-1])  # … and an existing .grad survives
    before = _model_state(model)
    first = sb.score(model, batches, [metric], options=options, include=include)
    after = _model_state(model)
    assert model.training == before[1] and after[2] == before[2], "training mode or requires_grad changed"
    assert unscored[-1].grad is sentinel
    assert all(g is None for g, p in zip(after[3].values(), model.parameters()) if p is not unscored[-1])
    for key, (value, dtype) in before[0].items():
        assert torch.equal(after[0][key][0], value) and after[0][key][1] == dtype, f"{metric} changed {key}"
    second = sb.score(model, batches, [metric], options=options, include=include)
    params = dict(model.named_parameters())
    if network_level:
        assert first.network[metric] == second.network[metric]
    else:
        for name, s in first[metric].items():
            assert s.dtype == torch.float32 and s.shape == params[name].shape, name
            assert torch.equal(s, second[metric][name]), f"{metric} is not deterministic on {name}"
    bf16 = sb.score(model_factory().to(torch.bfloat16), batches, [metric], options=options, include=include)
    if not network_level:
        for name, s in bf16[metric].items():
            assert s.dtype == torch.float32 and s.shape == params[name].shape and torch.isfinite(s).all(), name
        if bf16_min_spearman is not None:
            assert sb.spearman(bf16[metric], first[metric]) > bf16_min_spearman, metric

    # 5. two processes equal one, on the same model, tensors and options (a metric a test registered included)
    if two_processes:
        default = (model_factory is tiny_bert and include is None and registrar is None
                   and all(TWO_PROCESS_OPTIONS.get(k) == v for k, v in (options or {}).items()))
        case = () if default else (metric, model_factory, tuple(include or ()) or None,
                                   tuple(sorted((options or {}).items())), registrar)
        one, two = (_result(_wrap(*runs(case)), metric) for runs in (one_process_scores, two_process_scores))
        if network_level:
            assert abs(one - two) <= 1e-5 * max(1.0, abs(one)), metric
        else:
            for name, s in one.items():
                torch.testing.assert_close(two[name], s, rtol=1e-5, atol=1e-6 * float(s.abs().max()), msg=(metric, name))


def _wrap(per_tensor: dict, network: dict) -> sb.Scores:
    return sb.Scores(per_tensor, network)
