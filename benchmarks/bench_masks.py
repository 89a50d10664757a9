"""asv: exact global top-k mask construction, streaming (ours) vs concatenate-then-topk."""

import torch

import salience_bench as sb

from .common import pin_threads, score_dict


def concat_topk(scores, k):
    """The naive route: one big tensor, torch.topk, scatter back (not tie-deterministic)."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.topk(flat, k).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = mask[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return out


class GlobalTopK:
    params = [[10**5, 10**6, 10**7], ["streaming", "concat"]]
    param_names = ["n", "method"]
    timeout = 300

    def setup(self, n, method):
        pin_threads()
        self.scores = score_dict(n)
        self.k = round(0.01 * n)

    def _run(self, n, method):
        if method == "streaming":
            return sb.make_mask(self.scores, k=self.k)
        return concat_topk(self.scores, self.k)

    def time_global_topk(self, n, method):
        self._run(n, method)

    def peakmem_global_topk(self, n, method):
        self._run(n, method)


class Structures:
    params = [["row", "block", "nm"]]
    param_names = ["structure"]

    def setup(self, structure):
        pin_threads()
        g = torch.Generator().manual_seed(0)
        self.scores = {f"w{i}": torch.rand(384, 1536, generator=g) for i in range(4)}

    def time_structured_mask(self, structure):
        if structure == "nm":
            sb.make_mask(self.scores, structure="nm")
        else:
            sb.make_mask(self.scores, density=0.05, structure=structure, block_size=64)
