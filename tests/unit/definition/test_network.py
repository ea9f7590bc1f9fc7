"""The pure half of the SSRF wall: which hosts and addresses count as public."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga_orchestrator.definition.network import (
    is_local_name,
    is_public,
    parse_ip_literal,
    private_host_reason,
)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.1", "0x7f.1", "127.0.0.1."],
)
def test_legacy_ipv4_forms_read_as_the_os_reads_them(host: str) -> None:
    assert parse_ip_literal(host) == LOOPBACK


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("93.184.216.34", "93.184.216.34"),
    ],
)
def test_ip_literals_parse(host: str, address: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "api.example.com", "deadbeef", "1.2.3.4.5", "", "a b", "xn--nxa.gr"]
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "169.254.169.254",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "233.252.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::8.8.8.8",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2001:db8::1",
        "2001::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_and_its_mapped_ipv6_form_agree(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert is_public(mapped) == is_public(address)


@given(st.ip_addresses(v=4))
def test_every_dotted_quad_parses_to_itself(address: ipaddress.IPv4Address) -> None:
    assert parse_ip_literal(str(address)) == address
    assert parse_ip_literal(str(int(address))) == address
    assert parse_ip_literal(hex(int(address))) == address


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.", "foo.localhost", "localhost.localdomain"]
)
def test_loopback_names(host: str) -> None:
    assert is_local_name(host)
    assert private_host_reason(host) == f"{host!r} is a loopback name"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("169.254.169.254", "169.254.169.254"),
        ("10.1.2.3", "10.1.2.3"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_private_literals_have_a_reason(host: str, address: str) -> None:
    assert private_host_reason(host) == f"{host!r} is a non-public address ({address})"


@pytest.mark.parametrize(
    "host", ["api.example.com", "localhost.example.com", "93.184.216.34", "[2606:4700::1111]"]
)
def test_public_hosts_and_names_have_no_reason(host: str) -> None:
    assert private_host_reason(host) is None
