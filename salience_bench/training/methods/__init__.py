"""Fine-tuning methods, one module each, behind :class:`TrainingMethod`.

Importing this package registers the built-in methods. To add one, write a module here with a
class decorated by :func:`register_method` and import it below.
"""

from .base import (
    MethodOptions,
    RunSetup,
    TrainingMethod,
    check_method_options,
    freeze_all_but,
    get_method,
    head_parameters,
    list_baselines,
    list_methods,
    method_options,
    register_method,
)
from . import sparse, full, lora, pissa, shira, supertuning, base_model  # noqa: F401,E402  (registration side effect)
from .lora import lora_parameters_per_rank, matched_lora_rank, wrap_lora  # noqa: E402

__all__ = [
    "MethodOptions", "RunSetup", "TrainingMethod", "check_method_options", "freeze_all_but", "get_method", "head_parameters",
    "list_baselines", "list_methods", "method_options", "lora_parameters_per_rank", "matched_lora_rank", "register_method", "wrap_lora",
]
