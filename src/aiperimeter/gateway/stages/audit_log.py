"""One JSON line per request, whatever its outcome. Never a credential, no prompt or completion text.

Records are written with O_APPEND, whole lines per write(), so workers sharing the file never interleave lines; a
record is written by the end of the event-loop iteration in which its request finished.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import orjson

from aiperimeter.gateway.pipeline import Exchange, Outcome, Stage
from aiperimeter.gateway.stages.authenticate import canary_fields


def declared_tools(doc: dict[str, Any]) -> list[str] | None:
    """The names of the tools a request declares (OpenAI Chat and Responses, Anthropic, Ollama): names only, so the
    watch part can tell when a key starts using tools it never used."""
    tools = doc.get("tools")
    if not isinstance(tools, list):
        return None
    names: set[str] = set()
    for tool in tools[:64]:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name", tool.get("type"))
            if isinstance(name, str) and name:
                names.add(name[:128])
    return sorted(names) or None


class AuditSink:
    """Appends JSON lines. Records finished in one event-loop iteration go out in one write() at the end of it:
    one system call for many concurrent requests, and nothing waits longer than the current iteration."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._pending: list[bytes] = []
        # Also hands each batch of lines to `tap` (the shared audit stream in a cluster); never blocks a write.
        self.tap: Callable[[list[bytes]], None] | None = None
        if path is None:
            self._fd = sys.stdout.fileno()
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                os.write(self._fd, line)
                return
        self._pending.append(line)

    def flush(self) -> None:
        if self._pending:
            if self.tap is not None:
                self.tap(self._pending)
            data, self._pending = b"".join(self._pending), []
            while data:  # a regular file takes it all at once; a pipe (stdout) may not
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        self.flush()
        if self.path is not None:
            os.close(self._fd)


class AuditLog(Stage):
    name: ClassVar[str] = "audit_log"

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink
        self.pid = os.getpid()
        self._expired: set[str] = set()

    def _expiry(self, ex: Exchange) -> None:
        """Expiry happens by the clock, not by a command: its lifecycle event is written the first time this
        process refuses the expired key (each process once; the actor is the system)."""
        key = ex.key
        if key is None or key.id in self._expired:
            return
        if len(self._expired) > 100_000:
            self._expired.clear()
        self._expired.add(key.id)
        self.sink.write(
            {"time": time.time(), "event": "key", "action": "expire", "key_id": key.id, "actor": "system",
             "expired_at": key.expires_at}
        )  # fmt: skip

    async def on_finish(self, ex: Exchange, outcome: Outcome) -> None:
        if ex.deny_code == "key_expired":
            self._expiry(ex)
        status = ex.status or (499 if outcome is Outcome.CLIENT_DISCONNECTED else 500)
        self.sink.write(
            {
                "time": time.time(),
                "request_id": ex.request_id,
                "key_id": ex.key.id if ex.key is not None else None,
                "client": ex.client,
                "method": ex.method,
                # A refused target is logged as sent, without its query (which may carry secrets), truncated.
                "path": ex.path or ex.request.raw_path.partition("?")[0][:256],
                "route": ex.route.cls if ex.route is not None else None,
                "model": ex.model,
                "status": status,
                "outcome": outcome.value,
                "deny": ex.deny_code,
                "stream": ex.stream,
                "upstream_ms": round(ex.upstream_ms, 3) if ex.upstream_ms is not None else None,
                "total_ms": round((time.perf_counter() - ex.started) * 1000, 3),
                "bytes_in": ex.bytes_in,
                "bytes_out": ex.bytes_out,
                "usage": (
                    {"prompt_tokens": ex.prompt_tokens or 0, "completion_tokens": ex.completion_tokens or 0}
                    if ex.prompt_tokens is not None or ex.completion_tokens is not None
                    else None
                ),
                "tools": ex.tools.audit() if ex.tools is not None and ex.tools.decisions else None,
                "tools_declared": declared_tools(ex.json) if ex.json is not None and "tools" in ex.json else None,
                "pid": self.pid,
                **(canary_fields(ex) if ex.key is not None and ex.key.canary else {}),
            }
        )
        # The batch this record joined is written at the end of this loop turn; the response is ended only after
        # the handler returns. Waiting out the turn puts the record in the file before the client can have the last
        # byte of its answer, so a worker killed in between loses no record of an answered request.
        await asyncio.sleep(0)
