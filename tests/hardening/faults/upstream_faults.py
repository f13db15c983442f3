"""Scenarios 1-4: the model server dies mid-stream, answers garbage, answers slowly, resets connections.

Each fault request carries `X-Fault: <behaviour>` (see rawupstream); a healthy request follows every fault, so a
gateway that stays broken after a fault shows up as `recovered = False`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.hardening.faults.client import Reply, send
from tests.hardening.faults.harness import local_gateway, logs
from tests.hardening.faults.rawupstream import GARBAGE, HOLD, MARKER, RawUpstream
from tests.hardening.faults.result import FaultResult, Ledger

CHAT = "/v1/chat/completions"
STREAM_BODY: dict[str, object] = {"model": "m", "messages": [], "stream": True}


def _fault(port: int, key: str, behaviour: str, *, stream: bool = False, timeout: float = 15.0) -> Reply:
    if stream:
        return send(port, "POST", CHAT, key=key, headers=[("X-Fault", behaviour)], body=STREAM_BODY, timeout=timeout)
    return send(port, "GET", "/v1/models", key=key, headers=[("X-Fault", behaviour)], timeout=timeout)


def _healthy(ledger: Ledger, port: int, key: str, after: str) -> bool:
    """A plain and a streamed request right after a fault: both must be whole 200s."""
    plain = ledger.note(_fault(port, key, "ok"))
    streamed = ledger.note(_fault(port, key, "stream", stream=True))
    fine = all(r.complete and r.status == 200 for r in (plain, streamed))
    return ledger.check(fine, f"after {after}: healthy requests got {plain} / {streamed}")


def _no_junk(ledger: Ledger, reply: Reply, fault: str) -> None:
    seen = reply.body + repr(reply.headers).encode()
    ledger.check(MARKER not in seen, f"{fault}: the upstream's malformed bytes reached the client")


def _audited_as_failed(ledger: Ledger, records: list[dict[str, object]], cut: dict[str, str]) -> None:
    """Requests whose answer was cut off still have their record, saying the upstream failed."""
    by_id = {r.get("request_id"): r for r in records}
    for request_id, fault in cut.items():
        record = by_id.get(request_id)
        ledger.check(
            record is not None and record.get("outcome") == "upstream_error",
            f"{fault}: audit record of the cut request is {record and (record.get('outcome'), record.get('status'))}",
        )


def upstream_dies_mid_stream(workdir: Path, repeat: int = 1) -> FaultResult:
    """The stream breaks after two events (FIN, then RST); then the whole server dies and comes back."""
    result = FaultResult("upstream_dies_mid_stream")
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = RawUpstream().start()
    cut: dict[str, str] = {}
    recovered = True
    try:
        with local_gateway(workdir, upstream.url, ledger) as (gateway, key):
            for _ in range(repeat):
                for fault in ("stream-cut-fin", "stream-cut-rst"):
                    result.injected += 1
                    reply = ledger.note(_fault(gateway.port, key, fault, stream=True), explained=True)
                    # Headers were out: the only honest signal is a cut stream, never a clean end.
                    ledger.check(reply.status == 200 and not reply.complete, f"{fault}: client got {reply}")
                    if reply.request_id is not None:
                        cut[reply.request_id] = fault
                    recovered &= _healthy(ledger, gateway.port, key, fault)
                result.injected += 1
                upstream.die()
                down = ledger.note(_fault(gateway.port, key, "stream", stream=True), explained=True)
                ledger.check((down.status, down.code) == (502, "upstream_unavailable"), f"server dead: got {down}")
                upstream.revive()
                recovered &= _healthy(ledger, gateway.port, key, "the server came back")
        _audited_as_failed(ledger, ledger.records, cut)
    finally:
        upstream.stop()
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result


def upstream_answers_garbage(workdir: Path, repeat: int = 1) -> FaultResult:
    """Every kind of malformed response: a clean 502 when nothing was relayed yet, else a cut; never a whole 2xx,
    never the upstream's malformed bytes in a response or a log line."""
    result = FaultResult("upstream_answers_garbage")
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = RawUpstream().start()
    recovered = True
    outcomes: dict[str, str] = {}
    try:
        with local_gateway(workdir, upstream.url, ledger) as (gateway, key):
            for _ in range(repeat):
                for name in GARBAGE:
                    fault = f"garbage-{name}"
                    result.injected += 1
                    reply = ledger.note(_fault(gateway.port, key, fault), explained=True)
                    outcomes[name] = str(reply)
                    clean_502 = reply.complete and reply.status == 502
                    ledger.check(clean_502 or not reply.complete, f"{fault}: client got {reply}")
                    _no_junk(ledger, reply, fault)
                    recovered &= _healthy(ledger, gateway.port, key, fault)
            output = logs(gateway)
        ledger.check(MARKER.decode() not in output, "the upstream's malformed bytes reached the gateway's log")
    finally:
        upstream.stop()
    result.notes += [f"{name}: {outcome}" for name, outcome in outcomes.items()]
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result


def upstream_answers_slowly(
    workdir: Path, repeat: int = 1, first_byte: float = 1.5, idle: float = 1.0, total: float = 2.5
) -> FaultResult:
    """Late headers get 504 within the first-byte timeout; a body or stream that stalls is ended by the idle
    timeout, one that drips forever by the total timeout; while slow requests are held, a fast one on another
    connection is answered."""
    result = FaultResult("upstream_answers_slowly")
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = RawUpstream().start()
    recovered = True
    bound = first_byte + total + 5  # the client gives up here: a timeout that never fires shows as "timeout"
    settings: dict[str, object] = {"timeouts": {"first_byte": first_byte, "idle": idle, "total": total}}
    try:
        with local_gateway(workdir, upstream.url, ledger, settings) as (gateway, key):
            for _ in range(repeat):
                slow: list[Reply] = []

                def client(fault: str, stream: bool, slow: list[Reply] = slow) -> None:
                    slow.append(ledger.note(_fault(gateway.port, key, fault, stream=stream, timeout=bound), True))

                held = upstream.held
                threads = [
                    threading.Thread(target=client, args=args)
                    for args in (
                        ("slow-head", False),
                        ("slow-head", True),
                        ("slow-body", False),
                        ("slow-stream", True),
                        ("drip-stream", True),
                    )
                ]
                for thread in threads:
                    thread.start()
                result.injected += len(threads)
                ledger.check(upstream.wait_held(held + len(threads)), "the slow requests never reached the upstream")
                fast = ledger.note(_fault(gateway.port, key, "ok"))
                # Answered while every slow request was still held: they do not block other clients.
                ledger.check(upstream.held >= held + len(threads), "slow requests were released before the fast one")
                ledger.check(fast.complete and fast.status == 200, f"fast request beside slow ones: {fast}")
                for thread in threads:
                    thread.join(bound + 5)
                statuses = sorted(str(r) for r in slow)
                result.notes.append(f"slow answers: {statuses}, after {max(r.seconds for r in slow):.1f} s at most")
                whole = [r for r in slow if r.complete]
                ledger.check(
                    len(whole) == 3 and all((r.status, r.code) == (504, "upstream_timeout") for r in whole),
                    f"late head / stalled body must be 504: {statuses}",
                )
                cut = [r for r in slow if r.status == 200 and not r.complete and r.error == "closed"]
                ledger.check(len(cut) == 2, f"a stalled and a dripping stream must both be cut: {statuses}")
                # ... by the gateway: the dripping upstream itself would go on for HOLD seconds
                ledger.check(all(r.seconds < HOLD / 2 for r in cut), f"a stream was not cut by a timeout: {statuses}")
                recovered &= _healthy(ledger, gateway.port, key, "slow answers")
    finally:
        upstream.stop()
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result


def upstream_resets_connections(workdir: Path, repeat: int = 1) -> FaultResult:
    """RST (and FIN) before the response head and in the middle of the body give a clean 502; after the upstream
    resets every pooled connection and refuses new ones for a while, the pool heals by itself."""
    result = FaultResult("upstream_resets_connections")
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = RawUpstream().start()
    recovered = True
    expected = {
        "reset-before-head": "upstream_unavailable",
        "close-before-head": "upstream_unavailable",
        "reset-mid-body": "upstream_broken",
    }
    try:
        with local_gateway(workdir, upstream.url, ledger) as (gateway, key):
            for _ in range(repeat):
                for fault, code in expected.items():
                    result.injected += 1
                    reply = ledger.note(_fault(gateway.port, key, fault), explained=True)
                    ledger.check((reply.status, reply.code) == (502, code), f"{fault}: client got {reply}")
                    _no_junk(ledger, reply, fault)
                    recovered &= _healthy(ledger, gateway.port, key, fault)
                for _ in range(4):  # the gateway's pool now holds idle connections to the upstream
                    ledger.note(_fault(gateway.port, key, "ok"))
                result.injected += 1
                upstream.reset_next(2)
                failed = 0
                for _ in range(6):
                    reply = ledger.note(_fault(gateway.port, key, "ok"), explained=True)
                    if reply.status == 200 and reply.complete:
                        break
                    ledger.check((reply.status, reply.code) == (502, "upstream_unavailable"), f"reset: {reply}")
                    failed += 1
                result.notes.append(f"after resetting the pool and 2 new connections: {failed} requests failed")
                ledger.check(failed <= 2, f"{failed} requests failed after 2 resets: the pool did not heal")
                recovered &= _healthy(ledger, gateway.port, key, "pool reset")
    finally:
        upstream.stop()
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result
