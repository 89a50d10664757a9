"""Sharded scoring with FSDP2, for models whose weights and accumulators do not fit on one GPU.

:func:`shard_model` hands the model to ``torch.distributed.fsdp.fully_shard`` (the stock engine: every
repeated block, then the root). Each rank then keeps 1/N of every weight and — because accumulators
are shaped like this rank's shard of each parameter — 1/N of every accumulator. Each rank scores whole
batches of its own; FSDP averages the gradients of the ranks' batches and the accumulators take N times
that, their sum, so ḡ is Σ_b g_b / B as without sharding, and per-example squared gradients are reduce-scattered per layer.

Analysis runs on rank 0 with the unchanged code: a score tensor read there is assembled from the ranks'
shards of its weight and accumulators (:class:`ShardServer`), one tensor at a time, while the other
ranks serve those requests until rank 0 stops them. Rank 0 therefore needs memory for one full tensor's
inputs, never for the whole model.

Rounding: the gradients of the ranks' batches are summed by the collective (in float32) before they are
accumulated, so sharded sums differ from unsharded ones in their last bits; masks equal the unsharded
ones up to near-ties at the threshold (tested at ≥ 0.999 Jaccard and 1e-5 relative scores).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from . import distributed
from .accumulators import get_accumulator
from .accumulators.base import local_tensor
from .errors import SalienceBenchError


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` over the process group with FSDP2 (in place; its parameters become DTensors on ``device``).

    Every child of the outermost ``nn.ModuleList``s (a transformer's blocks) is one FSDP unit, the rest of
    the model the root unit; gradients are reduced in float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not distributed.active():
        raise SalienceBenchError("--shard needs several processes: launch with torchrun --nproc_per_node=N (N ≥ 2)")
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    chosen: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(c + ".") for c in chosen):
            chosen.append(name)
            for block in module:
                fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def summed_gradient(grad_shard: torch.Tensor) -> torch.Tensor:
    """FSDP averages the ranks' gradients (gloo cannot sum with a factor of 1): times N, their sum."""
    return grad_shard.mul_(distributed.world_size())


def check_sharded_batches(count: int) -> None:
    """Every rank runs the same number of steps (FSDP's collectives pair up), so whole batches must split evenly."""
    counts = distributed.gather_values([count])
    if len(set(counts)) > 1:
        raise SalienceBenchError(f"sharded scoring needs the same number of batches on every rank, got {counts}; "
                                 f"use a number of batches divisible by {distributed.world_size()}")


class ShardServer:
    """Assembles one tensor's weight and accumulators from every rank's shard: rank 0 asks
    (:meth:`fetch`), the other ranks answer in :meth:`serve` until rank 0 calls :meth:`stop`."""

    def __init__(self, params: Mapping[str, nn.Parameter], accumulated: Mapping[str, Mapping[str, torch.Tensor]]):
        self.params, self.accumulated = dict(params), accumulated
        self.stopped = False

    def fetch(self, name: str, needs: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the float32 weight, {accumulator: its full tensor}) of ``name``, on rank 0."""
        if self.stopped:
            raise SalienceBenchError("these sharded scores can no longer be read: the other ranks have stopped "
                                     "serving their shards (read what you need before the comparison returns)")
        distributed.broadcast_object(("fetch", name, tuple(needs)))
        return self._gather(name, needs)

    def serve(self) -> None:
        """On ranks other than 0: answer rank 0's requests until it stops."""
        while True:
            request = distributed.broadcast_object(None)
            if request[0] == "stop":
                self.stopped = True
                return
            _, name, needs = request
            self._gather(name, needs)

    def stop(self) -> None:
        if not self.stopped and distributed.active():
            distributed.broadcast_object(("stop",))
        self.stopped = True

    def _gather(self, name: str, needs: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params[name]
        rows = p.shape[0]
        weight = distributed.all_gather_rows(local_tensor(p).detach(), rows).float()
        parts = {}
        for need in needs:
            value = self.accumulated[need][name]
            parts[need] = distributed.all_gather_rows(value, rows) if get_accumulator(need).param_shaped else value
        return weight, parts

