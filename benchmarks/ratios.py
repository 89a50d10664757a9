"""Cost ratios measured side by side in one process: ``python -m benchmarks.ratios``.

P1: scoring five gradient-derived metrics (grad, snip, plain, taylor_fo, magnitude) in one pass,
against scoring grad alone and against a plain forward+backward over the same batches.
Also reports fisher (per-example gradients through hooks) and all six together.

Each variant runs ``--repeats`` times, interleaved so drift in machine load hits all of them;
the median is reported. Uses the bundled model and data unless told otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import salience_bench as sb
from salience_bench.models import eligible_parameters

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
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    data = sb.load_dataset("sst2", "train")
    model, tok = sb.load_model_and_tokenizer(args.model, num_labels=2)
    model.to(args.device)
    batches = [
        {k: v.to(args.device) for k, v in b.items()}
        for b in sb.make_batches(data, tok, batch_size=args.batch_size, num_batches=args.batches, max_length=args.max_length)
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
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batches={args.batches}x{args.batch_size} max_length={args.max_length} repeats={args.repeats}")
    print("| variant | median s | × forward+backward | × grad | all runs (s) |")
    print("|---|---:|---:|---:|---|")
    for name, t in med.items():
        runs = ", ".join(f"{x:.3f}" for x in times[name])
        print(f"| {name} | {t:.3f} | {t / floor:.3f} | {t / grad:.3f} | {runs} |")


if __name__ == "__main__":
    main()
