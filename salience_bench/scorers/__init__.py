"""The scorer registry and the built-in scorers.

Importing this package registers every built-in metric. To add one, write a small
module here with a function decorated by :func:`register` and import it below.
"""

from .registry import (
    EXAMPLE_SQ_GRAD,
    MEAN_GRAD,
    Scorer,
    TensorStats,
    describe_metrics,
    get_scorer,
    list_metrics,
    register,
    resolve_metrics,
)
from . import weight_only, gradient, fisher  # noqa: F401,E402  (registration side effect)

__all__ = [
    "EXAMPLE_SQ_GRAD",
    "MEAN_GRAD",
    "Scorer",
    "TensorStats",
    "describe_metrics",
    "get_scorer",
    "list_metrics",
    "register",
    "resolve_metrics",
]
