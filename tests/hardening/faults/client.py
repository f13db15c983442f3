"""A raw HTTP/1.1 client that never raises on a broken answer: it says what arrived and whether it was whole.

Fault scenarios need the request id of a response even when its body was cut off, and must tell a complete answer
(the client got every byte the framing promised) from anything less; `tests.support.http` raises instead.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import orjson

from tests.support.leaks import LEAKS


@dataclass
class Reply:
    status: int | None = None  # None: no response head arrived
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the whole response arrived, as its framing promised
    error: str | None = None  # why not: "closed", "reset", "timeout", "malformed"
    seconds: float = 0.0

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def code(self) -> str | None:
        try:
            error = orjson.loads(self.body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return error.get("code") if isinstance(error, dict) else None

    def __str__(self) -> str:
        whole = "complete" if self.complete else f"incomplete ({self.error})"
        return f"{self.status} {self.code or ''} {whole}".replace("  ", " ")


class _Cut(Exception):
    pass


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def more(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Cut("closed")
        self.buffer += chunk

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self.more()
        part, _, self.buffer = self.buffer.partition(marker)
        return part

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.more()
        part, self.buffer = self.buffer[:size], self.buffer[size:]
        return part


def _read(reply: Reply, reader: _Reader, head_only: bool) -> None:
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    reply.status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        reply.headers[name.strip().lower()] = value.strip()
    if head_only or reply.status in (204, 304):
        reply.complete = True
        return
    if "content-length" in reply.headers:
        reply.body = reader.exactly(int(reply.headers["content-length"]))
    elif reply.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0], 16)
            chunk = reader.exactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise ValueError("chunk not terminated")
            reply.body += chunk[:-2]
            if size == 0:
                break
    else:  # delimited by the end of the connection
        try:
            while True:
                reader.more()
        except _Cut:
            pass
        reply.body = reader.buffer
    reply.complete = True


def send(
    port: int,
    method: str,
    target: str,
    *,
    key: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | dict[str, object] | None = None,
    timeout: float = 15.0,
) -> Reply:
    """One request on a connection of its own; returns whatever came back within `timeout` seconds."""
    payload = orjson.dumps(body) if isinstance(body, dict) else body
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if payload is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (payload or b"")
    reply = Reply()
    started = time.monotonic()
    reader: _Reader | None = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(data)
            reader = _Reader(sock, started + timeout)
            _read(reply, reader, method == "HEAD")
    except _Cut:
        reply.error = "closed"
    except ConnectionResetError:
        reply.error = "reset"
    except TimeoutError:
        reply.error = "timeout"
    except (ValueError, IndexError):
        reply.error = "malformed"
    except OSError as exc:
        reply.error = type(exc).__name__
    reply.seconds = time.monotonic() - started
    seen = reply.body + (reader.buffer if reader is not None and not reply.complete else b"")
    _register(f"{reply.status} {reply.headers}\n{seen[:SEEN_BYTES].decode(errors='replace')}")
    return reply


SEEN_BYTES = 8192  # of each body, for the leak check: the gateway's own words are short; the rest is relayed
_BUDGET = 16 * 1024 * 1024
_kept = 0


def _register(text: str) -> None:
    """Hands what a client saw to the session's leak check; past a budget (long soaks), only what it would flag."""
    global _kept
    if _kept < _BUDGET:
        _kept += len(text)
        LEAKS.texts.append(text)
    elif any(secret in text for secret in list(LEAKS.secrets)):
        LEAKS.texts.append(text)
