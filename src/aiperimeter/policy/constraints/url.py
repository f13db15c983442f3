"""URL arguments, judged on the host, scheme and port that WHATWG URL parsing (ada) gives.

ada normalises what attackers use to disguise a host: `0x7f.1`, `2130706433` and `127.1` are 127.0.0.1, IDNA and
percent-encoding are decoded, `HTTPS://GOOD.COM` is `https://good.com`. The raw text is also refused where other URL
parsers read it differently (a backslash or an `@` before the path, whitespace, control characters), so that the
tool's HTTP client cannot be pointed at a host other than the one judged here; the tool should still fetch the
normalised URL (`ada_url.URL(value).href`).

A public host name can resolve to a private address when the tool fetches it (DNS rebinding, wildcard DNS): this
constraint judges the URL, not the address; the tool must resolve once, check that address, and connect to it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import ada_url
from pydantic import Field, PrivateAttr, StrictInt, field_validator

from aiperimeter.policy.constraints.base import Constraint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_SPECIAL = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
# Names that reach this machine or its network: reserved for local use, or public names known to resolve to loopback.
_PRIVATE_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "localtest.me", "lvh.me", "vcap.me"}
)
_PRIVATE_SUFFIXES = (
    ".localhost", ".local", ".internal", ".home.arpa", ".localdomain", ".lan", ".intranet", ".corp", ".home",
    ".private", ".localtest.me", ".lvh.me", ".vcap.me", ".nip.io", ".sslip.io", ".xip.io",
)  # fmt: skip
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")
_AUTHORITY_END = re.compile(r"[/?#]")


def _shown(text: str) -> str:
    """A name as it may appear in a reason: printable and at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, IPv4-compatible, NAT64 or 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _COMPATIBLE or any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_private_ip(ip: IPAddress) -> bool:
    """Not a public unicast address: private, loopback, link-local (incl. 169.254.169.254), unique-local, CGNAT,
    multicast, unspecified, reserved, site-local, or an IPv6 form that carries one of those IPv4 addresses."""
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    ):
        return True
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return embedded is not None and is_private_ip(embedded)


def is_private_name(host: str) -> bool:
    """A name for this machine or a local network: localhost, .local, .internal, a single label (`metadata`,
    resolved through the search domains) and the like."""
    return host in _PRIVATE_NAMES or host.endswith(_PRIVATE_SUFFIXES) or "." not in host


class URLConstraint(Constraint):
    """A URL whose scheme, host and port are allowed, and which points at no private address or name.

    `hosts` entries are names (`*.example.com`: any subdomain, not the apex) or IP addresses; an IP entry takes
    effect only with `allow_ip_literals`, and a private name or address only with `allow_private`.
    """

    schemes: list[str] = Field(default_factory=lambda: ["https"])
    hosts: list[str] | None = None
    ports: list[StrictInt] | None = None
    allow_private: bool = False
    allow_ip_literals: bool = False
    allow_userinfo: bool = False

    _names: frozenset[str] = PrivateAttr(default=frozenset())
    _suffixes: tuple[str, ...] = PrivateAttr(default=())
    _ips: frozenset[IPAddress] = PrivateAttr(default=frozenset())

    @field_validator("schemes")
    @classmethod
    def _valid_schemes(cls, value: list[str]) -> list[str]:
        schemes = [s.strip().lower().removesuffix(":") for s in value]
        for scheme in schemes:
            if not _SCHEME.fullmatch(scheme):
                raise ValueError(f"{scheme[:64]!r} is not a URL scheme (e.g. 'https')")
        return schemes

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        hosts = []
        for entry in value:
            hosts.append(_normalise_host_entry(entry))
        return hosts

    @field_validator("ports")
    @classmethod
    def _valid_ports(cls, value: list[int] | None) -> list[int] | None:
        for port in value or ():
            if isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"port {port!r} is not between 1 and 65535")
        return value

    def model_post_init(self, context: Any, /) -> None:
        names, suffixes, ips = set(), [], set()
        for host in self.hosts or ():
            if (ip := _ip(host)) is not None:
                ips.add(ip)
            elif host.startswith("*."):
                suffixes.append(host[1:])
            else:
                names.add(host)
        self._names, self._suffixes, self._ips = frozenset(names), tuple(suffixes), frozenset(ips)

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "URL must be a string"
        try:
            return self._judge(value)
        except Exception:
            return "invalid URL"

    def _judge(self, raw: str) -> str | None:
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw):
            return "URL contains whitespace or control characters"
        try:
            url = ada_url.URL(raw)
        except ValueError:
            return "invalid URL"
        scheme = url.protocol.removesuffix(":")
        if scheme not in self.schemes:
            return f"scheme '{_shown(scheme)}' is not allowed"
        # What other parsers may take for the authority: everything up to the first / ? or #, where a backslash is
        # an ordinary character to some and a path separator to WHATWG.
        authority = _AUTHORITY_END.split(raw[len(scheme) + 1 :].lstrip("/\\"), maxsplit=1)[0]
        if (url.username or url.password or "@" in authority) and not self.allow_userinfo:
            return "URL has user info (user@host)"
        if "\\" in authority:
            return "backslash in the URL's host part is not allowed"
        host = url.hostname.lower()
        if not host:
            return "URL has no host"
        ip = _ip(host)
        if ip is None and scheme not in _SPECIAL:
            ip = _opaque_host_ip(host)
        if ip is not None:
            if not self.allow_ip_literals:
                return "IP address hosts are not allowed"
            if not self.allow_private and is_private_ip(ip):
                return f"host '{_shown(str(ip))}' is a private address"
            if self.hosts is not None and ip not in self._ips:
                return f"host '{_shown(str(ip))}' is not allowed"
        else:
            name = host.removesuffix(".")
            if not self.allow_private and is_private_name(name):
                return f"host '{_shown(name)}' is private"
            if self.hosts is not None and name not in self._names and not name.endswith(self._suffixes):
                return f"host '{_shown(name)}' is not allowed"
        if self.ports is not None:
            port = int(url.port) if url.port else _DEFAULT_PORTS.get(scheme)
            if port is None:
                return "URL has no port and its scheme has no default"
            if port not in self.ports:
                return f"port {port} is not allowed"
        return None


def _opaque_host_ip(host: str) -> IPAddress | None:
    """The address a host of a non-special scheme (kept as written by WHATWG) denotes when read as an http host:
    clients of such schemes often resolve `0x7f.1` or `%31%32%37.0.0.1` the way inet_aton does."""
    try:
        url = ada_url.URL(f"http://{host}/")
    except ValueError:
        return None
    return _ip(url.hostname) if url.host_type != ada_url.HostType.DEFAULT else None


def _normalise_host_entry(entry: str) -> str:
    text = entry.strip().lower()
    if (ip := _ip(text)) is not None:
        return str(ip)
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not name or "*" in name or any(c in name for c in "/:@?#[]\\ ") or ".." in name:
        raise ValueError(f"host {entry[:64]!r} must be a host name, '*.' and a host name, or an IP address")
    try:
        ascii_name = ada_url.idna_to_ascii(name)
    except Exception:
        ascii_name = b""
    if not ascii_name:
        raise ValueError(f"host {entry[:64]!r} is not a valid host name")
    decoded = ascii_name.decode() if isinstance(ascii_name, bytes) else str(ascii_name)
    return ("*." if wildcard else "") + decoded.removesuffix(".")
