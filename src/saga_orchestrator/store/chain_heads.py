"""What a node last knew of each tenant's audit chain head: a hint that lets the PostgreSQL
store write an audited batch in one round trip (migration 0010) instead of locking the heads
first, as every API call that changes something would otherwise.

A hint, never trusted: the write moves a head only from the exact ``(seq, hash)`` its records
were chained to, so a head moved meanwhile (by another node, or by an audit-only write on this
one) rolls the write back, and the batch takes the locked path, which reads the head under
its lock and teaches it here again. A tenant whose hint keeps missing (two nodes extending its
chain in turn) is not offered for a while, twice as long after each miss in a row, so that
misses cost at most a small share of its batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Head = tuple[int, str]
"""A chain's newest record: its sequence and its hash."""

_MAX_BACKOFF = 1024
"""The most batches a tenant sits out after misses in a row."""


class ChainHeads:
    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._heads: dict[str, Head] = {}
        self._misses: dict[str, int] = {}
        self._sit_out: dict[str, int] = {}

    def known(self, tenant_ids: Iterable[str]) -> dict[str, Head] | None:
        """The heads of all of ``tenant_ids``, or None when one is unknown or sitting out
        after a miss (which counts this batch towards its time out)."""
        heads: dict[str, Head] = {}
        for tenant_id in tenant_ids:
            head = self._heads.get(tenant_id)
            if head is None:
                return None
            heads[tenant_id] = head
        sitting_out = False
        for tenant_id in heads:
            waiting = self._sit_out.get(tenant_id)
            if waiting:
                self._sit_out[tenant_id] = waiting - 1
                sitting_out = True
        return None if sitting_out else heads

    def learned(self, heads: Mapping[str, Head]) -> None:
        """Heads a committed write left (on either path)."""
        for tenant_id, head in heads.items():
            if tenant_id not in self._heads and len(self._heads) >= self._capacity:
                # Forget the tenant first learned longest ago: a hint costs one locked write to
                # relearn, so a plain bound is enough.
                forgotten = next(iter(self._heads))
                self._forget(forgotten)
            self._heads[tenant_id] = head

    def confirmed(self, heads: Mapping[str, Head]) -> None:
        """A write from the hints committed: their tenants' misses are over."""
        self.learned(heads)
        for tenant_id in heads:
            self._misses.pop(tenant_id, None)
            self._sit_out.pop(tenant_id, None)

    def missed(self, tenant_ids: Iterable[str]) -> None:
        """A write from the hints found some head moved (which one the database does not
        say): forget them all and sit each out for longer than the last time."""
        for tenant_id in tenant_ids:
            self._heads.pop(tenant_id, None)
            misses = self._misses.get(tenant_id, 0) + 1
            self._misses[tenant_id] = misses
            self._sit_out[tenant_id] = min(1 << misses, _MAX_BACKOFF)

    def _forget(self, tenant_id: str) -> None:
        self._heads.pop(tenant_id, None)
        self._misses.pop(tenant_id, None)
        self._sit_out.pop(tenant_id, None)
