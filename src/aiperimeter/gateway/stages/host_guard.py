"""Refuse requests whose Host or Origin is not ours (DNS rebinding), and parse the raw target.

A loopback bind does not stop a browser: a page on an attacker's domain that resolves to 127.0.0.1 sends
`Host: attacker.example`. Only hosts on the allowlist are served; a browser Origin must be one of them too, or one
of the configured CORS origins.
"""

from __future__ import annotations

from typing import ClassVar

from aiperimeter.errors import BadRequest, Forbidden
from aiperimeter.gateway.pipeline import Exchange, Stage
from aiperimeter.gateway.target import split_target


def host_name(value: str) -> str | None:
    """The lowercase host of a Host header value (`name[:port]` or `[v6][:port]`), or None when malformed."""
    value = value.lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
        if not sep or (rest and not rest.startswith(":")):
            return None
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def origin_host(origin: str) -> str | None:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or "/" in rest or "@" in rest:
        return None
    return host_name(rest)


class HostGuard(Stage):
    name: ClassVar[str] = "host_guard"

    def __init__(self, allowed_hosts: frozenset[str], cors_origins: frozenset[str]) -> None:
        self.any_host = "*" in allowed_hosts
        self.exact = frozenset(h.lower() for h in allowed_hosts if not h.startswith("."))
        self.suffixes = tuple(h.lower() for h in allowed_hosts if h.startswith("."))
        self.cors_origins = cors_origins

    def _allowed(self, name: str | None) -> bool:
        if name is None:
            return False
        return self.any_host or name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def on_request(self, ex: Exchange) -> None:
        headers = ex.request.headers
        hosts = headers.getall("Host", ())
        if len(hosts) != 1:
            raise BadRequest("bad_host", "Send exactly one Host header.")
        if not self._allowed(host_name(hosts[0])):
            raise Forbidden("host_not_allowed", "This Host is not served by the gateway (see allowed_hosts).")
        origins = headers.getall("Origin", ())
        if origins:
            if len(origins) != 1:
                raise BadRequest("bad_origin", "Send at most one Origin header.")
            if origins[0] in self.cors_origins:
                ex.cors_origin = origins[0]
            elif not self._allowed(origin_host(origins[0])):
                raise Forbidden("origin_not_allowed", "Requests from this Origin are not allowed (see cors_origins).")
        ex.path, ex.query = split_target(ex.request.raw_path, hosts[0])
