"""One request as the watch part sees it: the fields of its audit record that describe behaviour, never content."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_TOOLS = 64  # names per request: as many as the audit record keeps


@dataclass(slots=True)
class Observation:
    time: float  # epoch seconds
    request_id: str
    key: str | None  # the key's public id, or a JWT subject's id (jwt_...); None when no credential was accepted
    client: str  # the peer address
    method: str = ""
    path: str = ""
    route: str | None = None  # the route class (chat, embeddings, models, ...) when the route was recognised
    model: str | None = None
    status: int = 200
    deny: str | None = None  # the deny code, when the gateway refused the request
    tokens_in: int = 0
    tokens_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tools: tuple[str, ...] = ()  # tools declared, forced or called (names only)
    canary: bool = False  # a canary key was presented
    user_agent: str | None = None  # kept for canary hits only
    stream: bool = False
    total_ms: float = 0.0

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Observation | None:
        """The observation in one audit record; None for records that are not requests (key lifecycle events) and
        for records too malformed to trust. The audit file is ours, but it is read as hostile input all the same."""
        try:
            if "event" in record or "request_id" not in record:
                return None
            usage = record.get("usage") or {}
            tools: tuple[str, ...] = ()
            names = record.get("tools_declared")
            decisions = record.get("tools")
            if names or decisions:
                seen = list(names or ())
                seen.extend(d.get("tool") for d in (decisions or ()) if isinstance(d, Mapping))
                tools = tuple(sorted({_text(n, 128) or "" for n in seen[:MAX_TOOLS] if n}))
            at = float(record["time"])
            if not math.isfinite(at) or at < 0:
                return None
            return cls(
                time=at,
                request_id=_text(record["request_id"], 64) or "",
                key=_text(record.get("key_id")),
                client=_text(record.get("client") or "", 64) or "",
                method=_text(record.get("method") or "", 16) or "",
                path=_text(record.get("path") or "") or "",
                route=_text(record.get("route")),
                model=_text(record.get("model")),
                status=int(record.get("status") or 0),
                deny=_text(record.get("deny")),
                tokens_in=max(0, int(usage.get("prompt_tokens") or 0)),
                tokens_out=max(0, int(usage.get("completion_tokens") or 0)),
                bytes_in=max(0, int(record.get("bytes_in") or 0)),
                bytes_out=max(0, int(record.get("bytes_out") or 0)),
                tools=tools,
                canary=record.get("canary") is True,
                user_agent=_text(record.get("user_agent")),
                stream=record.get("stream") is True,
                total_ms=_finite(record.get("total_ms")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _finite(value: object) -> float:
    number = float(value or 0.0)  # type: ignore[arg-type]
    return number if math.isfinite(number) and number >= 0 else 0.0


def _text(value: object, limit: int = 256) -> str | None:
    """A field as text fit for a log line, an alert and a chat message: at most `limit` characters, with anything
    unprintable (newlines among them: a forged log line) replaced. Model and tool names are chosen by clients."""
    if value is None:
        return None
    if type(value) is str and len(value) <= limit and value.isprintable():
        return value  # the common case, at the cost of two checks
    text = str(value)[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in text)


def network_of(address: str) -> str:
    """The client network an address belongs to: its /24 (IPv4) or /48 (IPv6); the address itself if unparsable.
    Keys are used from networks, not addresses: DHCP and NAT pools move a client within its /24."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
