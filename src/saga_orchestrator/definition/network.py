"""Which network addresses a participant may be reached at: the pure half of the SSRF wall.

Hosts are judged the way the operating system's resolver would read them, so the legacy forms
that ``inet_aton`` accepts (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) cannot
smuggle a loopback address past a check that only knows dotted quads. The transport repeats the
check on every address a name resolves to, at call time, so DNS cannot rebind past it either.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, or None if it is a name to resolve."""
    text = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if not text or not all(part.isalnum() for part in text.split(".")):
        return None
    try:
        packed = socket.inet_aton(text)  # decimal, hex, octal and short forms, as the OS reads them
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address; false for loopback, private, link-local
    (cloud metadata lives at 169.254.169.254), carrier-grade NAT, multicast, reserved, ...

    IPv6 addresses that carry an IPv4 address (mapped, 6to4, NAT64) are judged by it too, since
    a gateway may deliver them to it; the deprecated IPv4-compatible ``::a.b.c.d`` and
    local-use NAT64 never count as public (``ipaddress`` calls both global)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
        if address in _IPV4_COMPATIBLE or address in _LOCAL_NAT64:
            return False
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_local_name(host: str) -> bool:
    name = host.strip().rstrip(".").lower()
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def private_host_reason(host: str) -> str | None:
    """Why a host may not be called without an explicit opt-in, judged without DNS; None if
    nothing is known against it (a name is checked again once resolved)."""
    if is_local_name(host):
        return f"{host!r} is a loopback name"
    address = parse_ip_literal(host)
    if address is not None and not is_public(address):
        return f"{host!r} is a non-public address ({address})"
    return None


__all__ = ["IPAddress", "is_local_name", "is_public", "parse_ip_literal", "private_host_reason"]
