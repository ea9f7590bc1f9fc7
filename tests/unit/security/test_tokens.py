"""JWT authentication: a forged-token matrix that must all be 401 without an outbound fetch,
the accepted shapes of a good token, the HMAC secret rule, and the JWKS refresh pacing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.security.tokens import (
    MAX_AUTHORIZATION_BYTES,
    MIN_HMAC_SECRET_BYTES,
    Authenticator,
    AuthSettings,
    Principal,
    Role,
    StaticToken,
    Unauthenticated,
    check_hmac_secret,
    check_secret,
    generate_secret,
    mint_token,
)

SECRET = "q3JY8v-Zp0rN6tLw2mXc7kHd5sBf9gQa4eUi1oTy_RzVnWjKlPb"
ISSUER = "https://issuer.example"
AUDIENCE = "saga-api"
JWKS_URL = "https://idp.example/.well-known/jwks.json"
KID = "k1"
BASE = AuthSettings(issuer=ISSUER, audience=AUDIENCE, leeway=30)


# --- keys and token helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None = KID, **extra: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    assert isinstance(jwk, dict)
    return {**jwk, **({"kid": kid} if kid else {}), **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "user-1",
        "tenant": "acme",
        "roles": ["operator"],
        "iat": now,
        "exp": now + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": "token-1",
    }
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], body: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, for what PyJWT refuses to produce (alg none, HMAC with a PEM)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def hs256_with(key: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(key, data, hashlib.sha256).digest()


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class JwksServer:
    """A JWKS endpoint behind ``httpx.MockTransport`` that records every request."""

    keys: list[dict[str, Any]]
    status: int = 200
    requests: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) != JWKS_URL:
            return httpx.Response(404)
        return httpx.Response(self.status, json={"keys": self.keys})


# --- the forged-token matrix ------------------------------------------------------------------


@dataclass
class World:
    """An authenticator and the means to sign as its legitimate issuer would."""

    authenticator: Authenticator
    sign: Callable[..., str]  # sign(claims, headers=None, key=None) with the legitimate key
    kid_header: dict[str, str]
    rsa_key: rsa.RSAPrivateKey
    other_signer: Callable[[dict[str, Any]], str]  # another tenant's (unknown) key
    server: JwksServer
    expected_fetches: int
    index: int  # 0 for the HMAC world, 1 for the RSA JWKS URL world


@pytest.fixture(params=["hmac", "rsa-jwks-url"])
async def world(
    request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> World:
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    if request.param == "hmac":
        authenticator = Authenticator(
            replace(BASE, hmac_secret=SECRET), transport=server.transport(), clock=Clock()
        )

        def sign(body: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
            return jwt.encode(body, SECRET, algorithm="HS256", headers=headers)

        other_secret = generate_secret()
        return World(
            authenticator,
            sign,
            {},
            rsa_key,
            lambda body: jwt.encode(body, other_secret, algorithm="HS256"),
            server,
            expected_fetches=0,
            index=0,
        )
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=Clock()
    )
    await authenticator.load_keys()

    def sign_rsa(body: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(body, rsa_key, algorithm="RS256", headers={"kid": KID, **(headers or {})})

    return World(
        authenticator,
        sign_rsa,
        {"kid": KID},
        rsa_key,
        lambda body: jwt.encode(body, other_rsa_key, algorithm="RS256", headers={"kid": KID}),
        server,
        expected_fetches=1,
        index=1,
    )


def _alg_none(w: World) -> str:
    return raw_token({"alg": "none", "typ": "JWT", **w.kid_header}, claims(), lambda _: b"")


def _hs256_with_rsa_public_key(w: World) -> str:
    header = {"alg": "HS256", "typ": "JWT", **w.kid_header}
    return raw_token(header, claims(), hs256_with(public_pem(w.rsa_key)))


def _bad_signature(w: World) -> str:
    head, body, signature = w.sign(claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0xFF
    return f"{head}.{body}.{b64(bytes(raw))}"


def _tenant_swapped(w: World) -> str:
    head, _, signature = w.sign(claims()).split(".")
    return f"{head}.{b64(json.dumps(claims(tenant='globex')).encode())}.{signature}"


def _with_kid(kid: str) -> Callable[[World], str]:
    return lambda w: w.sign(claims(), {"kid": kid})


def _with_header(**header: Any) -> Callable[[World], str]:
    return lambda w: w.sign(claims(), header)


def _embedded_jwk(w: World) -> str:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"jwk": rsa_jwk(attacker, kid=None), **w.kid_header}
    return jwt.encode(claims(), attacker, algorithm="RS256", headers=header)


def now() -> int:
    """Read when a forgery is made: the suite may run minutes after this module is imported."""
    return int(time.time())


ALG, SIG, KEY = (
    "algorithm not allowed for this key",
    "signature does not verify",
    "unknown signing key",
)
EXPIRED, EARLY, TENANT = "token expired", "token not yet valid", "token has no valid tenant"
OWN_KEY = "token names its own key (jku, x5u, jwk or x5c): not accepted"
# Each forgery: how to make it, and why it is refused (or why, per world: HMAC, RSA JWKS URL).
FORGERIES: list[Any] = [
    pytest.param(_alg_none, ALG, id="alg-none"),
    pytest.param(_hs256_with_rsa_public_key, (SIG, ALG), id="hs256-signed-with-rsa-public-key"),
    pytest.param(lambda w: w.sign(claims(exp=now() - 120, iat=now() - 600)), EXPIRED, id="expired"),
    pytest.param(lambda w: w.sign(claims(nbf=now() + 120)), EARLY, id="future-nbf"),
    pytest.param(lambda w: w.sign(claims(iat=now() + 120)), EARLY, id="future-iat"),
    pytest.param(lambda w: w.sign(claims(exp=None)), "token lacks the exp claim", id="missing-exp"),
    pytest.param(
        lambda w: w.sign(claims(aud="another-api")), "token is for another audience", id="wrong-aud"
    ),
    pytest.param(
        lambda w: w.sign(claims(iss="https://evil.example")),
        "token is from another issuer",
        id="wrong-iss",
    ),
    pytest.param(lambda w: w.sign(claims(iss=None)), "token lacks the iss claim", id="missing-iss"),
    pytest.param(_bad_signature, SIG, id="bad-signature"),
    pytest.param(_with_kid("no-such-key"), KEY, id="unknown-kid"),
    pytest.param(_with_kid("../../../../../../dev/null"), KEY, id="kid-path-traversal"),
    pytest.param(_with_kid("x' UNION SELECT 'secret' --"), KEY, id="kid-sql-injection"),
    pytest.param(_with_kid("https://evil.example/key.pem"), KEY, id="kid-url"),
    pytest.param(_with_kid("k" * 300), "malformed key id", id="kid-too-long"),
    pytest.param(_with_header(jku="https://evil.example/jwks.json"), OWN_KEY, id="jku-anywhere"),
    pytest.param(_with_header(x5u="https://evil.example/cert.pem"), OWN_KEY, id="x5u-anywhere"),
    pytest.param(_with_header(x5c=["MIIBIjANBgkqhkiG9w0BAQ"]), OWN_KEY, id="x5c-embedded"),
    pytest.param(_embedded_jwk, OWN_KEY, id="jwk-embedded"),
    pytest.param(lambda w: w.other_signer(claims(tenant="globex")), SIG, id="another-tenants-key"),
    pytest.param(_tenant_swapped, SIG, id="tenant-swapped-after-signing"),
    pytest.param(lambda w: w.sign(claims(tenant="../globex")), TENANT, id="tenant-invalid"),
    pytest.param(lambda w: w.sign(claims(tenant=None)), TENANT, id="tenant-missing"),
    pytest.param(_with_header(typ="secevent+jwt"), "unexpected token type", id="typ-mismatch"),
    pytest.param(
        lambda w: raw_token({"alg": "HS256", "typ": "JWT"}, claims(), hs256_with(b"secret")),
        (SIG, ALG),
        id="short-hmac-secret",
    ),
    pytest.param(lambda w: w.sign(claims(sub=None)), "token lacks the sub claim", id="missing-sub"),
    pytest.param(
        lambda w: w.sign(claims(roles="admin")),
        "roles claim must be a list of role names",
        id="roles-not-a-list",
    ),
]


async def test_the_matrix_control_token_is_accepted(world: World) -> None:
    principal = await world.authenticator.authenticate(bearer(world.sign(claims())))
    assert principal.tenant_id == "acme"


@pytest.mark.parametrize(("forge", "reason"), FORGERIES)
async def test_every_forged_token_is_refused_without_outbound_fetch(
    world: World, forge: Callable[[World], str], reason: str | tuple[str, str]
) -> None:
    token = forge(world)

    with pytest.raises(Unauthenticated) as caught:
        await world.authenticator.authenticate(bearer(token))

    assert caught.value.error == "invalid_token"
    description = caught.value.description
    assert description == (reason if isinstance(reason, str) else reason[world.index])
    assert description.isascii() and '"' not in description and "\\" not in description
    assert token not in description and "evil" not in description and "SELECT" not in description
    assert world.authenticator.jwks_fetches == world.expected_fetches
    assert [str(r.url) for r in world.server.requests] == [JWKS_URL] * world.expected_fetches


async def test_the_forgery_matrix_has_at_least_fourteen_variants() -> None:
    assert len(FORGERIES) >= 14


# --- the header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Bearer " + "a" * 9000],
    ids=["none", "empty", "blank", "basic", "no-token", "blank-token", "oversized"],
)
async def test_a_missing_or_malformed_header_is_an_invalid_request(header: str | None) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET))
    with pytest.raises(Unauthenticated) as caught:
        await authenticator.authenticate(header)
    assert caught.value.error == "invalid_request"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "a b.c.d",
        "a.b.c\n",
        f"{b64(b'[' * 5000)}.{b64(b'{}')}.c2ln",
        f"{b64(bytes([255, 254]))}.{b64(b'{}')}.c2ln",
        f"{b64(b'[1]')}.{b64(b'{}')}.c2ln",
    ],
    ids=["one-part", "two-parts", "four-parts", "space", "newline", "deep", "binary", "array"],
)
async def test_a_token_not_in_compact_form_is_an_invalid_token(token: str) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET))
    with pytest.raises(Unauthenticated, match="malformed token") as caught:
        await authenticator.authenticate(bearer(token))
    assert caught.value.error == "invalid_token"


# --- accepted tokens --------------------------------------------------------------------------


async def test_hs256_from_mint_token() -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET))
    token = mint_token(
        SECRET,
        subject="ada",
        tenant_id="acme",
        roles=[Role.ADMIN],
        ttl=60,
        issuer=ISSUER,
        audience=AUDIENCE,
    )

    principal = await authenticator.authenticate(f"bearer  {token} ")

    assert principal.subject == "ada"
    assert principal.tenant_id == "acme"
    assert principal.roles == frozenset({Role.ADMIN})
    assert principal.token_id is not None


async def test_rs256_with_a_pem_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    authenticator = Authenticator(replace(BASE, public_key_pem=public_pem(rsa_key).decode()))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")

    principal = await authenticator.authenticate(bearer(token))

    assert principal == Principal(
        subject="user-1", tenant_id="acme", roles=frozenset({Role.OPERATOR}), token_id="token-1"
    )


async def test_es256_from_a_jwks_file_whose_key_has_no_alg(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    assert isinstance(jwk, dict) and "alg" not in jwk
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "ec-1", "use": "sig"}]}))
    authenticator = Authenticator(replace(BASE, jwks_file=str(path)))
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})

    principal = await authenticator.authenticate(bearer(token))

    assert principal.subject == "user-1"
    assert authenticator.jwks_fetches == 1
    # The key's type pins ES256: a token claiming another EC algorithm for it is refused.
    other = raw_token({"alg": "ES384", "kid": "ec-1"}, claims(), lambda _: bytes(96))
    with pytest.raises(Unauthenticated, match="algorithm not allowed"):
        await authenticator.authenticate(bearer(other))


async def test_rs256_from_a_jwks_url(rsa_key: rsa.RSAPrivateKey) -> None:
    server = JwksServer(keys=[rsa_jwk(rsa_key, alg="RS256")])
    authenticator = Authenticator(replace(BASE, jwks_url=JWKS_URL), transport=server.transport())
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})

    assert (await authenticator.authenticate(bearer(token))).tenant_id == "acme"
    assert (await authenticator.authenticate(bearer(token))).tenant_id == "acme"
    assert authenticator.jwks_fetches == 1  # loaded lazily on first use, then cached


async def test_a_token_without_kid_uses_the_only_key_of_the_set(rsa_key: rsa.RSAPrivateKey) -> None:
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(replace(BASE, jwks_url=JWKS_URL), transport=server.transport())
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await authenticator.authenticate(bearer(token))).subject == "user-1"


@pytest.mark.parametrize(
    ("leeway", "accepted"), [(30, True), (0, False)], ids=["within-leeway", "no-leeway"]
)
async def test_leeway_covers_small_clock_skew(leeway: float, accepted: bool) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET, leeway=leeway))
    now = int(time.time())
    for body in (claims(exp=now - 10, iat=now - 100), claims(nbf=now + 10, iat=now + 10)):
        token = jwt.encode(body, SECRET, algorithm="HS256")
        if accepted:
            await authenticator.authenticate(bearer(token))
        else:
            with pytest.raises(Unauthenticated, match=r"token (expired|not yet valid)"):
                await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["viewer"], {Role.VIEWER}),
        (["admin", "operator", "superuser", "Admin"], {Role.ADMIN, Role.OPERATOR}),
        ([], set()),
        (None, set()),
    ],
    ids=["viewer", "unknown-names-ignored", "empty", "absent"],
)
async def test_roles_are_read_from_a_list_of_names(
    roles: list[str] | None, expected: set[Role]
) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET))
    token = jwt.encode(claims(roles=roles), SECRET, algorithm="HS256")
    principal = await authenticator.authenticate(bearer(token))
    assert principal.roles == expected


@pytest.mark.parametrize("roles", ["admin", [1], {"admin": True}], ids=["string", "int", "object"])
async def test_a_roles_claim_that_is_not_a_list_of_names_is_refused(roles: object) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET))
    token = jwt.encode(claims(roles=roles), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="roles claim"):
        await authenticator.authenticate(bearer(token))


def test_roles_include_the_ones_below() -> None:
    assert Role.ADMIN.includes(Role.OPERATOR) and Role.ADMIN.includes(Role.VIEWER)
    assert Role.OPERATOR.includes(Role.VIEWER) and not Role.OPERATOR.includes(Role.ADMIN)
    assert not Role.VIEWER.includes(Role.OPERATOR)
    operator = Principal(
        subject="s", tenant_id="t", roles=frozenset({Role.OPERATOR}), token_id=None
    )
    assert operator.has(Role.VIEWER) and operator.has(Role.OPERATOR)
    assert not operator.has(Role.ADMIN)
    nobody = replace(operator, roles=frozenset())
    assert not nobody.has(Role.VIEWER)


async def test_tenant_and_roles_claims_have_configurable_names() -> None:
    settings = replace(
        BASE, hmac_secret=SECRET, tenant_claim="https://saga.example/tenant", roles_claim="groups"
    )
    body = claims(tenant=None, roles=None, groups=["viewer"])
    body["https://saga.example/tenant"] = "globex"
    token = jwt.encode(body, SECRET, algorithm="HS256")

    principal = await Authenticator(settings).authenticate(bearer(token))

    assert (principal.tenant_id, principal.roles) == ("globex", {Role.VIEWER})


async def test_default_tenant_applies_only_when_the_claim_is_absent() -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET, default_tenant="main"))
    absent = jwt.encode(claims(tenant=None), SECRET, algorithm="HS256")
    assert (await authenticator.authenticate(bearer(absent))).tenant_id == "main"
    for bad in ("", "../x", 42, "a" * 65):
        token = jwt.encode(claims(tenant=bad), SECRET, algorithm="HS256")
        with pytest.raises(Unauthenticated, match="tenant"):
            await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize(
    ("required", "typ", "accepted"),
    [
        ("JWT", "jwt", True),
        ("JWT", None, True),
        ("at+jwt", "application/at+JWT", True),
        ("at+jwt", "JWT", False),
        (None, "anything", True),
    ],
)
async def test_typ_must_match_when_present(
    required: str | None, typ: str | None, accepted: bool
) -> None:
    authenticator = Authenticator(replace(BASE, hmac_secret=SECRET, required_typ=required))
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"typ": typ})
    if accepted:
        await authenticator.authenticate(bearer(token))
    else:
        with pytest.raises(Unauthenticated, match="unexpected token type"):
            await authenticator.authenticate(bearer(token))


# --- the HMAC secret rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [generate_secret(), secrets.token_hex(32), base64.b64encode(secrets.token_bytes(32)).decode()],
    ids=["generate_secret", "hex-32", "base64-32"],
)
def test_random_secrets_are_accepted(secret: str) -> None:
    check_hmac_secret(secret)


@pytest.mark.parametrize(
    "secret",
    [
        "hunter2",
        "x" * (MIN_HMAC_SECRET_BYTES - 1),
        "changeme" * 4,
        "a" * 64,
        "0123456789" * 4,
        "abcdefghijklmnopqrstuvwxyzabcdef",
        "Ab1!" * 16,
    ],
    ids=["short", "31-bytes", "changeme-x4", "one-char", "digits", "letters-only", "repeated"],
)
def test_weak_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="JWT secret") as caught:
        check_hmac_secret(secret)
    assert secret not in str(caught.value)


def test_the_rule_names_the_secret_it_refuses() -> None:
    with pytest.raises(ConfigurationError, match=r"^METRICS_TOKEN: too predictable"):
        check_secret("changeme" * 4, name="METRICS_TOKEN")
    with pytest.raises(ConfigurationError, match=r"^METRICS_TOKEN: must be at least 32 bytes"):
        check_secret("hunter2", name="METRICS_TOKEN")


def test_a_weak_secret_is_refused_by_the_authenticator_and_by_mint_token() -> None:
    with pytest.raises(ConfigurationError):
        Authenticator(replace(BASE, hmac_secret="changeme" * 4))
    with pytest.raises(ConfigurationError):
        mint_token("changeme" * 4, subject="s", tenant_id="t", roles=[], ttl=60)


# --- configuration ----------------------------------------------------------------------------


def test_configuration_is_checked(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = public_pem(rsa_key).decode()
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    short_rsa = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)).decode()
    cases = {
        "no key source": BASE,
        "ambiguous, both": replace(BASE, hmac_secret=SECRET, public_key_pem=pem),
        "ambiguous, set one": replace(BASE, jwks_file="/k.json", jwks_url=JWKS_URL),
        "https": replace(BASE, jwks_url="http://idp.example/jwks.json"),
        "leeway": replace(BASE, hmac_secret=SECRET, leeway=3600),
        "default_tenant": replace(BASE, hmac_secret=SECRET, default_tenant="no/slash"),
        "not a PEM public key": replace(BASE, public_key_pem=private_pem),
        "not a key for RS256": replace(BASE, public_key_pem=public_pem(ec_key).decode()),
        "public_key_algorithm": replace(BASE, public_key_pem=pem, public_key_algorithm="HS256"),
        "public_key_pem: .* below the minimum": replace(BASE, public_key_pem=short_rsa),
        "cannot be read": replace(BASE, jwks_file="/nonexistent/jwks.json"),
    }
    for message, settings in cases.items():
        with pytest.raises(ConfigurationError, match=message):
            Authenticator(settings)


def test_a_secret_beside_a_jwks_is_not_ambiguous(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk(rsa_key)]}))
    Authenticator(replace(BASE, hmac_secret=SECRET, jwks_file=str(path)))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([{"kty": "oct", "k": b64(b"s" * 32), "kid": KID}], "no usable"),
        ([{"kty": "RSA", "kid": KID, "n": "AQAB"}], "no usable"),
        ([{"kty": "RSA", "kid": KID, "alg": "none"}], "no usable"),
    ],
    ids=["symmetric", "malformed", "alg-none"],
)
async def test_unusable_jwks_keys_are_ignored(keys: list[dict[str, Any]], message: str) -> None:
    server = JwksServer(keys=keys)
    authenticator = Authenticator(replace(BASE, jwks_url=JWKS_URL), transport=server.transport())
    with pytest.raises(ConfigurationError, match=message):
        await authenticator.load_keys()


async def test_private_keys_and_duplicate_kids_in_a_jwks_are_not_used(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    assert isinstance(private, dict)
    keys = [
        {**private, "kid": "private"},
        rsa_jwk(rsa_key, kid="twice"),
        rsa_jwk(other_rsa_key, kid="twice"),
        rsa_jwk(rsa_key, kid="good"),
    ]
    server = JwksServer(keys=keys)
    authenticator = Authenticator(replace(BASE, jwks_url=JWKS_URL), transport=server.transport())
    for kid, accepted in (("private", False), ("twice", False), ("good", True)):
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
        if accepted:
            await authenticator.authenticate(bearer(token))
        else:
            with pytest.raises(Unauthenticated, match="unknown signing key"):
                await authenticator.authenticate(bearer(token))


async def test_a_jwks_url_is_fetched_without_following_redirects() -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(302, headers={"Location": "https://evil.example/jwks.json"})

    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=httpx.MockTransport(handle)
    )
    with pytest.raises(ConfigurationError, match="HTTP 302"):
        await authenticator.load_keys()
    assert [str(r.url) for r in requests] == [JWKS_URL]


async def test_an_oversized_jwks_is_refused() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=b" " * 70_000))
    authenticator = Authenticator(replace(BASE, jwks_url=JWKS_URL), transport=transport)
    with pytest.raises(ConfigurationError, match="larger than"):
        await authenticator.load_keys()


# --- refresh pacing and key rotation ----------------------------------------------------------


async def test_unknown_kids_refresh_at_most_once_per_interval_and_rotation_is_picked_up(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL, jwks_refresh_interval=300),
        transport=server.transport(),
        clock=clock,
    )
    await authenticator.load_keys()
    rotated = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "k2"})
    server.keys = [rsa_jwk(rsa_key), rsa_jwk(other_rsa_key, kid="k2")]

    clock.now += 10  # within the interval: the new kid is unknown and nothing is fetched
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await authenticator.authenticate(bearer(rotated))
    assert authenticator.jwks_fetches == 1

    clock.now += 300  # past the interval: exactly one more fetch, which finds the rotated key
    assert (await authenticator.authenticate(bearer(rotated))).subject == "user-1"
    assert authenticator.jwks_fetches == 2

    bogus = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "bogus"})
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(bearer(bogus))
    assert authenticator.jwks_fetches == 2
    assert len(server.requests) == 2


async def test_a_flood_of_bogus_kids_after_the_interval_makes_one_fetch(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=clock
    )
    await authenticator.load_keys()
    clock.now += 301
    tokens = [
        jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": f"bogus-{i}"})
        for i in range(50)
    ]

    results = await asyncio.gather(
        *(authenticator.authenticate(bearer(t)) for t in tokens), return_exceptions=True
    )

    assert all(isinstance(r, Unauthenticated) for r in results)
    assert authenticator.jwks_fetches == 2
    assert len(server.requests) == 2


async def test_a_failed_refresh_keeps_the_known_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = Clock()
    server = JwksServer(keys=[rsa_jwk(rsa_key)])
    authenticator = Authenticator(
        replace(BASE, jwks_url=JWKS_URL), transport=server.transport(), clock=clock
    )
    await authenticator.load_keys()
    server.status = 503
    clock.now += 301
    bogus = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "bogus"})
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(bearer(bogus))

    good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})
    assert (await authenticator.authenticate(bearer(good))).subject == "user-1"
    assert authenticator.jwks_fetches == 2


async def test_a_rotated_jwks_file_is_reread_after_the_interval(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk(rsa_key)]}))
    authenticator = Authenticator(replace(BASE, jwks_file=str(path)), clock=clock)
    path.write_text(json.dumps({"keys": [rsa_jwk(other_rsa_key, kid="k2")]}))
    rotated = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "k2"})

    clock.now += 301
    assert (await authenticator.authenticate(bearer(rotated))).subject == "user-1"
    assert authenticator.jwks_fetches == 2


# --- static bearer tokens (the metrics scrape token) ------------------------------------------


def test_a_static_token_matches_only_its_own_bearer() -> None:
    static = StaticToken(SECRET, name="METRICS_TOKEN")
    assert static.matches(f"Bearer {SECRET}")
    assert static.matches(f"  bearer   {SECRET}  ")  # the scheme's case, spaces around
    for header in [
        None,
        "",
        SECRET,
        f"Basic {SECRET}",
        f"Bearer {SECRET[:-1]}",
        f"Bearer {SECRET}x",
        f"Bearer {SECRET.upper()}",
        f"Bearer {generate_secret()}",
        "Bearer ",
        f"Bearer {SECRET}" + " " * MAX_AUTHORIZATION_BYTES,  # over the header size limit
    ]:
        assert not static.matches(header), header


def test_a_static_token_compares_the_bytes_the_client_sent() -> None:
    """A header arrives decoded as latin-1: a non-ASCII secret, sent as UTF-8, matches; a
    header that cannot have come off the wire does not."""
    secret = SECRET + "é"
    static = StaticToken(secret, name="METRICS_TOKEN")
    assert static.matches("Bearer " + secret.encode().decode("latin-1"))
    assert not static.matches("Bearer " + SECRET + "\u20ac")


def test_a_static_token_is_refused_when_weak_and_never_shown() -> None:
    with pytest.raises(ConfigurationError, match=r"^METRICS_TOKEN: "):
        StaticToken("changeme" * 4, name="METRICS_TOKEN")
    static = StaticToken(SECRET, name="METRICS_TOKEN")
    assert SECRET not in repr(static)
    assert not hasattr(static, "__dict__")  # only its digest is kept (slots)
