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
        # hop-by-hop and framing: the gateway frames the request itself
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect",
        # the client's credentials
        "Authorization", "x-api-key", "Cookie",
        # claims about the client that only a proxy in front of us may make
        "Forwarded", "X-Real-IP", "X-Original-URL", "X-Rewrite-URL", "X-Original-Host", "X-Original-Forwarded-For",
        "X-Host", "X-HTTP-Host-Override",
        "True-Client-IP", "X-Client-IP", "X-Cluster-Client-IP", "Client-IP", "CF-Connecting-IP", "Fastly-Client-IP",
        # method overrides: the upstream must run the method that was authorised
        "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
        # replaced: the gateway reads responses as plain bytes
        "Accept-Encoding",
    )
)  # fmt: skip
# Every X-Forwarded-* header: the client may not claim what a proxy in front of us would say.
DROP_PREFIX = "x-forwarded-"
# Headers that pick whose account an upstream bills: only when the client, not the gateway, holds the credential.
ACCOUNT_HEADERS = frozenset({"openai-organization", "openai-project"})
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


def connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names a Connection header declares hop-by-hop (RFC 9110 7.6.1): they never cross the gateway."""
    return {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}


def upstream_headers(incoming: CIMultiDictProxy[str], credential: tuple[str, str] | None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    named_in_connection = connection_tokens(incoming)
    for name, value in incoming.items():
        lowered = name.lower()
        if (
            lowered in DROP_REQUEST
            or lowered in named_in_connection
            or lowered.startswith(DROP_PREFIX)
            or (credential is not None and lowered in ACCOUNT_HEADERS)
        ):
            continue
        headers.add(name, value)
    # Ask for plain bytes: usage is read from the response, and compression on loopback buys nothing.
    headers["Accept-Encoding"] = "identity"
    if credential is not None:
        headers[credential[0]] = credential[1]
    return headers


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers a client may see: no hop-by-hop ones, none its Connection header names."""
    named = connection_tokens(upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in DROP_RESPONSE and k.lower() not in named)


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
