"""Secret header values, resolved at call time from an environment variable or a file, and
the rules confining what a tenant's references may reach.

Resolving late means a rotated secret (a re-mounted Kubernetes secret, a new variable after a
restart) is used by the next call without re-registering the service. Errors name the
*reference* (``env:NAME``, ``file:path``), never a value.

A tenant's admin writes the references and chooses the base URL the values are sent to, so a
reference is a read of the node's environment or file system on the tenant's behalf. The
:class:`SecretPolicy` bounds it:

- ``env`` names a variable starting with :data:`SECRET_ENV_PREFIX` (so ``JWT_SECRET``,
  ``DATABASE_URL``, ``ENCRYPTION_KEYS``... are never reachable), and only for the tenants the
  operator allows: variables are node-wide, shared by every tenant;
- ``file`` (and a service's TLS files) is a relative path under ``SECRETS_DIR/<tenant>/``;
  absolute paths, ``..`` and symbolic links leading out of that directory are refused, so a
  tenant reaches neither the node's files nor another tenant's;
- a header that carries a credential (:func:`is_credential_header`) must be a reference: a
  literal value there would be stored, shown by the API and logged like any other setting.

The rules are checked when a service is registered (:meth:`SecretPolicy.problems`) and again
at every call (:func:`resolve_secret`, :meth:`SecretPolicy.locate`): the settings or the files
may have changed since.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from saga_orchestrator.definition.participants import (
    CREDENTIAL_HEADERS,
    CREDENTIAL_WORDS,
    ParticipantService,
    SecretHeader,
    SecretRef,
    is_credential_header,
)
from saga_orchestrator.errors import ConfigurationError

MAX_SECRET_BYTES = 16_384
SECRET_ENV_PREFIX: Final = "SAGA_SECRET_"
"""Every variable an ``env`` reference may name starts with it; node settings never do."""
_FORBIDDEN = frozenset("\r\n\x00")
# Tenant ids from tokens already match security.tokens' pattern (an alphanumeric first, so
# never "." or ".."; no "/"), but TENANT_ID from the settings is not checked there: a tenant
# id becomes a directory name only if it passes this again.
_DIRECTORY_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REFERENCE_HINT: Final = (
    'write it as a secret reference, e.g. {"secret": {"file": "<path under the tenant\'s '
    'secrets directory>"}, "prefix": "Bearer "} or {"secret": {"env": "'
    + SECRET_ENV_PREFIX
    + '<NAME>"}}'
)


class SecretUnavailable(ConfigurationError):
    """A secret reference cannot be resolved (missing, unreadable, empty or malformed)."""

    def __init__(self, ref: SecretRef | str, reason: str) -> None:
        self.reference = ref if isinstance(ref, str) else describe(ref)
        self.reason = reason
        super().__init__(f"secret {self.reference} {reason}")


class SecretRefused(SecretUnavailable):
    """A reference the node's rules do not let this tenant use: retrying cannot help, the
    service must be registered again (or the operator must change the settings)."""

    def __init__(self, ref: SecretRef | str, reason: str) -> None:
        super().__init__(ref, f"is refused: {reason}")


def describe(ref: SecretRef) -> str:
    return f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}"


def literal_credential_reason(name: str) -> str:
    return f"header {name!r} carries a credential and may not be a plain string: {_REFERENCE_HINT}"


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    """What the secret references of each tenant may reach on this node.

    The default refuses every reference: whoever builds a transport or a registry says which
    tenants may read environment variables and where the tenants' files are.
    """

    env_tenants: frozenset[str] | None = frozenset()
    """Tenants whose references may name environment variables; None: every tenant."""
    secrets_dir: str | None = None
    """An absolute directory holding one directory per tenant; None: no file references."""

    @classmethod
    def of(cls, env_tenants: Iterable[str], secrets_dir: str | Path | None = None) -> SecretPolicy:
        """``env_tenants`` may hold ``*``: every tenant."""
        tenants = frozenset(env_tenants)
        return cls(
            env_tenants=None if "*" in tenants else tenants,
            secrets_dir=None if secrets_dir is None else os.path.abspath(secrets_dir),
        )

    def env_refusal(self, tenant_id: str, name: str) -> str | None:
        """Why ``tenant_id`` may not read variable ``name``; None if it may."""
        if not name.startswith(SECRET_ENV_PREFIX) or name == SECRET_ENV_PREFIX:
            return (
                f"environment references must name a variable starting with "
                f"{SECRET_ENV_PREFIX} (the node's own settings are never reachable)"
            )
        if self.env_tenants is not None and tenant_id not in self.env_tenants:
            return (
                f"environment references are not enabled for tenant {tenant_id!r} "
                "(SECRET_ENV_TENANTS): environment variables are shared by every tenant of "
                "the node; use a file reference"
            )
        return None

    def locate(self, tenant_id: str, path: str) -> Path:
        """The file ``path`` names for ``tenant_id``, with symbolic links resolved; raises
        ``SecretRefused`` (naming ``file:path``) unless it lies in the tenant's directory."""
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from JSON: no file name, no message
            shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
            raise SecretRefused(f"file:{shown}", "is not a file path") from None
        pure = PurePosixPath(path)
        if "\x00" in path or not pure.parts:
            raise SecretRefused(f"file:{path}", "is not a file path")
        if pure.is_absolute():
            raise SecretRefused(
                f"file:{path}",
                "must be a path relative to the tenant's secrets directory "
                "(SECRETS_DIR/<tenant>/), not an absolute path",
            )
        if ".." in pure.parts:
            raise SecretRefused(f"file:{path}", "may not contain '..'")
        if self.secrets_dir is None:
            raise SecretRefused(
                f"file:{path}",
                "file references are disabled on this node: the operator must set SECRETS_DIR "
                "to a directory holding one directory per tenant",
            )
        if not _DIRECTORY_NAME.fullmatch(tenant_id):
            raise SecretRefused(
                f"file:{path}", f"tenant id {tenant_id!r} cannot name a secrets directory"
            )
        tenant_dir = os.path.join(self.secrets_dir, tenant_id)
        # Symbolic links resolved (as far as they exist: a secret may be mounted later), so
        # a link cannot lead out. Only the operator writes in SECRETS_DIR, so the links cannot
        # change between this check and the read by a tenant's doing; the read opens the
        # resolved path anyway.
        root = os.path.realpath(tenant_dir)
        target = os.path.realpath(os.path.join(tenant_dir, path))
        if not target.startswith(root.rstrip(os.sep) + os.sep):
            raise SecretRefused(
                f"file:{path}", "leads out of the tenant's secrets directory (a symbolic link?)"
            )
        return Path(target)

    def problems(self, tenant_id: str, service: ParticipantService) -> list[str]:
        """What in ``service`` this tenant may not use, one message per field, naming the
        field and the reference, never a value (a literal credential is not quoted)."""
        found: list[str] = []
        for name, value in service.headers.items():
            if isinstance(value, SecretHeader):
                reason = self._refusal(tenant_id, value.secret)
                if reason is not None:
                    source = "env" if value.secret.env is not None else "file"
                    found.append(f"headers.{name}.secret.{source}: {reason}")
            elif is_credential_header(name):
                found.append(f"headers.{name}: {literal_credential_reason(name)}")
        tls = service.tls
        for field, path in (
            ("ca_file", tls.ca_file),
            ("client_cert", tls.client_cert),
            ("client_key", tls.client_key),
        ):
            if path is not None:
                try:
                    self.locate(tenant_id, path)
                except SecretRefused as refused:
                    found.append(f"tls.{field}: {refused.reference} {refused.reason}")
        return found

    def _refusal(self, tenant_id: str, ref: SecretRef) -> str | None:
        if ref.env is not None:
            reason = self.env_refusal(tenant_id, ref.env)
            return None if reason is None else f"env:{ref.env} is refused: {reason}"
        assert ref.file is not None
        try:
            self.locate(tenant_id, ref.file)
        except SecretRefused as refused:
            return f"{refused.reference} {refused.reason}"
        return None


def resolve_secret(
    ref: SecretRef, environ: Mapping[str, str], *, tenant_id: str, policy: SecretPolicy
) -> str:
    """The secret's value for ``tenant_id``, if ``policy`` lets it reach the reference (else
    ``SecretRefused``); a file's single trailing newline is dropped (``echo`` adds one)."""
    if ref.env is not None:
        reason = policy.env_refusal(tenant_id, ref.env)
        if reason is not None:
            raise SecretRefused(ref, reason)
        value = _from_env(ref, ref.env, environ)
    else:
        assert ref.file is not None
        value = _from_file(ref, policy.locate(tenant_id, ref.file))
    if not value:
        raise SecretUnavailable(ref, "is empty")
    if any(char in _FORBIDDEN for char in value):
        raise SecretUnavailable(ref, "contains a line break or NUL, invalid in a header")
    if not value.isascii():
        raise SecretUnavailable(ref, "is not ASCII, invalid in a header")
    return value


def _from_env(ref: SecretRef, name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name)
    if value is None:
        raise SecretUnavailable(ref, "is not set")
    return value


def _from_file(ref: SecretRef, path: Path) -> str:
    try:
        # Secret files are tiny and local (tmpfs mounts): a thread hop would cost more.
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as error:
        raise SecretUnavailable(ref, f"cannot be read ({error.strerror or 'I/O error'})") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretUnavailable(ref, f"is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretUnavailable(ref, "is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_WORDS",
    "MAX_SECRET_BYTES",
    "SECRET_ENV_PREFIX",
    "SecretPolicy",
    "SecretRefused",
    "SecretUnavailable",
    "describe",
    "is_credential_header",
    "literal_credential_reason",
    "resolve_secret",
]
