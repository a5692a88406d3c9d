"""Name -> implementation registries whose entries load on first use.

An entry is either the object itself or "module:attribute", imported the first time the entry is read. Listing the
names (for `--method` choices, did-you-mean errors, `prunelab --help`) therefore imports nothing heavy: the
registries of methods and stages can be read without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar, cast

from prunelab.errors import did_you_mean

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """An explicit, ordered registry: one line per entry; unknown names get a did-you-mean error."""

    def __init__(self, what: str, entries: dict[str, str | T] | None = None) -> None:
        self.what = what
        self._entries: dict[str, str | T] = dict(entries or {})

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = cast(T, getattr(importlib.import_module(module), attr))
            self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, value: T) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def lookup(self, name: str) -> T:
        """The entry registered under `name`, or a did-you-mean PrunelabError."""
        if name not in self._entries:
            raise did_you_mean(name, self._entries, self.what)
        return self[name]
