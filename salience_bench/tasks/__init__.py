"""Tasks: what a model is fine-tuned and evaluated for, one registered :class:`Task` per module.

Importing this package registers the built-in ones (``classification``, ``causal-lm``). To add one, write a module
here with a class decorated by :func:`register_task` and import it below; its datasets say ``task = <name>``.
"""

from .base import TASKS, Task, check_task_name, get_task, infer_task, list_tasks, loss_units_of, register_task
from . import classification, causal_lm  # noqa: F401,E402  (registration, in this order)
from .causal_lm import LM_COLUMNS, exact_match, exact_match_columns, exact_match_examples  # noqa: E402
from .classification import TASK_COLUMNS, task_metrics  # noqa: E402

__all__ = ["LM_COLUMNS", "TASKS", "TASK_COLUMNS", "Task", "check_task_name", "exact_match", "exact_match_columns", "exact_match_examples",
           "get_task", "infer_task", "list_tasks", "loss_units_of", "register_task", "task_metrics"]
