"""Faster construction and ``replace`` for the core's frozen, slotted dataclasses.

The engine builds a few of these records per event (the events themselves, the state's copies,
dispatches, decisions), so their construction is a large part of the core's time:

- ``dataclasses.replace`` walks ``fields()`` and calls ``getattr`` for every field on every
  call. :func:`replace` uses a function built once per class, with the field names spelled out
  (the way ``dataclasses`` itself generates ``__init__``); the same semantics (unknown names
  are a TypeError).
- A frozen class's generated ``__init__`` stores each field with
  ``object.__setattr__(self, name, value)``, a name look-up and a generic call per field.
  Storing through the slot descriptor's ``__set__`` instead is about twice as fast: both the
  copies made by :func:`replace` and the ``__init__`` that :func:`fast_init` installs do that.

Only classes without ``__post_init__`` qualify (there is nothing to skip); :func:`replace`
falls back to calling ``__init__`` for any other dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()
_FACTORY = object()
_REPLACERS: dict[type[Any], Callable[..., Any]] = {}


def replace(obj: T, /, **changes: Any) -> T:
    result: T = replacer(type(obj))(obj, **changes)
    return result


def replacer(cls: type[T]) -> Callable[..., T]:
    """``replace`` for one class, without the per-call look-up: for the hottest paths."""
    built = _REPLACERS.get(cls)
    if built is None:
        built = _REPLACERS.setdefault(cls, _build_replace(cls))
    return built


def fast_init(*classes: type[Any]) -> None:
    """Give frozen slotted dataclasses an ``__init__`` that stores through slot descriptors:
    the same signature, defaults and default factories as the one ``dataclasses`` wrote."""
    for cls in classes:
        fields = dataclasses.fields(cls)
        if not _has_fast_layout(cls) or any(not field.init for field in fields):
            raise TypeError(f"{cls.__name__}: needs slots, no __post_init__, every field in init")
        namespace = _namespace(cls, fields)
        parameters = []
        for field in fields:
            if field.default is not dataclasses.MISSING:
                namespace[f"_default_{field.name}"] = field.default
                parameters.append(f"{field.name}=_default_{field.name}")
            elif field.default_factory is not dataclasses.MISSING:
                namespace[f"_factory_{field.name}"] = field.default_factory
                parameters.append(f"{field.name}=_FACTORY")
            else:
                parameters.append(field.name)
        stores = "".join(f"    _set_{f.name}(self, {_initial(f)})\n" for f in fields)
        exec(f"def __init__(self, *, {', '.join(parameters)}):\n{stores}", namespace)
        init: Callable[..., None] = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        setattr(cls, "__init__", init)  # noqa: B010 - mypy forbids assigning a method


def _build_replace(cls: type[Any]) -> Callable[..., Any]:
    fields = dataclasses.fields(cls)
    if any(not field.init for field in fields):
        raise TypeError(f"{cls.__name__} has fields outside __init__: use dataclasses.replace")
    parameters = ", ".join(f"{field.name}=_MISSING" for field in fields)
    namespace = _namespace(cls, fields if _has_fast_layout(cls) else ())
    if _has_fast_layout(cls):
        stores = "".join(f"    _set_{f.name}(new, {_changed(f.name)})\n" for f in fields)
        body = f"    new = _new(cls)\n{stores}    return new\n"
    else:
        arguments = ", ".join(f"{f.name}={_changed(f.name)}" for f in fields)
        body = f"    return cls({arguments})\n"
    exec(f"def replace(obj, *, {parameters}):\n{body}", namespace)
    built: Callable[..., Any] = namespace["replace"]
    return built


def _has_fast_layout(cls: type[Any]) -> bool:
    return (
        dataclasses.is_dataclass(cls)
        and "__slots__" in cls.__dict__
        and not hasattr(cls, "__post_init__")
    )


def _namespace(cls: type[Any], fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    # ``_set_<name>`` is the slot descriptor's ``__set__``: it stores the value directly, which
    # a frozen class's own ``__setattr__`` would refuse.
    namespace: dict[str, Any] = {
        "cls": cls,
        "_MISSING": _MISSING,
        "_FACTORY": _FACTORY,
        "_new": object.__new__,
    }
    namespace.update({f"_set_{f.name}": getattr(cls, f.name).__set__ for f in fields})
    return namespace


def _changed(name: str) -> str:
    return f"obj.{name} if {name} is _MISSING else {name}"


def _initial(field: dataclasses.Field[Any]) -> str:
    if field.default_factory is dataclasses.MISSING:
        return field.name
    return f"_factory_{field.name}() if {field.name} is _FACTORY else {field.name}"
