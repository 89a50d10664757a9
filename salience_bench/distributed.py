"""torch.distributed helpers: shard the work, all-reduce accumulators, let rank 0 write.

Launch with ``torchrun --nproc_per_node=N -m salience_bench.compare ...``: every rank scores
its share of the batches, the accumulators (sums and counts) are all-reduced once, and rank 0
builds masks, analyses and writes. Works with gloo on CPU and NCCL on GPUs.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the process that analyses and writes (rank 0, or the only process)."""
    return rank() == 0


def init_from_environment() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def local_device() -> torch.device:
    """This rank's GPU under torchrun (LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: items rank, rank + world, rank + 2·world, …"""
    return list(items)[rank():: world_size()]


def shard_rows(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's rows of one batch (a global batch split across ranks)."""
    if not active():
        return dict(batch)
    return {k: v[rank():: world_size()] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


BUCKET_BYTES = 64 << 20


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place. Small tensors travel together in flat buckets of at most
    ``BUCKET_BYTES`` (few messages); larger ones are reduced where they lie, so the extra memory is one
    bucket, never a second copy of the accumulators."""
    if not active():
        return
    buckets: dict[tuple, tuple[list[torch.Tensor], list[int]]] = {}  # (dtype, device) → (tensors, [their bytes])
    for t in tensors:
        size = t.numel() * t.element_size()
        if size >= BUCKET_BYTES and t.is_contiguous():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            continue
        bucket, filled = buckets.setdefault((t.dtype, t.device), ([], [0]))
        if bucket and filled[0] + size > BUCKET_BYTES:
            _reduce_flat(bucket)
            bucket.clear()
            filled[0] = 0
        bucket.append(t)
        filled[0] += size
    for bucket, _ in buckets.values():
        if bucket:
            _reduce_flat(bucket)


def _reduce_flat(group: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in group])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in group:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def shard_rows_range(rows: int, ranks: int | None = None, of_rank: int | None = None) -> tuple[int, int]:
    """Rows [start, stop) of a tensor with ``rows`` rows that a rank holds under FSDP2's Shard(0) layout
    (``torch.chunk``: ⌈rows/ranks⌉ per rank, the last ones shorter or empty)."""
    ranks = world_size() if ranks is None else ranks
    of_rank = rank() if of_rank is None else of_rank
    chunk = _rows_per_rank(rows, ranks)
    return min(of_rank * chunk, rows), min((of_rank + 1) * chunk, rows)


def _rows_per_rank(rows: int, ranks: int) -> int:
    """⌈rows / ranks⌉: the rows of every rank but the last ones under Shard(0), and the collectives' padded chunk."""
    return -(-rows // ranks)


def reduce_scatter_rows(full: torch.Tensor) -> torch.Tensor:
    """This rank's rows (FSDP2's Shard(0) layout) of ``full`` summed over the ranks."""
    ranks = world_size()
    rows = full.shape[0]
    chunk = _rows_per_rank(rows, ranks)
    padded = full.new_zeros((chunk * ranks, *full.shape[1:]))
    padded[:rows] = full
    out = full.new_empty((chunk, *full.shape[1:]))
    # reduce_scatter_single is the new name (torch ≥ 2.13); the old one still works in older releases.
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(out, padded)
    start, stop = shard_rows_range(rows)
    return out[: stop - start]


def all_gather_rows(local: torch.Tensor, rows: int) -> torch.Tensor:
    """The whole tensor (``rows`` rows) from every rank's rows in FSDP2's Shard(0) layout, on every rank."""
    ranks = world_size()
    chunk = _rows_per_rank(rows, ranks)
    padded = local.new_zeros((chunk, *local.shape[1:]))
    padded[: local.shape[0]] = local
    out = local.new_empty((chunk * ranks, *local.shape[1:]))
    dist.all_gather_into_tensor(out, padded.contiguous())
    return out[:rows]


def all_reduce_count(value: float, device: torch.device | str = "cpu") -> float:
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_values(values: Sequence[float]) -> list[float]:
    """Every rank's ``values``, concatenated in rank order, on every rank."""
    if not active():
        return list(values)
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, list(values))
    return [v for part in everyone for v in part]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (its length may differ on the others: it is sent first)."""
    if not active():
        return tensor
    length = torch.tensor([tensor.numel()], dtype=torch.int64, device=tensor.device)
    dist.broadcast(length, src=0)
    out = tensor.reshape(-1) if is_main() else torch.empty(int(length.item()), dtype=tensor.dtype, device=tensor.device)
    dist.broadcast(out, src=0)
    return out


def loss_share(local_units: int) -> float:
    """world · (this rank's loss units / the global batch's): the factor on a rank's mean loss that makes the
    ranks' averaged gradient equal the global batch's mean-loss gradient (1 when not distributed)."""
    if not active():
        return 1.0
    total = all_reduce_count(local_units, _collective_device())
    if total <= 0:
        return 0.0
    return world_size() * local_units / total


def _collective_device() -> torch.device:
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each trainable tensor's gradient over the ranks: O(trainable) communication."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    all_reduce_sum_(grads)
    for g in grads:
        g.div_(world_size())
