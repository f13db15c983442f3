"""The pooled client that talks to the model server. The only place the gateway opens upstream connections."""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from aiperimeter.config import GatewaySettings
from aiperimeter.sensitive import Secret

# Hop-by-hop headers (RFC 9110 7.6.1) and everything that would carry the client's credential, spoof the client's
# identity, or make the upstream read the request differently than the gateway did.
DROP_REQUEST = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Expect",
        "Authorization",
        "x-api-key",
        "Cookie",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Real-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "Accept-Encoding",
    )
)
DROP_RESPONSE = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Date",
        "Content-Length",
        "Set-Cookie",
    )
)


def upstream_headers(incoming: CIMultiDictProxy[str], credential: tuple[str, str] | None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    named_in_connection = {
        token.strip().lower() for value in incoming.getall("Connection", ()) for token in value.split(",")
    }
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered not in DROP_REQUEST and lowered not in named_in_connection:
            headers.add(name, value)
    # Ask for plain bytes: usage is read from the response, and compression on loopback buys nothing.
    headers["Accept-Encoding"] = "identity"
    if credential is not None:
        headers[credential[0]] = credential[1]
    return headers


def credential_header(kind: str, key: Secret | None) -> tuple[str, str] | None:
    if key is None:
        return None
    if kind == "anthropic":
        return ("x-api-key", key.reveal())
    return ("Authorization", f"Bearer {key.reveal()}")


def new_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # the gateway's own limits bound concurrency; the pool must not queue silently
        keepalive_timeout=30,
        ttl_dns_cache=60,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.timeouts.connect),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )
