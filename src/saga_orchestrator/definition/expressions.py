"""Sandboxed CEL expressions and JSON templates for saga definitions.

Expressions (a step's ``when``, the ``${...}`` parts of ``input`` templates) are written in
CEL, the Common Expression Language, and run by the ``common-expression-language`` package
(a Rust core; see ``docs/decisions/0001-cel-library.md``). CEL has no access to Python, the
file system or the clock, so an expression can only compute over the data it is given:

* ``input`` — the saga's start context,
* ``steps`` — ``steps.<name>.output`` of the steps that have completed,
* ``saga`` — the instance's metadata (id, tenant, attempt).

Both kinds of object are compiled once, when a definition is registered, and evaluated many
times; nothing is parsed on the evaluation path. Compilation rejects syntax errors, variables
other than the three roots and functions outside the CEL core library, so a typo fails the
registration rather than a running saga. Evaluation errors (a missing key, a type mismatch)
are raised as :class:`~saga_orchestrator.errors.ExpressionError` naming the expression.

Results are plain JSON values: ``dict``/``list``/``str``/``int``/``float``/``bool``/``None``.
CEL-only values are converted the way the protobuf JSON mapping does: bytes to base64,
timestamps to RFC 3339 strings (``2024-01-01T00:00:00Z``), durations to seconds
(``"1.5s"``); map keys become strings. NaN and infinities are rejected. Maps come back with
their keys sorted: the runtime returns them in hash order, which differs between processes,
and a replayed saga must render the same bytes.

Sources are limited to :data:`MAX_SOURCE_LENGTH` characters: the Rust parser and evaluator
recurse on the native stack, and a deep enough tree crashes the process instead of raising.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, NamedTuple, Protocol

import cel

from saga_orchestrator.errors import ExpressionError

__all__ = ["ALLOWED_ROOTS", "MAX_SOURCE_LENGTH", "Expression", "Template"]

ALLOWED_ROOTS: Final = frozenset({"input", "steps", "saga"})
MAX_SOURCE_LENGTH: Final = 2048
_CACHE_SIZE: Final = 1024

# The functions of the CEL core library that the Rust runtime implements; anything else would
# only fail at evaluation time, so it is refused at compile time.
_FUNCTIONS: Final = frozenset(
    {
        "size", "int", "uint", "double", "string", "bytes", "timestamp", "duration", "type",
        "dyn", "contains", "startsWith", "endsWith", "matches", "getFullYear", "getMonth",
        "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours", "getMinutes",
        "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
_OPERATORS: Final = frozenset(
    {
        "!_", "-_", "@in", "@not_strictly_false", "_!=_", "_%_", "_&&_", "_*_", "_+_", "_-_",
        "_/_", "_<=_", "_<_", "_==_", "_>=_", "_>_", "_?_:_", "_[_]", "_||_",
    }
)  # fmt: skip
_TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"}
)  # identifiers that denote types, as in `type(x) == int`
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_CEL_TYPE_NAMES: Final = {
    bool: "bool", int: "int", float: "double", str: "string", bytes: "bytes", list: "list",
    dict: "map", type(None): "null", dt.datetime: "timestamp", dt.timedelta: "duration",
}  # fmt: skip


# --- a small CEL tokenizer, for the static scans (never for evaluation) --------------------

_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|//[^\n]*)
    |(?P<raw>(?:[rR][bB]?|[bB][rR])(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"[^"\r\n]*"|'[^'\r\n]*'))
    |(?P<str>[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''
        |"(?:\\.|[^"\\\r\n])*"|'(?:\\.|[^'\\\r\n])*'))
    |(?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>&&|\|\||==|!=|<=|>=|[\s\S])
    """,
    re.VERBOSE,
)
_PLAIN_STRING = re.compile(r"""[rR]?(?:"[^"\\\r\n]*"|'[^'\\\r\n]*')""")
_OPERAND_END: Final = frozenset({"raw", "str", "num", "ident"})


class _Token(NamedTuple):
    kind: str
    text: str
    start: int


def _tokenize(source: str, pos: int = 0) -> Iterator[_Token]:
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:  # unreachable: any character is at least an operator
            return
        kind = match.lastgroup or "op"
        if kind != "skip":
            yield _Token(kind, match.group(), pos)
        pos = match.end()


def _string_value(token: _Token) -> str | None:
    """The value of a string literal without escapes or prefixes other than ``r``."""
    if not _PLAIN_STRING.fullmatch(token.text):
        return None
    return token.text[2:-1] if token.text[0] in "rR" else token.text[1:-1]


class _Scan(NamedTuple):
    bound: frozenset[str]  # comprehension variables, e.g. the x of `list.map(x, x * 2)`
    keys: dict[str, frozenset[str] | None]  # root -> first-level keys, None if dynamic
    steps: frozenset[str]


def _scan(source: str) -> _Scan:
    tokens = list(_tokenize(source))
    texts = [t.text for t in tokens] + ["", "", "", ""]
    bound = frozenset(
        texts[i + 3]
        for i, tok in enumerate(tokens)
        if texts[i] == "." and texts[i + 1] in _MACROS and texts[i + 2] == "("
        if i + 3 < len(tokens) and tokens[i + 3].kind == "ident" and texts[i + 4] == ","
    )
    seen: dict[str, set[str]] = {}
    dynamic = set(bound & ALLOWED_ROOTS)
    for i, tok in enumerate(tokens):
        if tok.kind != "ident" or tok.text not in ALLOWED_ROOTS or _is_member(tokens, i):
            continue
        key = _static_key(tokens, texts, i)
        seen.setdefault(tok.text, set())
        if key is None:
            dynamic.add(tok.text)
        else:
            seen[tok.text].add(key)
    keys = {root: None if root in dynamic else frozenset(ks) for root, ks in seen.items()}
    return _Scan(bound, keys, frozenset(seen.get("steps", ())))


def _is_member(tokens: list[_Token], i: int) -> bool:
    """True for the ``b`` of ``a.b``: a field name, not a variable."""
    if i < 2 or tokens[i - 1].text != ".":
        return False
    before = tokens[i - 2]
    return before.kind in _OPERAND_END or before.text in {")", "]", "}"}


def _static_key(tokens: list[_Token], texts: list[str], i: int) -> str | None:
    """The key of ``root.key`` or ``root["key"]``; None for any other use of the root."""
    if texts[i + 1] == "." and i + 2 < len(tokens) and tokens[i + 2].kind == "ident":
        return None if texts[i + 3] == "(" else texts[i + 2]  # root.f() uses the whole root
    if texts[i + 1] == "[" and i + 2 < len(tokens) and texts[i + 3] == "]":
        return _string_value(tokens[i + 2])
    return None


# --- expressions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Expression:
    """A compiled CEL expression; build it with :meth:`compile`."""

    source: str
    """The CEL source, as written."""
    _program: cel.Program = field(repr=False, compare=False)
    _roots: tuple[tuple[str, frozenset[str] | None], ...] = field(repr=False, compare=False)
    _steps: frozenset[str] = field(repr=False, compare=False)

    @staticmethod
    def compile(source: str) -> Expression:
        """Compile ``source``; raise :class:`ExpressionError` if it is not a valid expression.

        Results are cached by source (bounded LRU), so compiling the same text twice is cheap.
        """
        if not isinstance(source, str):
            raise ExpressionError(f"an expression must be a string, not {type(source).__name__}")
        if len(source) > MAX_SOURCE_LENGTH:
            raise ExpressionError(
                f"expression {source[:40]!r}... is {len(source)} characters long;"
                f" the limit is {MAX_SOURCE_LENGTH}"
            )
        return _compile(source)

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate against ``{"input": ..., "steps": ..., "saga": ...}``; return a JSON value."""
        return _to_json(self._execute(activation), self.source)

    def evaluate_bool(self, activation: Mapping[str, Any]) -> bool:
        """Evaluate a condition (a ``when``): the result must be a boolean."""
        result = self._execute(activation)
        if not isinstance(result, bool):
            raise ExpressionError(
                f"expression {self.source!r} must evaluate to a bool,"
                f" got {_cel_type(result)} {result!r}"
            )
        return result

    def step_references(self) -> frozenset[str]:
        """The step names this expression reads, as ``steps.<name>`` or ``steps["name"]``.

        A static scan of the source: dynamic access such as ``steps[input.which]`` is not
        seen, and a comprehension variable named ``steps`` would be taken for the root.
        """
        return self._steps

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # The Rust program cannot be pickled or copied; rebuild it from the source.
        return (Expression.compile, (self.source,))

    def _execute(self, activation: Mapping[str, Any]) -> Any:
        context: dict[str, Any] = {}
        for root, keys in self._roots:
            if root not in activation:
                continue  # CEL reports the undefined variable
            value = activation[root]
            # Converting a value into CEL costs time in its size: pass only the keys read.
            if keys is not None and isinstance(value, Mapping):
                value = {key: value[key] for key in keys if key in value}
            context[root] = value
        try:
            return self._program.execute(context)
        except Exception as exc:
            raise ExpressionError(f"cannot evaluate {self.source!r}: {_reason(exc)}") from exc
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            raise ExpressionError(f"cannot evaluate {self.source!r}: {_reason(exc)}") from exc


@lru_cache(maxsize=_CACHE_SIZE)
def _compile(source: str) -> Expression:
    program = _parse(source)
    scan = _scan(source)
    unknown = sorted(set(program.variables()) - ALLOWED_ROOTS - _TYPE_NAMES - scan.bound)
    if unknown:
        raise ExpressionError(
            f"expression {source!r} references unknown variable {unknown[0]!r};"
            f" only {', '.join(sorted(ALLOWED_ROOTS))} are available"
        )
    functions = sorted(set(program.functions()) - _FUNCTIONS - _OPERATORS)
    if functions:
        raise ExpressionError(f"expression {source!r} calls unknown function {functions[0]!r}")
    roots = tuple(
        (root, scan.keys.get(root)) for root in sorted(set(program.variables()) & ALLOWED_ROOTS)
    )
    return Expression(source=source, _program=program, _roots=roots, _steps=scan.steps)


def _parse(source: str) -> cel.Program:
    try:
        return cel.compile(source)
    except Exception as exc:
        raise ExpressionError(f"invalid expression {source!r}: {_reason(exc)}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise ExpressionError(f"invalid expression {source!r}: {_reason(exc)}") from exc


def _is_panic(exc: BaseException) -> bool:
    # A Rust panic reaches Python as pyo3's PanicException, a BaseException.
    return type(exc).__module__ == "pyo3_runtime"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    text = str(exc).strip()
    prefix = re.match(r"Failed to parse expression '.*?': (?:ERROR: <input>:)?", text, re.DOTALL)
    if prefix:
        text = text[prefix.end() :]
    return text or type(exc).__name__


def _cel_type(value: object) -> str:
    return _CEL_TYPE_NAMES.get(type(value), type(value).__name__)


def _to_json(value: Any, source: str) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"expression {source!r} returned {value}, which JSON lacks")
        return value
    if isinstance(value, list):
        return [_to_json(item, source) for item in value]
    if isinstance(value, dict):  # CEL maps come back in hash order, which varies per process
        items = ((_json_key(k, source), _to_json(v, source)) for k, v in value.items())
        return dict(sorted(items, key=lambda item: item[0]))
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    raise ExpressionError(f"expression {source!r} returned a {_cel_type(value)}, not JSON")


def _json_key(key: object, source: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    raise ExpressionError(f"expression {source!r} returned a map with a {_cel_type(key)} key")


def _duration_text(value: dt.timedelta) -> str:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, fraction = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    return f"{sign}{seconds}.{fraction:06d}".rstrip("0").rstrip(".") + "s"


# --- templates ------------------------------------------------------------------------------


class _Node(Protocol):
    def render(self, activation: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Constant:
    value: str | int | float | bool | None

    def render(self, activation: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class _Whole:
    """A string that is exactly ``${ expr }``: replaced by the value, of any JSON type."""

    expression: Expression
    path: str

    def render(self, activation: Mapping[str, Any]) -> Any:
        try:
            return self.expression.evaluate(activation)
        except ExpressionError as exc:
            raise ExpressionError(f"{self.path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Interpolated:
    """A string with ``${expr}`` among other text: the values are formatted into it."""

    parts: tuple[str | Expression, ...]
    path: str

    def render(self, activation: Mapping[str, Any]) -> Any:
        try:
            return "".join(
                part if isinstance(part, str) else _to_text(part.evaluate(activation))
                for part in self.parts
            )
        except ExpressionError as exc:
            raise ExpressionError(f"{self.path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Object:
    items: tuple[tuple[str, _Node], ...]

    def render(self, activation: Mapping[str, Any]) -> Any:
        return {key: node.render(activation) for key, node in self.items}


@dataclass(frozen=True, slots=True)
class _Array:
    items: tuple[_Node, ...]

    def render(self, activation: Mapping[str, Any]) -> Any:
        return [node.render(activation) for node in self.items]


def _to_text(value: Any) -> str:
    """Format an interpolated value: strings as they are, other values as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A JSON value whose strings may embed ``${ expr }``; build it with :meth:`compile`.

    * a string that is exactly ``${ expr }`` becomes the expression's value (any JSON type);
    * ``${expr}`` inside other text is interpolated: strings as they are, numbers with
      ``str()``, booleans, null, maps and lists as JSON (``true``, ``null``, ``{"a":1}``);
    * ``$${`` is a literal ``${``; keys are never templated.
    """

    _root: _Node = field(repr=False)
    _expressions: tuple[Expression, ...] = field(repr=False)

    @staticmethod
    def compile(value: Any) -> Template:
        """Compile a JSON value; an :class:`ExpressionError` names the JSON path at fault."""
        found: list[Expression] = []
        try:
            root = _compile_node(value, "$", found)
        except RecursionError as exc:
            raise ExpressionError("template is nested too deeply") from exc
        return Template(_root=root, _expressions=tuple(found))

    @property
    def is_constant(self) -> bool:
        """True if the template holds no expression: it always renders to the same value."""
        return not self._expressions

    def render(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate the embedded expressions; return a new JSON value."""
        return self._root.render(activation)

    def step_references(self) -> frozenset[str]:
        """The union of the embedded expressions' :meth:`Expression.step_references`."""
        return frozenset[str]().union(*(e.step_references() for e in self._expressions))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _compile_node(value: Any, path: str, found: list[Expression]) -> _Node:
    if isinstance(value, str):
        return _compile_string(value, path, found)
    if value is None or isinstance(value, bool | int | float):
        return _Constant(value)
    if isinstance(value, Mapping):
        items: list[tuple[str, _Node]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise ExpressionError(f"{path}: object keys must be strings, got {key!r}")
            sub = f"{path}.{key}" if _NAME.fullmatch(key) else f"{path}[{json.dumps(key)}]"
            items.append((key, _compile_node(item, sub, found)))
        return _Object(tuple(items))
    if isinstance(value, list | tuple):
        return _Array(tuple(_compile_node(v, f"{path}[{i}]", found) for i, v in enumerate(value)))
    raise ExpressionError(f"{path}: a {type(value).__name__} is not a JSON value")


def _compile_string(text: str, path: str, found: list[Expression]) -> _Node:
    if "${" not in text:
        return _Constant(text)
    parts: list[str | Expression] = []
    literal: list[str] = []
    pos = 0
    while (start := text.find("${", pos)) >= 0:
        if start > 0 and text[start - 1] == "$":  # `$${` stands for a literal `${`
            literal.append(text[pos : start - 1] + "${")
            pos = start + 2
            continue
        end = _closing_brace(text, start + 2)
        if end < 0:
            raise ExpressionError(f"{path}: unterminated '${{' at offset {start} in {text!r}")
        expression = _compile_embedded(text[start + 2 : end], path)
        literal.append(text[pos:start])
        if "".join(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(expression)
        found.append(expression)
        pos = end + 1
    literal.append(text[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    if len(parts) == 1 and isinstance(parts[0], Expression):
        return _Whole(parts[0], path)
    if all(isinstance(part, str) for part in parts):
        return _Constant("".join(str(part) for part in parts))
    return _Interpolated(tuple(parts), path)


def _compile_embedded(source: str, path: str) -> Expression:
    if not source.strip():
        raise ExpressionError(f"{path}: empty expression '${{}}'")
    try:
        return Expression.compile(source.strip())
    except ExpressionError as exc:
        raise ExpressionError(f"{path}: {exc}") from exc


def _closing_brace(text: str, pos: int) -> int:
    """The index of the ``}`` closing an embedded expression; braces in it may nest."""
    depth = 0
    for token in _tokenize(text, pos):
        if token.text == "{":
            depth += 1
        elif token.text == "}":
            if depth == 0:
                return token.start
            depth -= 1
    return -1
