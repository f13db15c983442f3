"""A TCP relay in front of a service, to simulate its outage without touching the service itself."""

from __future__ import annotations

import asyncio
import threading


class Proxy:
    """A TCP relay in front of the PostgreSQL server, to simulate outages: `cut` closes the port and every
    connection (the database is gone); clearing `flowing` keeps them open but relays nothing (the network is)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self.links.discard(writer)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def restore(self) -> None:
        await self.start()  # the same port again


class ThreadedProxy:
    """The relay on a loop of its own, for tests whose clients are other processes (gateways)."""

    def __init__(self, host: str, port: int) -> None:
        self.proxy = Proxy(host, port)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        self._run(self.proxy.start())
        return self

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        self._run(self.proxy.cut())

    def restore(self) -> None:
        self._run(self.proxy.restore())

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self.proxy.server is not None:
                self.proxy.server.close()
            for writer in list(self.proxy.links):
                writer.transport.abort()
            for task in list(self.proxy.tasks):
                task.cancel()

        self._run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
