"""Validation and compilation: a :class:`SagaDefinition` becomes a :class:`CompiledDefinition`,
a flat, immutable table of nodes with their expressions compiled once and their
dependencies precomputed, which is all the core needs to decide.

Every rule broken is reported at once, each naming the node's path and the rule, so an author
fixes a definition in one round.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from saga_orchestrator.definition.expressions import Expression, Template
from saga_orchestrator.definition.models import (
    DEFAULT_COMPENSATION_RETRY,
    DEFAULT_RETRIABLE_RETRY,
    DEFAULT_STEP_RETRY,
    DEFAULT_STEP_TIMEOUT,
    AmqpCall,
    CompensateOnFailure,
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
    SwitchNode,
)
from saga_orchestrator.definition.participants import is_credential_header
from saga_orchestrator.definition.versions import VersionConstraint, parse_version
from saga_orchestrator.errors import DefinitionError, ExpressionError, InvalidInput, Violation

MAX_NODES = 1000
MAX_DEPTH = 16


class NodeType(enum.StrEnum):
    STEP = "step"
    PARALLEL = "parallel"
    SWITCH = "switch"
    SAGA = "saga"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledCase:
    when: Expression | None
    """None for the default route."""
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledCall:
    """An http or amqp target's templates, compiled once: ``path`` and ``headers`` are None
    for amqp targets; a None ``body`` means the step's input is sent as it is."""

    path: Template | None = None
    headers: Template | None = None
    body: Template | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledNode:
    name: str
    type: NodeType
    path: str
    """Where the node sits in the definition, e.g. ``steps[1].branches[0][2]``."""
    model: Node
    when: Expression | None
    input: Template | None
    """None: the step receives the saga's input."""
    kind: StepKind = StepKind.COMPENSATABLE
    retry: RetryPolicy = DEFAULT_STEP_RETRY
    timeout: float = DEFAULT_STEP_TIMEOUT
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    compensation_timeout: float = DEFAULT_STEP_TIMEOUT
    compensate_on_failure: CompensateOnFailure = CompensateOnFailure.UNKNOWN
    on_compensation_failure: OnCompensationFailure = OnCompensationFailure.PARK
    has_compensation: bool = False
    """A step with a compensation target, or a sub-saga (compensated as a whole)."""
    dependents: frozenset[str] = frozenset()
    """Every node that runs only after this one finished: its compensation waits for theirs."""
    branches: tuple[tuple[str, ...], ...] = ()
    cases: tuple[CompiledCase, ...] = ()
    action_call: CompiledCall | None = None
    compensation_call: CompiledCall | None = None

    @property
    def action(self) -> HandlerCall | HttpCall | AmqpCall:
        assert isinstance(self.model, StepNode)
        return self.model.action

    @property
    def compensation(self) -> HandlerCall | HttpCall | AmqpCall | None:
        return self.model.compensation if isinstance(self.model, StepNode) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledDefinition:
    definition: SagaDefinition
    nodes: Mapping[str, CompiledNode]
    root: tuple[str, ...]
    has_pivot: bool
    sub_sagas: frozenset[str] = field(default_factory=frozenset)
    """Names of the definitions this one starts as children."""

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> str:
        return self.definition.version

    def handlers(self) -> frozenset[str]:
        return frozenset(_targets_of(self, HandlerCall, lambda t: t.handler))

    def services(self) -> frozenset[str]:
        return frozenset(_targets_of(self, HttpCall, lambda t: t.http.service))


def _targets_of(compiled: CompiledDefinition, cls: type[Any], pick: Any) -> Iterator[str]:
    for node in compiled.nodes.values():
        if node.type is NodeType.STEP:
            for target in (node.action, node.compensation):
                if isinstance(target, cls):
                    yield pick(target)


def compile_definition(
    definition: SagaDefinition,
    *,
    known_handlers: Collection[str] | None = None,
    known_services: Collection[str] | None = None,
) -> CompiledDefinition:
    """Check every cross-node rule and build the node table; raise DefinitionError listing all
    violations. ``known_*`` = None skips that registry check (e.g. handlers served by workers)."""
    builder = _Builder(definition)
    builder.walk(definition.steps, "steps", frozenset(), depth=1, in_parallel=False)
    builder.check_definition_level()
    builder.check_references(known_handlers, known_services)
    if builder.violations:
        raise DefinitionError(builder.violations)
    return CompiledDefinition(
        definition=definition,
        nodes=builder.nodes,
        root=tuple(node.name for node in definition.steps),
        has_pivot=builder.has_pivot,
        sub_sagas=frozenset(builder.sub_sagas),
    )


class _Builder:
    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.nodes: dict[str, CompiledNode] = {}
        self.violations: list[Violation] = []
        self.has_pivot = False
        self.sub_sagas: set[str] = set()
        self._references: list[tuple[str, frozenset[str]]] = []
        self._claimed: set[str] = set()

    def fail(self, location: str, rule: str, message: str) -> None:
        self.violations.append(Violation(location=location, rule=rule, message=message))

    def walk(
        self,
        sequence: Sequence[Node],
        path: str,
        after: frozenset[str],
        *,
        depth: int,
        in_parallel: bool,
    ) -> None:
        """Compile a sequence; ``after`` = nodes that run once the whole sequence finished."""
        if depth > MAX_DEPTH:
            self.fail(path, "max-depth", f"nesting deeper than {MAX_DEPTH} levels")
            return
        for index, node in enumerate(sequence):
            later = frozenset(_names_within(sequence[index + 1 :])) | after
            self.compile_node(node, f"{path}[{index}]", later, depth, in_parallel)

    def compile_node(
        self, node: Node, path: str, dependents: frozenset[str], depth: int, in_parallel: bool
    ) -> None:
        # Claimed before compiling children, so a descendant cannot reuse a container's name.
        if node.name in self._claimed:
            self.fail(path, "unique-names", f"node name {node.name!r} is used more than once")
        self._claimed.add(node.name)
        if len(self._claimed) > MAX_NODES:
            self.fail(path, "max-nodes", f"a definition holds at most {MAX_NODES} nodes")
            return
        when = self.expression(node.when, f"{path}.when")
        common: dict[str, Any] = {"name": node.name, "path": path, "model": node, "when": when}
        if isinstance(node, StepNode):
            compiled = self.compile_step(node, common, dependents, in_parallel)
        elif isinstance(node, SubSagaNode):
            compiled = self.compile_sub_saga(node, common, dependents)
        elif isinstance(node, ParallelNode):
            compiled = self.compile_parallel(node, common, dependents, depth)
        else:
            compiled = self.compile_switch(node, common, dependents, depth, in_parallel)
        self.nodes.setdefault(node.name, compiled)

    def compile_step(
        self, node: StepNode, common: dict[str, Any], dependents: frozenset[str], in_parallel: bool
    ) -> CompiledNode:
        path = common["path"]
        defaults = self.definition.defaults
        fallback_retry = DEFAULT_RETRIABLE_RETRY if node.kind is StepKind.RETRIABLE else None
        if node.kind is StepKind.PIVOT:
            self.has_pivot = True
            if in_parallel:
                self.fail(path, "pivot-placement", "a pivot cannot run inside a parallel branch")
        if node.kind is not StepKind.COMPENSATABLE and node.compensation is not None:
            self.fail(
                path, "kind-compensation", f"a {node.kind} step is never compensated: remove it"
            )
        action_call = self.compile_call(node.action, f"{path}.action")
        compensation_call = self.compile_call(node.compensation, f"{path}.compensation")
        return CompiledNode(
            action_call=action_call,
            compensation_call=compensation_call,
            **common,
            type=NodeType.STEP,
            input=self.template(node.input, f"{path}.input"),
            kind=node.kind,
            retry=node.retry or fallback_retry or defaults.retry or DEFAULT_STEP_RETRY,
            timeout=node.timeout or defaults.timeout or DEFAULT_STEP_TIMEOUT,
            compensation_retry=node.compensation_retry
            or defaults.compensation_retry
            or DEFAULT_COMPENSATION_RETRY,
            compensation_timeout=node.compensation_timeout
            or defaults.compensation_timeout
            or DEFAULT_STEP_TIMEOUT,
            compensate_on_failure=node.compensate_on_failure,
            on_compensation_failure=node.on_compensation_failure,
            has_compensation=node.compensation is not None,
            dependents=dependents,
        )

    def compile_sub_saga(
        self, node: SubSagaNode, common: dict[str, Any], dependents: frozenset[str]
    ) -> CompiledNode:
        path = common["path"]
        self.sub_sagas.add(node.saga)
        try:
            VersionConstraint.parse(node.version)
        except InvalidInput as error:
            self.fail(f"{path}.version", "version-constraint", str(error))
        return CompiledNode(
            **common,
            type=NodeType.SAGA,
            input=self.template(node.input, f"{path}.input"),
            retry=RetryPolicy(max_attempts=1),
            timeout=node.timeout or 0.0,
            on_compensation_failure=node.on_compensation_failure,
            compensate_on_failure=CompensateOnFailure.NEVER,
            has_compensation=True,
            dependents=dependents,
        )

    def compile_parallel(
        self, node: ParallelNode, common: dict[str, Any], dependents: frozenset[str], depth: int
    ) -> CompiledNode:
        path = common["path"]
        for index, branch in enumerate(node.branches):
            self.walk(
                branch, f"{path}.branches[{index}]", dependents, depth=depth + 1, in_parallel=True
            )
        return CompiledNode(
            **common,
            type=NodeType.PARALLEL,
            input=None,
            dependents=dependents,
            branches=tuple(tuple(child.name for child in branch) for branch in node.branches),
        )

    def compile_switch(
        self,
        node: SwitchNode,
        common: dict[str, Any],
        dependents: frozenset[str],
        depth: int,
        in_parallel: bool,
    ) -> CompiledNode:
        path = common["path"]
        cases: list[CompiledCase] = []
        for index, case in enumerate(node.cases):
            case_path = f"{path}.cases[{index}]"
            when = self.expression(case.when, f"{case_path}.when")
            self.walk(
                case.steps,
                f"{case_path}.steps",
                dependents,
                depth=depth + 1,
                in_parallel=in_parallel,
            )
            cases.append(CompiledCase(when=when, nodes=tuple(n.name for n in case.steps)))
        self.walk(
            node.default, f"{path}.default", dependents, depth=depth + 1, in_parallel=in_parallel
        )
        cases.append(CompiledCase(when=None, nodes=tuple(n.name for n in node.default)))
        return CompiledNode(
            **common, type=NodeType.SWITCH, input=None, dependents=dependents, cases=tuple(cases)
        )

    def expression(self, source: str | None, location: str) -> Expression | None:
        if source is None:
            return None
        try:
            compiled = Expression.compile(source)
        except ExpressionError as error:
            self.fail(location, "expression", str(error))
            return None
        self._references.append((location, compiled.step_references()))
        return compiled

    def template(self, value: Any, location: str) -> Template | None:
        if value is None:
            return None
        try:
            compiled = Template.compile(value)
        except ExpressionError as error:
            self.fail(location, "expression", str(error))
            return None
        self._references.append((location, compiled.step_references()))
        return compiled

    def compile_call(
        self, target: HandlerCall | HttpCall | AmqpCall | None, location: str
    ) -> CompiledCall | None:
        """Paths, headers and bodies of http/amqp targets are templates: compile them now, so
        a bad expression fails registration, not the first run."""
        if isinstance(target, HttpCall):
            spec = target.http
            for name, value in spec.headers.items():
                # A definition is stored, listed and shown: a credential written into it would
                # be readable by every viewer. A value taken from the input is allowed (a
                # caller's delegated token), a constant one is not.
                if is_credential_header(name) and "${" not in value:
                    self.fail(
                        f"{location}.http.headers.{name}",
                        "credential-header",
                        f"header {name!r} carries a credential and may not be written into a "
                        "definition: put it in the participant service's registry entry as a "
                        "secret reference (PUT /api/v1/participants/{name}), or take it from "
                        "the saga's input with ${ ... }",
                    )
            return CompiledCall(
                path=self.template(spec.path, f"{location}.http.path"),
                headers=self.template(spec.headers or None, f"{location}.http.headers"),
                body=self.template(spec.body, f"{location}.http.body"),
            )
        if isinstance(target, AmqpCall):
            return CompiledCall(body=self.template(target.amqp.body, f"{location}.amqp.body"))
        return None

    def check_definition_level(self) -> None:
        try:
            parse_version(self.definition.version)
        except InvalidInput as error:
            self.fail("version", "semantic-version", str(error))
        if self.definition.input_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.definition.input_schema)
            except jsonschema.SchemaError as error:
                self.fail(
                    "input_schema", "json-schema", f"not a valid JSON Schema: {error.message}"
                )
        for node in self.nodes.values():
            if node.kind is StepKind.PIVOT:
                self.check_after_pivot(node)

    def check_after_pivot(self, pivot: CompiledNode) -> None:
        for name in sorted(pivot.dependents):
            later = self.nodes.get(name)
            if later is None or later.type in (NodeType.PARALLEL, NodeType.SWITCH):
                continue
            if later.kind is not StepKind.RETRIABLE or later.type is NodeType.SAGA:
                self.fail(
                    later.path,
                    "pivot-ordering",
                    f"{later.name!r} runs after pivot {pivot.name!r}, so it must be a "
                    "retriable step (nothing can be compensated past the pivot)",
                )

    def check_references(
        self, known_handlers: Collection[str] | None, known_services: Collection[str] | None
    ) -> None:
        for location, names in self._references:
            for name in sorted(names - self.nodes.keys()):
                self.fail(location, "step-reference", f"refers to unknown step {name!r}")
        if known_handlers is None and known_services is None:
            return
        for node in self.nodes.values():
            if node.type is not NodeType.STEP:
                continue
            for label, target in (("action", node.action), ("compensation", node.compensation)):
                location = f"{node.path}.{label}"
                if isinstance(target, HandlerCall) and known_handlers is not None:
                    if target.handler not in known_handlers:
                        self.fail(location, "known-handler", f"no handler {target.handler!r}")
                elif isinstance(target, HttpCall) and known_services is not None:
                    service = target.http.service
                    if service not in known_services:
                        self.fail(location, "known-service", f"no participant {service!r}")


def _names_within(sequence: Sequence[Node]) -> Iterator[str]:
    for node in sequence:
        yield node.name
        if isinstance(node, ParallelNode):
            for branch in node.branches:
                yield from _names_within(branch)
        elif isinstance(node, SwitchNode):
            for case in node.cases:
                yield from _names_within(case.steps)
            yield from _names_within(node.default)


def validate_input(definition: SagaDefinition, context: Any) -> None:
    """Raise InvalidInput naming each place where ``context`` breaks the input schema."""
    if definition.input_schema is None:
        return
    validator = jsonschema.Draft202012Validator(definition.input_schema)
    problems = sorted(validator.iter_errors(context), key=lambda e: list(e.absolute_path))
    if problems:
        details = "; ".join(f"{e.json_path}: {e.message}" for e in problems[:10])
        raise InvalidInput(f"context does not match the input schema: {details}")
