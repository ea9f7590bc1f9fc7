"""Reaches HTTP participants registered in the service registry (semantics §3).

One attempt, in order; each refusal happens before anything is sent:

1. the service is looked up in the tenant's registry (``ParticipantNotRegistered``);
2. the URL is the base URL plus the rendered path, and must stay under the base
   (``DestinationRefused``); secret headers are resolved (``SecretUnavailable``), if the
   node's rules let the tenant reach them (``SecretRefused``, like a literal credential
   header or a TLS file out of the tenant's secrets directory);
3. the service's circuit breaker admits the call (``CircuitOpen``, not budgeted) and a
   concurrency slot frees up;
4. the host is resolved and *every* address must be public unless the entry allows private
   networks (``DestinationRefused``); the connection then goes to the checked address, with
   the original ``Host`` and TLS server name, so DNS cannot rebind between check and connect
   (over ``http_wire.WireTransport``: kept-alive HTTP/1.1 connections, one pool per channel);
5. the answer is classified, never followed if it redirects (``RedirectRefused``):

    ==========================================  =========  =======  ========================
    outcome                                     retryable  unknown  type
    ==========================================  =========  =======  ========================
    202                                         (accepted: completes by callback)
    other 2xx                                   (success: output = JSON, or text, or None)
    2xx larger than ``max_response_bytes``      no         yes      ResponseTooLarge
    4xx but 408/429                             no         no       HTTP<status>
    5xx, 408, 429 (``Retry-After`` honoured)    yes        no       HTTP<status>
    DNS failure, connection refused             yes        no       DnsError, ConnectError
    connect timeout, no free slot in time       yes        no       ConnectTimeout, QueueTimeout
    read/write timeout, attempt deadline        yes        yes      Timeout
    connection lost after sending               yes        yes      ConnectionLost
    ==========================================  =========  =======  ========================

Secret values never reach an error message or a log line: messages are built from names, and
are scrubbed of every resolved secret before they leave.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import logging
import math
import os
import socket
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, unquote

import httpx
import orjson

from saga_orchestrator.core.commands import Target
from saga_orchestrator.core.events import ErrorInfo
from saga_orchestrator.definition.models import HttpCall
from saga_orchestrator.definition.network import IPAddress, is_public, parse_ip_literal
from saga_orchestrator.definition.participants import (
    ParticipantRecord,
    ParticipantService,
    SecretHeader,
)
from saga_orchestrator.errors import SagaError
from saga_orchestrator.transports.base import HttpCallSpec, StepOutcome, StepRequest
from saga_orchestrator.transports.breaker import BreakerBook
from saga_orchestrator.transports.http_wire import WireTransport
from saga_orchestrator.transports.pacing import TokenBucket
from saga_orchestrator.transports.secrets import (
    SecretPolicy,
    SecretRefused,
    SecretUnavailable,
    is_credential_header,
    literal_credential_reason,
    resolve_secret,
)

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: how names become IP addresses (tests inject their own)."""

MAX_RETRY_AFTER = 3600.0
MESSAGE_CHARS = 200
USER_AGENT = "saga-orchestrator"
OWN_HEADERS = (
    "Idempotency-Key",
    "traceparent",
    "Saga-Instance-Id",
    "Saga-Step",
    "Saga-Phase",
    "Saga-Attempt",
    "Saga-Completion-Token",
    "Saga-Callback-Url",
    "Host",
)
"""Set by the transport alone: registry and step headers of these names are dropped."""
_OWN = frozenset(name.lower() for name in OWN_HEADERS)
_DEFAULT_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"))
"""What an ``httpx.AsyncClient`` would add (the body is decoded accordingly)."""
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
     "trailer", "proxy-authorization", "proxy-connection"}
)  # fmt: skip
_BODYLESS_METHODS = frozenset({"GET", "DELETE"})
_UNCOUNTED = frozenset({"DestinationRefused", "InvalidRequest", "QueueTimeout"})
"""Outcomes that say nothing about the service's health: no breaker verdict."""


class ParticipantDirectory(Protocol):
    async def lookup(self, tenant_id: str, name: str) -> ParticipantRecord | None: ...


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CallRefused(SagaError):
    """A call that must not be sent (raised while preparing it); carries its outcome."""

    def __init__(self, kind: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.outcome = _failure(kind, message, retryable=retryable)


@dataclass(slots=True, eq=False)
class _Channel:
    """The pooled connections of one (tenant, service, registry version)."""

    version: int
    wire: WireTransport
    slots: asyncio.Semaphore
    pacing: TokenBucket | None = None
    users: int = 0
    retired: bool = False


@dataclass(slots=True, eq=False)
class _Profile:
    """The headers every call to one service sends, built once per registry entry:
    ``lower name -> (name, value)`` encoded, in the order a call sets them."""

    service: ParticipantService
    headers: dict[str, tuple[bytes, bytes]]
    """httpx's defaults, the ``User-Agent``, then the service's plain headers."""
    secrets: dict[str, tuple[str, SecretHeader]]
    """The service's secret headers, resolved at every call (secrets rotate)."""
    literal_credentials: tuple[str, ...] = ()
    """Headers holding a credential as a plain string (registered under older rules): the
    service is not called until it is registered again with references."""


@dataclass(slots=True, eq=False)
class _Target:
    """A step's URL under its service's base URL, with what connecting to it needs."""

    url: httpx.URL
    host: bytes
    """The ``Host`` header: the URL's host and port."""
    server_name: str | None
    """The TLS server name: the URL's host, unless it is an IP address."""
    literal: IPAddress | None
    """The URL's host as an IP address, when it is one (no resolving)."""
    connect_urls: dict[IPAddress, httpx.URL]
    """The URL with its host replaced by a checked address, per address."""

    def connect_url(self, address: IPAddress) -> httpx.URL:
        url = self.connect_urls.get(address)
        if url is None:
            if len(self.connect_urls) >= 16:  # a name that resolves differently every time
                self.connect_urls.clear()
            url = self.connect_urls[address] = self.url.copy_with(host=str(address))
        return url


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    method: str
    target: _Target
    headers: list[tuple[bytes, bytes]]
    content: bytes | None
    secrets: tuple[str, ...]


class HttpTransport:
    def __init__(
        self,
        directory: ParticipantDirectory,
        *,
        breakers: BreakerBook | None = None,
        resolver: Resolver | None = None,
        environ: Mapping[str, str] | None = None,
        callback_base_url: str | None = None,
        secrets: SecretPolicy | None = None,
    ) -> None:
        """``secrets``: what each tenant's secret references may reach (default: nothing)."""
        self.directory = directory
        self.breakers = breakers if breakers is not None else BreakerBook()
        self._resolver = resolver or system_resolver
        self._environ = environ if environ is not None else os.environ
        self._secrets = secrets if secrets is not None else SecretPolicy()
        self._callback_base_url = callback_base_url.rstrip("/") if callback_base_url else None
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._retired: set[_Channel] = set()
        self._profiles: dict[tuple[str, str], _Profile] = {}

    def accepts(self, target: Target) -> bool:
        return isinstance(target, HttpCall)

    async def call(self, request: StepRequest) -> StepOutcome:
        spec = request.call
        if not isinstance(spec, HttpCallSpec):
            return _failure("InvalidRequest", "an http step arrived without its rendered call")
        record = await self.directory.lookup(request.tenant_id, spec.service)
        if record is None:
            return _failure(
                "ParticipantNotRegistered", f"no participant service {spec.service!r} is registered"
            )
        try:
            prepared = self._prepare(self._profile(request.tenant_id, record), spec, request)
            channel = await self._channel(request.tenant_id, record)
        except CallRefused as refusal:
            logger.warning("call to %s refused: %s", spec.service, refusal)
            return refusal.outcome
        outcome = await self._guarded(request, record, channel, prepared)
        return _redacted(outcome, (*prepared.secrets, request.completion_token))

    async def aclose(self) -> None:
        channels = [*self._channels.values(), *self._retired]
        self._channels.clear()
        self._retired.clear()
        for channel in channels:
            await channel.wire.aclose()

    def _profile(self, tenant_id: str, record: ParticipantRecord) -> _Profile:
        key = (tenant_id, record.name)
        profile = self._profiles.get(key)
        service = record.service
        if profile is None or (profile.service is not service and profile.service != service):
            profile = self._profiles[key] = _profile_of(service)
        profile.service = service  # an equal entry read again: compare by identity next time
        return profile

    def _prepare(self, profile: _Profile, spec: HttpCallSpec, request: StepRequest) -> _Prepared:
        target = _target(profile.service.base_url, spec.path)
        if profile.literal_credentials:
            name = profile.literal_credentials[0]
            raise CallRefused(
                "SecretRefused",
                f"{literal_credential_reason(name)}; register the service again",
            )
        headers, secrets = self._headers(profile, spec, request)
        method = spec.method.upper()
        content = None
        if spec.body is not None and method not in _BODYLESS_METHODS:
            try:
                content = orjson.dumps(spec.body)
            except TypeError as error:
                raise CallRefused("InvalidRequest", f"the body is not JSON: {error}") from None
            headers.setdefault("content-type", (b"Content-Type", b"application/json"))
        headers["host"] = (b"Host", target.host)
        return _Prepared(
            method=method,
            target=target,
            headers=list(headers.values()),
            content=content,
            secrets=secrets,
        )

    def _headers(
        self, profile: _Profile, spec: HttpCallSpec, request: StepRequest
    ) -> tuple[dict[str, tuple[bytes, bytes]], tuple[str, ...]]:
        headers = profile.headers.copy()
        secrets: list[str] = []
        for lower, (name, value) in profile.secrets.items():
            try:
                secret = resolve_secret(
                    value.secret, self._environ, tenant_id=request.tenant_id, policy=self._secrets
                )
            except SecretRefused as error:
                # Retrying cannot help: the entry or the node's settings must change.
                raise CallRefused("SecretRefused", str(error)) from None
            except SecretUnavailable as error:
                raise CallRefused("SecretUnavailable", str(error), retryable=True) from None
            secrets.append(secret)
            if lower not in _OWN:
                headers[lower] = _header(name, value.prefix + secret)
        for name, text in spec.headers.items():
            lower = name.lower()
            if lower not in _FRAMING_HEADERS and lower not in _OWN:
                headers[lower] = _header(name, text)
        for name, text in self._own_headers(request).items():
            headers[name.lower()] = _header(name, text)
        return headers, tuple(secrets)

    def _own_headers(self, request: StepRequest) -> dict[str, str]:
        own = {
            "Idempotency-Key": request.idempotency_key,
            "Saga-Instance-Id": request.instance_id,
            "Saga-Step": request.node,
            "Saga-Phase": request.phase.value,
            "Saga-Attempt": str(request.attempt),
        }
        if request.traceparent:
            own["traceparent"] = request.traceparent
        if request.completion_token:
            own["Saga-Completion-Token"] = request.completion_token
        if self._callback_base_url:
            own["Saga-Callback-Url"] = (
                f"{self._callback_base_url}/api/v1/sagas/instances/"
                f"{quote(request.instance_id, safe='')}/steps/{quote(request.node, safe='')}"
            )
        return own

    async def _channel(self, tenant_id: str, record: ParticipantRecord) -> _Channel:
        key = (tenant_id, record.name)
        current = self._channels.get(key)
        if current is not None and current.version == record.version:
            return current
        try:
            wire = _wire(record.service, self._tls_files(tenant_id, record))
        except OSError as error:  # ssl.SSLError is an OSError
            raise CallRefused(
                "TlsUnavailable",
                f"the TLS files of {record.name!r} cannot be loaded ({type(error).__name__})",
                retryable=True,
            ) from None
        pace = record.service.rate_limit
        self._channels[key] = _Channel(
            version=record.version,
            wire=wire,
            slots=asyncio.Semaphore(record.service.max_concurrency),
            pacing=None if pace is None else TokenBucket(pace.per_second, pace.burst),
        )
        if current is not None:
            current.retired = True
            self._retired.add(current)
            await self._close_if_idle(current)
        return self._channels[key]

    def _tls_files(self, tenant_id: str, record: ParticipantRecord) -> _TlsFiles:
        """The service's TLS files, each under the tenant's secrets directory: the TLS library
        reads them, and an error loading one would tell whether a node file exists."""
        tls = record.service.tls
        located: list[str | None] = []
        for field, path in (
            ("ca_file", tls.ca_file),
            ("client_cert", tls.client_cert),
            ("client_key", tls.client_key),
        ):
            try:
                located.append(None if path is None else str(self._secrets.locate(tenant_id, path)))
            except SecretRefused as refused:
                message = f"tls.{field} of {record.name!r}: {refused.reference} {refused.reason}"
                raise CallRefused("SecretRefused", message) from None
        return _TlsFiles(*located)

    async def _close_if_idle(self, channel: _Channel) -> None:
        if channel.retired and channel.users == 0 and channel in self._retired:
            self._retired.discard(channel)
            await channel.wire.aclose()

    async def _guarded(
        self,
        request: StepRequest,
        record: ParticipantRecord,
        channel: _Channel,
        prepared: _Prepared,
    ) -> StepOutcome:
        if channel.pacing is not None and (wait := channel.pacing.take()) > 0:
            message = f"{record.name!r} takes {channel.pacing.rate:g} calls/s; retry in {wait:.2f}s"
            error = ErrorInfo(
                type="RateLimited",
                message=message,
                retryable=True,
                budgeted=False,
                retry_after=wait,
            )
            return StepOutcome(error=error)
        breaker = self.breakers.get(request.tenant_id, record.name, record.service.circuit_breaker)
        permit = breaker.try_acquire()
        if permit is None:
            wait = breaker.retry_after()
            message = f"the circuit breaker of {record.name!r} is open; retry in {wait:.1f}s"
            error = ErrorInfo(
                type="CircuitOpen",
                message=message,
                retryable=True,
                budgeted=False,
                retry_after=wait,
            )
            return StepOutcome(error=error)
        verdict: bool | None = None
        try:
            outcome = await self._dispatch(request, record, channel, prepared)
            verdict = _breaker_verdict(outcome)
        finally:
            if verdict is None:
                breaker.release(permit)
            else:
                breaker.record(permit, verdict)
        return outcome

    async def _dispatch(
        self,
        request: StepRequest,
        record: ParticipantRecord,
        channel: _Channel,
        prepared: _Prepared,
    ) -> StepOutcome:
        timeout = min(request.timeout, record.service.timeout or math.inf)
        deadline = asyncio.get_running_loop().time() + timeout
        channel.users += 1
        try:
            if not await _slot(channel.slots, deadline):
                message = f"no free connection slot to {record.name!r} within {timeout}s"
                return _failure("QueueTimeout", message, retryable=True)
            try:
                return await self._exchange(record, channel.wire, prepared, deadline)
            finally:
                channel.slots.release()
        finally:
            channel.users -= 1
            await self._close_if_idle(channel)

    async def _exchange(
        self,
        record: ParticipantRecord,
        wire: WireTransport,
        prepared: _Prepared,
        deadline: float,
    ) -> StepOutcome:
        try:
            address = await self._checked_address(prepared.target, record, deadline)
        except CallRefused as refusal:
            logger.warning("call to %s refused: %s", record.name, refusal)
            return refusal.outcome
        try:
            async with asyncio.timeout_at(deadline):
                return await _send(wire, prepared, address, record, deadline)
        except TimeoutError:
            return _failure("Timeout", "the attempt timed out", retryable=True, unknown=True)
        except httpx.HTTPError as error:
            return StepOutcome(error=classify_transport_error(error))

    async def _checked_address(
        self, target: _Target, record: ParticipantRecord, deadline: float
    ) -> IPAddress:
        """The address to connect to, once every address of the host has passed the wall."""
        host = target.url.host
        literal = target.literal
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._resolve(host, target.url, deadline)
        if not record.service.allow_private_network:
            for address in addresses:
                if not is_public(address):
                    raise CallRefused(
                        "DestinationRefused",
                        f"{host!r} resolves to the non-public address {address}; "
                        "set allow_private_network to call a service on a private network",
                    )
        return addresses[0]

    async def _resolve(self, host: str, url: httpx.URL, deadline: float) -> list[IPAddress]:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            async with asyncio.timeout_at(deadline):
                found = await self._resolver(host, port)
            addresses = [ipaddress.ip_address(text.split("%", 1)[0]) for text in found]
        except TimeoutError:  # before OSError, of which it is a subclass
            raise CallRefused("DnsError", f"resolving {host!r} timed out", retryable=True) from None
        except (OSError, ValueError) as error:
            reason = f"cannot resolve {host!r}: {error}"
            raise CallRefused("DnsError", reason, retryable=True) from None
        if not addresses:
            raise CallRefused("DnsError", f"{host!r} has no address", retryable=True)
        return addresses


def target_url(base_url: str, path: str) -> httpx.URL:
    """``base_url + path``, refused unless it keeps the base's origin and stays under its path,
    whatever percent-encoding, dot segments or ``@`` the rendered path carries."""
    try:
        base = httpx.URL(base_url)
    except httpx.InvalidURL:  # e.g. an octal IPv4 host, which httpx refuses to parse
        raise CallRefused("DestinationRefused", "the service's base URL is invalid") from None
    route, _, _query = path.partition("?")
    decoded = unquote(route)
    if (
        not route.startswith("/")
        or "#" in path
        or "\\" in decoded
        or "//" in decoded
        or any(segment in (".", "..") for segment in decoded.split("/"))
    ):
        raise CallRefused("DestinationRefused", f"path {path[:MESSAGE_CHARS]!r} is not allowed")
    try:
        url = httpx.URL(base_url + path)
    except httpx.InvalidURL:
        raise CallRefused(
            "DestinationRefused", f"path {path[:MESSAGE_CHARS]!r} is invalid"
        ) from None
    prefix = base.path.rstrip("/")
    if (
        (url.scheme, url.host, url.port, url.userinfo) != (base.scheme, base.host, base.port, b"")
        or not (url.path == prefix or url.path.startswith(prefix + "/"))
    ):  # fmt: skip
        raise CallRefused(
            "DestinationRefused", f"path {path[:MESSAGE_CHARS]!r} leaves the service's base URL"
        )
    return url


@functools.lru_cache(maxsize=4096)
def _target(base_url: str, path: str) -> _Target:
    """``target_url`` and what connecting needs, remembered: parsing URLs was a third of the
    transport's own work per call."""
    url = target_url(base_url, path)
    literal = parse_ip_literal(url.host)
    return _Target(
        url=url,
        host=url.netloc,
        server_name=url.raw_host.decode("ascii") if literal is None else None,
        literal=literal,
        connect_urls={},
    )


async def _send(
    wire: WireTransport,
    prepared: _Prepared,
    address: IPAddress,
    record: ParticipantRecord,
    deadline: float,
) -> StepOutcome:
    target = prepared.target
    remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
    timeout = {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
    extensions: dict[str, object] = {"timeout": timeout}
    if target.server_name is not None and target.url.scheme == "https":
        extensions["sni_hostname"] = target.server_name
    request = httpx.Request(
        prepared.method,
        target.connect_url(address),
        headers=prepared.headers,
        stream=httpx.ByteStream(prepared.content or b""),  # framed by the wire transport
        extensions=extensions,
    )
    # Not through an httpx.AsyncClient: it adds nothing used here (no redirects, no auth)
    # but a cookie jar, whose bookkeeping cost ~100 us per call. Nor should cookies pass
    # between the calls of different sagas.
    response = await wire.handle_async_request(request)
    try:
        if 300 <= response.status_code < 400:
            message = f"{record.name!r} answered {response.status_code}: redirects are not followed"
            return _failure("RedirectRefused", message)
        body, oversize = await _read_capped(response, record.service.max_response_bytes)
    finally:
        await response.aclose()
    return classify_response(response.status_code, response.headers, body, oversize=oversize)


async def _slot(slots: asyncio.Semaphore, deadline: float) -> bool:
    """Take a concurrency slot, waiting no later than ``deadline``; False if none came."""
    if not slots.locked():
        await slots.acquire()  # free: taken at once, no timer needed
        return True
    try:
        async with asyncio.timeout_at(deadline):
            await slots.acquire()
    except TimeoutError:
        return False
    return True


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The (decoded) body, read no further than ``cap`` bytes; True if there was more."""
    chunks: list[bytes] = []
    size = 0
    # Without a content-coding the raw stream is the body: skip httpx's decoder chain.
    raw = response.stream
    source: AsyncIterable[bytes] = (
        raw
        if isinstance(raw, httpx.AsyncByteStream) and "Content-Encoding" not in response.headers
        else response.aiter_bytes()
    )
    async for chunk in source:
        if size + len(chunk) > cap:
            chunks.append(chunk[: cap - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def classify_response(
    status: int, headers: httpx.Headers, body: bytes, *, oversize: bool = False
) -> StepOutcome:
    """A participant's (non-redirect) answer as an outcome (semantics §3)."""
    if status == 202:
        return StepOutcome(accepted=True)
    if 200 <= status < 300:
        if oversize:
            message = f"the {status} response is larger than the service's max_response_bytes"
            return _failure("ResponseTooLarge", message, unknown=True)
        return StepOutcome(output=_output(body))
    retryable = status in (408, 429) or not 400 <= status < 500
    retry_after = parse_retry_after(headers.get("Retry-After"), datetime.now(UTC))
    error = ErrorInfo(
        type=f"HTTP{status}",
        message=_error_detail(status, headers, body),
        retryable=retryable,
        retry_after=retry_after if retryable else None,
    )
    return StepOutcome(error=error)


def classify_transport_error(error: httpx.HTTPError) -> ErrorInfo:
    """Whether anything may have reached the participant decides ``unknown``."""
    if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
        return _error("ConnectTimeout", "connecting timed out", retryable=True)
    if isinstance(error, httpx.ConnectError):
        return _error("ConnectError", f"cannot connect: {error}", retryable=True)
    if isinstance(error, httpx.TimeoutException):
        message = f"the attempt timed out ({type(error).__name__})"
        return _error("Timeout", message, retryable=True, unknown=True)
    if isinstance(error, httpx.LocalProtocolError):
        # h11's message may quote a header value, which may be a secret: name nothing.
        return _error("InvalidRequest", "the request is not valid HTTP (a header?)")
    if isinstance(error, httpx.UnsupportedProtocol):
        return _error("DestinationRefused", "the URL's scheme is not http or https")
    message = f"connection lost after sending ({type(error).__name__}: {error})"
    return _error("ConnectionLost", message, retryable=True, unknown=True)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date), within
    [0, ``MAX_RETRY_AFTER``]; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _output(body: bytes) -> object:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")


def _error_detail(status: int, headers: httpx.Headers, body: bytes) -> str:
    if "json" in headers.get("Content-Type", ""):
        try:
            problem = orjson.loads(body)
        except orjson.JSONDecodeError:
            problem = None
        if isinstance(problem, dict):
            parts = [str(problem[key]) for key in ("title", "detail") if problem.get(key)]
            if parts:
                return ": ".join(parts)[:MESSAGE_CHARS]
    text = body.decode("utf-8", errors="replace").strip()[:MESSAGE_CHARS]
    return text or f"HTTP {status}"


def _breaker_verdict(outcome: StepOutcome) -> bool | None:
    """Failed (True), healthy (False) or no verdict (None) for the service's breaker."""
    error = outcome.error
    if error is None:
        return False
    if error.type in _UNCOUNTED:
        return None
    return error.retryable


def _wire(service: ParticipantService, files: _TlsFiles) -> WireTransport:
    """The service's connections: never through a proxy, which would route around the
    address check."""
    return WireTransport(
        ssl_context=_ssl_context(service.tls.verify, files),
        max_idle_per_origin=service.max_concurrency,
    )


def _profile_of(service: ParticipantService) -> _Profile:
    headers = {name.lower(): _header(name, value) for name, value in _DEFAULT_HEADERS}
    headers["user-agent"] = _header("User-Agent", USER_AGENT)
    secrets: dict[str, tuple[str, SecretHeader]] = {}
    literals: dict[str, str] = {}
    for name, value in service.headers.items():
        lower = name.lower()
        headers.pop(lower, None)  # a later entry of the same name wins
        secrets.pop(lower, None)
        literals.pop(lower, None)
        if isinstance(value, SecretHeader):
            secrets[lower] = (name, value)
        elif is_credential_header(name):
            literals[lower] = name
        elif lower not in _OWN:
            headers[lower] = _header(name, value)
    return _Profile(
        service=service,
        headers=headers,
        secrets=secrets,
        literal_credentials=tuple(literals.values()),
    )


@dataclass(frozen=True, slots=True)
class _TlsFiles:
    """A service's TLS files, located in its tenant's secrets directory."""

    ca_file: str | None
    client_cert: str | None
    client_key: str | None


def _ssl_context(verify: bool, files: _TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files.ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if files.client_cert:
        context.load_cert_chain(files.client_cert, files.client_key)
    return context


def _header(name: str, value: str) -> tuple[bytes, bytes]:
    try:
        return name.encode("ascii"), value.encode("ascii")
    except UnicodeEncodeError:
        raise CallRefused("InvalidRequest", f"header {name!r} is not ASCII") from None


def _redacted(outcome: StepOutcome, secrets: Sequence[str]) -> StepOutcome:
    error = outcome.error
    if error is None:
        return outcome
    message = error.message
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    if message == error.message:
        return outcome
    return replace(outcome, error=replace(error, message=message))


def _failure(
    kind: str, message: str, *, retryable: bool = False, unknown: bool = False
) -> StepOutcome:
    return StepOutcome(error=_error(kind, message, retryable=retryable, unknown=unknown))


def _error(kind: str, message: str, *, retryable: bool = False, unknown: bool = False) -> ErrorInfo:
    return ErrorInfo(type=kind, message=message, retryable=retryable, unknown=unknown)


__all__ = [
    "MAX_RETRY_AFTER",
    "CallRefused",
    "HttpTransport",
    "ParticipantDirectory",
    "Resolver",
    "classify_response",
    "classify_transport_error",
    "parse_retry_after",
    "system_resolver",
    "target_url",
]
