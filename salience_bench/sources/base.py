"""The model-source protocol and its registry: what ``--model`` may name, and how each kind becomes a folder or a
Hugging Face name that transformers loads."""

from __future__ import annotations

from typing import Callable, ClassVar

from ..errors import SalienceBenchError
from ..registry import Registry

Log = Callable[[str], None]


class ModelSource:
    """One kind of ``--model`` value. :meth:`resolve` returns what transformers loads (a folder or a hub name) for a
    value of this kind, None for a value of another kind, or raises a one-line error for a bad value of this kind.
    Sources are asked in registration order; the first that answers wins."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""  # how ``--model`` spells a value of this kind, for the help and the errors

    def resolve(self, model: str, *, log: Log | None = None) -> str | None:
        raise NotImplementedError


MODEL_SOURCES: Registry[ModelSource] = Registry("model source")
register_source = MODEL_SOURCES.instances()  # class decorator: the source ``cls.name``


def describe_sources() -> str:
    """The kinds of ``--model`` value, as a phrase: "'bundled' (…), a packaged GGUF model (…), …"."""
    return ", ".join(source.help for source in MODEL_SOURCES.entries.values())


def resolve_model(model: str, *, log: Log | None = None) -> str:
    """The folder or hub name transformers loads for ``model``, from the first source that recognises it."""
    if not isinstance(model, str) or not model.strip():
        raise SalienceBenchError(f"model {model!r} must be {describe_sources()}")
    for source in MODEL_SOURCES.entries.values():
        found = source.resolve(model, log=log)
        if found is not None:
            return found
    raise SalienceBenchError(f"model {model!r} is none of: {describe_sources()}")
