"""CORS for the browser origins an operator configured; off when none are.

Credentials travel in the Authorization header, never in cookies, so `Access-Control-Allow-Credentials` is never
sent. A preflight is answered by the gateway itself and never reaches the upstream; it grants nothing without a key.
"""

from __future__ import annotations

import re

from aiohttp import web
from multidict import CIMultiDict

from aiperimeter.gateway.responses import SERVER_HEADER, add_cors_headers

_TOKEN_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


class Cors:
    def __init__(self, origins: frozenset[str], methods: frozenset[str]) -> None:
        self.origins = origins
        self.methods = ", ".join(sorted(methods))

    def preflight(self, request: web.BaseRequest) -> web.Response | None:
        """The answer to a CORS preflight from a configured origin, or None when this is not one."""
        origin = request.headers.get("Origin")
        wanted = request.headers.get("Access-Control-Request-Method")
        if origin not in self.origins or wanted is None:
            return None
        headers: CIMultiDict[str] = CIMultiDict(Server=SERVER_HEADER)
        add_cors_headers(headers, origin)
        headers["Access-Control-Allow-Methods"] = self.methods
        requested = request.headers.get("Access-Control-Request-Headers", "").strip()
        headers["Access-Control-Allow-Headers"] = (
            requested if requested and _TOKEN_LIST.fullmatch(requested) else "authorization, content-type, x-api-key"
        )
        headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204, headers=headers)
