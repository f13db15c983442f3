"""Mock AI services from the catalog's examples, served on loopback addresses from a background thread."""

from __future__ import annotations

import asyncio
import threading

from aiperimeter.catalog.loader import fingerprints
from aiperimeter.demo.exposed import MockService, plan, start


class MockFleet:
    def __init__(self, first: str) -> None:
        self.services: list[MockService] = plan(fingerprints(), first)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []

    def __enter__(self) -> MockFleet:
        self._thread.start()
        self._servers = asyncio.run_coroutine_threadsafe(start(self.services), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ExampleServer:
    """One catalogued product's example, served on (address, ephemeral port) from a background thread."""

    def __init__(self, product: str, verdict: str, address: str) -> None:
        fp = next(f for f in fingerprints() if f.id == product)
        example = next(e for e in fp.examples.match if e.verdict == verdict)
        self.service = MockService(address, 0, fp, example)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> ExampleServer:
        self._thread.start()
        (self._server,) = asyncio.run_coroutine_threadsafe(start([self.service]), self.loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
