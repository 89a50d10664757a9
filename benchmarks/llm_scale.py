"""Decoder LLMs at real shapes on one GPU: scoring memory and time against a bare forward+backward,
masks, and the rank statistics, through the public API.

``python -m benchmarks.llm_scale --shape 0.95b`` (hidden 2048, 16 layers, intermediate 5632: 0.95B,
0.82B eligible weights; 4 batches of 4×512) and ``--shape 7b`` (Llama-2-7B: hidden 4096, 32 layers,
intermediate 11008; 8 batches of 2×512), random-initialised in bf16 on the GPU. Every figure is
measured in this process: peak memory is ``max_memory_allocated`` above what was allocated before the
step (model and batches); "extra over f+b" is above the peak of a bare forward+backward whose weight
gradients are dropped as they arrive (what any gradient metric must cost). Writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import salience_bench as sb
from salience_bench import analysis, runtime

SHAPES = {
    "0.95b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                  num_key_value_heads=16, batches=4, batch_size=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, batches=8, batch_size=2),
}
FIVE = ["grad", "snip", "plain", "taylor_fo", "magnitude"]
GIB = 2**30


def build(shape: dict, seq: int, vocab: int = 32000):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=max(seq, 1024), attn_implementation="sdpa",
                         **{k: v for k, v in shape.items() if k not in ("batches", "batch_size")})
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def token_batches(shape: dict, seq: int, device: torch.device | str = "cuda", vocab: int = 32000) -> list[dict]:
    """Prompt/completion-like batches: the first quarter of each row is prompt (label -100)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(shape["batches"]):
        ids = torch.randint(0, vocab, (shape["batch_size"], seq), generator=g)
        labels = ids.clone()
        labels[:, : seq // 4] = -100
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "labels": labels.to(device)})
    return out


def measure(fn, repeats: int = 1):
    """(result, median seconds, peak bytes above the memory allocated before)."""
    times, peak = [], 0
    result = None
    for _ in range(repeats):
        result = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peak = max(peak, torch.cuda.max_memory_allocated() - base)
    return result, statistics.median(times), peak


def bare_forward_backward(model, batches, params):
    """Forward+backward over the batches, each weight gradient dropped as soon as it exists."""
    keep = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    handles = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in params.values()]
    model.eval()
    for batch in batches:
        model(**batch).loss.backward()
    for h in handles:
        h.remove()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.95b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kendall-n", type=int, default=10**7, help="Kendall sample for the global pairs")
    parser.add_argument("--layer-kendall-n", type=int, default=20_000, help="Kendall sample per layer (the CLI's default)")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--cache-bytes", type=int, default=None,
                        help="sb.score's cache of computed score tensors (default: the library's; 0: none, each read "
                             "computes, as before the cache)")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="score with fast, order-varying GPU kernels (sb.score(..., deterministic=False))")
    args = parser.parse_args(argv)
    sb.runtime.quiet_transformers()
    shape = SHAPES[args.shape]
    model = build(shape, args.seq)
    batches = token_batches(shape, args.seq)
    params = sb.eligible_parameters(model)
    eligible = sum(p.numel() for p in params.values())
    accumulator = 4 * eligible
    rows: dict[str, dict] = {}
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}, torch {torch.__version__}, {args.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B "
          f"parameters, {eligible / 1e9:.3f}B eligible, {shape['batches']} batches of {shape['batch_size']}×{args.seq}, bf16",
          flush=True)

    def record(name, seconds, peak, **extra):
        rows[name] = dict(seconds=seconds, peak_bytes=peak, **extra)
        print(f"  {name}: {seconds:.3f} s, peak +{peak / GIB:.2f} GiB"
              + "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in extra.items()), flush=True)

    _, t_fb, p_fb = measure(lambda: bare_forward_backward(model, batches, params), args.repeats)
    record("forward+backward", t_fb, p_fb)
    scores = None
    for label, metrics in (("grad", ["grad"]), ("five", FIVE), ("grad,snip,fisher", ["grad", "snip", "fisher"])):
        scores = None  # the previous run's accumulators go first
        scores, t, p = measure(lambda: sb.score(model, batches, metrics, params=params, cache_bytes=args.cache_bytes,
                                                        deterministic=not args.nondeterministic), args.repeats)
        record(f"score {label}", t, p, x_forward_backward=t / t_fb, extra_over_fb_in_accumulators=(p - p_fb) / accumulator,
               peak_in_accumulators=p / accumulator)
    print(f"  score cache bound: {scores['grad'].cache.max_bytes / GIB:.2f} GiB "
          f"({'every score kept once computed' if scores['grad'].cache.max_bytes else 'off: computed on each read'})",
          flush=True)
    masks, t, p = measure(lambda: {m: sb.make_mask(s, density=0.01) for m, s in scores.items()})
    record("global 1% masks (3 metrics)", t, p, mask_bytes=sum(m.nbytes() for m in masks.values()))
    # One metric's exact global top-1% from scores computed on access (what the CLI masks), three routes.
    snip = scores["snip"]
    k = round(0.01 * eligible)
    largest = 4 * max(q.numel() for q in params.values())

    def naive_topk():
        return torch.topk(torch.cat([snip[n].reshape(-1) for n in snip]), k, sorted=False).indices

    # torch.topk indexes in int32 on CUDA: over 2^31 concatenated scores (a 7B model's 6.5B) it trips a device-side
    # assert that ends the process, so the naive route is not run there and the table says so.
    naive_runs = eligible < 2**31
    if naive_runs:
        _, t_naive, p_naive = measure(naive_topk, args.repeats)
    else:
        t_naive = p_naive = float("nan")
        print(f"  concatenate + torch.topk: not run ({eligible:,} scores ≥ 2^31: torch.topk cannot take them on CUDA)",
              flush=True)
    fast, t_fast, p_fast = measure(lambda: sb.make_mask(snip, k=k), args.repeats)
    os.environ["SALIENCE_BENCH_TRITON"] = "0"
    slow, t_torch, p_torch = measure(lambda: sb.make_mask(snip, k=k), args.repeats)
    os.environ.pop("SALIENCE_BENCH_TRITON")
    assert all(torch.equal(fast.indices(n), slow.indices(n)) for n in snip), "Triton and torch routes differ"
    out_bytes = 4 * k  # peaks below are beyond each route's output (our int32 positions, topk's int64 indices)
    routes = [("concatenate + torch.topk", t_naive, p_naive - 8 * k)] if naive_runs else []
    for label, t, p in (*routes, ("ours, Triton route", t_fast, p_fast - out_bytes),
                        ("ours, torch route", t_torch, p_torch - out_bytes)):
        record(f"snip global top-1% from scores computed on access: {label}", t, p,
               extra_over_largest_tensor=p / largest, x_naive=t / t_naive)
    del fast, slow
    _, t, p = measure(lambda: analysis.overlap_frame(masks))
    record("Jaccard, all pairs (global + per layer)", t, p)
    if 24 * eligible <= 0.8 * runtime.available_memory(torch.device("cuda")):
        rho, t, p = measure(lambda: sb.spearman(scores["grad"], scores["snip"]))
        record("Spearman grad/snip, all entries", t, p, bytes_per_entry=p / eligible, rho=rho)
    else:
        print("  Spearman over all entries does not fit beside the accumulators: the frame below samples", flush=True)
    for a, b in (("grad", "snip"), ("grad", "fisher"), ("snip", "fisher")):
        tau, t, p = measure(lambda: sb.kendall(scores[a], scores[b], max_n=args.kendall_n), args.repeats)
        record(f"Kendall {a}/{b} on {args.kendall_n:.0e}", t, p, tau=tau)
    frame, t, p = measure(lambda: analysis.rank_correlation_frame(scores, kendall_max_n=args.layer_kendall_n))
    global_rows = frame[frame.layer == "all"]
    record(f"rank_correlation_frame (all pairs; Spearman per layer and global, Kendall on {args.layer_kendall_n})", t, p,
           spearman_n=int(global_rows.n.iloc[0]), spearman_se=float(global_rows.spearman_se.fillna(0).max()))
    print(global_rows.to_string(index=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, torch=torch.__version__, shape=args.shape, seq=args.seq,
                           deterministic=not args.nondeterministic, cache_bytes=args.cache_bytes,
                           score_cache_bytes=scores["grad"].cache.max_bytes,
                           eligible=eligible, accumulator_bytes=accumulator, rows=rows,
                           global_rank_rows=global_rows.to_dict("records")), f, indent=2)


if __name__ == "__main__":
    main()
