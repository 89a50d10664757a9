"""One tester for every accumulator's whole contract (the scorer tester's counterpart one layer down).

``check_accumulator(name, reference)`` checks that the accumulator, driven by the scoring pass
(:func:`salience_bench.scoring.accumulate`) on a tiny BERT with padded batches of unequal lengths,

1. equals an independent ``reference(model, batches, names)`` (plain autograd or forward hooks, one batch or one
   unpadded example at a time);
2. returns one float32 statistic per scored tensor, shaped like it (``param_shaped``) or broadcasting against it;
3. sums in float32 to within float32 rounding of its float64 sums, and repeats bit for bit;
4. leaves the model as it found it (weights, training mode, ``requires_grad``, ``.grad``, no hook left behind) and
   runs no backward pass unless it says ``needs_backward``;
5. gives bitwise the same float64-summed statistics in two gloo processes (each half the batches) as in one;
6. declares what the registry relies on: ``shardable`` a bool, ``after`` naming registered accumulators.

Adding an accumulator = its class + one ``check_accumulator`` call with its reference.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Callable, Mapping

import torch
import torch.multiprocessing as mp

from salience_bench import distributed
from salience_bench.accumulators import get_accumulator, list_accumulators
from salience_bench.scoring import accumulate

from .conftest import gloo_group, tiny_batches, tiny_bert
from .reference import block_linear_weights

Reference = Callable[[torch.nn.Module, list, list], Mapping[str, torch.Tensor]]


def _params(model) -> dict:
    named = dict(model.named_parameters())
    return {n: named[n] for n in block_linear_weights(model)}


def _accumulated(model, batches, names, sum_dtype=torch.float64) -> dict[str, dict[str, torch.Tensor]]:
    return accumulate(model, batches, _params(model), names, sum_dtype=sum_dtype)[0]


def _hooks_left(model) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return modules + sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())


def _worker(rank, world, init_file, out_file):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    with gloo_group(rank, world, init_file):
        result = _accumulated(tiny_bert(), distributed.shard(tiny_batches(num_batches=4)), list_accumulators())
        if rank == 0:
            torch.save(result, out_file)


@functools.lru_cache(maxsize=1)
def two_process_statistics() -> dict:
    """Every registered accumulator gathered by 2 gloo processes, each half the batches (spawned once)."""
    folder = tempfile.mkdtemp(prefix="sb-two-process-acc-")
    out_file = os.path.join(folder, "rank0.pt")
    mp.spawn(_worker, args=(2, os.path.join(folder, "init"), out_file), nprocs=2, join=True)
    return torch.load(out_file)


def check_accumulator(name: str, reference: Reference, *, rtol: float = 1e-4, two_processes: bool = True) -> None:
    """Check accumulator ``name``'s whole contract (see the module docstring)."""
    cls = get_accumulator(name)
    batches = tiny_batches()

    # 6. what the registry relies on
    assert isinstance(cls.shardable, bool) and isinstance(cls.needs_backward, bool), name
    assert all(dep in list_accumulators() for dep in cls.after), name

    # 1. the reference
    model = tiny_bert()
    names = block_linear_weights(model)
    result = _accumulated(model, batches, [name])
    assert set(result) == {name, *cls.after}
    expected = reference(model, batches, names)
    statistic = result[name]
    assert list(statistic) == names, f"{name} must give one statistic per scored tensor, in model order"
    params = _params(model)
    for n in names:
        # 2. float32, shaped like the parameter or broadcasting against it
        assert statistic[n].dtype == torch.float32, (name, n)
        if cls.param_shaped:
            assert statistic[n].shape == params[n].shape, (name, n)
        assert torch.broadcast_shapes(statistic[n].shape, params[n].shape) == params[n].shape, (name, n)
        scale = float(expected[n].abs().max())
        assert scale > 0, (name, n)
        torch.testing.assert_close(statistic[n], expected[n].float().reshape(statistic[n].shape), rtol=rtol,
                                   atol=rtol * scale, msg=(name, n))

    # 3. float32 sums within rounding of float64 ones; the same bits twice
    single = _accumulated(model, batches, [name], sum_dtype=torch.float32)[name]
    again = _accumulated(model, batches, [name])[name]
    for n in names:
        torch.testing.assert_close(single[n], statistic[n], rtol=1e-5, atol=1e-6 * float(statistic[n].abs().max()))
        assert torch.equal(again[n], statistic[n]), f"{name} is not deterministic on {n}"

    # 4. the model as it was, and a backward pass only when needed
    model = tiny_bert()
    model.train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    sentinel = model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = _hooks_left(model)
    backwards = []
    probe = dict(model.named_parameters())[names[0]].register_hook(lambda g: backwards.append(1))
    _accumulated(model, batches, [name])
    probe.remove()
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags, name
    assert model.classifier.weight.grad is sentinel, name
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.weight"), name
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), f"{name} changed the weights"
    assert _hooks_left(model) == hooks, f"{name} left a hook on the model"
    assert bool(backwards) == cls.needs_backward, f"{name}: needs_backward={cls.needs_backward}, backward ran: {bool(backwards)}"

    # 5. two processes equal one, bit for bit (float64 sums)
    if two_processes:
        one = _accumulated(tiny_bert(), tiny_batches(num_batches=4), [name])[name]
        two = two_process_statistics()[name]
        for n in names:
            assert torch.equal(two[n], one[n]), f"{name}: 2 processes differ from 1 on {n}"


def untested(tested: set[str]) -> list[str]:
    """Registered accumulators without a contract test."""
    return sorted(set(list_accumulators()) - tested)

