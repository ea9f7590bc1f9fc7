"""Secret header values, resolved at call time from an environment variable or a file.

Resolving late means a rotated secret (a re-mounted Kubernetes secret, a new variable after a
restart) is used by the next call without re-registering the service. Errors name the
*reference* (``env:NAME``, ``file:/path``), never a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from saga_orchestrator.definition.participants import SecretRef
from saga_orchestrator.errors import ConfigurationError

MAX_SECRET_BYTES = 16_384
_FORBIDDEN = frozenset("\r\n\x00")


class SecretUnavailable(ConfigurationError):
    """A secret reference cannot be resolved (missing, unreadable, empty or malformed)."""

    def __init__(self, ref: SecretRef, reason: str) -> None:
        self.reference = describe(ref)
        super().__init__(f"secret {self.reference} {reason}")


def describe(ref: SecretRef) -> str:
    return f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}"


def resolve_secret(ref: SecretRef, environ: Mapping[str, str]) -> str:
    """The secret's value; a file's single trailing newline is dropped (``echo`` adds one)."""
    value = _from_env(ref, ref.env, environ) if ref.env is not None else _from_file(ref)
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


def _from_file(ref: SecretRef) -> str:
    assert ref.file is not None
    try:
        # Secret files are tiny and local (tmpfs mounts): a thread hop would cost more.
        with Path(ref.file).open("rb") as handle:
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


__all__ = ["MAX_SECRET_BYTES", "SecretUnavailable", "describe", "resolve_secret"]
