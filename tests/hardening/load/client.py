"""Requests of the soak's mix, each classified, and the closed-loop capacity probe."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
import uvloop

from tests.hardening.load.stack import Stack, machine_busy_seconds, own_cpu_seconds

CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 32}
PLAIN_BODY = orjson.dumps(CHAT)
STREAM_BODY = orjson.dumps({**CHAT, "stream": True})
REQUEST_TIMEOUT = 10.0  # a request not answered by then counts as a timeout


def is_streamed(index: int, share: float) -> bool:
    """Spread streamed requests evenly: request i is streamed when floor((i+1)*share) steps up."""
    return math.floor((index + 1) * share) > math.floor(index * share)


async def request(session: aiohttp.ClientSession, url: str, streamed: bool) -> tuple[str | None, bytes]:
    """(error class or None, body) of one request; every failure mode is classified, nothing raises."""
    try:
        async with session.post(url, data=STREAM_BODY if streamed else PLAIN_BODY) as resp:
            body = await resp.read()
            if resp.status >= 500:
                return "gateway_5xx", body
            if resp.status >= 300:
                return "status_4xx", body
            if streamed:
                return (None if body.rstrip().endswith(b"data: [DONE]") else "broken_stream"), body
            return (None if b'"chat.completion"' in body else "bad_body"), body
    except TimeoutError:
        return "timeout", b""
    except aiohttp.ClientPayloadError as exc:
        return "broken_stream", repr(exc).encode()
    except (aiohttp.ClientError, OSError) as exc:
        return "connection", repr(exc).encode()


def client_session(token: str, connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=15)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        auto_decompress=False,
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --------------------------------------------------------------------------------------------------- capacity


@dataclass
class Capacity:
    rate: float  # 2xx answers per second, closed loop
    requests: int
    errors: int
    concurrency: int
    gateway_cpu_pct: float  # of one core
    client_cpu_pct: float
    other_cpu_pct: float  # other processes on the machine meanwhile


def measure_capacity(
    stack: Stack, seconds: float = 20.0, streamed: float = 0.3, concurrency: int = 128, warmup: float = 2.0
) -> Capacity:
    """Closed loop: `concurrency` workers send the mix back to back; the 2xx rate over `seconds` is the capacity."""

    async def run() -> Capacity:
        counter = [0]
        ok, errors = [0], [0]
        measuring = [False]

        async def worker(session: aiohttp.ClientSession, stop_at: float) -> None:
            while time.perf_counter() < stop_at:
                index = counter[0]
                counter[0] += 1
                error, _ = await request(session, stack.url, is_streamed(index, streamed))
                if measuring[0] and time.perf_counter() < stop_at:
                    ok[0] += error is None
                    errors[0] += error is not None

        async with client_session(stack.secret, concurrency) as session:
            await asyncio.gather(*(worker(session, time.perf_counter() + warmup) for _ in range(concurrency)))
            measuring[0] = True
            began, cpu_gw, cpu_me = time.perf_counter(), stack.gateway_cpu(), own_cpu_seconds()
            busy, cpu_up = machine_busy_seconds(), stack.upstream_cpu()
            await asyncio.gather(*(worker(session, began + seconds) for _ in range(concurrency)))
            wall = time.perf_counter() - began
            gw, me = stack.gateway_cpu() - cpu_gw, own_cpu_seconds() - cpu_me
            other = machine_busy_seconds() - busy - gw - me - (stack.upstream_cpu() - cpu_up)
        return Capacity(
            rate=round(ok[0] / seconds, 1),
            requests=ok[0] + errors[0],
            errors=errors[0],
            concurrency=concurrency,
            gateway_cpu_pct=round(100 * gw / wall, 1),
            client_cpu_pct=round(100 * me / wall, 1),
            other_cpu_pct=round(100 * max(0.0, other) / wall, 1),
        )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def probe_capacity(stack: Stack, seconds: float = 20.0, streamed: float = 0.3, concurrency: int = 128) -> float:
    """Closed-loop max req/s of the gateway with the soak's request mix."""
    return measure_capacity(stack, seconds, streamed, concurrency).rate
