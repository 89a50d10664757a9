"""asv: cost of one scoring pass for one metric, five gradient metrics, and per-example fisher."""

import salience_bench as sb

from .common import pin_threads, small_bert, token_batches

FIVE = "grad,snip,plain,taylor_fo,magnitude"


class Scoring:
    params = [["grad", FIVE, "fisher", "wanda", "grasp"]]
    param_names = ["metrics"]
    timeout = 300

    def setup(self, metrics):
        pin_threads()
        self.model = small_bert()
        self.batches = token_batches()
        self.params = sb.eligible_parameters(self.model)

    def time_score(self, metrics):
        sb.score(self.model, self.batches, metrics, params=self.params)

    def peakmem_score(self, metrics):
        sb.score(self.model, self.batches, metrics, params=self.params)


class ForwardBackward:
    """The floor every gradient metric pays: one forward and backward per batch."""

    timeout = 300

    def setup(self):
        pin_threads()
        self.model = small_bert()
        self.batches = token_batches()

    def time_forward_backward(self):
        for batch in self.batches:
            self.model(**batch).loss.backward()
        self.model.zero_grad(set_to_none=True)
