"""The Python builder gives exactly the definitions their JSON gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga_orchestrator import sdk
from saga_orchestrator.definition import (
    HandlerCall,
    SagaDefinition,
    StepKind,
    canonical_json,
    compile_definition,
    load_definition_file,
    parse_definition,
)
from saga_orchestrator.errors import DefinitionError
from saga_orchestrator.sdk import (
    Retry,
    SagaBuilder,
    amqp,
    branch,
    case,
    handler_call,
    http,
    parallel,
    step,
    sub_saga,
    switch,
)

EXAMPLES = Path(__file__).parents[3] / "examples" / "definitions"


def same(built: SagaDefinition, document: object) -> None:
    parsed = parse_definition(document)  # type: ignore[arg-type]
    assert canonical_json(built) == canonical_json(parsed)
    assert built == parsed


def test_every_construct_builds_the_definition_its_json_gives() -> None:
    built = (
        SagaBuilder("order", "1.0.0", description="An order", timeout="5m")
        .input_schema({"type": "object", "required": ["sku"]})
        .defaults(retry=Retry(max_attempts=5), timeout="10s")
        .step(
            "reserve",
            action="inventory.reserve",
            compensation="inventory.release",
            input={"sku": "${input.sku}"},
        )
        .step(
            "charge",
            action=http("payment", "/charges", method="POST", body={"amount": "${input.amount}"}),
            compensation=http("payment", "/refunds", headers={"X-Reason": "saga"}),
            retry=Retry(max_attempts=3, initial_interval="2s", non_retryable_errors=("Declined",)),
            compensate_on_failure="always",
            on_compensation_failure="skip",
        )
        .parallel(
            "notify",
            branch(step("email", action="notify.email", kind="retriable")),
            branch(step("sms", action=amqp("notify.sms", exchange="notify"), when="input.sms")),
        )
        .switch(
            "route",
            case("input.amount > 100", step("review", action="review.manual", timeout=3600)),
            default=[step("auto", action=handler_call("review.auto"))],
        )
        .sub_saga("shipping", saga="shipping", version="^1", input={"sku": "${input.sku}"})
        .step("close", action="order.close", kind=StepKind.PIVOT)
        .build()
    )
    same(
        built,
        {
            "name": "order",
            "version": "1.0.0",
            "description": "An order",
            "timeout": 300,
            "input_schema": {"type": "object", "required": ["sku"]},
            "defaults": {"retry": {"max_attempts": 5}, "timeout": "10s"},
            "steps": [
                {
                    "name": "reserve",
                    "action": "inventory.reserve",
                    "compensation": {"handler": "inventory.release"},
                    "input": {"sku": "${input.sku}"},
                },
                {
                    "name": "charge",
                    "action": {
                        "http": {
                            "service": "payment",
                            "path": "/charges",
                            "body": {"amount": "${input.amount}"},
                        }
                    },
                    "compensation": {
                        "http": {
                            "method": "POST",
                            "service": "payment",
                            "path": "/refunds",
                            "headers": {"X-Reason": "saga"},
                        }
                    },
                    "retry": {
                        "max_attempts": 3,
                        "initial_interval": 2,
                        "non_retryable_errors": ["Declined"],
                    },
                    "compensate_on_failure": "always",
                    "on_compensation_failure": "skip",
                },
                {
                    "name": "notify",
                    "type": "parallel",
                    "branches": [
                        [{"name": "email", "action": "notify.email", "kind": "retriable"}],
                        [
                            {
                                "name": "sms",
                                "action": {
                                    "amqp": {"routing_key": "notify.sms", "exchange": "notify"}
                                },
                                "when": "input.sms",
                            }
                        ],
                    ],
                },
                {
                    "name": "route",
                    "cases": [
                        {
                            "when": "input.amount > 100",
                            "steps": [
                                {"name": "review", "action": "review.manual", "timeout": "1h"}
                            ],
                        }
                    ],
                    "default": [{"name": "auto", "action": "review.auto"}],
                },
                {
                    "name": "shipping",
                    "saga": "shipping",
                    "version": "^1",
                    "input": {"sku": "${input.sku}"},
                },
                {"name": "close", "action": "order.close", "kind": "pivot"},
            ],
        },
    )


def test_the_order_example_can_be_written_in_python() -> None:
    order = (
        SagaBuilder(
            "order",
            "1.0.0",
            description="Reserve stock, charge the customer, then ship the parcel and notify"
            " the customer.",
            timeout="30m",
        )
        .input_schema(load_definition_file(EXAMPLES / "order.yaml").input_schema or {})
        .defaults(
            retry=Retry(max_attempts=5, initial_interval="500ms", max_interval="30s"),
            timeout="20s",
        )
        .step(
            "reserve",
            "inventory.reserve",
            compensation="inventory.release",
            input={"order_id": "${input.order_id}", "items": "${input.items}"},
        )
        .step(
            "charge",
            "payment.charge",
            compensation="payment.refund",
            input={
                "order_id": "${input.order_id}",
                "customer_id": "${input.customer.id}",
                "amount": "${input.amount}",
            },
            retry=Retry(max_attempts=3, non_retryable_errors=("CardDeclined",)),
        )
        .parallel(
            "fulfil",
            branch(
                step(
                    "ship",
                    "shipping.ship",
                    compensation="shipping.cancel",
                    input={
                        "order_id": "${input.order_id}",
                        "reservation": "${steps.reserve.output.reservation_id}",
                    },
                )
            ),
            branch(
                step(
                    "confirm",
                    "notify.email",
                    kind="retriable",
                    input={
                        "to": "${input.customer.email}",
                        "subject": "Order ${input.order_id} confirmed",
                    },
                )
            ),
        )
        .build()
    )
    assert canonical_json(order) == canonical_json(load_definition_file(EXAMPLES / "order.yaml"))


def test_module_helpers_and_builder_methods_agree() -> None:
    nodes = (
        step("a", "h"),
        parallel("p", [step("b", "h")], when="true"),
        switch("s", case("true", step("c", "h")), when="input.go"),
        sub_saga("child", "child", timeout="1h"),
    )
    by_helpers = SagaBuilder("x", "1.0.0").then(*nodes).build()
    by_methods = (
        SagaBuilder("x", "1.0.0")
        .step("a", "h")
        .parallel("p", [step("b", "h")], when="true")
        .switch("s", case("true", step("c", "h")), when="input.go")
        .sub_saga("child", "child", timeout="1h")
        .build()
    )
    assert by_helpers == by_methods


def test_a_handler_name_is_shorthand_for_a_handler_target() -> None:
    assert step("a", "inventory.reserve") == step("a", handler_call("inventory.reserve"))
    assert step("a", "inventory.reserve").action == HandlerCall(handler="inventory.reserve")


def test_the_builder_is_immutable() -> None:
    base = SagaBuilder("order", "1.0.0").step("reserve", "inventory.reserve")
    express = base.step("ship", "shipping.express").build()
    standard = base.defaults(timeout=5).step("ship", "shipping.standard").build()
    assert [n.name for n in base.build().steps] == ["reserve"]
    assert express.steps[1] != standard.steps[1]
    assert express.defaults.timeout is None
    assert standard.defaults.timeout == 5.0


def test_a_built_definition_compiles_like_any_other() -> None:
    built = (
        SagaBuilder("order", "1.0.0")
        .step("charge", "payment.charge", kind="pivot")
        .step("ship", "shipping.ship", compensation="shipping.cancel")
        .build()
    )
    with pytest.raises(DefinitionError) as raised:
        compile_definition(built)
    assert [(v.location, v.rule) for v in raised.value.violations] == [
        ("steps[1]", "pivot-ordering")
    ]


# --- errors name where they were made -------------------------------------------------------


def violations(error: pytest.ExceptionInfo[DefinitionError]) -> list[tuple[str, str]]:
    return [(v.location, v.rule) for v in error.value.violations]


def test_a_bad_step_option_names_the_node() -> None:
    with pytest.raises(DefinitionError) as raised:
        step("reserve", "inventory.reserve", timeout="soon", kind="sometimes")  # type: ignore[arg-type]
    assert violations(raised) == [
        ("node 'reserve': kind", "enum"),
        ("node 'reserve': timeout", "value_error"),
    ]


def test_a_bad_target_names_its_field() -> None:
    with pytest.raises(DefinitionError) as raised:
        http("payment", "charges")
    assert violations(raised) == [("http.path", "string_pattern_mismatch")]
    with pytest.raises(DefinitionError) as raised:
        step("charge", {"http": {"service": "payment"}})  # type: ignore[arg-type]
    assert violations(raised) == [("node 'charge': action.http.path", "missing")]


def test_a_bad_node_name_is_reported() -> None:
    with pytest.raises(DefinitionError) as raised:
        parallel("1st", branch(step("a", "h")))
    assert violations(raised) == [("node '1st': name", "string_pattern_mismatch")]


def test_an_empty_parallel_or_case_is_reported() -> None:
    with pytest.raises(DefinitionError) as raised:
        parallel("p", branch())
    assert violations(raised) == [("node 'p': branches", "value_error")]
    with pytest.raises(DefinitionError) as raised:
        case("true")
    assert violations(raised) == [("case: steps", "too_short")]


def test_a_bad_retry_policy_is_pydantics_error_at_the_call() -> None:
    with pytest.raises(ValueError, match="max_interval must be >= initial_interval"):
        Retry(initial_interval=10, max_interval=1)


def test_a_bad_default_is_reported() -> None:
    with pytest.raises(DefinitionError) as raised:
        SagaBuilder("x", "1.0.0").defaults(timeout=-1)
    assert violations(raised) == [("defaults: timeout", "value_error")]


def test_building_without_nodes_or_with_bad_fields_is_reported() -> None:
    with pytest.raises(DefinitionError) as raised:
        SagaBuilder("order", "1.0.0").build()
    assert violations(raised) == [("steps", "too_short")]
    with pytest.raises(DefinitionError) as raised:
        SagaBuilder("bad name", "1.0.0", timeout="later").step("a", "h").build()
    assert violations(raised) == [("name", "string_pattern_mismatch"), ("timeout", "value_error")]


# --- the public surface ---------------------------------------------------------------------


def test_the_sdk_exports_the_builder_api() -> None:
    assert set(sdk.__all__) == {
        "DefaultsOptions",
        "Retry",
        "SagaBuilder",
        "StepContext",
        "StepOptions",
        "SubSagaOptions",
        "Target",
        "amqp",
        "branch",
        "case",
        "handler",
        "handler_call",
        "http",
        "parallel",
        "step",
        "sub_saga",
        "switch",
    }
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
