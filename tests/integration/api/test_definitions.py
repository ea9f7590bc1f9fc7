"""Definitions over HTTP: register (JSON, YAML), idempotence, conflicts, validation, reading,
deprecation and the language's schema."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.integration.api.support import (
    DEFINITIONS,
    INSTANCES,
    assert_problem,
    register,
    saga,
    steps,
)

ORDER = saga("order", steps("reserve", "charge"), description="Reserve, then charge")


async def test_a_new_version_is_created_with_its_location(client: httpx.AsyncClient) -> None:
    response = await client.post(DEFINITIONS, json=ORDER)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "order"
    assert body["version"] == "1.0.0"
    assert body["status"] == "created"
    assert len(body["digest"]) == 64
    assert response.headers["location"] == f"{DEFINITIONS}/order/1.0.0"


async def test_registering_the_same_body_again_is_idempotent(client: httpx.AsyncClient) -> None:
    first = await client.post(DEFINITIONS, json=ORDER)
    again = await client.post(DEFINITIONS, json=dict(reversed(list(ORDER.items()))))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["status"] == "identical"
    assert again.json()["digest"] == first.json()["digest"]


@pytest.mark.parametrize("media", ["application/yaml", "text/yaml", "application/x-yaml"])
async def test_yaml_bodies_are_the_same_definition(client: httpx.AsyncClient, media: str) -> None:
    first = await client.post(
        DEFINITIONS, content=yaml.safe_dump(ORDER), headers={"content-type": media}
    )
    assert first.status_code == 201, first.text
    as_json = await client.post(DEFINITIONS, json=ORDER)
    assert as_json.status_code == 200
    assert as_json.json()["digest"] == first.json()["digest"]


async def test_same_version_with_another_body_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    changed = saga("order", steps("reserve", "ship"))
    problem = assert_problem(
        await client.post(DEFINITIONS, json=changed), 409, "definition-conflict"
    )
    assert "immutable" in problem["detail"]


async def test_an_invalid_definition_names_the_node_and_the_rule(
    client: httpx.AsyncClient,
) -> None:
    nodes = [*steps("reserve"), {"name": "charge", "action": "no.such.handler"}]
    response = await client.post(DEFINITIONS, json=saga("order", nodes))
    problem = assert_problem(response, 422, "invalid-definition")
    assert problem["violations"], problem
    violation = problem["violations"][0]
    assert violation["location"].startswith("steps[1]")
    assert violation["rule"]
    assert "no.such.handler" in violation["message"]


async def test_duplicate_node_names_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(DEFINITIONS, json=saga("order", steps("reserve", "reserve")))
    problem = assert_problem(response, 422, "invalid-definition")
    assert any("steps[1]" in v["location"] for v in problem["violations"]), problem


@pytest.mark.parametrize(
    ("content", "media"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"name: [unclosed", "application/yaml"),
        (b"", "application/json"),
        (b"- just\n- a list\n", "text/yaml"),
        (b'{"name": "x", "version": "1.0.0", "steps": "nope"}', "application/json"),
    ],
)
async def test_malformed_bodies_are_422_problems(
    client: httpx.AsyncClient, content: bytes, media: str
) -> None:
    response = await client.post(DEFINITIONS, content=content, headers={"content-type": media})
    problem = assert_problem(response, 422, "invalid-definition")
    assert problem["violations"]


async def test_an_unsupported_media_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        DEFINITIONS, content=b"<saga/>", headers={"content-type": "application/xml"}
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_the_list_holds_the_latest_version_of_each_name(client: httpx.AsyncClient) -> None:
    await register(client, saga("order", steps("reserve"), version="1.0.0"))
    await register(client, saga("order", steps("reserve"), version="1.10.0"))
    await register(client, saga("order", steps("reserve"), version="1.9.0"))
    await register(client, saga("refund", steps("charge"), version="0.1.0"))
    response = await client.get(DEFINITIONS)
    assert response.status_code == 200
    latest = {(d["name"], d["version"]) for d in response.json()["items"]}
    assert latest == {("order", "1.10.0"), ("refund", "0.1.0")}
    filtered = await client.get(DEFINITIONS, params={"prefix": "ref"})
    assert [d["name"] for d in filtered.json()["items"]] == ["refund"]
    none = await client.get(DEFINITIONS, params={"prefix": "zzz"})
    assert none.json() == {"items": []}


async def test_a_bad_prefix_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(DEFINITIONS, params={"prefix": "a b"}), 422, "invalid-request")


async def test_versions_are_listed_lowest_first(client: httpx.AsyncClient) -> None:
    for version in ("2.0.0", "1.0.0", "1.1.0"):
        await register(client, saga("order", steps("reserve"), version=version))
    response = await client.get(f"{DEFINITIONS}/order")
    assert response.status_code == 200
    assert [d["version"] for d in response.json()["items"]] == ["1.0.0", "1.1.0", "2.0.0"]
    assert_problem(await client.get(f"{DEFINITIONS}/unknown"), 404, "not-found")


async def test_one_version_is_read_with_its_body(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    response = await client.get(f"{DEFINITIONS}/order/1.0.0")
    assert response.status_code == 200
    body = response.json()
    assert body["description"] == "Reserve, then charge"
    assert body["deprecated"] is False
    assert [s["name"] for s in body["definition"]["steps"]] == ["reserve", "charge"]
    assert_problem(await client.get(f"{DEFINITIONS}/order/9.9.9"), 404, "not-found")
    assert_problem(await client.get(f"{DEFINITIONS}/order/not*a*version"), 422)


async def test_a_deprecated_version_takes_no_new_starts(client: httpx.AsyncClient) -> None:
    await register(client, saga("order", steps("reserve"), version="1.0.0"))
    await register(client, saga("order", steps("reserve"), version="1.1.0"))
    response = await client.post(f"{DEFINITIONS}/order/1.1.0/deprecate")
    assert response.status_code == 200
    assert response.json()["deprecated"] is True
    started = await client.post(INSTANCES, json={"saga_name": "order", "context": {}})
    assert started.json()["version"] == "1.0.0"
    pinned = await client.post(
        INSTANCES, json={"saga_name": "order", "version": "1.1.0", "context": {}}
    )
    assert_problem(pinned, 404, "not-found")
    missing = await client.post(f"{DEFINITIONS}/order/3.0.0/deprecate")
    assert_problem(missing, 404, "not-found")


async def test_the_language_schema_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/sagas/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema["$schema"].endswith("2020-12/schema")
    assert "steps" in schema["properties"]
