"""A small typed registry: register by decorator, look up with a did-you-mean error.

One registry per kind of thing (methods, attacks, models, datasets, teacher sources); adding a
thing is one file plus one decorator, never an edit to an if/elif chain.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str = "", source: str = "", **extra: Any) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("kd", description=...)``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description=description, source=source, **extra)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, description: str = "", source: str = "", **extra: Any) -> None:
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, description, source, dict(extra))

    def suggestion(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(self._entries))}"

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise a one-line did-you-mean error."""
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{self.suggestion(name)}")
        return name

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.check(name)]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str, str]]:
        return [(e.name, e.description, e.source) for e in self]
