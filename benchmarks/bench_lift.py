"""asv: LIFT's rank reduction (exact SVD below 4096 rows/columns, randomized above)."""

import torch

from salience_bench.scorers.lowrank import low_rank_approximation

from .common import pin_threads


class LiftSVD:
    params = [["384x384", "1536x384", "1024x2048", "8192x512"], [32]]
    param_names = ["shape", "rank"]
    timeout = 300

    def setup(self, shape, rank):
        pin_threads(2)
        rows, cols = (int(x) for x in shape.split("x"))
        self.weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))

    def time_low_rank(self, shape, rank):
        low_rank_approximation(self.weight, rank)
