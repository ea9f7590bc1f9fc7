"""Credentials of the end-to-end tests: ``saga serve`` processes get a JWT key of the run and
generous rate limits; the tests call them with an admin token of the default tenant."""

from __future__ import annotations

from typing import Final

from saga_orchestrator.security.tokens import Role, generate_secret, mint_token

SECRET: Final = generate_secret()
ADMIN_TOKEN: Final = mint_token(
    SECRET, subject="e2e-admin", tenant_id="default", roles=[Role.ADMIN], ttl=6 * 3600
)
SERVER_ENV: Final = {
    "JWT_SECRET": SECRET,
    "RATE_LIMIT_REQUESTS": "100000",
    "RATE_LIMIT_STARTS": "100000",
}
"""Environment of a served node: the key, and limits no test reaches by accident."""
AUTH: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLIENT_ENV: Final = {"SAGA_TOKEN": ADMIN_TOKEN}
"""Environment of the ``saga`` client commands."""
