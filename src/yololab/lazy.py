"""Package namespaces whose names are imported on first use (PEP 562).

A package ``__init__`` that imports every submodule makes ``import yololab.data.errors`` load torch,
albumentations and matplotlib; with lazy exports only the submodule asked for is imported, and
``from yololab.data import YoloDataset`` still works.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable

EXPORTS_KEY = "__lazy_exports__"  # {name: submodule} kept in the package's namespace


class LazyPackage(types.ModuleType):
    """A package whose exported names stay what they are when a submodule of the same name is imported.

    The import system binds every imported submodule to its package's attribute; ``yololab.evaluate.nms``
    (the module) would then hide ``yololab.evaluate.nms`` (the function) that the package exports, as an
    eager ``from yololab.evaluate.nms import nms`` in ``__init__`` would not.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get(EXPORTS_KEY, {}):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable[[str], object],
                                                                         Callable[[], list[str]], list[str]]:
    """``{submodule: [names]}`` of ``package`` -> the package's ``(__getattr__, __dir__, __all__)``."""
    home = {name: submodule for submodule, names in exports.items() for name in names}
    namespace = sys.modules[package]
    namespace.__dict__[EXPORTS_KEY] = home
    namespace.__class__ = LazyPackage

    def __getattr__(name: str) -> object:
        if name in home:
            value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        elif name in exports:  # a submodule, as ``package.submodule`` after ``import package``
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(namespace, name, value)  # found by plain lookup from now on
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace.__dict__) | set(home))

    return __getattr__, __dir__, sorted(home)
