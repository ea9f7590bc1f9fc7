"""Feature flags of the saga language: an operator can switch parallel branches, dynamic routing
(switch), composition (sub-sagas) or versioning off for a node; a definition that uses a
disabled feature is rejected, naming the flag that disables it."""

from __future__ import annotations

from dataclasses import dataclass

from saga_orchestrator.definition.compiler import CompiledDefinition, NodeType
from saga_orchestrator.errors import Violation

RULE = "feature-disabled"


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureFlags:
    versioning: bool = True
    """``SAGA_VERSIONING_ENABLED``: off, a name keeps its first version only."""
    parallel: bool = True
    """``PARALLEL_EXECUTION_ENABLED``: parallel nodes."""
    dynamic_routing: bool = True
    """``DYNAMIC_ROUTING_ENABLED``: switch nodes."""
    composition: bool = True
    """``SAGA_COMPOSITION_ENABLED``: sub-saga nodes."""


_NODE_FLAGS = {
    NodeType.PARALLEL: ("parallel", "PARALLEL_EXECUTION_ENABLED", "parallel branches"),
    NodeType.SWITCH: ("dynamic_routing", "DYNAMIC_ROUTING_ENABLED", "switch routing"),
    NodeType.SAGA: ("composition", "SAGA_COMPOSITION_ENABLED", "sub-sagas"),
}


def disabled_features(compiled: CompiledDefinition, flags: FeatureFlags) -> list[Violation]:
    """One violation per node that needs a feature ``flags`` switches off."""
    violations = []
    for node in compiled.nodes.values():
        needed = _NODE_FLAGS.get(node.type)
        if needed is None or getattr(flags, needed[0]):
            continue
        _, variable, what = needed
        message = f"{what} are disabled on this node ({variable}=false)"
        violations.append(Violation(location=node.path, rule=RULE, message=message))
    return violations


def another_version_violation(name: str) -> Violation:
    return Violation(
        location="version",
        rule=RULE,
        message=f"{name!r} already has a version and versioning is disabled "
        "(SAGA_VERSIONING_ENABLED=false)",
    )
