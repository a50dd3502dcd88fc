"""Public names that load on first use (PEP 562): a package's ``__init__`` lists what it
exports and from which module, and nothing heavy (pyribs, torch, transformers) is imported
until a name is used, so ``cycleqd --help``, ``show`` and ``compare`` start in a blink."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose name ``n`` is ``exports[n]``'s ``n``.

    Args:
        package: The package's ``__name__``.
        exports: Public name → the module that defines it.
        namespace: The package's ``globals()``, where a loaded name is kept.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
