"""Reading saga definitions: JSON or YAML text (or an already parsed mapping) in, a validated
:class:`SagaDefinition` out, and the canonical stored form that identifies a body.

Every way in ends in :class:`~saga_orchestrator.errors.DefinitionError`: malformed text
(rule ``syntax``, located by line and column), a document that is not a JSON object, too large
or too deep (``max-size``, ``max-depth``), a YAML value JSON lacks (``json-value``), and
every pydantic error, one :class:`~saga_orchestrator.errors.Violation` each, located by a path
such as ``steps[1].branches[0][2].retry.max_attempts``.

YAML is only another syntax for the same JSON document: it is read with ``yaml.safe_load``
(never arbitrary Python objects) and its result must be plain JSON, so a YAML and a JSON file
holding the same definition have the same :func:`definition_digest`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import orjson
import yaml
from pydantic import ValidationError

from saga_orchestrator.definition.compiler import CompiledDefinition, compile_definition
from saga_orchestrator.definition.models import SagaDefinition
from saga_orchestrator.errors import DefinitionError, Violation

__all__ = [
    "DOCUMENT_LOCATION",
    "MAX_DEFINITION_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "canonical_json",
    "definition_digest",
    "load_and_compile",
    "load_definition_file",
    "parse_definition",
    "violations_from",
]

Format = Literal["json", "yaml"]

MAX_DEFINITION_BYTES: Final = 1_000_000
MAX_DOCUMENT_DEPTH: Final = 128
"""Nesting of JSON containers; well above what :data:`compiler.MAX_DEPTH` nodes need."""
DOCUMENT_LOCATION: Final = "(document)"
"""The location of a violation that concerns the whole document."""

_MIN_INT: Final = -(2**63)
_MAX_INT: Final = 2**64 - 1  # what the stored form (orjson) can hold
_SUFFIX_FORMATS: Final[dict[str, Format]] = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def parse_definition(
    data: bytes | str | Mapping[str, Any],
    *,
    format: Format | None = None,  # noqa: A002 - the natural name, as in the HTTP API
) -> SagaDefinition:
    """Parse and validate a definition; raise :class:`DefinitionError` listing every problem.

    ``format=None`` reads JSON if the text is a JSON object, YAML otherwise (JSON is almost
    YAML, but YAML's errors are vaguer). A mapping is taken as an already parsed document.
    """
    document = data if isinstance(data, Mapping) else _parse_text(data, format)
    if not isinstance(document, Mapping):
        what = "an empty document" if document is None else _a(document)
        _fail(DOCUMENT_LOCATION, "document-type", f"a definition is an object, not {what}")
    _check_json_document(document)
    try:
        return SagaDefinition.model_validate(dict(document))
    except ValidationError as error:
        raise DefinitionError(violations_from(error)) from None


def load_definition_file(path: Path) -> SagaDefinition:
    """Read a ``.json``, ``.yaml`` or ``.yml`` file (another suffix: the format is guessed)."""
    with path.open("rb") as file:
        data = file.read(MAX_DEFINITION_BYTES + 1)
    return parse_definition(data, format=_SUFFIX_FORMATS.get(path.suffix.lower()))


def load_and_compile(
    data: bytes | str | Mapping[str, Any],
    *,
    format: Format | None = None,  # noqa: A002
    known_handlers: Collection[str] | None = None,
    known_services: Collection[str] | None = None,
) -> CompiledDefinition:
    """:func:`parse_definition`, then :func:`compile_definition`."""
    definition = parse_definition(data, format=format)
    return compile_definition(
        definition, known_handlers=known_handlers, known_services=known_services
    )


def canonical_json(definition: SagaDefinition) -> bytes:
    """The stored form: compact JSON, keys sorted, default values left out, durations in
    seconds. Formatting, key order and explicitly written defaults never change it."""
    document = definition.model_dump(mode="json", exclude_defaults=True)
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def definition_digest(definition: SagaDefinition) -> str:
    """The SHA-256 (hex) of :func:`canonical_json`: equal digests, equal definitions."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()


# --- text ---------------------------------------------------------------------------------


def _parse_text(data: bytes | str, format: Format | None) -> Any:  # noqa: A002
    size = len(data.encode(errors="surrogatepass") if isinstance(data, str) else data)
    if size > MAX_DEFINITION_BYTES:
        _fail(DOCUMENT_LOCATION, "max-size", f"the document exceeds {MAX_DEFINITION_BYTES} bytes")
    if format == "json":
        return _parse_json(data)
    if format == "yaml":
        return _parse_yaml(data)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _parse_yaml(data)
    return document if isinstance(document, dict) else _parse_yaml(data)


def _parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        _fail(f"line {error.lineno}, column {error.colno}", "syntax", f"invalid JSON: {error.msg}")


def _parse_yaml(data: bytes | str) -> Any:
    try:
        return yaml.safe_load(data)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        location = f"line {mark.line + 1}, column {mark.column + 1}" if mark else DOCUMENT_LOCATION
        problem = error.problem or error.context or "malformed"
        _fail(location, "syntax", f"invalid YAML: {problem}")
    except yaml.YAMLError as error:  # e.g. bytes that are not text
        _fail(DOCUMENT_LOCATION, "syntax", f"invalid YAML: {error}")
    except RecursionError:
        _fail(DOCUMENT_LOCATION, "max-depth", "the document is nested too deeply")


# --- the parsed document must be plain JSON -------------------------------------------------


def _check_json_document(document: Mapping[str, Any]) -> None:
    """Refuse what JSON cannot hold (YAML timestamps, non-string keys, NaN) and documents too
    large or too deep, before pydantic or the canonical form meets them.

    The size counted (a byte per value, a character per character) never exceeds the text's
    size, but it counts a YAML alias each time it is used: an alias bomb, a small text that
    expands into billions of values, stops here; so does an oversized mapping."""
    problems: list[tuple[_Trail, str]] = []
    stack: list[tuple[object, _Trail]] = [(document, None)]
    size = 0
    while stack:
        value, trail = stack.pop()
        if isinstance(value, str):
            size += len(value) or 1
        elif isinstance(value, Mapping):
            size += 1
            _check_depth(trail)
            for key, item in value.items():
                if isinstance(key, str):
                    size += len(key)
                    stack.append((item, (trail, key)))
                else:
                    problems.append((trail, f"key {key!r} is {_a(key)}: quote it to make a string"))
        elif isinstance(value, list | tuple):
            size += 1
            _check_depth(trail)
            stack.extend((item, (trail, index)) for index, item in enumerate(value))
        else:
            size += 1
            if problem := _scalar_problem(value):
                problems.append((trail, problem))
        if size > MAX_DEFINITION_BYTES:
            message = f"the document expands beyond {MAX_DEFINITION_BYTES} bytes"
            _fail(DOCUMENT_LOCATION, "max-size", message)
    if problems:
        raise DefinitionError(
            [Violation(location=_path(_loc(t)), rule="json-value", message=m) for t, m in problems]
        )


_Trail = tuple["_Trail", int | str] | None
"""Where a value stands, as a linked list (parent trail, key or index), cheap to extend."""


def _scalar_problem(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _MIN_INT <= value <= _MAX_INT else f"{value} is out of the integer range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a JSON number"
    return f"{_a(value)} is not JSON: quote it to make a string"


def _check_depth(trail: _Trail) -> None:
    depth = 0
    node = trail
    while node is not None:
        node = node[0]
        depth += 1
    if depth >= MAX_DOCUMENT_DEPTH:
        _fail(_path(_loc(trail)), "max-depth", f"nested deeper than {MAX_DOCUMENT_DEPTH} levels")


def _loc(trail: _Trail) -> tuple[int | str, ...]:
    segments: list[int | str] = []
    while trail is not None:
        trail, segment = trail
        segments.append(segment)
    return tuple(reversed(segments))


def _a(value: object) -> str:
    """``value``'s JSON (or else Python) type with an article: "an integer", "a date"."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    name = type(value).__name__
    return names.get(type(value), f"an {name}" if name[0] in "aeiou" else f"a {name}")


# --- pydantic errors ------------------------------------------------------------------------

# Pydantic puts the tag of a tagged union in an error's location (`steps.0.step.retry`); the
# tags are dropped, but only where a union stands, since `http`, `handler` and `saga` are
# also field names. `_ITEMS`: what the items of a list are; `_FIELDS`: what a field holds.
_NODE_TAGS: Final = frozenset({"step", "parallel", "switch", "saga"})
_TARGET_TAGS: Final = frozenset({"handler", "http", "amqp"})
_ITEMS: Final = {"nodes": "node", "branches": "nodes", "cases": "case"}
_FIELDS: Final = {
    ("definition", "steps"): "nodes",
    ("parallel", "branches"): "branches",
    ("switch", "cases"): "cases",
    ("switch", "default"): "nodes",
    ("case", "steps"): "nodes",
    ("step", "action"): "target",
    ("step", "compensation"): "target",
}
_INTERNAL_SEGMENT = re.compile(r"^[a-z][a-z-]*\[.*\]$", re.DOTALL)  # e.g. function-after[f()]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_MODEL_CONTEXTS: Final = {
    "SagaDefinition": "definition",
    "StepNode": "step",
    "ParallelNode": "parallel",
    "SwitchNode": "switch",
    "SwitchCase": "case",
    "SubSagaNode": "saga",
}


def violations_from(error: ValidationError) -> list[Violation]:
    """One violation per pydantic error of a model of the language, located by a readable
    path such as ``steps[1].branches[0][2].retry.max_attempts``."""
    context = _MODEL_CONTEXTS.get(error.title)
    return [
        Violation(
            location=_path(_without_tags(details["loc"], context)),
            rule=details["type"],
            message=details["msg"].removeprefix("Value error, "),
        )
        for details in error.errors(include_url=False)
    ]


def _without_tags(loc: tuple[int | str, ...], context: str | None) -> tuple[int | str, ...]:
    kept: list[int | str] = []
    for segment in loc:
        if context == "node" and segment in _NODE_TAGS:
            context = str(segment)
        elif context == "target" and segment in _TARGET_TAGS:
            context = None
        elif isinstance(segment, str) and _INTERNAL_SEGMENT.match(segment):
            continue
        else:
            kept.append(segment)
            if isinstance(segment, int):
                context = _ITEMS.get(context or "")
            else:
                context = _FIELDS.get((context or "", segment))
    return tuple(kept)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for segment in loc:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif not _IDENTIFIER.match(segment):
            text += f"[{json.dumps(segment, ensure_ascii=False)}]"
        else:
            text += f".{segment}" if text else segment
    return text or DOCUMENT_LOCATION


def _fail(location: str, rule: str, message: str) -> NoReturn:
    raise DefinitionError([Violation(location=location, rule=rule, message=message)])
