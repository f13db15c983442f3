"""Raw HTTP/1.1 on loopback for the attack runner: exact bytes out, every response on the connection back."""

from __future__ import annotations

import contextlib
import re
import socket
import time

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")


def read_answer(sock: socket.socket, deadline: float, idle: float = 0.5) -> bytes:
    """Everything the gateway answers until it closes, goes quiet after answering, or the deadline passes."""
    received = b""
    sock.settimeout(idle)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if received:
                break
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return received


def exchange(port: int, data: bytes, timeout: float = 3.0, idle: float = 0.5) -> bytes:
    """Send exact bytes on one connection; return everything the gateway answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # refused early (413, 431): read what it answered
            sock.sendall(data)
        return read_answer(sock, time.monotonic() + timeout, idle)


def statuses(answer: bytes) -> list[int]:
    """The status of every response in the answer, in order, walking each one's framing."""
    found: list[int] = []
    rest = answer
    while (match := STATUS_LINE.match(rest)) is not None:
        status = int(match.group(1))
        found.append(status)
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            break
        fields = dict(header_field(line) for line in head.split(b"\r\n")[1:])
        if 100 <= status < 200 or status in (204, 304):
            rest = body
        elif b"content-length" in fields and fields[b"content-length"].isdigit():
            after = body[int(fields[b"content-length"]) :]
            # an answer to HEAD announces a length but has no body: the next response starts right away
            headless = after and not after.startswith(b"HTTP/1.") and body.startswith(b"HTTP/1.")
            rest = body if headless else after
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            rest = after_chunks(body)
        else:
            break  # the body runs to the end of the connection
    return found


def header_field(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip().lower(), value.strip()


def after_chunks(data: bytes) -> bytes:
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return b""
        if not sep:
            return b""
        if size == 0:
            return data.partition(b"\r\n\r\n")[2] if not data.startswith(b"\r\n") else data[2:]
        data = data[size + 2 :]
