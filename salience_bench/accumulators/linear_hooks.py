"""Forward hooks on the linear layers that own the scored weights."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from torch import nn

from ..models import linear_modules_for
from .base import Accumulator


class LinearHookAccumulator(Accumulator):
    """An accumulator fed by a forward hook on each scored weight's linear layer."""

    purpose = "this statistic is"  # completes the error for a scored tensor that is not a linear weight

    def __init__(self, model: nn.Module, params):
        super().__init__(model, params)
        self.modules = linear_modules_for(model, self.params, self.purpose)

    def forward_hook(self, name: str) -> Callable:
        raise NotImplementedError

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = [m.register_forward_hook(self.forward_hook(name)) for name, m in self.modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
