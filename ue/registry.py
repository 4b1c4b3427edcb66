"""Name -> object registries that reject unknown and duplicate names with a helpful message.

Modelled on PEFT's method registry: registration is explicit, a duplicate name is an error, and a
lookup of an unknown name lists the known ones plus the closest matches ("did you mean").
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, known: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The registered names closest to ``name`` (case-insensitive), best first."""
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]


def unknown_name_message(kind: str, name: object, known: list[str] | tuple[str, ...]) -> str:
    """One sentence naming the bad value, every allowed value and the closest ones."""
    msg = f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}"
    close = did_you_mean(str(name), known)
    if close:
        msg += f". Did you mean {' or '.join(repr(c) for c in close)}?"
    return msg


class Registry(Generic[T]):
    """A named collection of plug-ins (heads, losses, ...).

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("ce")
    ... def ce(logits, labels): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits and '_'")

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, list(self._items))) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
