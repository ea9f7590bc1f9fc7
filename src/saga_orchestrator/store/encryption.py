"""Encryption at rest of saga histories and outbox messages, sealed with AES-256-GCM.

Events hold what sagas carry (contexts, step inputs and outputs), so a dump of the database
must not reveal them. With keys configured, the store seals each event as it is written and
opens it as it is read; everything above the store sees plain events.

- The sealed form is a JSON string, ``"enc:v1:<key id>:<base64 nonce + ciphertext>"``, so the
  column stays valid JSON (PostgreSQL's ``jsonb``).
- The key id travels with each record: after a rotation (a new key first in the list), new
  events use the new key and old ones still open with theirs while they are listed.
- The tenant, the instance and the sequence number are authenticated data: a sealed event
  copied to another place in the history, or another tenant's, does not open.
- Outbox messages (step commands carry step inputs) are sealed too, with the same keys, as
  the store writes them, and opened as the relay claims them: the body column holds the nonce
  and ciphertext, and the row's ``sealed_with`` names the key.
  The tenant, instance, message id, exchange and routing key are authenticated, so a sealed
  body copied to another message, or rerouted to another queue, does not open. Publishing
  erases the body anyway (see the stores' ``mark_outbox_published``).
- The type of each event, the instances' read model (status, names, timestamps) and the
  outbox's addressing (ids, exchange, routing key, headers) are not encrypted: they carry no
  business data.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from saga_orchestrator.errors import ConfigurationError, StoreError
from saga_orchestrator.store.protocol import OutboxMessage, OutboxRow

PREFIX: Final = b'"enc:v1:'
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class EventCipher:
    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ConfigurationError(f"encryption key {active!r} is not among the keys")
        for key_id, key in keys.items():
            if not _KEY_ID.match(key_id):
                raise ConfigurationError(f"encryption key id {key_id!r}: use [A-Za-z0-9_.-]")
            if len(key) != 32:
                raise ConfigurationError(f"encryption key {key_id!r} must be 32 bytes (AES-256)")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active = active

    @staticmethod
    def parse(text: str) -> EventCipher:
        """``ENCRYPTION_KEYS``: ``id=base64key,id=base64key``; the first key seals."""
        pairs: list[tuple[str, bytes]] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            key_id, _, encoded = item.partition("=")
            try:
                pairs.append((key_id.strip(), base64.b64decode(encoded.strip(), validate=True)))
            except (binascii.Error, ValueError):
                raise ConfigurationError(
                    f"ENCRYPTION_KEYS: key {key_id.strip()!r} is not base64"
                ) from None
        if not pairs:
            raise ConfigurationError("ENCRYPTION_KEYS: no key (id=base64key,...)")
        return EventCipher(dict(pairs), pairs[0][0])

    def seal(self, tenant_id: str, instance_id: str, seq: int, data: bytes) -> bytes:
        nonce = os.urandom(12)
        sealed = self._keys[self.active].encrypt(nonce, data, _aad(tenant_id, instance_id, seq))
        payload = base64.b64encode(nonce + sealed).decode()
        return f'"enc:v1:{self.active}:{payload}"'.encode()

    def open(self, tenant_id: str, instance_id: str, seq: int, data: bytes) -> bytes:
        if not data.startswith(PREFIX):
            return data  # written before encryption was turned on
        try:
            key_id, payload = data[len(PREFIX) : -1].decode().split(":", 1)
            raw = base64.b64decode(payload)
        except (ValueError, binascii.Error) as error:
            raise StoreError(f"event {instance_id}#{seq} is not a sealed event") from error
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise StoreError(
                f"event {instance_id}#{seq} is sealed with key {key_id!r}, which is not configured"
            )
        try:
            return cipher.decrypt(raw[:12], raw[12:], _aad(tenant_id, instance_id, seq))
        except InvalidTag:
            raise StoreError(
                f"event {instance_id}#{seq} does not open: altered, or moved from elsewhere"
            ) from None

    def seal_message(self, message: OutboxMessage) -> tuple[str, bytes]:
        """An outbox message's body, sealed with the active key: (key id, nonce + ciphertext).

        Raw bytes, not the events' base64 JSON string: the body column is binary, and the key
        id goes to a column of its own, so a plain body can never be mistaken for a sealed
        one (a step input may well start with ``"enc:v1:``)."""
        nonce = os.urandom(12)
        sealed = self._keys[self.active].encrypt(nonce, message.body, _message_aad(message))
        return self.active, nonce + sealed

    def open_message(self, key_id: str, row: OutboxRow) -> bytes:
        """The body of a claimed row sealed with ``key_id``."""
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise StoreError(
                f"outbox message {row.message_id} is sealed with key {key_id!r}, which is not"
                " configured"
            )
        try:
            return cipher.decrypt(row.body[:12], row.body[12:], _message_aad(row))
        except InvalidTag:
            raise StoreError(
                f"outbox message {row.message_id} does not open: altered, or moved"
            ) from None


def _aad(tenant_id: str, instance_id: str, seq: int) -> bytes:
    return f"{tenant_id}\x1f{instance_id}\x1f{seq}".encode()


def _message_aad(message: OutboxMessage | OutboxRow) -> bytes:
    # The leading "outbox" keeps these apart from the events' (tenant, instance, seq): a
    # ciphertext taken from one kind of record never opens as the other.
    fields = (
        "outbox",
        message.tenant_id,
        message.instance_id,
        message.message_id,
        message.exchange,
        message.routing_key,
    )
    return "\x1f".join(fields).encode()


def open_outbox_row(
    row: OutboxRow, sealed_with: str | None, cipher: EventCipher | None
) -> OutboxRow:
    """A claimed row as stored (``sealed_with``: the key id of a sealed body, None for a
    plain one), with its body opened.

    A body that does not open flags the row instead of raising: one message sealed with a
    key that was dropped too early must not stop the relay from publishing the others."""
    if sealed_with is None:
        return row  # written before encryption was turned on, or by a node without keys
    if cipher is None:
        problem = (
            f"outbox message {row.message_id} is sealed with key {sealed_with!r}, but no"
            " encryption key is configured"
        )
        return dataclasses.replace(row, body=b"", unreadable=problem)
    try:
        body = cipher.open_message(sealed_with, row)
    except StoreError as error:
        return dataclasses.replace(row, body=b"", unreadable=str(error))
    return dataclasses.replace(row, body=body)


def generate_key() -> str:
    """A new base64 AES-256 key for ``ENCRYPTION_KEYS``."""
    return base64.b64encode(os.urandom(32)).decode()
