"""The scorer registry and the built-in scorers.

Importing this package registers every built-in metric. To add one, write a small module here
with a function decorated by :func:`register` (per tensor) or :func:`register_model_scorer`
(reruns the model) and import it below.
"""

from .registry import *  # noqa: F401,F403  (the registry's public names, listed in its __all__)
from .registry import __all__  # noqa: F401
from . import activation, fisher, gradient, lowrank, second_order, weight_only, whole_model  # noqa: F401,E402  (registration side effect)
