"""Checks that config-built components run in their constructors, so a bad value fails
when the component is built (before any model exists) with its field and value named.

Components raise :class:`~cycleqd.errors.ConfigError` with their own field name
(``sigma``); the config builder prefixes the key of the node it built (``crossover``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cycleqd.errors import ConfigError


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if tp is float:
        return "a finite number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp) or origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the type annotation ``tp`` (ints count as floats; floats must be finite)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, Mapping))
    return True


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any) -> None:
    """Check every init field of the dataclass ``obj`` against its annotation.

    Raises:
        ConfigError: the first field whose value has the wrong type, naming it.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init and f.name in hints and not matches(getattr(obj, f.name), hints[f.name]):
            raise ConfigError(f.name, f"must be {describe(hints[f.name])}, got {getattr(obj, f.name)!r}")


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(key, message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, message)
