"""Completion tokens: the credential a participant presents to finish an attempt by callback.

Like Step Functions task tokens, a token names one attempt (tenant, instance, step, phase,
attempt) and is signed with HMAC-SHA256 under a key every node shares (kept in the store), so
no table of tokens is needed and any node can check a callback. A token stops working when its
attempt is no longer in flight: the engine checks that, not the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from saga_orchestrator.core.events import Phase
from saga_orchestrator.errors import InvalidCompletionToken

KEY_NAME = "completion-token-key"
_SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRef:
    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int


class CompletionTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a completion-token key needs at least 32 bytes")
        self._key = key

    def mint(self, ref: AttemptRef) -> str:
        payload = _SEPARATOR.join(
            (ref.tenant_id, ref.instance_id, ref.node, ref.phase.value, str(ref.attempt))
        ).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def verify(self, token: str) -> AttemptRef:
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload = _unb64(encoded_payload)
            mac = _unb64(encoded_mac)
        except (ValueError, binascii.Error) as error:
            raise InvalidCompletionToken("malformed completion token") from error
        if not hmac.compare_digest(mac, self._sign(payload)):
            raise InvalidCompletionToken("completion token signature does not match")
        try:
            tenant_id, instance_id, node, phase, attempt = payload.decode().split(_SEPARATOR)
            return AttemptRef(
                tenant_id=tenant_id,
                instance_id=instance_id,
                node=node,
                phase=Phase(phase),
                attempt=int(attempt),
            )
        except ValueError as error:  # only reachable with the key: a bug, not an attacker
            raise InvalidCompletionToken("malformed completion token payload") from error

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if len(text) > 4096:
        raise ValueError("token too long")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
