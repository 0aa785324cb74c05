"""A registry of plug-ins: every module of a package that defines an entry under one attribute name (LOCALIZER,
VARIANT), found once by importing the package's modules; entries registered from outside stay beside them."""

from __future__ import annotations

import importlib
import pkgutil

from memprune.errors import InputError


class Registry:
    def __init__(self, package: str, attribute: str, kind: str, entry_type: type):
        self.package, self.attribute, self.kind, self.entry_type = package, attribute, kind, entry_type
        self.entries: dict = {}
        self._discovered = False

    def register(self, entry):
        self.entries[entry.name] = entry
        return entry

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{self.package}.{mod.name}")
            entry = getattr(module, self.attribute, None)
            if isinstance(entry, self.entry_type):
                self.entries.setdefault(entry.name, entry)

    def get(self, name: str):
        self._discover()
        if name not in self.entries:
            raise InputError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self.entries)
