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

# the Python entry-point group of each kind users may extend from an installed package (rkbench/plugins.py)
ENTRY_POINT_GROUPS = {"method": "rkbench.methods", "attack": "rkbench.attacks", "model": "rkbench.models",
                      "dataset": "rkbench.datasets"}


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)


class Registry(Generic[T]):
    """``base``: the class every registered class must subclass (``Method`` for methods); a registry
    of factories (models) passes ``base=None`` and gets any callable."""

    def __init__(self, kind: str, entry_point_group: str | None = None, base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self.entry_point_group = entry_point_group or ENTRY_POINT_GROUPS.get(kind)
        self._plugins_loaded = False

    def _load_plugins(self) -> None:
        """Once, at first use: installed entry points of this kind, and the plugin files a parent
        process named (RKBENCH_PLUGINS); see rkbench/plugins.py."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin that looks a name up must not load plugins again
        from . import plugins

        plugins.load_environment_plugins()
        if self.entry_point_group:
            plugins.load_entry_points(self.entry_point_group, self)

    def register(self, name: str, *, description: str = "", source: str = "", **extra: Any) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("kd", description=...)``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description=description, source=source, **extra)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, description: str = "", source: str = "", **extra: Any) -> None:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {getattr(obj, '__name__', obj)!r} is not a subclass of "
                            f"{self.base.__module__}.{self.base.__qualname__}")
        if self.base is None and not callable(obj):
            raise TypeError(f"{self.kind} {name!r}: {obj!r} is not callable")
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, description, source, dict(extra))

    def suggestion(self, name: str) -> str:
        self._load_plugins()
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(self._entries))}"

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise a one-line did-you-mean error."""
        self._load_plugins()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{self.suggestion(name)}")
        return name

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.check(name)]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str, str]]:
        return [(e.name, e.description, e.source) for e in self]
