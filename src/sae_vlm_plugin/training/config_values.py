"""Values of a training config as their fields' types, and the files configs are read from.

Settings come from YAML (1.1 reads ``3e-4`` as a string), JSON, ``--set`` and Python, so a
number may arrive as a string and a float as an int; ``coerce_fields`` turns each into its
field's annotation or names the field, the value and the type it expected."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


def coerce_fields(instance: Any, prefix: str = "") -> None:
    """Coerce every field of the dataclass ``instance`` to its annotation, in place (a field
    holding a dataclass has its own fields coerced); anything that does not fit its annotation
    raises a ValueError naming the field (after ``prefix``), the value and the expected type."""
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        value, annotation = getattr(instance, item.name), hints[item.name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if not isinstance(value, annotation):
                raise ValueError(
                    f"{prefix}{item.name}: expected {annotation.__name__}, got {value!r}"
                )
            coerce_fields(value, f"{prefix}{item.name}.")
            continue
        setattr(instance, item.name, coerce_value(prefix + item.name, value, annotation))


def coerce_value(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as an instance of ``annotation`` (str, int, float, bool, Literal, Optional /
    unions, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, Any); ``name`` is the field named
    in the error."""
    converted = _converted(value, annotation)
    if converted is _MISMATCH:
        raise ValueError(f"{name}: expected {_type_name(annotation)}, got {value!r}")
    return converted


_MISMATCH = object()


def _converted(value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation``, or ``_MISMATCH``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _MISMATCH
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _MISMATCH
        arms = (_converted(value, arm) for arm in args if arm is not type(None))
        return next((c for c in arms if c is not _MISMATCH), _MISMATCH)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return _MISMATCH
        items = [_converted(item, args[0]) for item in value]
        return _MISMATCH if any(i is _MISMATCH for i in items) else origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            return _MISMATCH
        pairs = [(_converted(k, args[0]), _converted(v, args[1])) for k, v in value.items()]
        return _MISMATCH if any(x is _MISMATCH for p in pairs for x in p) else dict(pairs)
    if annotation in _SCALARS:
        return _SCALARS[annotation](value)
    raise TypeError(f"no coercion to {annotation!r}; add it to coerce_value")


def _to_bool(value: Any) -> Any:
    """Only a bool: a string or 0/1 is more likely a mistake than a setting."""
    return value if isinstance(value, bool) else _MISMATCH


def _to_int(value: Any) -> Any:
    """An int, an integral float, or a string holding one (``'20'``, ``'2e4'``)."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = _to_float(value)
    if isinstance(value, bool):
        return _MISMATCH
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else _MISMATCH


def _to_float(value: Any) -> Any:
    """A finite float from a float, an int or a numeric string (``'3e-4'``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _MISMATCH
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISMATCH
    return float(value) if math.isfinite(value) else _MISMATCH


def _to_str(value: Any) -> Any:
    """A string, or a path (``Path`` objects are common for directories)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, str) else _MISMATCH


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _type_name(annotation: Any) -> str:
    """How an error names the expected type: ``int``, ``float or None``, ``one of 'a', 'b'``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if arm is type(None) else _type_name(arm) for arm in args)
    if annotation is Any:
        return "Any"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(map(_type_name, args))}]"
    return str(annotation.__name__)


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML (``.yaml``/``.yml``, plain data only) or JSON file holds; ``what``
    names its keys in the error raised for anything else. A key repeated in one mapping is
    refused (both parsers would silently keep the last value)."""
    from sae_vlm_plugin.pretrained.schema import load_yaml_text

    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        values = load_yaml_text(text, str(path))
    else:
        values = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of {what}, got {type(values).__name__}")
    return values


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a repeated key."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{path}: duplicate key {key!r}")
        seen[key] = value
    return seen
