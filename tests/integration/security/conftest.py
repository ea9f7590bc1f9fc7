"""Redis for the limiter's tests: a private server a test may break or count, or the shared
one (``SAGA_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``), which missing skips those
tests, except on CI (``CI=true``), where it fails them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_server import RedisProcess

REDIS_URL_ENV = "SAGA_TEST_REDIS_URL"


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {url} is unreachable: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    finally:
        client.close()
    return url
