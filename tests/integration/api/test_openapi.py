"""/openapi.json and /docs describe every route, body, status code and error."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.routing import APIRoute

from saga_orchestrator.api import routes
from saga_orchestrator.api.problems import PROBLEM_MEDIA_TYPE

EXPECTED = {
    ("post", "/api/v1/sagas/definitions"): {"200", "201", "409", "413", "415", "422", "503"},
    ("get", "/api/v1/sagas/definitions"): {"200", "422", "503"},
    ("get", "/api/v1/sagas/definitions/{name}"): {"200", "404", "422", "503"},
    ("get", "/api/v1/sagas/definitions/{name}/{version}"): {"200", "404", "422", "503"},
    ("post", "/api/v1/sagas/definitions/{name}/{version}/deprecate"): {"200", "404", "422", "503"},
    ("get", "/api/v1/sagas/schema"): {"200"},
    ("post", "/api/v1/sagas/instances"): {"200", "201", "400", "404", "409", "413", "422", "503"},
    ("get", "/api/v1/sagas/instances"): {"200", "422", "503"},
    ("get", "/api/v1/sagas/instances/{instance_id}"): {"200", "404", "422", "503"},
    ("get", "/api/v1/sagas/instances/{instance_id}/events"): {"200", "404", "422", "503"},
    ("get", "/api/v1/sagas/instances/{instance_id}/stream"): {"200", "404", "422", "503"},
    ("post", "/api/v1/sagas/instances/{instance_id}/cancel"): {
        "200", "400", "404", "409", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/retry"): {
        "200", "400", "404", "409", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/skip"): {
        "200", "400", "404", "409", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/resolve"): {
        "200", "400", "404", "409", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/complete"): {
        "200", "400", "403", "404", "409", "410", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/fail"): {
        "200", "400", "403", "404", "409", "410", "413", "422", "503",
    },
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/heartbeat"): {
        "200", "400", "403", "404", "409", "410", "413", "422", "503",
    },
    ("get", "/api/v1/participants"): {"200", "400", "404", "413", "422", "503"},
    ("get", "/api/v1/participants/{name}"): {"200", "400", "404", "413", "422", "503"},
    ("put", "/api/v1/participants/{name}"): {"200", "201", "400", "404", "413", "422", "503"},
    ("delete", "/api/v1/participants/{name}"): {"204", "400", "404", "413", "422", "503"},
    ("get", "/api/v1/audit"): {"200", "422", "503"},
    ("get", "/api/v1/cluster/nodes"): {"200", "503"},
    ("get", "/api/v1/cluster/quarantine"): {"200", "503"},
    ("post", "/api/v1/cluster/quarantine/{instance_id}/release"): {"204", "404", "422", "503"},
    ("get", "/api/v1/tenant/limits"): {"200", "503"},
    ("put", "/api/v1/tenant/limits"): {"200", "400", "413", "422", "503"},
    ("delete", "/api/v1/tenant/limits"): {"204", "503"},
    ("get", "/health"): {"200"},
    ("get", "/ready"): {"200", "503"},
    ("get", "/metrics"): {"200"},
}  # fmt: skip


# Routes that need a role also answer 401 (no valid token), 403 (role) and 429 (rate limit).
PUBLIC = {
    ("get", "/health"),
    ("get", "/ready"),
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/complete"),
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/fail"),
    ("post", "/api/v1/sagas/instances/{instance_id}/steps/{step}/heartbeat"),
}
EXPECTED = {
    key: statuses if key in PUBLIC else statuses | {"401", "403", "429"}
    for key, statuses in EXPECTED.items()
}


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_every_route_and_status_is_documented(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    operations = {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert set(operations) == set(EXPECTED)
    for key, statuses in EXPECTED.items():
        assert set(operations[key]["responses"]) == statuses, key
        assert operations[key]["summary"], key
    declared = {
        (method.lower(), route.path)
        for module in (
            routes.audit,
            routes.callbacks,
            routes.cluster,
            routes.definitions,
            routes.health,
            routes.instances,
            routes.operations,
            routes.participants,
            routes.stream,
            routes.tenant,
        )
        for route in module.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert declared == set(EXPECTED)


async def test_errors_are_documented_as_problems(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status"} <= set(problem["required"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    content = response["content"]
                    assert list(content) == [PROBLEM_MEDIA_TYPE], (method, path, status)
                    schema = content[PROBLEM_MEDIA_TYPE]["schema"]
                    assert schema["$ref"] == "#/components/schemas/Problem"
                    assert response["description"]
            unavailable = operation["responses"].get("503")
            if unavailable is not None:
                assert "Retry-After" in unavailable["headers"]


async def test_bodies_are_documented_with_their_schemas(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    schemas = document["components"]["schemas"]
    register = document["paths"]["/api/v1/sagas/definitions"]["post"]["requestBody"]["content"]
    assert set(register) == {"application/json", "application/yaml", "text/yaml",
                             "application/x-yaml"}  # fmt: skip
    assert register["application/json"]["schema"]["$ref"] == "#/components/schemas/SagaDefinition"
    assert register["application/json"]["example"]["steps"]
    assert "StepNode" in schemas
    assert "$defs" not in str(schemas["SagaDefinition"])
    start = document["paths"]["/api/v1/sagas/instances"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/StartRequest"
    )
    assert schemas["StartRequest"]["examples"]
    headers = {p["name"] for p in start["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key"}
    stream = document["paths"]["/api/v1/sagas/instances/{instance_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    cancel = document["paths"]["/api/v1/sagas/instances/{instance_id}/cancel"]["post"]
    reason = schemas["OperatorAction"]
    assert cancel["requestBody"]["required"] is True
    assert reason["required"] == ["reason"]


async def test_the_interactive_docs_are_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "/openapi.json" in response.text


def test_the_package_exports_the_factory_and_its_options() -> None:
    from saga_orchestrator import api

    assert sorted(api.__all__) == ["ApiOptions", "create_app"]
    assert all(hasattr(api, name) for name in api.__all__)
