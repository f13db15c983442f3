from __future__ import annotations

import ipaddress

import pytest

from aiperimeter.errors import ConfigError
from aiperimeter.scan.targets import expand, parse_ports, parse_target


@pytest.mark.parametrize(
    ("text", "host", "port", "scheme", "base", "addresses"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", None, None, "", 1, id="ipv4"),
        pytest.param("::1", "::1", None, None, "", 1, id="ipv6"),
        pytest.param("127.0.0.1:11434", "127.0.0.1", 11434, None, "", 1, id="host-port"),
        pytest.param("[::1]:8000", "::1", 8000, None, "", 1, id="ipv6-port"),
        pytest.param("10.1.2.0/30", "10.1.2.0", None, None, "", 4, id="cidr"),
        pytest.param("https://127.0.0.1:8443/ollama/", "127.0.0.1", 8443, "https", "/ollama", 1, id="url"),
        pytest.param("http://127.0.0.1", "127.0.0.1", 80, "http", "", 1, id="url-default-port"),
        pytest.param("localhost", "localhost", None, None, "", None, id="hostname"),
    ],
)
def test_parse_target(
    text: str, host: str, port: int | None, scheme: str | None, base: str, addresses: int | None
) -> None:
    target = parse_target(text)
    assert (target.host, target.port, target.scheme, target.base) == (host, port, scheme, base)
    assert (target.network.num_addresses if target.network else None) == addresses


@pytest.mark.parametrize(
    "text", ["", "ftp://x", "http://u:p@h", "h:0", "h:70000", "[::1]", "[::1]:x", "10.0.0.0/33", "http://h:99999"]
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


def test_ports() -> None:
    assert parse_ports(None, [80, 11434]) == [80, 11434]
    assert parse_ports("8000,9000-9002", [80]) == [8000, 9000, 9001, 9002]
    assert parse_ports("+9000", [80]) == [80, 9000]
    for bad in ("0", "80-70", "x", "1-70000", "80,"):
        with pytest.raises(ConfigError):
            parse_ports(bad, [80])


def test_scope_guard() -> None:
    public = [parse_target("8.8.8.8")]
    with pytest.raises(ConfigError, match="--i-own-these-targets"):
        expand(public, [80], own_targets=False, max_hosts=None)
    assert len(expand(public, [80, 443], own_targets=True, max_hosts=None).endpoints) == 2
    for own in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "fd00::1"):
        assert expand([parse_target(own)], [80], own_targets=False, max_hosts=None).hosts == 1


def test_range_limit() -> None:
    big = [parse_target("10.0.0.0/15")]
    with pytest.raises(ConfigError, match="--max-hosts"):
        expand(big, [80], own_targets=False, max_hosts=None)
    assert expand([parse_target("10.0.0.0/16")], [80], own_targets=False, max_hosts=None).hosts == 65534
    with pytest.raises(ConfigError, match="limit of 10"):
        expand([parse_target("10.0.0.0/28")], [80], own_targets=False, max_hosts=10)


def test_expansion_uses_each_address_as_host_for_ranges() -> None:
    expansion = expand(
        [parse_target("127.0.0.0/30"), parse_target("127.0.0.9:8000")], [1, 2], own_targets=False, max_hosts=None
    )
    assert [(e.address, e.port) for e in expansion.endpoints] == [
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        ("127.0.0.2", 1),
        ("127.0.0.2", 2),
        ("127.0.0.9", 8000),
    ]
    assert all(ipaddress.ip_address(e.host) for e in expansion.endpoints)
