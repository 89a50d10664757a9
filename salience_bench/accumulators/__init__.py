"""Accumulators: the statistics one pass over the scoring batches gathers for scorers.

Importing this package registers the built-in ones. To add one, write a module here with a
class decorated by :func:`register_accumulator` (see :mod:`.base` for the protocol) and import it below.
"""

from .base import Accumulator, get_accumulator, list_accumulators, register_accumulator, with_dependencies
from . import gradient_means, example_sq_grad, input_sq_norm  # noqa: F401,E402  (registration)

MEAN_GRAD = gradient_means.MeanGradient.name
ABS_GRAD = gradient_means.MeanAbsoluteGradient.name
EXAMPLE_SQ_GRAD = example_sq_grad.ExampleSquaredGradients.name
INPUT_SQ_NORM = input_sq_norm.InputSquaredNorms.name

__all__ = [
    "ABS_GRAD", "Accumulator", "EXAMPLE_SQ_GRAD", "INPUT_SQ_NORM", "MEAN_GRAD",
    "get_accumulator", "list_accumulators", "register_accumulator", "with_dependencies",
]
