"""JWT bearer authentication: who is calling, for which tenant, with which roles.

:class:`Authenticator` turns an ``Authorization`` header into a :class:`Principal` or raises
:class:`Unauthenticated` (the API answers 401 with ``WWW-Authenticate``). It knows nothing of
the web framework: the API layer hands it the header.

Keys come from configuration only (:class:`AuthSettings`), each with its algorithm pinned:

- ``hmac_secret``: HS256; a secret :func:`check_hmac_secret` finds weak is refused at start;
- ``public_key_pem``: ``public_key_algorithm`` (RS256 unless configured);
- a JWKS (``jwks_file``, or an https ``jwks_url``): each key's ``alg``, or without one the
  algorithm its type implies (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).

A token's ``alg`` must equal the algorithm of the key it selects: that defeats ``alg: none``
and HS256 "signed" with a public key. A ``kid`` is an opaque name looked up in the JWKS and
nowhere else (the secret and the PEM key are unnamed: they serve tokens without ``kid``).
Headers that point at or carry a key (``jku``, ``x5u``, ``jwk``, ``x5c``) are refused outright:
honouring them lets a token pick who vouches for it, and ignoring them silently would hide a
forgery attempt or a misconfigured issuer.

An unknown ``kid`` reloads the JWKS at most once per ``jwks_refresh_interval`` (a failed load
counts too), so a flood of bogus key ids costs no more than one fetch per interval.

A verified token is remembered (a bounded LRU keyed by the raw token, ``token_cache_size``
entries) until it expires (``exp`` plus the leeway, on the wall clock, as PyJWT checks it), so
a client sending the same token on every request pays for one signature check, not one per
request. Every claim check but ``exp`` gives the same answer for as long as the token lives, so
only expiry is re-checked on a hit; and a hit also requires that the key which verified the
token still answers to its ``kid`` (a JWKS reload makes new key objects, so a key removed or
replaced revokes the tokens it signed at once). Failures are never remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms
from jwt.types import Options

from saga_orchestrator.errors import ConfigurationError, Unauthenticated

__all__ = [
    "MIN_HMAC_SECRET_BYTES",
    "AuthSettings",
    "Authenticator",
    "Principal",
    "Role",
    "StaticToken",
    "Unauthenticated",
    "check_hmac_secret",
    "check_secret",
    "generate_secret",
    "mint_token",
]

MIN_HMAC_SECRET_BYTES: Final = 32
"""RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits)."""
MIN_HMAC_SECRET_BITS: Final = 128
"""Estimated entropy a secret must show (see :func:`check_hmac_secret`)."""
MIN_HMAC_SECRET_DISTINCT: Final = 12
MAX_AUTHORIZATION_BYTES: Final = 8192
MAX_KID_LENGTH: Final = 256
MAX_JWKS_BYTES: Final = 64 * 1024
MAX_JWKS_KEYS: Final = 64
JWKS_FETCH_TIMEOUT: Final = 5.0
MAX_LEEWAY: Final = 300.0

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_CARRYING_HEADERS: Final = frozenset({"jku", "x5u", "jwk", "x5c"})
_TENANT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class Role(enum.StrEnum):
    """What a principal may do; each role includes the ones below it."""

    VIEWER = "viewer"
    """Read definitions, instances, events."""
    OPERATOR = "operator"
    """Viewer, plus start, cancel, retry, skip and resolve instances."""
    ADMIN = "admin"
    """Operator, plus definitions, participant services and tenant settings."""

    def includes(self, other: Role) -> bool:
        return _RANKS[self] >= _RANKS[other]


_RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """An authenticated caller. ``roles`` may be empty: authenticated, but allowed nothing."""

    subject: str
    tenant_id: str
    roles: frozenset[Role]
    token_id: str | None

    def has(self, role: Role) -> bool:
        return any(held.includes(role) for held in self.roles)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    """Where verification keys come from and how claims are read.

    At least one key source is needed. The secret and the PEM key together are refused (a
    token without ``kid`` could mean either), as are a JWKS file and URL together (two sets
    would both claim a ``kid``); either unnamed key beside a JWKS is fine.
    """

    hmac_secret: str | None = field(default=None, repr=False)
    """Shared secret for HS256 tokens; must pass :func:`check_hmac_secret`."""
    public_key_pem: str | None = None
    """A PEM public key (never a private one) for tokens without ``kid``."""
    public_key_algorithm: str = "RS256"
    """The one algorithm of ``public_key_pem``: RS256, ES256, EdDSA (or RS/PS/ES 384/512)."""
    jwks_file: str | None = None
    """Path of a JWKS document, read at start and on refresh."""
    jwks_url: str | None = None
    """An https URL serving a JWKS document, fetched on first use and on refresh."""
    issuer: str | None = None
    """When set, the ``iss`` claim must equal it."""
    audience: str | None = None
    """When set, the ``aud`` claim must contain it."""
    leeway: float = 30
    """Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (at most 300)."""
    tenant_claim: str = "tenant"
    """The claim that names the caller's tenant."""
    roles_claim: str = "roles"
    """The claim listing role names; unknown names are ignored, absent means no role."""
    default_tenant: str | None = None
    """The tenant of tokens that carry no tenant claim at all (single-tenant deployments). Unset:
    such tokens are refused. A tenant claim that is present but invalid is always refused."""
    required_typ: str | None = "JWT"
    """When the header has ``typ``, it must equal this (case-insensitively, ``application/``
    optional); e.g. ``at+jwt`` for RFC 9068 access tokens. ``None``: ``typ`` is not checked."""
    jwks_refresh_interval: float = 300
    """Minimum seconds between two loads of the JWKS triggered by unknown key ids."""
    token_cache_size: int = 4096
    """Verified tokens remembered until they expire (least recently used go first past this
    many); 0 verifies every token on every request."""


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: Any  # as PyJWT takes it: bytes for HMAC, a cryptography public key otherwise


@dataclass(frozen=True, slots=True)
class _KeySet:
    by_kid: Mapping[str, _Key]
    sole: _Key | None  # the set's only key, for tokens without kid when no unnamed key exists


_EMPTY_SET: Final = _KeySet({}, None)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified: who it names, until when, and the key that vouched for it."""

    principal: Principal
    valid_until: float
    """Wall-clock seconds (``exp`` plus the leeway) from which PyJWT would refuse it."""
    kid: str | None
    key: _Key


def check_hmac_secret(secret: str) -> None:
    """Refuse an HS256 key that is short or guessable (:func:`check_secret`'s rule)."""
    check_secret(secret, name="JWT secret")


def check_secret(secret: str, *, name: str) -> None:
    """Refuse a secret that is short or guessable; ``name`` says which in the message.

    The rule: at least :data:`MIN_HMAC_SECRET_BYTES` (32) bytes in UTF-8; at least 12 distinct
    characters; letters, digits or symbols mixed (not all of one class); and an estimated
    entropy (length times the Shannon entropy of its own characters) of at least 128 bits. Output of
    :func:`generate_secret`, ``openssl rand -hex 32`` or ``-base64 32`` passes; ``"changeme"*4``
    does not. The message never shows the secret.
    """
    size = len(secret.encode())
    if size < MIN_HMAC_SECRET_BYTES:
        raise ConfigurationError(
            f"{name}: must be at least {MIN_HMAC_SECRET_BYTES} bytes (got {size}); "
            "generate one with secrets.token_urlsafe(48)"
        )
    counts = Counter(secret)
    bits = -len(secret) * sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    classes = {_char_class(c) for c in counts}
    if len(counts) < MIN_HMAC_SECRET_DISTINCT or len(classes) < 2 or bits < MIN_HMAC_SECRET_BITS:
        raise ConfigurationError(
            f"{name}: too predictable (repeated or single-class characters); "
            "generate one with secrets.token_urlsafe(48)"
        )


def _char_class(char: str) -> str:
    if char.isdigit():
        return "digit"
    return "letter" if char.isalpha() else "symbol"


def generate_secret() -> str:
    """A fresh HS256 secret (64 URL-safe characters, 384 random bits)."""
    return secrets.token_urlsafe(48)


class StaticToken:
    """A static bearer secret, not a JWT (the platform's metrics scrape token): a header
    matches when it is ``Bearer <secret>``.

    The secret must pass :func:`check_secret`. Only its SHA-256 digest is kept, and a header is
    compared digest to digest with :func:`hmac.compare_digest`: the comparison takes the same
    time whatever the header, and its length tells nothing of the secret's.
    """

    __slots__ = ("_digest",)

    def __init__(self, secret: str, *, name: str) -> None:
        check_secret(secret, name=name)
        self._digest = hashlib.sha256(secret.encode()).digest()

    def matches(self, authorization_header: str | None) -> bool:
        if not authorization_header or len(authorization_header) > MAX_AUTHORIZATION_BYTES:
            return False
        scheme, _, credentials = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            # Headers arrive decoded as latin-1: encoding back gives the bytes the client sent
            # (a non-ASCII secret sent as UTF-8 still matches).
            sent = credentials.strip().encode("latin-1")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(hashlib.sha256(sent).digest(), self._digest)

    def __repr__(self) -> str:
        return "StaticToken(***)"


def mint_token(
    secret: str,
    *,
    subject: str,
    tenant_id: str,
    roles: Iterable[Role],
    ttl: float,
    issuer: str | None = None,
    audience: str | None = None,
    tenant_claim: str = "tenant",
    roles_claim: str = "roles",
) -> str:
    """An HS256 token valid for ``ttl`` seconds, as :class:`Authenticator` expects it."""
    check_hmac_secret(secret)
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        tenant_claim: tenant_id,
        roles_claim: sorted(Role(r).value for r in roles),
        "iat": now,
        "exp": now + math.ceil(ttl),
        "jti": uuid.uuid4().hex,
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


class Authenticator:
    """Verifies bearer tokens against the configured keys (see the module docstring).

    ``transport`` (an httpx transport, e.g. ``httpx.MockTransport``) serves the JWKS URL in
    tests; ``clock`` (monotonic seconds) paces refreshes; ``wall_clock`` (epoch seconds) tells
    when a remembered token expires. ``jwks_fetches`` counts loads of the JWKS (file reads and
    URL fetches, failed ones included); ``verifications`` counts signature checks (tokens not
    answered from the cache).
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _check_settings(settings)
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._wall_clock = wall_clock
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self.verifications = 0
        self._unnamed = _unnamed_key(settings)
        self._key_set = _EMPTY_SET
        self._last_load: float | None = None
        self._lock = asyncio.Lock()
        self.jwks_fetches = 0
        if settings.jwks_file is not None:
            self._start_load()
            self._key_set = _parse_key_set(_read_file(settings.jwks_file), "jwks_file")

    async def load_keys(self) -> None:
        """Load the JWKS now (e.g. at start-up; without a JWKS, nothing to do).

        Raises ConfigurationError if it cannot be loaded; the keys loaded before stay in use.
        """
        async with self._lock:
            await self._load()

    async def authenticate(self, authorization_header: str | None) -> Principal:
        token = _bearer_token(authorization_header)
        remembered = self.remembered(token)
        if remembered is not None:
            return remembered
        header = self._checked_header(token)
        kid = header.get("kid")
        key = await self._key_for(kid)
        if key is None:
            raise Unauthenticated("unknown signing key")
        if header.get("alg") != key.algorithm:
            raise Unauthenticated("algorithm not allowed for this key")
        self.verifications += 1
        claims = self._verified_claims(token, key)
        principal = self._principal(claims)
        self._remember(token, principal, claims, kid, key)
        return principal

    def cached(self, authorization_header: str | None) -> Principal | None:
        """The principal of the header's token if :meth:`authenticate` would answer it from
        the cache; ``None`` for anything else (no, malformed, unknown or expired token):
        never verifies, never raises."""
        try:
            token = _bearer_token(authorization_header)
        except Unauthenticated:
            return None
        return self.remembered(token)

    def remembered(self, token: str) -> Principal | None:
        """The principal of ``token`` if it verified before, has not expired since, and the
        key that verified it still answers to its ``kid``; else ``None`` (verify it)."""
        entry = self._verified.get(token)
        if entry is None:
            return None
        if self._wall_clock() >= entry.valid_until or self._select(entry.kid) is not entry.key:
            del self._verified[token]
            return None
        self._verified.move_to_end(token)
        return entry.principal

    def _remember(
        self,
        token: str,
        principal: Principal,
        claims: Mapping[str, Any],
        kid: str | None,
        key: _Key,
    ) -> None:
        size = self._settings.token_cache_size
        exp = claims.get("exp")
        # Only a plain number is remembered (PyJWT also takes numeric strings; those tokens
        # are verified every time); bool is an int to Python, never a real expiry.
        if size <= 0 or isinstance(exp, bool) or not isinstance(exp, int | float):
            return
        # PyJWT refuses from int(exp) - now <= -leeway on: the same instant here.
        valid_until = int(exp) + self._settings.leeway
        self._verified[token] = _Verified(principal, valid_until, kid, key)
        self._verified.move_to_end(token)
        while len(self._verified) > size:
            self._verified.popitem(last=False)

    def _checked_header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        if _KEY_CARRYING_HEADERS & header.keys():
            raise Unauthenticated("token names its own key (jku, x5u, jwk or x5c): not accepted")
        if not _typ_matches(header.get("typ"), self._settings.required_typ):
            raise Unauthenticated("unexpected token type")
        kid = header.get("kid")
        if kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH):
            raise Unauthenticated("malformed key id")
        return header

    async def _key_for(self, kid: str | None) -> _Key | None:
        key = self._select(kid)
        if key is None and self._has_jwks:
            await self._refresh_if_due()
            key = self._select(kid)
        return key

    def _select(self, kid: str | None) -> _Key | None:
        if kid is not None:
            return self._key_set.by_kid.get(kid)
        return self._unnamed if self._unnamed is not None else self._key_set.sole

    @property
    def _has_jwks(self) -> bool:
        return self._settings.jwks_file is not None or self._settings.jwks_url is not None

    async def _refresh_if_due(self) -> None:
        async with self._lock:
            last = self._last_load
            if last is not None and self._clock() - last < self._settings.jwks_refresh_interval:
                return
            # On failure keep serving the keys we have; the next load waits a full interval.
            with contextlib.suppress(ConfigurationError):
                await self._load()

    async def _load(self) -> None:
        settings = self._settings
        if settings.jwks_file is not None:
            self._start_load()
            raw = await asyncio.to_thread(_read_file, settings.jwks_file)
            self._key_set = _parse_key_set(raw, "jwks_file")
        elif settings.jwks_url is not None:
            self._start_load()
            raw = await _fetch(settings.jwks_url, self._transport)
            self._key_set = _parse_key_set(raw, "jwks_url")

    def _start_load(self) -> None:
        self._last_load = self._clock()
        self.jwks_fetches += 1

    def _verified_claims(self, token: str, key: _Key) -> dict[str, Any]:
        settings = self._settings
        options: Options = {
            "require": ["exp", "sub"],
            "verify_aud": settings.audience is not None,
            "verify_iss": settings.issuer is not None,
            "enforce_minimum_key_length": True,
        }
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                options=options,
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_describe(error)) from None

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]
        if not subject:
            raise Unauthenticated("token has an empty subject")
        token_id = claims.get("jti")
        return Principal(
            subject=subject,
            tenant_id=self._tenant(claims),
            roles=self._roles(claims),
            token_id=token_id if isinstance(token_id, str) else None,
        )

    def _tenant(self, claims: Mapping[str, Any]) -> str:
        name = self._settings.tenant_claim
        if name not in claims and self._settings.default_tenant is not None:
            return self._settings.default_tenant
        tenant = claims.get(name)
        if not isinstance(tenant, str) or not _TENANT_ID.fullmatch(tenant):
            raise Unauthenticated("token has no valid tenant")
        return tenant

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[Role]:
        names = claims.get(self._settings.roles_claim, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Unauthenticated("roles claim must be a list of role names")
        return frozenset(Role(n) for n in names if n in _RANKS)


def _bearer_token(header: str | None) -> str:
    if not header or not header.strip():
        raise Unauthenticated("missing bearer token", error="invalid_request")
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise Unauthenticated("authorization header too large", error="invalid_request")
    scheme, _, credentials = header.strip().partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected 'Bearer <token>'", error="invalid_request")
    if not _COMPACT_JWS.fullmatch(token):
        raise Unauthenticated("malformed token")
    return token


def _typ_matches(typ: object, required: str | None) -> bool:
    if required is None or typ is None:
        return True
    return isinstance(typ, str) and _media_type(typ) == _media_type(required)


def _media_type(typ: str) -> str:
    return typ.strip().lower().removeprefix("application/")


_DESCRIPTIONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token is for another audience"),
    (jwt.InvalidIssuerError, "token is from another issuer"),
    (jwt.InvalidSignatureError, "signature does not verify"),
)


def _describe(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        # The claim name comes from our own list (exp, sub, iss, aud), not from the token.
        return f"token lacks the {error.claim} claim"
    return next((text for kind, text in _DESCRIPTIONS if isinstance(error, kind)), "invalid token")


def _check_settings(settings: AuthSettings) -> None:
    sources = {
        name
        for name in ("hmac_secret", "public_key_pem", "jwks_file", "jwks_url")
        if getattr(settings, name) is not None
    }
    problems = [
        (not sources, "no key source: set hmac_secret, public_key_pem, jwks_file or jwks_url"),
        (
            {"hmac_secret", "public_key_pem"} <= sources,
            "hmac_secret and public_key_pem: ambiguous, both would serve tokens without kid",
        ),
        (
            {"jwks_file", "jwks_url"} <= sources,
            "jwks_file and jwks_url: ambiguous, set one key set",
        ),
        (
            settings.jwks_url is not None and not settings.jwks_url.startswith("https://"),
            "jwks_url: must be an https URL",
        ),
        (not 0 <= settings.leeway <= MAX_LEEWAY, f"leeway: must be 0 to {MAX_LEEWAY:g} seconds"),
        (not settings.jwks_refresh_interval > 0, "jwks_refresh_interval: must be positive"),
        (settings.token_cache_size < 0, "token_cache_size: must not be negative"),
        (not settings.tenant_claim, "tenant_claim: must not be empty"),
        (not settings.roles_claim, "roles_claim: must not be empty"),
        (
            settings.default_tenant is not None
            and not _TENANT_ID.fullmatch(settings.default_tenant),
            "default_tenant: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        ),
    ]
    messages = [message for failed, message in problems if failed]
    if messages:
        raise ConfigurationError("; ".join(messages))


def _unnamed_key(settings: AuthSettings) -> _Key | None:
    if settings.hmac_secret is not None:
        check_hmac_secret(settings.hmac_secret)
        return _Key("HS256", settings.hmac_secret.encode())
    if settings.public_key_pem is None:
        return None
    algorithm = settings.public_key_algorithm
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        raise ConfigurationError(
            f"public_key_algorithm: must be one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
        )
    try:
        public_key = load_pem_public_key(settings.public_key_pem.encode())
    except (ValueError, TypeError):
        raise ConfigurationError("public_key_pem: not a PEM public key") from None
    problem = _unfit(algorithm, public_key)
    if problem is not None:
        raise ConfigurationError(f"public_key_pem: {problem}")
    return _Key(algorithm, public_key)


def _unfit(algorithm: str, key: Any) -> str | None:
    """Why ``key`` cannot verify ``algorithm`` (wrong type or curve, too short), or None."""
    implementation = get_default_algorithms()[algorithm]
    try:
        prepared = implementation.prepare_key(key)
    except (jwt.PyJWTError, ValueError, TypeError):
        return f"not a key for {algorithm}"
    return implementation.check_key_length(prepared)


def _parse_key_set(raw: bytes, source: str) -> _KeySet:
    try:
        document = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"{source}: not a JSON document") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{source}: no 'keys' list")
    keys = [k for k in map(_jwk_key, entries[:MAX_JWKS_KEYS]) if k is not None]
    if not keys:
        raise ConfigurationError(f"{source}: no usable public signing key")
    named = Counter(kid for kid, _ in keys if kid is not None)
    # A kid named twice is ambiguous: neither key answers to it.
    by_kid = {kid: key for kid, key in keys if kid is not None and named[kid] == 1}
    return _KeySet(by_kid, keys[0][1] if len(keys) == 1 else None)


def _jwk_key(entry: object) -> tuple[str | None, _Key] | None:
    """One JWKS entry as a key with its pinned algorithm, or None if it is not a usable public
    signing key (symmetric or private material, another use, a malformed or weak key)."""
    if not isinstance(entry, dict) or entry.get("kty") == "oct" or "d" in entry:
        return None
    kid, algorithm = entry.get("kid"), entry.get("alg")
    if algorithm is not None and algorithm not in ASYMMETRIC_ALGORITHMS:
        return None
    if entry.get("use", "sig") != "sig" or (
        kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH)
    ):
        return None
    try:
        jwk = jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, NotImplementedError):
        return None
    algorithm = jwk.algorithm_name
    if algorithm not in ASYMMETRIC_ALGORITHMS or _unfit(algorithm, jwk.key) is not None:
        return None
    return kid, _Key(algorithm, jwk.key)


def _read_file(path: str) -> bytes:
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_JWKS_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(f"jwks_file: cannot be read ({error.strerror})") from None
    if len(raw) > MAX_JWKS_BYTES:
        raise ConfigurationError(f"jwks_file: larger than {MAX_JWKS_BYTES} bytes")
    return raw


async def _fetch(url: str, transport: httpx.AsyncBaseTransport | None) -> bytes:
    try:
        async with (
            httpx.AsyncClient(
                transport=transport, timeout=JWKS_FETCH_TIMEOUT, follow_redirects=False
            ) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise ConfigurationError(f"jwks_url: answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ConfigurationError(f"jwks_url: larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)
    except httpx.HTTPError as error:
        raise ConfigurationError(f"jwks_url: cannot be fetched ({type(error).__name__})") from None
