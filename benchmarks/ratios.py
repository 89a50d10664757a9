"""Cost ratios measured side by side in one process: ``python -m benchmarks.ratios [--only P1,P2,P3]``.

P1: scoring five gradient-derived metrics (grad, snip, plain, taylor_fo, magnitude) in one pass,
    against scoring grad alone and against a plain forward+backward over the same batches
    (bundled model and data); also fisher (per-example gradients through hooks).
P2: exact global top-k over ``--p2-n`` float32 scores in 200 tensors: our streaming threshold
    search (radix select, no concatenation) against concatenate + torch.topk; time and extra
    memory (CUDA: max_memory_allocated above the scores; CPU: time only).
P3: Spearman ρ with tie-averaged ranks and exact Kendall τ-b of two ``--p3-n`` score sets on this
    device, against scipy.stats on the CPU; both must agree to 1e-6.

Each variant runs ``--repeats`` times, interleaved so drift in machine load hits all of them;
the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import salience_bench as sb
from salience_bench.models import eligible_parameters
from salience_bench.runtime import quiet_transformers, to_device

FIVE = ["grad", "snip", "plain", "taylor_fo", "magnitude"]


def forward_backward(model, batches, params):
    """The floor: what any gradient metric must cost (forward + backward, grads of scored tensors only)."""
    keep = {id(p) for p in params.values()}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    model.eval()
    for batch in batches:
        model(**batch).loss.backward()
        for p in params.values():
            p.grad = None
    for p in model.parameters():
        p.requires_grad_(flags[id(p)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="P1,P2,P3", help="which figures to measure (default: %(default)s)")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--synthetic", action="store_true",
                        help="P1 on a random-initialised BERT of all-MiniLM-L6-v2's shape with random tokens "
                             "(for machines without the bundled model package)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--p2-n", type=float, default=None, help="scores for P2 (default: 1e9 on CUDA, 1e8 on CPU)")
    parser.add_argument("--p3-n", type=float, default=1e7, help="entries for P3 (default: 1e7)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="print the profiler's kernel tables (P1: one forward+backward and one grad scoring; P2: one "
                             "global top-k with masks written; P3: one Spearman and one Kendall call)")
    parser.add_argument("--torch-route", action="store_true",
                        help="P2: also time the pure-torch route (SALIENCE_BENCH_TRITON=0) beside the default")
    args = parser.parse_args(argv)
    args.device = str(sb.resolve_device(args.device))
    only = {x.strip().upper() for x in args.only.split(",")}
    print(f"device={args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}) "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    if "P1" in only:
        p1(args)
    if "P2" in only:
        p2(args)
    if "P3" in only:
        p3(args)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _extra_memory(fn, device: str) -> float:
    """Peak bytes allocated by ``fn`` above what was allocated before it (CUDA only)."""
    if not device.startswith("cuda"):
        return float("nan")
    _sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return float(peak)


def p2(args) -> None:
    from salience_bench.masks import kth_largest_key

    n = int(args.p2_n or (1e9 if args.device.startswith("cuda") else 1e8))
    g = torch.Generator(device=args.device).manual_seed(0)
    weights = torch.rand(200, generator=torch.Generator().manual_seed(1)) + 0.5
    sizes = (weights / weights.sum() * n).long()
    sizes[-1] += n - int(sizes.sum())
    scores = {f"t{i}": torch.rand(int(m), generator=g, device=args.device) for i, m in enumerate(sizes)}
    k = n // 100
    largest = max(s.numel() for s in scores.values()) * 4

    def streaming():
        return kth_largest_key(scores, k)

    def naive():
        return torch.topk(torch.cat([s.reshape(-1) for s in scores.values()]), k, sorted=False)

    def streaming_mask():
        return sb.make_mask(scores, k=k)

    t_ours = _median_time(streaming, args.device, args.repeats)
    t_naive = _median_time(naive, args.device, args.repeats)
    t_mask = _median_time(streaming_mask, args.device, args.repeats)
    m_ours, m_naive = _extra_memory(streaming, args.device), _extra_memory(naive, args.device)
    m_mask = _extra_memory(streaming_mask, args.device) - k * 4  # beyond the int32 positions it returns
    # The threshold must be the naive route's k-th value.
    kth = naive().values.min()
    threshold, _ = kth_largest_key(scores, k)
    from salience_bench.masks import _ordered_keys

    assert threshold == int(_ordered_keys(kth.reshape(1)).item()), "streaming threshold differs from torch.topk"
    rows = [("streaming threshold (ours)", t_ours, m_ours), ("concatenate + torch.topk", t_naive, m_naive),
            ("ours, masks written (int32 positions)", t_mask, m_mask)]
    if args.torch_route:
        import os

        os.environ["SALIENCE_BENCH_TRITON"] = "0"
        try:
            fast = streaming_mask()
            rows += [("torch route, threshold", _median_time(streaming, args.device, args.repeats),
                      _extra_memory(streaming, args.device)),
                     ("torch route, masks written", _median_time(streaming_mask, args.device, args.repeats),
                      _extra_memory(streaming_mask, args.device) - k * 4)]
            slow = streaming_mask()
            assert all(torch.equal(fast.indices(n), slow.indices(n)) for n in scores), "routes differ"
            print("Triton and torch routes: identical masks")
        finally:
            os.environ.pop("SALIENCE_BENCH_TRITON")
    print(f"\nP2: exact global top-1% of {n:.0e} float32 scores in 200 tensors (largest {largest / 2**20:.1f} MiB)")
    print("| route | median time | extra memory | extra memory / largest tensor |")
    print("|---|---:|---:|---:|")
    for name, t, mem in rows:
        print(f"| {name} | {t * 1e3:.2f} ms | {mem / 2**20:.1f} MiB | {mem / largest:.2f} |")
    print(f"speed-up of ours over the naive route: threshold {t_naive / t_ours:.2f}x, masks {t_naive / t_mask:.2f}x")
    if args.profile and args.device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            streaming_mask()
            _sync(args.device)
        _print_profile(prof)


def _print_profile(prof, rows: int = 15) -> None:
    try:
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=rows))
    except (AttributeError, KeyError, ValueError):  # older torch names the column cuda_time_total
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows))


def p3(args) -> None:
    import scipy.stats

    n = int(args.p3_n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    y = 0.5 * x + torch.randn(n, generator=g)
    x, y = (x * 8).round(), (y * 8).round()  # many ties: the case a plain argsort rank gets wrong
    xd, yd = x.to(args.device), y.to(args.device)
    xn, yn = x.numpy(), y.numpy()
    rows = []
    for name, ours, ref in [
        ("Spearman ρ (tie-averaged ranks)", lambda: sb.spearman(xd, yd), lambda: scipy.stats.spearmanr(xn, yn).statistic),
        ("Kendall τ-b (exact)", lambda: sb.kendall(xd, yd), lambda: scipy.stats.kendalltau(xn, yn).statistic),
    ]:
        t_ours = _median_time(ours, args.device, args.repeats)
        t0 = time.perf_counter()
        reference = ref()
        t_ref = time.perf_counter() - t0
        rows.append((name, t_ours, t_ref, abs(ours() - reference)))
    print(f"\nP3: rank correlation of two {n:.0e}-entry score sets (ties included), ours on {args.device} vs scipy on CPU")
    print("| statistic | ours | scipy (CPU) | speed-up | abs difference |")
    print("|---|---:|---:|---:|---:|")
    for name, t_ours, t_ref, diff in rows:
        print(f"| {name} | {t_ours * 1e3:.1f} ms | {t_ref * 1e3:.0f} ms | {t_ref / t_ours:.0f}x | {diff:.1e} |")
    if args.profile and args.device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        for name, fn in (("Spearman", lambda: sb.spearman(xd, yd)), ("Kendall", lambda: sb.kendall(xd, yd))):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                _sync(args.device)
            print(f"\nprofile of one {name} call")
            _print_profile(prof, rows=12)


def p1(args) -> None:
    quiet_transformers()
    if args.synthetic:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
            num_labels=2)).to(args.device)
        g = torch.Generator().manual_seed(1)
        batches = [{"input_ids": torch.randint(1, 30522, (args.batch_size, args.max_length), generator=g).to(args.device),
                    "attention_mask": torch.ones(args.batch_size, args.max_length, dtype=torch.long, device=args.device),
                    "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(args.device)}
                   for _ in range(args.batches)]
    else:
        data = sb.load_dataset("sst2", "train")
        model, tok = sb.load_model_and_tokenizer(args.model, num_labels=2)
        model.to(args.device)
        batches = [
            to_device(b, args.device)
            for b in sb.make_batches(data, tok, batch_size=args.batch_size, num_batches=args.batches,
                                     max_length=args.max_length)
        ]
    params = eligible_parameters(model)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    variants = {
        "forward+backward": lambda: forward_backward(model, batches, params),
        "grad": lambda: sb.score(model, batches, ["grad"], params=params),
        "five (grad,snip,plain,taylor_fo,magnitude)": lambda: sb.score(model, batches, FIVE, params=params),
        "fisher": lambda: sb.score(model, batches, ["fisher"], params=params),
        "five + fisher": lambda: sb.score(model, batches, [*FIVE, "fisher"], params=params),
        # The scoring pass runs deterministic kernels by default (masks that repeat bit for bit on a GPU); the
        # bare forward+backward above does not. These two rows separate that choice's cost from the scoring's.
        "grad, fast kernels (deterministic=False)": lambda: sb.score(model, batches, ["grad"], params=params,
                                                                     deterministic=False),
        "forward+backward, deterministic kernels": lambda: _with_deterministic_kernels(model, batches, params),
    }
    variants["grad"]()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    floor, grad = med["forward+backward"], med["grad"]
    print(f"\nP1: scoring cost, batches={args.batches}x{args.batch_size} max_length={args.max_length} "
          f"repeats={args.repeats}")
    print("| variant | median s | × forward+backward | × grad | all runs (s) |")
    print("|---|---:|---:|---:|---|")
    for name, t in med.items():
        runs = ", ".join(f"{x:.3f}" for x in times[name])
        print(f"| {name} | {t:.3f} | {t / floor:.3f} | {t / grad:.3f} | {runs} |")
    if args.profile and args.device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        for name in ("forward+backward", "grad"):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                variants[name]()
                sync()
            print(f"\nprofile of one {name} run")
            _print_profile(prof, rows=12)


def _with_deterministic_kernels(model, batches, params):
    """The bare forward+backward under the scoring pass's own mode (deterministic kernels, restored after)."""
    from salience_bench.model_state import ScoringMode

    with ScoringMode(model, params, deterministic=True):
        forward_backward(model, batches, params)


if __name__ == "__main__":
    main()
