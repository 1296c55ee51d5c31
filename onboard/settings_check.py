"""Checking and converting configuration values: one helper for every settings section.

:func:`build` turns a mapping read from YAML or TOML into a dataclass, field by field, from the
field's type hint: unknown keys are refused with the list of known ones, and every value is
converted (``int``, ``float``, ``bool``, ``str``, lists, tuples, mappings, nested dataclasses) or
refused with a :class:`SettingsError` that names its key path (``settings.power.temp_soft_c``)
and says how to fix it. Constraints ride on the hints with :data:`typing.Annotated`:

* :class:`Range` (``POSITIVE``, ``NON_NEGATIVE``, ``FRACTION``): numeric bounds;
* :class:`OneOf`: a value from a fixed set;
* :class:`NonEmpty`: a string or list that must not be empty;
* :class:`Interval`: a ``[start, end]`` pair with ``end`` after ``start``;
* :class:`Schema`: a free-form mapping (kept as a dict) whose keys and values are those of
  another dataclass, e.g. ``uplink.transfer`` against :class:`onboard.transfer.TransferConfig`.

A dataclass may define ``check_settings(self, where)`` for rules across its fields; :func:`build` calls it
after conversion, and :func:`build` on an existing instance re-checks it in place.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Mapping, Optional, Sequence

from engines.errors import UserError

_NONE = object()


class SettingsError(UserError):
    """A configuration key holds a bad value (exit status 2 of the daemon, like every ``UserError``).

    Parameters
    ----------
    key : str
        Dotted path of the key, e.g. ``settings.power.temp_soft_c``.
    message : str
        The whole message: the key, what it must be, what it was and how to fix it.
    """

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def fail(key: str, must: str, got: Any = _NONE, fix: str = "") -> SettingsError:
    """A :class:`SettingsError` saying ``<key> must be <must>; got <got>. Fix: <fix>`` (raise it).

    Parameters
    ----------
    key : str
        Dotted key path.
    must : str
        What the value must be ("a number", "> 0").
    got : any, optional
        The value found (left out of the message when not given).
    fix : str, optional
        How to fix it.
    """
    text = f"{key} must be {must}"
    if got is not _NONE:
        text += f"; got {got!r}"
    return SettingsError(key, text + (f". Fix: {fix}" if fix else ""))


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``lo``/``hi`` inclusive unless ``lo_open``/``hi_open``; NaN is refused."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: float) -> bool:
        """Whether ``v`` lies within the bounds."""
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        """The bounds in words ("> 0", "within [0, 1)")."""
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"within {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
PositiveInt = Annotated[int, POSITIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]


@dataclass(frozen=True)
class OneOf:
    """The value must be one of ``choices``; on a mapping, each of its keys."""

    choices: Sequence[Any]


@dataclass(frozen=True)
class NonEmpty:
    """A string or list that must not be empty."""


@dataclass(frozen=True)
class Interval:
    """A ``[start, end]`` pair; ``end > start``, or ``end >= start`` when not ``strict``."""

    strict: bool = True


@dataclass(frozen=True)
class Schema:
    """A mapping kept as a plain dict, whose keys and values are checked as fields of ``cls``.

    With ``required`` every field of ``cls`` without a default must be given. The checked values
    must also make a ``cls`` (whose ``check_settings(where)``, if any, runs), so building it later cannot fail.
    """

    cls: type
    required: bool = False


def _example(default: Any) -> str:
    if isinstance(default, tuple):
        default = list(default)
    return "" if default is _NONE else f" (the default is {default!r}; leave the key out to use it)"


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:      # type: ignore[misc]
        return f.default_factory()                         # type: ignore[misc]
    return _NONE


def _number(hint: type, value: Any, where: str, default: Any) -> Any:
    what = "a whole number" if hint is int else "a number"
    v = value
    if isinstance(v, str):             # YAML 1.1 reads 1e3 as text
        try:
            v = float(v.strip())
        except ValueError:
            v = None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (hint is int and isinstance(v, float)
                                                                   and not v.is_integer()):
        raise fail(where, what, value, f"write {what} without quotes" + _example(default))
    if math.isinf(v):                  # .inf: no setting means "forever", and it overflows timers
        raise fail(where, f"a finite {what[2:]}", value, "write a finite value" + _example(default))
    return int(v) if hint is int else float(v)


def convert(hint: Any, value: Any, where: str, default: Any = _NONE) -> Any:
    """``value`` checked and converted to the type ``hint``; raises :class:`SettingsError` naming ``where``.

    Parameters
    ----------
    hint : type hint
        E.g. ``float``, ``List[int]``, ``Dict[str, float]``, ``Annotated[float, POSITIVE]``, a dataclass.
    value : any
        What the config file holds.
    where : str
        Dotted key path for messages.
    default : any, optional
        The key's default, quoted in messages.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        base, marks = args[0], args[1:]
        schema = next((m for m in marks if isinstance(m, Schema)), None)
        out = _schema(schema, value, where) if schema else convert(base, value, where, default)
        for mark in marks:
            _apply(mark, out, where, default, "a whole number" if base is int else "a number")
        return out
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is typing.Union:                       # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return None if value is None else convert(inner[0], value, where, default)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(where, "a list", value, "write a list such as [a, b] (YAML also takes one '- item' per "
                       "line)" + _example(default))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise fail(where, f"a list of {len(args)} items", value)
            items = [convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(where, "a mapping", value, "write {key: value, ...}" + _example(default))
        return {str(k): convert(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(where, "true or false", value, "write true or false without quotes" + _example(default))
        return value
    if hint in (int, float):
        return _number(hint, value, where, default)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail(where, "a string", value, "write a single value, quoted if need be" + _example(default))
        return str(value)
    try:
        return hint(value)
    except (TypeError, ValueError):
        raise fail(where, getattr(hint, "__name__", str(hint)), value, _example(default).strip(" ()")) from None


def _apply(mark: Any, value: Any, where: str, default: Any, number: str) -> None:
    """Check one ``Annotated`` constraint on an already converted value."""
    if isinstance(mark, Range) and not mark.ok(value):
        raise fail(where, f"{number} {mark.describe()}", value, f"use {number} {mark.describe()}" + _example(default))
    if isinstance(mark, OneOf):
        if isinstance(value, dict):                  # on a mapping: its keys
            bad = [(f"{where}.{k}", k) for k in value if k not in mark.choices]
        else:
            bad = [(where, value)] if value not in mark.choices else []
        if bad:
            raise fail(bad[0][0], f"one of {list(mark.choices)}", bad[0][1], "pick one of these" + _example(default))
    if isinstance(mark, NonEmpty) and len(value) == 0:
        raise fail(where, "non-empty", value, "give at least one item" + _example(default))
    if isinstance(mark, Interval):
        if len(value) != 2 or not (value[1] > value[0] if mark.strict else value[1] >= value[0]):
            raise fail(where, f"a [start, end] pair with end {'>' if mark.strict else '>='} start", value,
                       "write two numbers, e.g. [100.0, 700.0]")


def _keys(cls: type, data: Any, where: str, required: bool) -> Mapping[str, Any]:
    """``data`` as a mapping with only known keys of ``cls`` (and, with ``required``, all of them)."""
    if not isinstance(data, Mapping):
        raise fail(where, "a mapping of settings (key: value)", data, "write {key: value, ...} or an indented block")
    known = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    unknown = sorted(str(k) for k in set(data) - set(known))
    if unknown:
        raise SettingsError(where, f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}. "
                                   "Fix: correct the spelling or remove them")
    needed = [f.name for f in dataclasses.fields(cls) if f.name != "extra" and _field_default(f) is _NONE]
    missing = [k for k in needed if k not in data] if required else []
    if missing:
        raise SettingsError(where, f"{where}: missing key(s) {missing}; every entry needs {needed}")
    return data


def _schema(schema: Schema, value: Any, where: str) -> dict:
    cls = schema.cls
    data = _keys(cls, value, where, schema.required)
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {str(k): convert(hints[k], v, f"{where}.{k}", _field_default(fields[k])) for k, v in data.items()}
    try:
        obj = cls(**out)
    except TypeError as exc:                             # a required field of cls left out
        raise SettingsError(where, f"{where}: {exc}") from None
    if hasattr(obj, "check_settings"):
        obj.check_settings(where)
    return out


def build(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping (or ``data`` itself re-checked in place).

    Parameters
    ----------
    cls : type
        A dataclass; its type hints (with ``Annotated`` constraints) say how to convert each key.
    data : mapping or cls instance
    where : str
        Dotted key path of the section, for messages (``settings``, ``settings.power``).

    Raises
    ------
    SettingsError
        An unknown key, a missing required key, or a value of the wrong type or out of bounds.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]
    if isinstance(data, cls):
        values = {f.name: convert(hints[f.name], getattr(data, f.name), f"{where}.{f.name}", _field_default(f))
                  for f in fields}
        if getattr(cls, "__dataclass_params__").frozen:
            obj = dataclasses.replace(data, **values)
        else:
            obj = data
            for name, v in values.items():
                setattr(obj, name, v)
    else:
        data = _keys(cls, data, where, required=True)
        defaults = {f.name: _field_default(f) for f in fields}
        obj = cls(**{k: convert(hints[k], v, f"{where}.{k}", defaults[k]) for k, v in data.items()})
    if hasattr(obj, "check_settings"):
        obj.check_settings(where)
    return obj


__all__ = ["FRACTION", "Interval", "NON_NEGATIVE", "NonEmpty", "NonNegativeFloat", "NonNegativeInt", "OneOf",
           "POSITIVE", "PositiveFloat", "PositiveInt", "Range", "Schema", "SettingsError", "build", "convert", "fail"]
