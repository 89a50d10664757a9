"""A name → object registry with errors that list the valid names: every pluggable axis (metrics, accumulators,
training methods, mask scopes and structures, tasks, model sources) registers in one."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import SalienceBenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered objects of one ``kind`` (e.g. "training method"), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, T] = {}
        self.aliases: dict[str, str] = {}  # another name → the entry's own name

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        for taken in (name, *aliases):
            if not taken or taken in self.entries or taken in self.aliases:
                raise ValueError(f"{self.kind} name {taken!r} is empty or already registered")
        self.entries[name] = entry
        self.aliases.update({alias: name for alias in aliases})
        return entry

    def get(self, name: str) -> T:
        name = self.aliases.get(name, name)
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
        clone.entries, clone.aliases = dict(self.entries), dict(self.aliases)
        return clone
