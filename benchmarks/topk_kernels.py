"""Block size and warps of the Triton top-k kernels (salience_bench.fast_topk), timed on one GPU:

    python -m benchmarks.topk_kernels [--n 1e9] [--repeats 5]

Each configuration's exact global top-1% of ``--n`` float32 scores in 200 tensors (masks written), beside
concatenate + torch.topk in the same run, and each configuration's masks checked equal to the default's.
"""

from __future__ import annotations

import argparse
import itertools

import torch

import salience_bench as sb
from salience_bench import fast_topk

from .ratios import _median_time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=1e9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n = int(args.n)
    g = torch.Generator(device="cuda").manual_seed(0)
    weights = torch.rand(200, generator=torch.Generator().manual_seed(1)) + 0.5
    sizes = (weights / weights.sum() * n).long()
    sizes[-1] += n - int(sizes.sum())
    scores = {f"t{i}": torch.rand(int(m), generator=g, device="cuda") for i, m in enumerate(sizes)}
    k = n // 100
    naive = _median_time(lambda: torch.topk(torch.cat([s.reshape(-1) for s in scores.values()]), k, sorted=False),
                         "cuda", args.repeats)
    reference = sb.make_mask(scores, k=k)
    default = (fast_topk.BLOCK_BITS, fast_topk.NUM_WARPS, fast_topk.REGIONS)
    print(f"{torch.cuda.get_device_name()}: {n:.0e} scores, concatenate + torch.topk {naive * 1e3:.2f} ms")
    print("| block | warps | counter regions | masks written | × naive |")
    print("|---:|---:|---:|---:|---:|")
    for bits, warps, regions in itertools.product((11, 12), (4, 8), (64, 256, 1024, 4096)):
        fast_topk.BLOCK_BITS, fast_topk.BLOCK, fast_topk.NUM_WARPS, fast_topk.REGIONS = bits, 1 << bits, warps, regions
        try:
            t = _median_time(lambda: sb.make_mask(scores, k=k), "cuda", args.repeats)
            same = all(torch.equal(sb.make_mask(scores, k=k).indices(m), reference.indices(m)) for m in scores)
        except Exception as error:  # a configuration the compiler refuses (registers, shared memory)
            print(f"| {1 << bits} | {warps} | {regions} | failed: {type(error).__name__} | |")
            continue
        print(f"| {1 << bits} | {warps} | {regions} | {t * 1e3:.2f} ms | {t / naive:.2f}{'' if same else ' MASKS DIFFER'} |")
    fast_topk.BLOCK_BITS, fast_topk.NUM_WARPS, fast_topk.REGIONS = default
    fast_topk.BLOCK = 1 << default[0]


if __name__ == "__main__":
    main()
