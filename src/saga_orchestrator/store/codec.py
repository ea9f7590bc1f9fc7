"""Small value codecs shared by both backends: UTC timestamps and listing cursors."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import semver

from saga_orchestrator.errors import InvalidInput

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; naive datetimes are refused rather than guessed."""
    if value.tzinfo is UTC:  # the engine's clock gives these: nothing to check or convert
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"naive datetime {value.isoformat()} (timestamps must be aware)")
    return value.astimezone(UTC)


def to_micros(value: datetime) -> int:
    """Exact integer microseconds since the epoch (SQLite's timestamp representation)."""
    # Spelled out rather than ``delta // timedelta(microseconds=1)``: a few of these run for
    # every event appended, on the store's thread, holding the GIL the event loop needs.
    delta = utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """A keyset position in the instance listing (created_at desc, instance_id desc)."""

    created_at: datetime
    instance_id: str


def encode_cursor(position: Position) -> str:
    payload = {"c": to_micros(position.created_at), "i": position.instance_id}
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """Parse a cursor from :func:`encode_cursor`; anything else is :class:`InvalidInput`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"invalid cursor {cursor!r}") from exc
    if not isinstance(payload, dict):
        raise InvalidInput(f"invalid cursor {cursor!r}")
    micros, instance_id = payload.get("c"), payload.get("i")
    if type(micros) is not int or not isinstance(instance_id, str):
        raise InvalidInput(f"invalid cursor {cursor!r}")
    try:
        created_at = from_micros(micros)
    except OverflowError as exc:
        raise InvalidInput(f"invalid cursor {cursor!r}") from exc
    return Position(created_at=created_at, instance_id=instance_id)


MAX_PAGE_SIZE = 500


def check_page_size(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")


def semver_columns(version: str) -> tuple[int, int, int, str | None]:
    """(major, minor, patch, prerelease) sort columns of a definition version."""
    parsed = _parse_semver(version)
    return parsed.major, parsed.minor, parsed.patch, parsed.prerelease


def semver_key(version: str) -> semver.Version:
    """Exact semantic-version precedence (numeric prerelease parts compare as numbers)."""
    return _parse_semver(version)


def _parse_semver(version: str) -> semver.Version:
    try:
        return semver.Version.parse(version)
    except ValueError as exc:
        raise InvalidInput(f"definition version {version!r} is not a semantic version") from exc
