"""Every registered accumulator through the one shared contract tester, each against an independent reference."""

import pytest
import torch

from .accumulator_tester import check_accumulator, untested
from .reference import example_squared_gradient, mean_gradient, per_batch_gradients


def mean_absolute_gradient(model, batches, names):
    per_batch = per_batch_gradients(model, batches, names)
    return {n: sum(g[n].double().abs() for g in per_batch) / len(per_batch) for n in names}


def input_squared_norms(model, batches, names):
    """Σ x_j² over every real token, each example run alone and unpadded, the inputs read by forward hooks."""
    modules = {n: model.get_submodule(n.rsplit(".", 1)[0]) for n in names}
    sums = {n: torch.zeros(1, m.weight.shape[1], dtype=torch.float64) for n, m in modules.items()}

    def record(name):
        def hook(module, inputs, output):
            sums[name] += inputs[0].double().reshape(-1, inputs[0].shape[-1]).square().sum(0)

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            for i in range(batch["input_ids"].shape[0]):
                length = int(batch["attention_mask"][i].sum())
                model(**{k: v[i:i + 1, :length] for k, v in batch.items() if k != "labels"})
    for handle in handles:
        handle.remove()
    return sums


REFERENCES = {
    "mean_grad": (mean_gradient, 1e-4),
    "abs_grad": (mean_absolute_gradient, 1e-4),
    "example_sq_grad": (example_squared_gradient, 2e-3),  # batched padded attention vs unpadded single runs
    "input_sq_norm": (input_squared_norms, 1e-4),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_accumulator_contract(name):
    reference, rtol = REFERENCES[name]
    check_accumulator(name, reference, rtol=rtol)


def test_every_registered_accumulator_has_a_contract_test():
    assert untested(set(REFERENCES)) == []
