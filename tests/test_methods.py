"""Every registered training method through the one shared contract tester."""

import pytest

from salience_bench.training.methods import list_methods

from .method_tester import check_method


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    check_method(name)
