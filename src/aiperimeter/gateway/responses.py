"""Headers the gateway sets on every response it sends to a client."""

from __future__ import annotations

from multidict import CIMultiDict

# Replaces aiohttp's default Server header, which names Python's and aiohttp's versions.
SERVER_HEADER = "aiperimeter"
EXPOSED = "x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests"


def add_cors_headers(headers: CIMultiDict[str], origin: str) -> None:
    """For a request from a configured CORS origin (credentials travel in headers, so never Allow-Credentials)."""
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Expose-Headers"] = EXPOSED
    headers.add("Vary", "Origin")
