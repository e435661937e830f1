"""One registry per kind (datasets, backbones, mixers), filled where each entry is defined."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from msmix_cli.errors import BadInput

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to an entry; the CLI's choices, recipe validation and the test matrix read `names()`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise BadInput(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
