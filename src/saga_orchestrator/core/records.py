"""A fast ``replace`` for the core's frozen dataclasses.

``dataclasses.replace`` walks ``fields()`` and calls ``getattr`` for every field on every call;
on the engine's hot path (a few record copies per event) it was half of the core's time. This
builds, once per class, a function with the field names spelled out, the way ``dataclasses``
itself generates ``__init__``: the same semantics (unknown names are a TypeError).

For a frozen slotted class the copy does not go through ``__init__``: a frozen ``__init__`` sets
each field with ``object.__setattr__(self, name, value)``, a name lookup and a generic call per
field, which made copying the 22-field ``SagaState`` cost several microseconds. The copy instead
allocates the instance and stores each field through its slot descriptor, about twice as fast.
That skips nothing a record relies on: the classes copied this way have no ``__post_init__``
(a class that has one, or that is not slotted, is copied through its ``__init__``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()
_REPLACERS: dict[type[Any], Callable[..., Any]] = {}


def replace(obj: T, /, **changes: Any) -> T:
    replacer = _REPLACERS.get(type(obj))
    if replacer is None:
        replacer = _REPLACERS.setdefault(type(obj), _build(type(obj)))
    result: T = replacer(obj, **changes)
    return result


def _build(cls: type[Any]) -> Callable[..., Any]:
    fields = dataclasses.fields(cls)
    if any(not field.init for field in fields):
        raise TypeError(f"{cls.__name__} has fields outside __init__: use dataclasses.replace")
    names = [field.name for field in fields]
    parameters = ", ".join(f"{name}=_MISSING" for name in names)
    namespace: dict[str, Any] = {"cls": cls, "_MISSING": _MISSING, "_new": object.__new__}
    if hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        arguments = ", ".join(f"{name}={_pick(name)}" for name in names)
        body = f"    return cls({arguments})\n"
    else:
        # ``_set_<name>`` is the slot descriptor's ``__set__``: it stores the value directly,
        # which a frozen class's own ``__setattr__`` would refuse.
        namespace.update({f"_set_{name}": getattr(cls, name).__set__ for name in names})
        stores = "".join(f"    _set_{name}(new, {_pick(name)})\n" for name in names)
        body = f"    new = _new(cls)\n{stores}    return new\n"
    exec(f"def replace(obj, *, {parameters}):\n{body}", namespace)
    built: Callable[..., Any] = namespace["replace"]
    return built


def _pick(name: str) -> str:
    return f"obj.{name} if {name} is _MISSING else {name}"
