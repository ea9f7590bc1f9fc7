"""``saga serve``: one node — the engine on the configured database, the REST API over it,
and the in-process handlers of the modules named on the command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from saga_orchestrator.api import ApiOptions, create_app
from saga_orchestrator.console.refusing_protocol import refusing_protocol
from saga_orchestrator.console.workers import inherited_socket
from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    check_hmac_secret,
    check_secret,
    generate_secret,
    mint_token,
)
from saga_orchestrator.settings import Settings
from saga_orchestrator.transports.handlers import HandlerRegistry
from saga_orchestrator.transports.secrets import SecretPolicy

log = logging.getLogger("saga_orchestrator.serve")

KEEP_ALIVE_SECONDS = 75
"""How long an idle client connection stays open. Longer than the idle timeouts of the
proxies and client pools in front of a node (60 s for common load balancers, 5 s for httpx's
pool), so the client side always closes first: a server that closes a connection as the client
reuses it resets that request. uvicorn's default, 5 s, races httpx's 5 s."""


def load_handlers(modules: Sequence[str]) -> HandlerRegistry:
    """Import each module and register its ``@handler`` functions."""
    registry = HandlerRegistry()
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: modules of the working directory
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ConfigurationError(f"--handlers {name}: cannot import it ({error})") from None
        if registry.include(module) == 0:
            raise ConfigurationError(f"--handlers {name}: it defines no @handler function")
    return registry


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    handler_modules: Sequence[str],
    grace: float,
) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting requests, give in-flight attempts
    ``grace`` seconds, and leave anything unfinished to be resumed from its history."""
    handlers = load_handlers(handler_modules)
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigurationError("HTTPS needs both TLS_CERT_FILE and TLS_KEY_FILE")
    scheme = "https" if settings.tls_cert_file else "http"
    listener = inherited_socket()
    # A socket handed down by a supervisor is bound already: judge its address, not --host.
    bound_host = host if listener is None else str(listener.getsockname()[0])
    authenticator, newcomer_token = authentication(settings, bound_host)
    scrape_token = metrics_token(settings)
    orchestrator = Orchestrator(
        settings.database_url,
        handlers=handlers,
        max_concurrent_sagas=settings.max_concurrent_sagas,
        tenant_id=settings.tenant_id,
        # Handlers may also be served by workers in other processes.
        require_known_handlers=False,
        features=settings.feature_flags(),
        callback_base_url=settings.public_url or _local_url(host, port, scheme),
        amqp_url=settings.amqp_url,
        integration_event_tenants=settings.integration_event_tenants(),
        max_running_sagas_per_tenant=settings.max_running_sagas_per_tenant,
        limit_ceilings=settings.limit_ceilings(),
        encryption_keys=settings.encryption_keys,
        node_id=settings.node_id,
        node_address=settings.public_url or _local_url(host, port, scheme),
        cluster=settings.cluster_enabled,
        lease_ttl=settings.lease_ttl,
        leader_lease_ttl=settings.leader_lease_ttl,
        database_pool_size=settings.database_pool_size,
        database_app_url=settings.database_app_url,
        database_cluster_url=settings.database_cluster_url,
        claim_poll_interval=settings.claim_poll_interval,
        max_takeovers=settings.max_takeovers,
        retention_days=settings.retention_days,
        tune_gc=True,  # this process is ours: see engine/collector.py
        secrets=secret_policy(settings),
    )
    await orchestrator.open()
    # A tenant well inside its limits is admitted without a round trip to Redis; near a limit
    # Redis decides (security/limits.py says what a cluster may admit meanwhile).
    limiter = RateLimiter(settings.redis_url, admit_from_estimates=True)
    token_file = None
    server: _Server | None = None
    try:
        options = ApiOptions(
            authenticator=authenticator,
            rate_limiter=limiter,
            limits=request_limits(settings),
            metrics_token=scrape_token,
        )
        if newcomer_token is not None:
            token_file = write_token_file(settings.token_file, newcomer_token)
            banner = newcomer_banner(f"{scheme}://{host}:{port}", newcomer_token, token_file)
            print(banner, flush=True)  # noqa: T201
        app = create_app(orchestrator, options)
        config = uvicorn.Config(
            app,
            http=refusing_protocol(app.state.wire_refusals),
            host=host,
            port=port,
            log_level=settings.log_level.value,
            lifespan="on",
            timeout_graceful_shutdown=int(grace) or 1,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            access_log=False,
        )
        log.info("serving on http://%s:%d with %d handlers", host, port, len(handlers))
        server = _Server(config)
        await server.serve(sockets=None if listener is None else [listener])
    finally:
        # One grace for the whole stop: the engine's in-flight attempts ran on while the
        # server drained its requests, so they get only what the drain left of it.
        left = grace if server is None else server.grace_left(grace)
        await orchestrator.close(grace=left)
        await limiter.aclose()
        if token_file is not None:
            token_file.unlink(missing_ok=True)  # the token dies with the run's secret


def request_limits(settings: Settings) -> RequestLimits:
    """Every tenant's default buckets, from the ``RATE_LIMIT_*`` settings."""
    per_caller = settings.rate_limit_principal_requests
    return RequestLimits(
        requests=Limit.per_second(settings.rate_limit_requests),
        starts=Limit.per_second(settings.rate_limit_starts),
        principal=None if per_caller is None else Limit.per_second(per_caller),
    )


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def secret_policy(settings: Settings) -> SecretPolicy:
    """What participant services' secret references may reach (transports/secrets.py)."""
    directory = settings.secrets_dir
    if directory is not None and not Path(directory).is_dir():
        # Caught here rather than as every file reference failing at call time.
        raise ConfigurationError(f"SECRETS_DIR: {directory} is not a directory")
    return SecretPolicy.of(settings.secret_env_tenant_ids(), directory)


def authentication(settings: Settings, host: str) -> tuple[Authenticator, str | None]:
    """The node's token verifier, and the admin token of a run without configured keys.

    Authentication is never off: with no key configured, a secret is made for this run only,
    the node must listen on loopback, and an admin token for the node's tenant is returned
    for the newcomer to use (like Jupyter's)."""
    if settings.jwt_secret is not None:
        check_hmac_secret(settings.jwt_secret)
    if settings.auth_configured():
        public_key = None
        if settings.jwt_public_key_file is not None:
            try:
                public_key = Path(settings.jwt_public_key_file).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigurationError(f"JWT_PUBLIC_KEY_FILE: cannot read it ({error})") from None
        auth = AuthSettings(
            hmac_secret=settings.jwt_secret,
            public_key_pem=public_key,
            public_key_algorithm=settings.jwt_algorithm,
            jwks_file=settings.jwt_jwks_file,
            jwks_url=settings.jwt_jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            tenant_claim=settings.jwt_tenant_claim,
            roles_claim=settings.jwt_roles_claim,
        )
        return Authenticator(auth), None
    if host not in LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"no JWT key is configured (JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE or "
            f"JWT_JWKS_URL): refusing to serve on {host} without authentication; without a key "
            "the service only listens on 127.0.0.1"
        )
    secret = generate_secret()
    token = mint_token(
        secret,
        subject="admin",
        tenant_id=settings.tenant_id,
        roles=[Role.ADMIN],
        ttl=7 * 24 * 3600,
    )
    return Authenticator(AuthSettings(hmac_secret=secret)), token


def metrics_token(settings: Settings) -> str | None:
    """The platform's scrape token, refused at start like a weak JWT secret is."""
    token = settings.metrics_token
    if token is None:
        return None
    check_secret(token, name="METRICS_TOKEN")
    if token == settings.jwt_secret:
        # Whoever holds the scrape token (a Prometheus config, a sidecar) would hold the key
        # that signs every tenant's admin tokens.
        raise ConfigurationError("METRICS_TOKEN: must not be the JWT_SECRET; make one of its own")
    return token


def write_token_file(path: str, token: str) -> Path:
    """Readable by this user only: the token is an admin credential."""
    target = Path(path)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(token + "\n")
    target.chmod(0o600)
    return target.resolve()


def newcomer_banner(url: str, token: str, token_file: Path) -> str:
    return (
        f"\nNo JWT key is configured: this run made its own and listens on {url} only.\n"
        f"Admin token (also in {token_file}; the saga client commands read it):\n\n"
        f"    {token}\n\n"
        f'    curl -H "Authorization: Bearer $(cat {token_file.name})" \\\n'
        f"         {url}/api/v1/sagas/instances\n"
        f"    open {url}/docs and use Authorize with the token\n"
        f"    {url}/metrics shows this token the tenant's series; a Prometheus scraper\n"
        "    of every tenant's needs METRICS_TOKEN set (docs/security.md#metrics)\n"
    )


def _local_url(host: str, port: int, scheme: str = "http") -> str:
    """Where participants on this machine reach the service when PUBLIC_URL is not set."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{scheme}://[{shown}]:{port}" if ":" in shown else f"{scheme}://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has stopped, which would kill the process before the
    engine's own graceful stop; here a signal only asks the server to exit, and the caller
    stops the engine afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._ask_to_exit)
        try:
            yield
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    exit_asked_at: float | None = None
    """When a signal asked the server to exit (``time.monotonic``)."""

    def _ask_to_exit(self) -> None:
        if self.exit_asked_at is None:
            self.exit_asked_at = time.monotonic()
        self.should_exit = True

    def grace_left(self, grace: float) -> float:
        """What remains of ``grace`` since the signal (all of it if none came)."""
        if self.exit_asked_at is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.exit_asked_at))
