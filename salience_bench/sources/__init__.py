"""Model sources: every kind of ``--model`` value is one registered :class:`ModelSource` (one module each).

Importing this package registers the built-in ones, asked in this order: the bundled MiniLM, packaged GGUF models,
GGUF files, local folders, hub names. To add one, write a module here with a class decorated by
:func:`register_source` and import it below (before ``local``, whose hub source takes any name).
"""

from .base import MODEL_SOURCES, ModelSource, describe_sources, register_source, resolve_model
from . import bundled, gguf, local  # noqa: F401,E402  (registration, in this order)
from .bundled import BUNDLED_MODEL, bundled_model_path  # noqa: E402

__all__ = ["BUNDLED_MODEL", "MODEL_SOURCES", "ModelSource", "bundled_model_path", "describe_sources",
           "register_source", "resolve_model"]
