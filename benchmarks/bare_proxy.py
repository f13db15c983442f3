"""The bare aiohttp reverse proxy gateway_bench.py compares the gateway with: a bearer check and a pooled
ClientSession, nothing else. It uses the same plumbing as the gateway (uvloop, aiohttp's low-level web.Server), so
the difference between the two is what the gateway's stages cost.

Run: BARE_PROXY_TOKEN=secret python benchmarks/bare_proxy.py http://127.0.0.1:UPSTREAM_PORT
It prints `bare proxy listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization", "date", "server"}


async def serve(upstream: str, expected: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with session.request(request.method, upstream + request.raw_path, headers=headers, data=body) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            if up.content_length is not None:
                return web.Response(status=up.status, body=await up.read(), headers=out)
            response = web.StreamResponse(status=up.status, headers=out)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    server = await asyncio.get_running_loop().create_server(web.Server(handler, access_log=None), "127.0.0.1", 0)
    print(f"bare proxy listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1].rstrip("/"), "Bearer " + os.environ["BARE_PROXY_TOKEN"]))
