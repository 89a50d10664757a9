"""The scorer registry and the built-in scorers.

Importing this package registers every built-in metric. To add one, write a small
module here with a function decorated by :func:`register` and import it below.
"""

from .registry import (
    ABS_GRAD,
    EXAMPLE_SQ_GRAD,
    HESSIAN_GRAD,
    INPUT_SQ_NORM,
    MEAN_GRAD,
    ModelContext,
    Scorer,
    TensorStats,
    describe_metrics,
    get_scorer,
    list_metrics,
    register,
    resolve_metrics,
)
from . import activation, fisher, gradient, lowrank, second_order, weight_only, whole_model  # noqa: F401,E402  (registration side effect)

__all__ = [
    "ABS_GRAD",
    "EXAMPLE_SQ_GRAD",
    "HESSIAN_GRAD",
    "INPUT_SQ_NORM",
    "MEAN_GRAD",
    "ModelContext",
    "Scorer",
    "TensorStats",
    "describe_metrics",
    "get_scorer",
    "list_metrics",
    "register",
    "resolve_metrics",
]
