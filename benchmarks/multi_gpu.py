"""Past one GPU, through the public API under torchrun: scoring throughput on 1 and N GPUs over the
same batches, masks compared bit for bit between the runs, and FSDP2-sharded analysis of a model one
GPU cannot hold.

Replicated (every GPU holds the model; each scores its share of the batches; sums all-reduced)::

    torchrun --nproc_per_node=N -m benchmarks.multi_gpu --shape 0.95b --sum-dtype float64 --save /tmp/m-N.pt
    python -m benchmarks.multi_gpu --compare /tmp/m-1.pt /tmp/m-2.pt     # bitwise? Jaccard per metric

Sharded (FSDP2: each GPU holds 1/N of the weights and of every accumulator; rank 0 analyses)::

    torchrun --nproc_per_node=2 -m benchmarks.multi_gpu --shape 13b --shard --sum-dtype float32

Models are random-initialised Llamas in bf16 of the shapes in ``SHAPES`` (13b: hidden 5120, 40 layers,
intermediate 13824). Each run prints one JSON line (``--json`` also writes it): the scoring time (the
slowest rank, after a one-batch warm-up), peak GPU memory per rank, and for rank 0 the analysis steps.
Keep NVLink multicast off: NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

import salience_bench as sb
from salience_bench import analysis, distributed
from salience_bench.sharding import shard_model

from .llm_scale import SHAPES, token_batches

SHAPES = {**SHAPES, "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                                num_key_value_heads=40, batches=8, batch_size=2),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, batches=4, batch_size=2)}  # a CPU smoke test (gloo)
METRICS = ["grad", "snip", "fisher"]
GIB = 2**30


def build(shape: dict, seq: int, device: torch.device, shard: bool, vocab: int = 32000):
    """A random bf16 Llama: built whole on the GPU, or (sharded) on the meta device, sharded, then
    materialised shard by shard so no rank ever holds the whole model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=max(seq, 1024), attn_implementation="sdpa",
                         **{k: v for k, v in shape.items() if k not in ("batches", "batch_size")})
    torch.manual_seed(0)
    if not shard:
        with device:
            return LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    shard_model(model, device)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(1000 + distributed.rank())
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local()
            if local.dim() == 1:  # norms
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02, generator=generator)
        for name, module in list(model.named_modules()):  # buffers computed at init (rotary frequencies)
            if hasattr(module, "inv_freq"):
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                with device:  # (the constructor's device argument differs across transformers releases)
                    setattr(parent, name.rpartition(".")[2], type(module)(config=config))
    return model


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def timed(fn):
    _sync()
    if distributed.active():
        torch.distributed.barrier()
    start = time.perf_counter()
    out = fn()
    _sync()
    seconds = time.perf_counter() - start
    return out, max(distributed.gather_values([seconds]))


def run(args) -> dict:
    distributed.init_from_environment()
    device = distributed.local_device()
    sb.runtime.quiet_transformers()
    shape = SHAPES[args.shape]
    model = build(shape, args.seq, device, args.shard)
    batches = token_batches(shape, args.seq, device)
    mine = distributed.shard(batches)
    params = sb.eligible_parameters(model)
    eligible = sum(p.numel() for p in params.values())
    row = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__, gpus=distributed.world_size(),
               shape=args.shape, sharded=args.shard, sum_dtype=args.sum_dtype,
               deterministic=not args.nondeterministic, eligible=eligible,
               batches=f"{len(batches)}x{shape['batch_size']}x{args.seq}")
    # Warm-up: one batch per rank (kernels, NCCL communicators), then the measured pass over all of them.
    options = dict(params=params, sum_dtype=args.sum_dtype, deterministic=not args.nondeterministic)
    sb.score(model, mine[:1], ["grad"], **options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scores, row["score_seconds"] = timed(lambda: sb.score(model, mine, METRICS, **options))
    row["score_peak_gib_per_rank"] = [round(v / GIB, 2) for v in distributed.gather_values([_peak(device)])]
    if distributed.is_main():
        try:
            row.update(analyse(scores, args, device))
        finally:
            scores.stop()
    else:
        scores.serve()
    row["peak_gib_per_rank"] = [round(v / GIB, 2) for v in distributed.gather_values([_peak(device)])]
    return row


def analyse(scores, args, device) -> dict:
    out = {}
    start = time.perf_counter()
    masks = {m: sb.make_mask(s, density=0.01) for m, s in scores.items()}
    _sync()
    out["masks_seconds"] = time.perf_counter() - start
    if not args.shard:  # replicated: the scores and masks are this process's; their digests and the masks kept
        out["score_digest"] = {m: digest(s.values()) for m, s in scores.items()}
        out["mask_digest"] = {m: digest(mask.indices(n) for n in mask) for m, mask in masks.items()}
        if args.save:
            torch.save({m: {n: mask.indices(n).cpu() for n in mask} for m, mask in masks.items()}, args.save)
    if args.analysis == "masks":
        return out
    start = time.perf_counter()
    overlap = analysis.overlap_frame(masks)
    allocation = analysis.allocation_frame(masks)
    out["overlap_allocation_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    ranks = analysis.rank_correlation_frame(scores, kendall_max_n=args.layer_kendall_n)
    out["rank_frame_seconds"] = time.perf_counter() - start
    glob_o, glob_r = overlap[overlap.layer == "all"], ranks[ranks.layer == "all"]
    out["jaccard"] = {f"{a}/{b}": round(j, 4) for a, b, j in zip(glob_o.metric_a, glob_o.metric_b, glob_o.jaccard)}
    out["spearman_global"] = {f"{a}/{b}": round(r, 4) for a, b, r in zip(glob_r.metric_a, glob_r.metric_b, glob_r.spearman)}
    out["spearman_global_n"] = int(glob_r.n.iloc[0])
    out["spearman_global_se"] = float(glob_r.spearman_se.fillna(0).max())
    per_layer = ranks[ranks.layer != "all"]
    out["spearman_per_layer_median"] = {f"{a}/{b}": round(float(g.spearman.median()), 4)
                                        for (a, b), g in per_layer.groupby(["metric_a", "metric_b"])}
    out["allocation_layers"] = int((allocation.layer != "all").sum() / len(masks))
    out["analysis_peak_gib_rank0"] = round(_peak(device) / GIB, 2)
    return out


def compare(a: str, b: str) -> dict:
    first, second = torch.load(a), torch.load(b)
    result = {}
    for metric in first:
        identical = all(torch.equal(first[metric][n], second[metric][n]) for n in first[metric])
        inter = sum(int(torch.isin(first[metric][n], second[metric][n]).sum()) for n in first[metric])
        size_a = sum(i.numel() for i in first[metric].values())
        size_b = sum(i.numel() for i in second[metric].values())
        result[metric] = dict(bitwise_identical=identical, jaccard=inter / (size_a + size_b - inter),
                              differing=size_a - inter)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.95b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--shard", action="store_true", help="FSDP2: shard the weights and the accumulators")
    parser.add_argument("--sum-dtype", choices=sorted(sb.SUM_DTYPES), default="float64")
    parser.add_argument("--nondeterministic", action="store_true", help="fast, order-varying GPU kernels")
    parser.add_argument("--layer-kendall-n", type=int, default=20_000)
    parser.add_argument("--analysis", choices=["full", "masks"], default="full",
                        help="masks: stop after the masks (for 1-vs-N comparisons); full: Jaccard, allocation, rank frame")
    parser.add_argument("--save", default=None, help="replicated: save the masks' positions here (for --compare)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two saved mask files and exit")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.compare:
        print(json.dumps(dict(compare=args.compare, **compare(*args.compare))), flush=True)
        return
    row = run(args)
    if distributed.is_main():
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(row, f, indent=2)
    if distributed.active():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
