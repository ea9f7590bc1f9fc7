"""Feature flags: a definition using a disabled feature is refused, naming the flag."""

from __future__ import annotations

import pytest

from saga_orchestrator.definition.features import FeatureFlags
from saga_orchestrator.errors import DefinitionError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.settings import load_settings
from tests.integration.engine.support import Participants, saga, steps

PARALLEL = {"name": "fan", "branches": [steps("email"), steps("sms")]}
SWITCH = {"name": "route", "cases": [{"when": "true", "steps": steps("review")}]}
CHILD = {"name": "pay", "saga": "payment"}


@pytest.mark.parametrize(
    ("flags", "node", "variable"),
    [
        (FeatureFlags(parallel=False), PARALLEL, "PARALLEL_EXECUTION_ENABLED"),
        (FeatureFlags(dynamic_routing=False), SWITCH, "DYNAMIC_ROUTING_ENABLED"),
        (FeatureFlags(composition=False), CHILD, "SAGA_COMPOSITION_ENABLED"),
    ],
)
async def test_a_definition_using_a_disabled_feature_is_refused_naming_the_flag(
    store_url: str,
    participants: Participants,
    flags: FeatureFlags,
    node: dict[str, object],
    variable: str,
) -> None:
    async with Orchestrator(store_url, handlers=participants.registry(), features=flags) as node_:
        await node_.register(saga("payment", steps("charge")))
        with pytest.raises(DefinitionError) as raised:
            await node_.register(saga("order", [*steps("reserve"), node]))
    (violation,) = raised.value.violations
    assert violation.rule == "feature-disabled"
    assert violation.location == "steps[1]"
    assert f"{variable}=false" in violation.message


async def test_without_versioning_a_name_keeps_its_first_version(
    store_url: str, participants: Participants
) -> None:
    flags = FeatureFlags(versioning=False)
    async with Orchestrator(store_url, handlers=participants.registry(), features=flags) as node:
        await node.register(saga("order", steps("reserve")))
        await node.register(saga("order", steps("reserve")))  # identical: still fine
        with pytest.raises(DefinitionError, match="SAGA_VERSIONING_ENABLED=false"):
            await node.register(saga("order", steps("reserve"), version="1.1.0"))


def test_the_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLEL_EXECUTION_ENABLED", "false")
    monkeypatch.setenv("SAGA_VERSIONING_ENABLED", "0")
    flags = load_settings().feature_flags()
    assert flags == FeatureFlags(parallel=False, versioning=False)
