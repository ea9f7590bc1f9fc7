"""The core's fast record construction behaves like the ``dataclasses`` code it replaces."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from saga_orchestrator.core import commands, events, state, view
from saga_orchestrator.core.records import fast_init, replace
from saga_orchestrator.core.status import StepStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    name: str
    count: int = 3
    tags: list[str] = field(default_factory=list)


fast_init(Sample)

FAST = [
    events.ErrorInfo,
    *events.EVENT_TYPES,
    commands.Dispatch,
    commands.StartChild,
    commands.CompensateChild,
    commands.ReportToParent,
    commands.Decision,
    view.StepView,
    view.InstanceView,
    state.PhaseProgress,
    state.NodeState,
    state.SagaState,
]


def test_fast_init_keeps_signature_defaults_and_factories() -> None:
    first, second = Sample(name="a"), Sample(name="b", count=5, tags=["x"])
    assert (first.name, first.count, first.tags) == ("a", 3, [])
    assert (second.name, second.count, second.tags) == ("b", 5, ["x"])
    assert Sample(name="c").tags is not first.tags  # a fresh default per instance
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample(name="a", colour="red")  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.count = 4  # type: ignore[misc]
    assert first == Sample(name="a")
    assert repr(second) == "Sample(name='b', count=5, tags=['x'])"
    error = events.ErrorInfo(type="Boom", message="m", retryable=False)
    assert hash(error) == hash(events.ErrorInfo(type="Boom", message="m", retryable=False))


@pytest.mark.parametrize("cls", FAST, ids=lambda cls: cls.__name__)
def test_every_fast_record_defaults_like_its_fields(cls: type[Any]) -> None:
    """Each record built with only its required fields holds exactly its declared defaults."""
    required = {
        f.name: f"value-{f.name}"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    record = cls(**required)
    for f in dataclasses.fields(cls):
        if f.name in required:
            expected = required[f.name]
        elif f.default is not dataclasses.MISSING:
            expected = f.default
        else:
            assert callable(f.default_factory)
            expected = f.default_factory()
        assert getattr(record, f.name) == expected, f.name
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"


def test_replace_matches_dataclasses_replace() -> None:
    node = state.NodeState(output={"a": 1})
    saga = state.SagaState(
        instance_id="i",
        tenant_id="t",
        definition_name="d",
        definition_version="1.0.0",
        input={},
        started_at=T0,
        deadline=None,
        nodes={"n": node},
    )
    for record, changes in (
        (saga, {"seq": 5, "nodes": {}}),
        (node, {"status": StepStatus.RUNNING}),
        (node.action, {"attempts": 2, "in_flight": True}),
        (events.NodeCompleted(at=T0, node="n"), {"node": "m"}),
    ):
        copied: Any = replace(record, **changes)
        assert copied == dataclasses.replace(record, **changes)
        assert type(copied) is type(record) and copied is not record
    with pytest.raises(TypeError):
        replace(node, colour="red")
    assert replace(Sample(name="a"), count=7) == Sample(name="a", count=7)


def test_fast_init_refuses_what_it_cannot_build() -> None:
    @dataclass(frozen=True, kw_only=True)
    class NoSlots:
        name: str

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Checked:
        name: str

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, Checked):
        with pytest.raises(TypeError):
            fast_init(cls)
    # ``replace`` still works on them, through their own __init__.
    assert replace(NoSlots(name="a"), name="b") == NoSlots(name="b")
    assert replace(Checked(name="a"), name="b") == Checked(name="b")
