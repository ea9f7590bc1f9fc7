"""Events to and from ``(type, JSON bytes)``, the form the store keeps.

The type name is the class name, so renaming an event class is a breaking change that the
golden-history tests catch. orjson encodes dataclasses, enums and aware datetimes natively;
decoding uses per-class converters built once from the type hints.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from saga_orchestrator.core.events import EVENT_TYPES, ErrorInfo, Event
from saga_orchestrator.errors import InvalidInput

Converter = Callable[[Any], Any]


def encode(event: Event) -> tuple[str, bytes]:
    return type(event).__name__, orjson.dumps(event)


def encode_value(value: Any) -> bytes:
    return orjson.dumps(value)


def decode(type_name: str, data: bytes | str) -> Event:
    entry = _DECODERS.get(type_name)
    if entry is None:
        raise InvalidInput(f"unknown event type {type_name!r}")
    cls, converters = entry
    raw = orjson.loads(data)
    fields = {name: converters[name](value) for name, value in raw.items() if name in converters}
    return cls(**fields)


def _optional(convert: Converter) -> Converter:
    return lambda value: None if value is None else convert(value)


def _converter(hint: Any) -> Converter:
    origin = typing.get_origin(hint)
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _optional(_converter(args[0]))
    if hint is datetime:
        return datetime.fromisoformat
    if hint is ErrorInfo:
        return lambda value: ErrorInfo(**value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    return lambda value: value


def _decoders() -> dict[str, tuple[type[Event], dict[str, Converter]]]:
    table: dict[str, tuple[type[Event], dict[str, Converter]]] = {}
    for cls in EVENT_TYPES:
        hints = typing.get_type_hints(cls)
        converters = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}
        table[cls.__name__] = (cls, converters)
    return table


_DECODERS = _decoders()
