"""Typed parameter files: a TOML file read into a frozen dataclass, strictly.

Every key of the file must name a field of the dataclass (nested dataclasses are
TOML tables), and every value must have the field's type; otherwise a
``ConfigError`` names the file and the dotted key. Keys the file leaves out keep
the dataclass defaults, so an empty file means "the code defaults".

Supported field types: ``bool``, ``int``, ``float`` (an integer is accepted),
``str``, ``tuple[X, ...]``, fixed ``tuple[X, Y]``, ``dict[str, X]`` and nested
frozen dataclasses. TOML arrays become tuples, so loaded params stay hashable
and compare equal to the code defaults.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

from ..errors import ConfigError
from ..fileio import read_toml


def _convert(value, tp, where: str, src: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for alt in args:
            if alt is type(None):
                continue
            try:
                return _convert(value, alt, where, src)
            except ConfigError:
                continue
        raise ConfigError(f"{src}: key {where!r} has a value of the wrong type ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key {where!r} must be a table")
        return build(tp, value, src, prefix=where + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: key {where!r} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: key {where!r} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: key {where!r} must be a number, not {value!r}")
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{src}: key {where!r} must not be nan")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: key {where!r} must be a string, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{src}: key {where!r} must be an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", src) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{src}: key {where!r} must be an array of {len(args)} values")
        return tuple(_convert(v, a, f"{where}[{i}]", src) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key {where!r} must be a table")
        return {str(k): _convert(v, args[1], f"{where}.{k}", src) for k, v in value.items()}
    raise ConfigError(f"{src}: key {where!r} has an unsupported type {tp!r}")  # pragma: no cover


def build(cls, data: dict, src: str = "<params>", prefix: str = ""):
    """An instance of dataclass ``cls`` from a parsed TOML table; defaults for missing keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{src}: unknown key {prefix + unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], prefix + k, src) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{src}: {exc}") from None


def override(params, changes: dict, src: str):
    """``params`` (a Params dataclass) with the fields in ``changes`` replaced, each checked against
    its declared type exactly as a parameter file's value is (unknown names are an error)."""
    cls = type(params)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"{src}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(dict(v) if isinstance(v, typing.Mapping) else v, hints[k], k, src) for k, v in changes.items()}
    try:
        return dataclasses.replace(params, **kwargs)
    except (ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{src}: {exc}") from None


def load(cls, path: str | Path | None):
    """``cls()`` when ``path`` is None, else the TOML file at ``path`` read strictly into ``cls``."""
    if path is None:
        return cls()
    p = Path(path)
    data = read_toml(p, "parameter file")
    return build(cls, data, str(p))


def _plain(x):
    """A dataclass / dict / tuple as TOML-like data (tables, arrays, scalars)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def _overlay(base, over):
    """``over`` merged into ``base``: tables merge key by key, everything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _overlay(base[k], v) if k in base else v
        return out
    return over


def load_overlay(cls, path):
    """``cls()`` overlaid with the TOML file at ``path`` (None → the defaults).

    Tables merge with the defaults key by key, so ``[pairs.ETH] price_range = 0.2``
    changes only that value and keeps the other pairs; unknown keys and wrong types
    raise ConfigError naming the file and the key (``build``).
    """
    if path is None:
        return cls()
    p = Path(path)
    data = read_toml(p, "parameter file")
    return build(cls, _overlay(_plain(cls()), data), str(p))


__all__ = ["build", "load", "load_overlay", "override"]
