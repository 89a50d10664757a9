"""asv: mask overlap and rank correlation, ours (torch) vs scipy."""

import scipy.stats
import torch

import salience_bench as sb

from .common import pin_threads


class RankCorrelation:
    params = [[10**4, 10**5, 10**6], ["ours", "scipy"]]
    param_names = ["n", "implementation"]
    timeout = 300

    def setup(self, n, implementation):
        pin_threads()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, generator=g)
        y = x + torch.randn(n, generator=g)
        # Rounded copies have many ties, the case a plain argsort rank gets wrong.
        self.x, self.y = (x * 4).round(), (y * 4).round()
        self.xn, self.yn = self.x.numpy(), self.y.numpy()

    def time_spearman(self, n, implementation):
        if implementation == "ours":
            sb.spearman(self.x, self.y)
        else:
            scipy.stats.spearmanr(self.xn, self.yn)

    def time_kendall(self, n, implementation):
        if implementation == "ours":
            sb.kendall(self.x, self.y)
        else:
            scipy.stats.kendalltau(self.xn, self.yn)


class Overlap:
    params = [[10**6, 10**7]]
    param_names = ["n"]

    def setup(self, n):
        pin_threads()
        g = torch.Generator().manual_seed(0)
        self.a = torch.rand(n, generator=g) < 0.01
        self.b = torch.rand(n, generator=g) < 0.01

    def time_jaccard(self, n):
        sb.jaccard(self.a, self.b)
