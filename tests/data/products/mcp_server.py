"""A tiny real MCP server built with the official `mcp` SDK (MCPServer, formerly FastMCP), for the scanner's tests.

Streamable HTTP on 127.0.0.1 at /mcp, one harmless tool. With --protected it is an OAuth resource server through the
SDK's own auth support (a TokenVerifier and AuthSettings): requests without the bearer token get 401 with
`WWW-Authenticate: Bearer ... resource_metadata=...`, and /.well-known/oauth-protected-resource/mcp describes it.

    python mcp_server.py --port 8000 [--protected]    (the token: $AIPERIMETER_TEST_MCP_TOKEN)
"""

from __future__ import annotations

import argparse
import hmac
import os

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

NAME = "aiperimeter-test-mcp"
VERSION = "0.1.0"  # the server's own version, as serverInfo.version tells it (the SDK does not announce its own)


class StaticTokenVerifier:
    """Accepts exactly one bearer token (a stand-in for an authorization server's introspection)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="aiperimeter-tests", scopes=[])
        return None


def build(port: int, token: str | None) -> MCPServer:
    if token is None:
        server = MCPServer(NAME, version=VERSION)
    else:
        base = f"http://127.0.0.1:{port}"
        server = MCPServer(
            NAME,
            version=VERSION,
            token_verifier=StaticTokenVerifier(token),
            auth=AuthSettings(
                issuer_url=f"{base}/issuer",
                resource_server_url=f"{base}/mcp",
                validate_token_resource=False,
            ),
        )

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protected", action="store_true")
    args = parser.parse_args()
    token = os.environ.get("AIPERIMETER_TEST_MCP_TOKEN") or "aiperimeter-test-token"
    server = build(args.port, token if args.protected else None)
    server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
