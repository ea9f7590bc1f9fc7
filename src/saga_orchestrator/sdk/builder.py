"""Define sagas in Python: a fluent, immutable builder over the models of the saga language.

Every part is validated by the same models, from the same JSON-shaped data, as a JSON or YAML
definition, so a built saga is exactly the definition its JSON would give (same
:func:`~saga_orchestrator.definition.loader.canonical_json`)::

    saga = (
        SagaBuilder("order", "1.0.0", timeout="5m")
        .step("reserve", "inventory.reserve", compensation="inventory.release")
        .step("charge", http("payment", "/charges", body={"amount": "${input.amount}"}))
        .parallel("notify", branch(step("email", "notify.email")), branch(step("sms", "sms")))
        .build()
    )

Options keep the names and values of the JSON fields (``kind="pivot"``, ``timeout="30s"``,
``retry=Retry(max_attempts=5)``). A mistake raises
:class:`~saga_orchestrator.errors.DefinitionError` where it is made: the helper that builds
a node names it (``node 'reserve': retry``), :meth:`SagaBuilder.build` the saga's fields.
Cross-node rules (unique names, pivot ordering, expressions) are checked by
:func:`~saga_orchestrator.definition.compiler.compile_definition`, as for any definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from pydantic import BaseModel, ValidationError

from saga_orchestrator.definition.loader import DOCUMENT_LOCATION, violations_from
from saga_orchestrator.definition.models import (
    AmqpCall,
    CompensateOnFailure,
    Defaults,
    HandlerCall,
    HttpCall,
    Node,
    OnCompensationFailure,
    ParallelNode,
    RetryPolicy,
    SagaDefinition,
    StepKind,
    StepNode,
    SubSagaNode,
    SwitchCase,
    SwitchNode,
)
from saga_orchestrator.errors import DefinitionError

__all__ = [
    "DefaultsOptions",
    "Retry",
    "SagaBuilder",
    "StepOptions",
    "SubSagaOptions",
    "Target",
    "amqp",
    "branch",
    "case",
    "handler_call",
    "http",
    "parallel",
    "step",
    "sub_saga",
    "switch",
]

Retry = RetryPolicy
"""``Retry(max_attempts=5, initial_interval="500ms", ...)``: a step's retry policy."""

Target = str | HandlerCall | HttpCall | AmqpCall
"""A handler name (shorthand for :func:`handler_call`), or what :func:`http`/:func:`amqp` build."""
Duration = float | str
"""Seconds, or a string with a unit: ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Kind = StepKind | Literal["compensatable", "pivot", "retriable"]
OnFailure = CompensateOnFailure | Literal["unknown", "always", "never"]
OnCompensationError = OnCompensationFailure | Literal["park", "skip"]

_M = TypeVar("_M", bound=BaseModel)


class StepOptions(TypedDict, total=False):
    """The optional fields of a step, as in JSON (see the definition reference)."""

    compensation: Target
    kind: Kind
    when: str
    input: Any
    retry: RetryPolicy
    timeout: Duration
    compensation_retry: RetryPolicy
    compensation_timeout: Duration
    compensate_on_failure: OnFailure
    on_compensation_failure: OnCompensationError


class SubSagaOptions(TypedDict, total=False):
    """The optional fields of a sub-saga node."""

    version: str
    when: str
    input: Any
    timeout: Duration
    on_compensation_failure: OnCompensationError


class DefaultsOptions(TypedDict, total=False):
    """Retry policies and timeouts for the steps that do not set their own."""

    retry: RetryPolicy
    timeout: Duration
    compensation_retry: RetryPolicy
    compensation_timeout: Duration


# --- targets --------------------------------------------------------------------------------


def handler_call(name: str) -> HandlerCall:
    """A target naming a Python handler (in-process or served by a worker); a plain string
    is the same. Not to be confused with the ``@handler`` decorator that registers one."""
    return _validated(HandlerCall, {"handler": name}, "")


def http(
    service: str,
    path: str,
    *,
    method: HttpMethod = "POST",
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> HttpCall:
    """A call to a registered participant service; ``body`` is a JSON template."""
    spec = {"service": service, "path": path, "method": method, "headers": headers, "body": body}
    return _validated(HttpCall, {"http": _present(spec)}, "")


def amqp(routing_key: str, *, exchange: str = "", body: Any = None) -> AmqpCall:
    """A message to a participant over RabbitMQ; the reply is awaited."""
    spec = {"routing_key": routing_key, "exchange": exchange, "body": body}
    return _validated(AmqpCall, {"amqp": _present(spec)}, "")


# --- nodes ----------------------------------------------------------------------------------


def step(name: str, action: Target, **options: Unpack[StepOptions]) -> StepNode:
    """A step: ``action`` does the work, ``compensation`` (if any) undoes it."""
    return _validated(StepNode, {"name": name, "action": action, **options}, _node(name))


def branch(*nodes: Node) -> list[Node]:
    """One branch of a :func:`parallel` node: nodes that run in sequence."""
    return list(nodes)


def parallel(name: str, *branches: Sequence[Node], when: str | None = None) -> ParallelNode:
    """Branches that run concurrently; the node succeeds when all of them have."""
    fields = {"name": name, "branches": [list(b) for b in branches], "when": when}
    return _validated(ParallelNode, _present(fields), _node(name))


def case(when: str, *nodes: Node) -> SwitchCase:
    """A route of a :func:`switch`: the nodes run if ``when`` is the first true condition."""
    return _validated(SwitchCase, {"when": when, "steps": list(nodes)}, "case")


def switch(
    name: str, *cases: SwitchCase, default: Sequence[Node] = (), when: str | None = None
) -> SwitchNode:
    """The first case whose ``when`` holds runs; ``default`` if none does."""
    fields = {"name": name, "cases": list(cases), "default": list(default), "when": when}
    return _validated(SwitchNode, _present(fields), _node(name))


def sub_saga(name: str, saga: str, **options: Unpack[SubSagaOptions]) -> SubSagaNode:
    """Run another definition as a child; ``version`` is a constraint such as ``^1.2``."""
    return _validated(SubSagaNode, {"name": name, "saga": saga, **options}, _node(name))


# --- the saga -------------------------------------------------------------------------------


class SagaBuilder:
    """Builds a :class:`SagaDefinition` node by node. Immutable: every method returns a new
    builder, so a partly built saga can serve as the base of several."""

    __slots__ = ("_defaults", "_fields", "_nodes")

    def __init__(
        self,
        name: str,
        version: str,
        *,
        description: str | None = None,
        timeout: Duration | None = None,
    ) -> None:
        self._fields: dict[str, Any] = _present(
            {"name": name, "version": version, "description": description, "timeout": timeout}
        )
        self._defaults: Defaults | None = None
        self._nodes: tuple[Node, ...] = ()

    def input_schema(self, schema: Mapping[str, Any]) -> SagaBuilder:
        """The JSON Schema (draft 2020-12) that a start context must satisfy."""
        return self._evolve(fields={**self._fields, "input_schema": dict(schema)})

    def defaults(self, **options: Unpack[DefaultsOptions]) -> SagaBuilder:
        """Retry policies and timeouts of the steps that do not set their own."""
        return self._evolve(defaults=_validated(Defaults, options, "defaults"))

    def then(self, *nodes: Node) -> SagaBuilder:
        """Append nodes built with the module's helpers."""
        return self._evolve(nodes=(*self._nodes, *nodes))

    def step(self, name: str, action: Target, **options: Unpack[StepOptions]) -> SagaBuilder:
        """Append a :func:`step`."""
        return self.then(step(name, action, **options))

    def parallel(
        self, name: str, *branches: Sequence[Node], when: str | None = None
    ) -> SagaBuilder:
        """Append a :func:`parallel` node."""
        return self.then(parallel(name, *branches, when=when))

    def switch(
        self,
        name: str,
        *cases: SwitchCase,
        default: Sequence[Node] = (),
        when: str | None = None,
    ) -> SagaBuilder:
        """Append a :func:`switch` node."""
        return self.then(switch(name, *cases, default=default, when=when))

    def sub_saga(self, name: str, saga: str, **options: Unpack[SubSagaOptions]) -> SagaBuilder:
        """Append a :func:`sub_saga` node."""
        return self.then(sub_saga(name, saga, **options))

    def build(self) -> SagaDefinition:
        """The definition; :class:`DefinitionError` if a field is invalid or no node was added."""
        fields = {**self._fields, "defaults": self._defaults, "steps": list(self._nodes)}
        return _validated(SagaDefinition, _present(fields), "")

    def _evolve(
        self,
        *,
        fields: dict[str, Any] | None = None,
        defaults: Defaults | None = None,
        nodes: tuple[Node, ...] | None = None,
    ) -> SagaBuilder:
        clone = object.__new__(SagaBuilder)
        clone._fields = self._fields if fields is None else fields
        clone._defaults = self._defaults if defaults is None else defaults
        clone._nodes = self._nodes if nodes is None else nodes
        return clone


def _validated(model: type[_M], data: Mapping[str, Any], where: str) -> _M:
    """Validate JSON-shaped ``data`` as JSON is; errors are located below ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        violations = violations_from(error)
        if where:
            violations = [replace(v, location=_below(where, v.location)) for v in violations]
        raise DefinitionError(violations) from None


def _below(where: str, location: str) -> str:
    return where if location == DOCUMENT_LOCATION else f"{where}: {location}"


def _node(name: str) -> str:
    return f"node {name!r}"


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields given: None stands for "not set", as an absent JSON field does."""
    return {key: value for key, value in fields.items() if value is not None}
