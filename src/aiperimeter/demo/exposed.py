"""Mock AI services on loopback: each serves one captured example from the catalog, as the real product answered.

Used by the scanner's tests and benchmark, and to try `aiperimeter scan` without installing anything:

    python -m aiperimeter.demo.exposed --first 127.0.10.1        # then: aiperimeter scan 127.0.10.0/24

Each service answers the requests its example recorded and 404 to anything else; nothing here runs a model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import orjson

from aiperimeter.catalog.loader import fingerprints
from aiperimeter.catalog.match import NOT_FOUND, Reply
from aiperimeter.catalog.schema import Example, Fingerprint


@dataclass(frozen=True)
class MockService:
    address: str
    port: int
    fingerprint: Fingerprint
    example: Example

    def replies(self) -> dict[tuple[str, str, str | None], Reply]:
        out: dict[tuple[str, str, str | None], Reply] = {}
        for probe in self.fingerprint.probes:
            if probe.id in self.example.responses:
                out[(probe.method, probe.path, probe.jsonrpc)] = Reply.from_example(self.example.responses[probe.id])
        return out


def plan(catalog: Iterable[Fingerprint], first: str, *, verdicts: bool = True, step: int = 1) -> list[MockService]:
    """One service per match example (or per product when `verdicts` is false), every `step` addresses."""
    services = []
    address = ipaddress.ip_address(first)
    for fp in catalog:
        for example in fp.examples.match if verdicts else fp.examples.match[:1]:
            services.append(MockService(str(address), fp.ports[0], fp, example))
            address += step
    return services


def _respond(replies: dict[tuple[str, str, str | None], Reply], method: str, path: str, body: bytes) -> Reply:
    rpc = None
    if method == "POST":
        try:
            rpc = orjson.loads(body).get("method")
        except (orjson.JSONDecodeError, AttributeError):
            return Reply(400, {"content-type": "application/json"}, b'{"error":"bad request"}')
        if isinstance(rpc, str) and rpc.startswith("notifications/"):
            return Reply(202, {}, b"")
    return replies.get((method, path, rpc)) or replies.get((method, path.split("?", 1)[0], rpc), NOT_FOUND)


async def _serve_connection(
    replies: dict[tuple[str, str, str | None], Reply], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        while True:
            request = None
            body = b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                    connection.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            reply = _respond(replies, request.method.decode(), request.target.decode("latin-1"), body)
            headers = [(k, v) for k, v in reply.headers.items() if k not in ("content-length", "transfer-encoding")]
            headers.append(("content-length", str(len(reply.body))))
            writer.write(connection.send(h11.Response(status_code=reply.status, headers=headers)))
            if request.method != b"HEAD":
                writer.write(connection.send(h11.Data(data=reply.body)))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()
    except (h11.ProtocolError, OSError, TimeoutError, ValueError):
        return
    finally:
        writer.close()


async def start(services: list[MockService]) -> list[asyncio.Server]:
    servers = []
    for service in services:
        replies = service.replies()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: dict = replies) -> None:  # type: ignore[type-arg]
            await _serve_connection(replies, reader, writer)

        servers.append(await asyncio.start_server(handle, service.address, service.port, backlog=512))
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", default="127.0.10.1", help="first loopback address to use")
    parser.add_argument("--one-per-product", action="store_true", help="only the first example of each product")
    parser.add_argument("--step", type=int, default=1, help="addresses between two services")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.first).is_loopback:
        parser.error("--first must be a loopback address (127.x.y.z)")
    services = plan(fingerprints(), args.first, verdicts=not args.one_per_product, step=args.step)

    async def run() -> None:
        servers = await start(services)
        for service in services:
            print(
                f"{service.address}:{service.port}  {service.fingerprint.name} ({service.example.verdict}): "
                f"{service.example.name}",
                flush=True,
            )
        print(f"ready: {len(servers)} mock services", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
