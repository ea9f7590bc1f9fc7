"""Which CEL library should run saga expressions? Measures both candidates on this machine.

* ``common-expression-language`` (import ``cel``): Python bindings over the Rust ``cel`` crate.
* ``cel-python`` (import ``celpy``): a pure-Python interpreter built on ``lark``.

Prints a correctness table (the same expressions, with the results the CEL specification
gives), then evaluation speed in µs per evaluation, then a verdict. Run it with
``python bench/cel_choice.py``; the numbers in docs/decisions/0001-cel-library.md come from it.
"""

from __future__ import annotations

import functools
import platform
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import cel
import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from saga_orchestrator.definition.expressions import Expression

ERROR = "<error>"  # the expected outcome of an expression that must fail

ACTIVATION: dict[str, Any] = {
    "input": {
        "amount": 150,
        "name": "Bob",
        "tags": ["vip", "eu"],
        "items": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": 3}],
        "customer": {"id": "c-9"},
    },
    "steps": {"reserve": {"output": {"ok": True, "id": "r-1"}}},
    "saga": {"id": "s-1", "tenant": "acme"},
}

CASES: list[tuple[str, Any]] = [
    ("1 + 2 * 3", 7),
    ("-7 % 3", -1),
    ("7 / 2", 3),
    ("input.amount > 100 && steps.reserve.output.ok", True),
    ('input.name + "!"', "Bob!"),
    ('"vip" in input.tags', True),
    ("has(input.customer.id) && !has(input.missing)", True),
    ("size(input.items)", 2),
    ('size("héllo")', 5),
    ('input.amount > 100 ? "big" : "small"', "big"),
    ('{"a": [1, 2]}.a', [1, 2]),
    ("input.items.map(i, i.qty)", [2, 3]),
    ('input.items.exists(i, i.sku == "b-2")', True),
    ('steps["reserve"].output.id', "r-1"),
    ('int("42") + 1', 43),
    ('"abc".startsWith("a") && "abc".matches("^a.c$")', True),
    ("1 == 1.0", True),
    ("1 / 0 == 1 || true", True),
    (
        'timestamp("2024-01-01T00:00:00Z") + duration("1h") > timestamp("2024-01-01T00:30:00Z")',
        True,
    ),
    ("input.missing", ERROR),
    ('"x" + 1', ERROR),
    ("1 / 0", ERROR),
]

SPEED_CASES = [
    ("when", "input.amount > 100 && steps.reserve.output.ok"),
    ("string", 'saga.id + "/" + input.customer.id + "/" + steps.reserve.output.id'),
    ("macro", "input.items.exists(i, i.qty > 2) && size(input.tags) == 2"),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    name: str
    compile: Callable[[str], Callable[[Mapping[str, Any]], Any]]


def _rust(source: str) -> Callable[[Mapping[str, Any]], Any]:
    program = cel.compile(source)
    return lambda activation: program.execute(dict(activation))


def _python(source: str) -> Callable[[Mapping[str, Any]], Any]:
    environment = celpy.Environment()
    program = environment.program(environment.compile(source))

    def run(activation: Mapping[str, Any]) -> Any:
        result = program.evaluate({k: json_to_cel(v) for k, v in activation.items()})
        if isinstance(result, CELEvalError):  # some errors come back as values
            raise result
        return result

    return run


def _ours(source: str) -> Callable[[Mapping[str, Any]], Any]:
    return Expression.compile(source).evaluate


CANDIDATES = [
    Candidate(name="cel (Rust)", compile=_rust),
    Candidate(name="celpy (Python)", compile=_python),
]


def _plain(value: Any) -> Any:
    """celpy returns subclasses (BoolType, IntType, ...); compare as plain values."""
    if isinstance(value, bool) or type(value).__name__ == "BoolType":
        return bool(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def outcome(candidate: Candidate, source: str) -> Any:
    try:
        return _plain(candidate.compile(source)(ACTIVATION))
    except Exception:
        return ERROR


def correctness() -> dict[str, int]:
    print("## Correctness (expected = CEL specification)\n")
    print("| expression | expected | " + " | ".join(c.name for c in CANDIDATES) + " |")
    print("| --- | --- |" + " --- |" * len(CANDIDATES))
    passed = dict.fromkeys((c.name for c in CANDIDATES), 0)
    for source, expected in CASES:
        cells = []
        for candidate in CANDIDATES:
            got = outcome(candidate, source)
            ok = got == expected and type(got) is type(expected)
            passed[candidate.name] += ok
            cells.append("ok" if ok else f"**{got!r}**")
        row = f"| `{source}` | {expected!r} | " + " | ".join(cells) + " |"
        print(row.replace("||", "\\|\\|"))
    print("| **passed** | " + f"{len(CASES)} |" + "".join(f" {n} |" for n in passed.values()))
    return passed


def _per_eval(function: Callable[[], Any]) -> float:
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=7, number=number)) / number * 1e6


def speed() -> dict[str, list[float]]:
    print("\n## Evaluation speed (µs per evaluation, best of 7; lower is better)\n")
    columns = [*CANDIDATES, Candidate(name="Expression (cel + our wrapper)", compile=_ours)]
    print("| expression | " + " | ".join(c.name for c in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    results: dict[str, list[float]] = {c.name: [] for c in columns}
    for label, source in SPEED_CASES:
        cells = []
        for candidate in columns:
            run = candidate.compile(source)
            micros = _per_eval(functools.partial(run, ACTIVATION))
            results[candidate.name].append(micros)
            cells.append(f"{micros:.1f}")
        print(f"| {label}: `{source}` | " + " | ".join(cells) + " |")
    compile_cells = [
        f"{_per_eval(functools.partial(c.compile, SPEED_CASES[0][1])):.1f}" for c in CANDIDATES
    ]
    print("| compile the `when` (µs) | " + " | ".join(compile_cells) + " | (cached) |")
    return results


def main() -> None:
    print(
        f"Python {platform.python_version()} on {platform.machine()};"
        f" common-expression-language {version('common-expression-language')},"
        f" cel-python {version('cel-python')}\n"
    )
    passed = correctness()
    results = speed()
    rust, python = results["cel (Rust)"], results["celpy (Python)"]
    ratio = sum(p / r for p, r in zip(python, rust, strict=True)) / len(rust)
    print("\n## Verdict\n")
    print(
        f"cel (Rust) passed {passed['cel (Rust)']}/{len(CASES)} cases,"
        f" celpy {passed['celpy (Python)']}/{len(CASES)};"
        f" cel evaluates {ratio:.0f}x faster on average"
        f" ({min(rust):.0f}-{max(rust):.0f} µs vs {min(python):.0f}-{max(python):.0f} µs)."
    )
    print(
        "Use common-expression-language behind saga_orchestrator.definition.expressions,"
        " which pins its gaps (size() of non-ASCII strings, hash-ordered maps, no native-stack"
        " guard) with tests and a source-length limit."
    )


if __name__ == "__main__":
    main()
