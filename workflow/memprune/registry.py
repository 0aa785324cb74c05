"""A registry of plug-ins: every module of a package that defines an entry under one attribute name (LOCALIZER,
VARIANT), found once by importing the package's modules; entries registered from outside stay beside them.

The package is the one `memprune` was imported from: the Snakefile puts its checkout's `workflow/` first on
`sys.path`, so the plan and the jobs find the same modules. A module that fails to import, an attribute of the
wrong type and two modules claiming one name stop the lookup naming the module files."""

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
        package = importlib.import_module(self.package)
        found: dict = {}  # name -> the module file that defines it
        for mod in pkgutil.iter_modules(package.__path__):
            name = f"{self.package}.{mod.name}"
            try:
                module = importlib.import_module(name)
            except InputError:
                raise
            except Exception as e:  # a plug-in's own bug: name its file, keep the traceback
                where = f"{getattr(mod.module_finder, 'path', '?')}/{mod.name}.py"
                raise InputError(f"{self.kind} module {where} failed to import: {type(e).__name__}: {e}") from e
            entry = getattr(module, self.attribute, None)
            if entry is None:
                continue
            if not isinstance(entry, self.entry_type):
                raise InputError(f"{getattr(module, '__file__', name)}: {self.attribute} is a "
                                 f"{type(entry).__name__}, not a {self.entry_type.__name__}")
            if entry.name in found:
                raise InputError(f"two {self.kind} modules define {entry.name!r}: {found[entry.name]} and "
                                 f"{module.__file__}; rename one (its `name=`)")
            found[entry.name] = module.__file__
            self.entries.setdefault(entry.name, entry)
        self._discovered = True

    def get(self, name: str):
        self._discover()
        if name not in self.entries:
            raise InputError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self.entries)
