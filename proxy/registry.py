"""Find adapter classes by config `kind` through Python entry points.

Only the kinds a config names are imported, so an unused heavy adapter costs nothing.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


class Registry:
    def __init__(self, group: str, extra: dict[str, type] | None = None) -> None:
        self.group = group
        self._eps = {ep.name: ep for ep in entry_points(group=group)}
        self._loaded: dict[str, type] = dict(extra or {})

    def kinds(self) -> list[str]:
        return sorted({*self._eps, *self._loaded})

    def get(self, kind: str) -> Any:
        if kind in self._loaded:
            return self._loaded[kind]
        ep = self._eps.get(kind)
        if ep is None:
            return None
        cls = ep.load()
        self._loaded[kind] = cls
        return cls
