"""asv: one fine-tuning step: sparse engine vs dense grads × mask vs LoRA vs full fine-tuning."""

import torch

import salience_bench as sb
from salience_bench.training import (
    SparseDeltaEngine,
    freeze_all_but,
    head_parameters,
    lora_parameters_per_rank,
    optimizer_state_bytes,
    wrap_lora,
)

from .common import dense_masked_gradients_, pin_threads, small_bert, token_batches


class TrainStep:
    params = [["sparse", "dense-masked", "lora", "full"]]
    param_names = ["method"]
    timeout = 300

    def setup(self, method):
        pin_threads()
        model = small_bert(hidden=256, layers=2)
        self.batch = token_batches(num_batches=1, batch_size=16, length=64)[0]
        params = sb.eligible_parameters(model)
        head = head_parameters(model)
        k = 4 * lora_parameters_per_rank(params)  # LoRA r=4's count
        self.engine = self.masks = None
        if method == "full":
            opt_params = list(model.parameters())
        elif method == "lora":
            freeze_all_but(model, {})
            model = wrap_lora(model, params, rank=4)
            opt_params = [p for p in model.parameters() if p.requires_grad]
        else:
            self.masks = sb.make_mask(sb.score(model, None, ["magnitude"], params=params)["magnitude"], k=k)
            if method == "sparse":
                freeze_all_but(model, head)
                self.engine = SparseDeltaEngine(model, self.masks)
                opt_params = self.engine.parameters() + list(head.values())
            else:
                freeze_all_but(model, {**params, **head})
                opt_params = [*params.values(), *head.values()]
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(opt_params, lr=1e-4)
        self.method = method
        self.step()  # optimizer state exists from here on

    def step(self):
        self.model(**self.batch).loss.backward()
        if self.method == "dense-masked":
            dense_masked_gradients_(self.model, self.masks)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.engine is not None:
            self.engine.sync_weights()

    def time_step(self, method):
        self.step()

    def track_optimizer_state_bytes(self, method):
        return optimizer_state_bytes(self.optimizer)

    track_optimizer_state_bytes.unit = "bytes"
