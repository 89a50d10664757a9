"""Every registered accumulator through the one shared contract tester, each against an independent reference."""

import pytest

from .accumulator_tester import check_accumulator, untested
from .reference import example_squared_gradient, input_squared_norms, mean_gradient, per_batch_gradients


def mean_absolute_gradient(model, batches, names):
    per_batch = per_batch_gradients(model, batches, names)
    return {n: sum(g[n].double().abs() for g in per_batch) / len(per_batch) for n in names}


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
