"""Lazy re-exports: a package names what it offers, and torch-heavy modules load on first use.

The attack packages (``jobs.attacks.pgd`` and its siblings) keep each spec beside its attack:
the spec module is torch-free (configs, suites and grids parse specs without importing torch),
the attack module is not. A package imports its spec eagerly and its attack lazily::

    from jobs.attacks.pgd.spec import LpSpec
    __getattr__ = lazy_exports(__name__, {"PGDAttack": "jobs.attacks.pgd.attack"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (a module path) on first access and
    returns its attribute of the same name."""

    def __getattr__(attr: str) -> Any:
        module = names.get(attr)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(module), attr)

    return __getattr__
