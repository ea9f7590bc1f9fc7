"""The saga language: models, loading (JSON/YAML), validation and compilation, the exported
JSON Schema, CEL expressions and semantic versions.

The modules are private in spirit; import from here.
"""

from typing import TYPE_CHECKING, Any

from saga_orchestrator.definition.compiler import (
    MAX_DEPTH,
    MAX_NODES,
    CompiledCase,
    CompiledDefinition,
    CompiledNode,
    NodeType,
    compile_definition,
    validate_input,
)
from saga_orchestrator.definition.expressions import Expression, Template
from saga_orchestrator.definition.loader import (
    MAX_DEFINITION_BYTES,
    canonical_json,
    definition_digest,
    load_and_compile,
    load_definition_file,
    parse_definition,
)
from saga_orchestrator.definition.models import (
    AmqpCall,
    AmqpSpec,
    CompensateOnFailure,
    Defaults,
    HandlerCall,
    HttpCall,
    HttpSpec,
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
    parse_duration,
)
from saga_orchestrator.definition.versions import VersionConstraint, parse_version, resolve

if TYPE_CHECKING:
    from saga_orchestrator.definition.schema import language_json_schema
else:

    def __getattr__(name: str) -> Any:
        # The schema module is imported on first use, so that `python -m
        # saga_orchestrator.definition.schema` does not find it imported already (runpy warns);
        # hidden from type checkers, which would take every name for this one.
        if name == "language_json_schema":
            from saga_orchestrator.definition.schema import language_json_schema  # noqa: PLC0415

            return language_json_schema
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_DEFINITION_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "AmqpCall",
    "AmqpSpec",
    "CompensateOnFailure",
    "CompiledCase",
    "CompiledDefinition",
    "CompiledNode",
    "Defaults",
    "Expression",
    "HandlerCall",
    "HttpCall",
    "HttpSpec",
    "Node",
    "NodeType",
    "OnCompensationFailure",
    "ParallelNode",
    "RetryPolicy",
    "SagaDefinition",
    "StepKind",
    "StepNode",
    "SubSagaNode",
    "SwitchCase",
    "SwitchNode",
    "Template",
    "VersionConstraint",
    "canonical_json",
    "compile_definition",
    "definition_digest",
    "language_json_schema",
    "load_and_compile",
    "load_definition_file",
    "parse_definition",
    "parse_duration",
    "parse_version",
    "resolve",
    "validate_input",
]
