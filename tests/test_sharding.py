"""Sharded scoring (FSDP2 on gloo): scores and masks equal the unsharded ones; shard-layout helpers exact."""

import os

import pytest
import torch
import torch.multiprocessing as mp

import salience_bench as sb
from salience_bench import distributed
from salience_bench.errors import SalienceBenchError
from salience_bench.sharding import shard_model

from .conftest import gloo_group, tiny_batches, tiny_bert

METRICS = ["grad", "snip", "fisher", "wanda", "magnitude", "random"]
BATCHES = 6  # whole batches per rank on 2 and on 3 ranks


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def llama_batches(num_batches=BATCHES, batch_size=3, length=7, seed=3):
    """Left-padded batches with unequal target counts (some prompt tokens ignored)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        ids = torch.randint(1, 50, (batch_size, length), generator=g)
        starts = torch.randint(0, 3, (batch_size,), generator=g)
        mask = (torch.arange(length)[None] >= starts[:, None]).long()
        labels = torch.where(mask.bool(), ids, -100)
        labels[:, : length // 2] = -100
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})
    return out


MODELS = {"bert": (tiny_bert, lambda: tiny_batches(num_batches=BATCHES)), "llama": (tiny_llama, llama_batches)}


def _worker(rank, world, init_file, out_file, which):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    with gloo_group(rank, world, init_file):
        build, make = MODELS[which]
        model = shard_model(build(), torch.device("cpu"))
        assert all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
        scores = sb.score(model, distributed.shard(make()), METRICS)
        if rank == 0:
            try:  # read on rank 0 while the other rank serves its shards
                torch.save((dict(scores.materialize()), {m: dict(sb.make_mask(s, density=0.1)) for m, s in scores.items()}),
                           out_file)
            finally:
                scores.stop()
        else:
            scores.serve()


@pytest.mark.parametrize("which, world", [("bert", 2), ("llama", 2), ("llama", 3)])
def test_sharded_scores_and_masks_equal_unsharded(tmp_path, which, world):
    out_file = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(out_file), which), nprocs=world, join=True)
    sharded_scores, sharded_masks = torch.load(out_file)
    torch.set_num_threads(1)
    build, make = MODELS[which]
    reference = sb.score(build(), make(), METRICS)
    for metric, per in reference.items():
        for name, s in per.items():
            scale = float(s.abs().max())
            torch.testing.assert_close(sharded_scores[metric][name], s, rtol=1e-5, atol=1e-6 * scale, msg=(metric, name))
        jaccard = sb.jaccard(sharded_masks[metric], sb.make_mask(per, density=0.1))
        assert jaccard >= 0.999, (metric, jaccard)


@pytest.mark.parametrize("rows,ranks", [(5, 2), (5, 4), (8, 3), (1, 2)])
def test_shard_rows_cover_the_tensor_as_torch_chunk_does(rows, ranks):
    ranges = [distributed.shard_rows_range(rows, ranks, r) for r in range(ranks)]
    chunks = [c.numel() for c in torch.arange(rows).chunk(ranks)] + [0] * ranks
    assert [stop - start for start, stop in ranges] == chunks[:ranks]
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_shard_refuses_a_single_process():
    with pytest.raises(SalienceBenchError, match="torchrun"):
        shard_model(tiny_bert(), torch.device("cpu"))


def _bucket_worker(rank, world, init_file, out_file):
    with gloo_group(rank, world, init_file):
        distributed.BUCKET_BYTES = 64  # 16 float32: every path (in place, shared buckets, flushes) is taken
        tensors = [torch.full((n,), float(rank + 1 + i)) for i, n in enumerate([3, 40, 5, 9, 1, 16, 2])]
        tensors.append(torch.arange(6.0).view(2, 3).t())  # not contiguous: goes through a bucket
        distributed.all_reduce_sum_(tensors)
        if rank == 0:
            torch.save(tensors, out_file)


def test_all_reduce_sums_in_buckets_and_in_place(tmp_path):
    mp.spawn(_bucket_worker, args=(3, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=3, join=True)
    tensors = torch.load(tmp_path / "out.pt")
    for i, (t, n) in enumerate(zip(tensors, [3, 40, 5, 9, 1, 16, 2])):
        assert torch.equal(t, torch.full((n,), float(sum(r + 1 + i for r in range(3))))), i
    assert torch.equal(tensors[-1], 3 * torch.arange(6.0).view(2, 3).t())
