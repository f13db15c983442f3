"""What to scan: targets parsed from the command line or a file, expanded to addresses, and held to scope.

The scanner is for one's own estate. Addresses outside private, loopback and link-local ranges need an explicit
`--i-own-these-targets`, and ranges larger than a /16 need an explicit `--max-hosts`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from aiperimeter.errors import ConfigError

Scheme = Literal["http", "https"]
DEFAULT_MAX_HOSTS = 65536
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """One thing the user named: where, optionally which port and scheme, and a base path for URL targets."""

    text: str
    host: str  # the name to send in Host (an address or a hostname)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # address literal or CIDR
    port: int | None = None
    scheme: Scheme | None = None
    base: str = ""


@dataclass(frozen=True)
class Endpoint:
    address: str
    host: str
    port: int
    scheme: Scheme | None
    base: str = ""


def parse_target(text: str) -> Target:
    """Parse one target: host, IPv4/IPv6 address, CIDR, host:port, [v6]:port, or http(s)://host[:port][/base]."""
    value = text.strip()
    if not value:
        raise ConfigError("an empty target")
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{text!r}: only http:// and https:// URLs with a host can be scanned")
        if parts.username or parts.password:
            raise ConfigError(f"{text!r}: remove the credentials from the URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"{text!r}: the port is not a number from 0 to 65535") from None
        host = parts.hostname
        return Target(text, host, _network(host), port, parts.scheme, parts.path.rstrip("/"))  # type: ignore[arg-type]
    if value.startswith("["):
        address, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":") or not rest[1:].isdigit():
            raise ConfigError(f"{text!r}: write an IPv6 address with a port as [::1]:11434")
        return Target(text, address, _network(address, required=True), _port(rest[1:], text))
    if "/" in value:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{text!r} is not a CIDR range (as 10.0.0.0/24)") from None
        return Target(text, str(network.network_address), network)
    if value.count(":") == 1:
        host, port_text = value.split(":")
        return Target(text, host, _network(host), _port(port_text, text))
    return Target(text, value, _network(value))


def _port(text: str, target: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{target!r}: the port must be a number from 1 to 65535")
    return int(text)


def _network(host: str, required: bool = False) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(host)
    except ValueError:
        if required:
            raise ConfigError(f"{host!r} is not an IP address") from None
        return None


def read_target_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the target list: {exc}", source=str(path)) from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def parse_ports(spec: str | None, defaults: Iterable[int]) -> list[int]:
    """`--ports 80,8000-8010` replaces the default ports; `--ports +9000` adds to them."""
    if not spec:
        return sorted(set(defaults))
    add = spec.startswith("+")
    chosen: set[int] = set(defaults) if add else set()
    for item in spec.lstrip("+").split(","):
        item = item.strip()
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ConfigError(f"--ports: {item!r} is not a port or a range (as 8000-8010)")
        start, end = int(low), int(high or low)
        if not 1 <= start <= end <= 65535:
            raise ConfigError(f"--ports: {item!r} is outside 1-65535")
        chosen.update(range(start, end + 1))
    return sorted(chosen)


def in_own_scope(address: IPAddress) -> bool:
    return address.is_private or address.is_loopback or address.is_link_local


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass
class Expansion:
    endpoints: list[Endpoint]
    hosts: int
    unresolved: list[str]


def expand(targets: list[Target], ports: list[int], *, own_targets: bool, max_hosts: int | None) -> Expansion:
    """Turn targets into endpoints, refusing what is out of scope or larger than allowed."""
    limit = max_hosts if max_hosts is not None else DEFAULT_MAX_HOSTS
    total = sum(t.network.num_addresses for t in targets if t.network is not None)
    if total > limit:
        hint = "" if max_hosts is not None else " (a /16), add --max-hosts N to scan more"
        raise ConfigError(f"the targets hold {total} addresses, more than the limit of {limit}{hint}")
    endpoints: list[Endpoint] = []
    unresolved: list[str] = []
    hosts: set[str] = set()
    for target in targets:
        addresses = list(_addresses(target))
        if not addresses:
            unresolved.append(target.text)
            continue
        for address in addresses:
            if not own_targets and not in_own_scope(address):
                raise ConfigError(
                    f"{target.text} ({address}) is a public address. aiperimeter scans your own hosts; if you own "
                    "these targets, add --i-own-these-targets"
                )
            hosts.add(str(address))
            host = target.host if target.network is None or target.network.num_addresses == 1 else str(address)
            for port in [target.port] if target.port else ports:
                endpoints.append(Endpoint(str(address), host, port, target.scheme, target.base))
    return Expansion(endpoints, len(hosts), unresolved)


def _addresses(target: Target) -> Iterator[IPAddress]:
    if target.network is not None:
        if target.network.num_addresses <= 2:
            yield from target.network
        else:
            yield from target.network.hosts()
        return
    for address in _resolve(target.host):
        yield ipaddress.ip_address(address)
