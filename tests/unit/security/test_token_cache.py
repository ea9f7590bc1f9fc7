"""The cache of verified tokens: one signature check per token, never an answer for a token
that expired, whose key left the key set or was replaced, or that failed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.security.tokens import Authenticator, Unauthenticated
from tests.unit.security.test_tokens import (
    BASE,
    JWKS_URL,
    KID,
    SECRET,
    Clock,
    JwksServer,
    bearer,
    claims,
    rsa_jwk,
)

HMAC = replace(BASE, hmac_secret=SECRET)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def hs256(**overrides: object) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


async def test_a_token_is_verified_once_and_then_answered_from_the_cache() -> None:
    authenticator = Authenticator(HMAC)
    token = hs256()

    principals = [await authenticator.authenticate(bearer(token)) for _ in range(5)]

    assert authenticator.verifications == 1
    assert all(p == principals[0] for p in principals)
    assert principals[0].tenant_id == "acme"
    assert authenticator.cached(bearer(token)) == principals[0]


async def test_the_cache_forgets_a_token_at_its_expiry_plus_the_leeway() -> None:
    wall = Clock(now=time.time())
    authenticator = Authenticator(HMAC, wall_clock=wall)
    exp = int(wall.now) + 300
    token = hs256(exp=exp)
    await authenticator.authenticate(bearer(token))

    wall.now = exp + BASE.leeway - 0.001  # the last instant PyJWT would still accept
    assert authenticator.cached(bearer(token)) is not None
    wall.now = exp + BASE.leeway
    assert authenticator.cached(bearer(token)) is None

    await authenticator.authenticate(bearer(token))  # verified again (the real clock is earlier)
    assert authenticator.verifications == 2


async def test_an_expired_token_is_refused_even_though_it_was_cached() -> None:
    authenticator = Authenticator(replace(HMAC, leeway=0))
    exp = int(time.time()) + 2
    token = hs256(exp=exp, iat=exp - 10)
    assert (await authenticator.authenticate(bearer(token))).subject == "user-1"

    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)

    with pytest.raises(Unauthenticated, match="token expired"):
        await authenticator.authenticate(bearer(token))
    assert authenticator.cached(bearer(token)) is None


async def test_failures_are_never_cached() -> None:
    authenticator = Authenticator(HMAC)
    expired = hs256(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    forged = jwt.encode(claims(), SECRET[::-1], algorithm="HS256")

    for token in (expired, forged, expired, forged):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(bearer(token))
        assert authenticator.cached(bearer(token)) is None
    assert authenticator.verifications == 4


async def test_a_token_whose_claims_fail_after_the_signature_is_not_cached() -> None:
    authenticator = Authenticator(HMAC)
    token = hs256(tenant="not a tenant!")
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="no valid tenant"):
            await authenticator.authenticate(bearer(token))
    assert authenticator.cached(bearer(token)) is None


async def test_a_key_removed_from_the_jwks_revokes_the_tokens_it_verified(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=clock
    )
    await authenticator.load_keys()
    old = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})
    assert (await authenticator.authenticate(bearer(old))).subject == "user-1"
    assert authenticator.cached(bearer(old)) is not None

    # The issuer rotates k1 out; a token under the new k2 makes the node reload the set.
    server.keys = [rsa_jwk(other_rsa_key, kid="k2")]
    clock.now += 301
    new = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "k2"})
    assert (await authenticator.authenticate(bearer(new))).subject == "user-1"

    assert authenticator.cached(bearer(old)) is None
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await authenticator.authenticate(bearer(old))


async def test_a_key_replaced_under_the_same_kid_revokes_the_tokens_it_verified(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=clock
    )
    await authenticator.load_keys()
    old = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})
    await authenticator.authenticate(bearer(old))

    server.keys = [rsa_jwk(other_rsa_key)]  # same kid, another key
    await authenticator.load_keys()

    assert authenticator.cached(bearer(old)) is None
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        await authenticator.authenticate(bearer(old))


async def test_a_reload_that_keeps_the_key_only_costs_one_more_verification(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=Clock()
    )
    await authenticator.load_keys()
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})
    await authenticator.authenticate(bearer(token))
    await authenticator.load_keys()

    for _ in range(3):
        assert (await authenticator.authenticate(bearer(token))).subject == "user-1"
    assert authenticator.verifications == 2


async def test_the_cache_is_bounded_and_forgets_the_least_recently_used_first() -> None:
    authenticator = Authenticator(replace(HMAC, token_cache_size=2))
    first, second, third = (hs256(jti=f"token-{n}") for n in range(3))
    await authenticator.authenticate(bearer(first))
    await authenticator.authenticate(bearer(second))
    await authenticator.authenticate(bearer(first))  # first is now the most recent
    await authenticator.authenticate(bearer(third))  # evicts second

    assert authenticator.cached(bearer(first)) is not None
    assert authenticator.cached(bearer(second)) is None
    assert authenticator.cached(bearer(third)) is not None
    assert authenticator.verifications == 3


async def test_a_cache_size_of_zero_verifies_every_time() -> None:
    authenticator = Authenticator(replace(HMAC, token_cache_size=0))
    token = hs256()
    for _ in range(3):
        await authenticator.authenticate(bearer(token))
    assert authenticator.verifications == 3
    assert authenticator.cached(bearer(token)) is None


async def test_a_token_with_a_numeric_string_exp_is_verified_every_time() -> None:
    authenticator = Authenticator(HMAC)
    token = hs256(exp=str(int(time.time()) + 300))
    for _ in range(2):
        await authenticator.authenticate(bearer(token))
    assert authenticator.verifications == 2


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_cached_never_raises_and_never_verifies(header: str | None) -> None:
    authenticator = Authenticator(HMAC)
    assert authenticator.cached(header) is None
    assert authenticator.verifications == 0


def test_a_negative_cache_size_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="token_cache_size"):
        Authenticator(replace(HMAC, token_cache_size=-1))
