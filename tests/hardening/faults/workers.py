"""Scenario 7: a worker process is killed (SIGKILL) under a load of plain and streamed requests.

The supervisor must replace it; requests on other connections keep succeeding; every request a client got a whole
answer for has its audit record, whichever worker served it (a killed worker's records are written before its
client has the last byte, or the client never gets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path

import orjson
from aiohttp import web

from tests.hardening.faults.client import Reply, send
from tests.hardening.faults.harness import local_gateway, logged_again, logs
from tests.hardening.faults.load import Load
from tests.hardening.faults.result import FaultResult, Ledger
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

CLIENTS = 4
# The supervisor gives up on workers that die more than 5 times each a minute (a crash loop): kills are paced below.
KILLS_PER_MINUTE = 8
STARTED = re.compile(r"\(2 workers: (\d+), (\d+)\)")
RESTARTED = re.compile(r"worker (\d+) exited with -?\d+; restarted as pid (\d+)")


async def _stream(request: web.BaseRequest) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the worker relaying it was killed: nobody to write to
        for n in range(3):
            await response.write(b'data: {"choices": [{"delta": {"content": "%d"}}]}\n\n' % n)
            await asyncio.sleep(0.005)  # a stream spans several loop turns: a kill can land in the middle of one
        await response.write(b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}\n\n')
        await response.write(b"data: [DONE]\n\n")
    return response


# Larger than the gateway relays in one write: sent chunk by chunk with a Content-Length (embeddings are often this).
BIG = orjson.dumps({"data": [{"embedding": [0.125] * 40_000}], "usage": {"prompt_tokens": 4, "total_tokens": 4}})


async def _big(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=BIG, content_type="application/json")


def _workers(gateway: GatewayProcess) -> dict[int, int]:
    """slot -> pid of the worker serving it now, from the supervisor's output."""
    text = logs(gateway)
    found = STARTED.search(text)
    slots = {0: int(found.group(1)), 1: int(found.group(2))} if found else {}
    for slot, pid in RESTARTED.findall(text):
        slots[int(slot)] = int(pid)
    return slots


def worker_killed(workdir: Path, repeat: int = 1) -> FaultResult:
    result = FaultResult("worker_killed")
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = FakeUpstream().start()
    upstream.script("/v1/chat/completions", _stream)
    upstream.script("/v1/embeddings", _big)
    killed: list[int] = []
    kill_times: list[float] = []
    replacements: list[int] = []
    cut: list[Reply] = []

    def call(port: int, key: str, n: int) -> Reply:
        if n % 3 == 1:
            return send(port, "POST", "/v1/chat/completions", key=key, body={"model": "m", "stream": True})
        if n % 3 == 2:
            reply = send(port, "POST", "/v1/embeddings", key=key, body={"model": "m", "input": "x"})
            if reply.complete and reply.body != BIG:
                ledger.check(False, f"a relayed body arrived changed: {len(reply.body)} of {len(BIG)} bytes")
            return reply
        return send(port, "GET", "/v1/models", key=key)

    def explained(reply: Reply) -> bool:
        # A connection the kill cut: no whole answer; a whole 5xx is never explained by it.
        if not reply.complete and reply.status in (None, 200):
            cut.append(reply)
            return True
        return False

    recovered = True
    try:
        with (
            local_gateway(workdir, upstream.url, ledger, None, "--workers", "2") as (gateway, key),
            Load(ledger, lambda n: call(gateway.port, key, n), CLIENTS, explained) as load,
        ):
            for round_ in range(2 * repeat):
                ledger.check(load.wait_more(50), "the load is not flowing")
                recent = [t for t in kill_times if time.monotonic() - t < 60]
                if len(recent) >= KILLS_PER_MINUTE:
                    time.sleep(60 - (time.monotonic() - recent[0]))  # pacing, not waiting for an event
                slot = round_ % 2
                victim = _workers(gateway)[slot]
                restarts = logs(gateway).count("restarted as pid")
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                kill_times.append(time.monotonic())
                result.injected += 1
                replaced = logged_again(gateway, "restarted as pid", restarts, 30)
                recovered &= ledger.check(replaced, f"worker {slot} (pid {victim}) was not replaced")
                replacements.append(_workers(gateway)[slot])
                ledger.check(load.wait_more(100), "the load stopped after a worker was killed")
        served_by = {r.get("pid") for r in ledger.records}
        fresh = [pid for pid in replacements if pid in served_by]
        recovered &= ledger.check(len(fresh) == len(replacements), f"replacements {replacements} served {fresh}")
    finally:
        upstream.stop()
    ledger.check(len(cut) <= CLIENTS * len(killed), f"{len(cut)} answers cut off by {len(killed)} kills")
    result.notes.append(f"killed {killed}, replaced by {replacements}; {len(cut)} requests cut off by the kills")
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result
