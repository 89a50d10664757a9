"""A name → object registry with errors that list the valid names (accumulators, training methods)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import SalienceBenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered objects of one ``kind`` (e.g. "training method"), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not name or name in self.entries:
            raise ValueError(f"{self.kind} name {name!r} is empty or already registered")
        self.entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self.entries:
            raise SalienceBenchError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.entries)}")
        return self.entries[name]

    def instances(self) -> Callable[[type], type]:
        """A class decorator registering an instance of the class under its ``name`` (mask scopes, structures)."""

        def register(cls: type) -> type:
            self.add(cls.name, cls())
            return cls

        return register

    def copy(self) -> "Registry[T]":
        clone = Registry[T](self.kind)
        clone.entries = dict(self.entries)
        return clone
