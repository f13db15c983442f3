"""The benchmark's mock model server (benchmarks/mock_upstream.py) with a fault switch for the soak.

SIGUSR1 turns faults on (plain requests get a 500, streams are cut after two events), SIGUSR2 turns them off.
Run: python -m tests.hardening.load.upstream [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import uvloop

REPO = Path(__file__).resolve().parents[3]
MOCK = REPO / "benchmarks" / "mock_upstream.py"


def _load_mock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mock_upstream", MOCK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAULT_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def serve_mock(port: int) -> None:
    """Run the benchmark mock with a fault switch: SIGUSR1 on, SIGUSR2 off."""
    mock = _load_mock()
    fault = [False]

    class FaultyProtocol(mock.MockProtocol):  # type: ignore[misc,name-defined]
        def respond(self, request: Any) -> None:
            if fault[0] and mock.STREAM_FLAG.search(request.body):
                self.streaming = True
                asyncio.get_running_loop().create_task(self.cut_stream())
            elif fault[0]:
                self.transport.write(FAULT_500)
            else:
                super().respond(request)

        async def cut_stream(self) -> None:
            # Headers and two events, then the connection drops without the last chunk: a broken stream.
            for data in mock.STREAM_WRITES[:2]:
                if self.transport is None:
                    return
                self.transport.write(data)
                await asyncio.sleep(mock.EVENT_INTERVAL)
            if self.transport is not None:
                self.transport.abort()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, fault.__setitem__, 0, True)
        loop.add_signal_handler(signal.SIGUSR2, fault.__setitem__, 0, False)
        server = await loop.create_server(FaultyProtocol, "127.0.0.1", port, backlog=1024)
        print(f"mock upstream listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    serve_mock(parser.parse_args().port)


if __name__ == "__main__":
    main()
