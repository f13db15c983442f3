"""A raw HTTP/1.1 client over sockets: sends exactly the bytes a test writes, and records every response."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import orjson

from tests.support.leaks import LEAKS


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        doc = orjson.loads(self.body)
        assert isinstance(doc, dict)
        return doc

    @property
    def code(self) -> str | None:
        error = self.json().get("error")
        return error.get("code") if isinstance(error, dict) else None  # type: ignore[return-value]


def _read_response(sock: socket.socket, deadline: float) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before the response head: {data!r}")
        data += chunk
        if time.monotonic() > deadline:
            raise TimeoutError("no response head in time")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body = rest[:length]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("chunked body cut off")
                rest += chunk
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("chunked body cut off")
                rest += chunk
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                break
    else:
        body = rest
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    LEAKS.texts.append(head.decode("latin-1") + "\n" + body.decode(errors="replace"))
    return Response(status, headers, body)


def raw(port: int, data: bytes, timeout: float = 10.0) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_response(sock, time.monotonic() + timeout)


def request(
    port: int,
    method: str,
    target: str,
    *,
    key: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | dict[str, object] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Response:
    payload = orjson.dumps(body) if isinstance(body, dict) else body
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if payload is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (payload or b"")
    return raw(port, data, timeout)
