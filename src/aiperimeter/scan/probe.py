"""The scanner's only network code: TCP connect checks and safe HTTP(S) requests.

Every byte that comes back is hostile: responses are parsed by h11 with bounded buffers, bodies are capped, every
step has a deadline, certificates are not verified (identifying a service is not trusting it), and nothing but the
catalog's GET/HEAD probes and read-only MCP JSON-RPC calls is ever sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import h11
import orjson

from aiperimeter import __version__
from aiperimeter.catalog.match import Reply
from aiperimeter.catalog.schema import Probe
from aiperimeter.scan.targets import Endpoint, Scheme

USER_AGENT = f"aiperimeter-scan/{__version__} (safe probes; https://github.com/aiperimeter)"
BODY_CAP = 256 * 1024
HEAD_CAP = 64 * 1024
MCP_PROTOCOL = "2025-06-18"
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,256}")
_PLAIN_TO_TLS = (
    b"plain HTTP request was sent to HTTPS port",
    b"speaking plain HTTP to an SSL",
    b"Client sent an HTTP request to an HTTPS server",
)


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class NotHTTP(Exception):
    """The peer answered, but not with HTTP (or not with plain HTTP)."""


class Unreachable(Exception):
    """No answer: refused, reset, or timed out."""


class Silent(Unreachable):
    """The peer accepted the connection and then said nothing in time: a tarpit is not retried."""


def jsonrpc_body(method: str, request_id: int | None) -> bytes:
    message: dict[str, object] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if method == "initialize":
        message["params"] = {
            "protocolVersion": MCP_PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "aiperimeter-scan", "version": __version__},
        }
    elif method == "tools/list":
        message["params"] = {}
    return orjson.dumps(message)


@dataclass
class Limits:
    """Politeness: a global rate of new connections, and per host a rate and a cap on concurrent requests."""

    rate: float  # connections per second overall; 0 for unlimited
    per_host: int
    host_rate: float = 0.0  # connections per second to one host; 0 for unlimited
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._next = self.clock()
        self._host_next: dict[str, float] = {}
        self._hosts: dict[str, asyncio.Semaphore] = {}

    def delay(self, address: str) -> float:
        """Book the next connection to `address`; return how long to wait before making it."""
        now = self.clock()
        start = max(now, self._next)
        if self.host_rate > 0:
            start = max(start, self._host_next.get(address, now))
            self._host_next[address] = start + 1.0 / self.host_rate
        if self.rate > 0:
            self._next = start + 1.0 / self.rate
        return start - now

    async def pace(self, address: str) -> None:
        wait = self.delay(address)
        if wait > 0:
            await asyncio.sleep(wait)

    def host(self, address: str) -> asyncio.Semaphore:
        semaphore = self._hosts.get(address)
        if semaphore is None:
            semaphore = self._hosts[address] = asyncio.Semaphore(self.per_host)
        return semaphore


async def tcp_open(address: str, port: int, wait: float, limits: Limits) -> bool:
    await limits.pace(address)
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _host_header(endpoint: Endpoint, scheme: Scheme) -> str:
    host = endpoint.host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    default = 443 if scheme == "https" else 80
    return host if endpoint.port == default else f"{host}:{endpoint.port}"


class Prober:
    def __init__(self, timeout: float, limits: Limits, retries: int = 1) -> None:
        self.timeout = timeout
        self.limits = limits
        self.retries = retries
        self._tls = _insecure_context()

    async def request(
        self, endpoint: Endpoint, scheme: Scheme, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Reply:
        """One request with retries for transient failures; raises Unreachable or NotHTTP."""
        for attempt in range(self.retries + 1):
            try:
                async with self.limits.host(endpoint.address):
                    await self.limits.pace(endpoint.address)
                    return await self._exchange(endpoint, scheme, method, path, headers, body)
            except Silent:
                raise
            except Unreachable:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise Unreachable  # pragma: no cover - the loop returns or raises

    async def _exchange(
        self, endpoint: Endpoint, scheme: Scheme, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        deadline = time.monotonic() + self.timeout
        server_name = None
        if scheme == "https":
            try:
                ipaddress.ip_address(endpoint.host)
            except ValueError:
                server_name = endpoint.host
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    endpoint.address,
                    endpoint.port,
                    ssl=self._tls if scheme == "https" else None,
                    server_hostname=server_name if scheme == "https" else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError):
                raise NotHTTP from None
            raise Unreachable from None
        try:
            return await self._converse(reader, writer, endpoint, scheme, method, path, headers, body, deadline)
        finally:
            writer.close()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        endpoint: Endpoint,
        scheme: Scheme,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        deadline: float,
    ) -> Reply:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_CAP)
        # A probe's own headers replace the defaults: a second Accept line makes some servers read only the first.
        defaults = {"Host": _host_header(endpoint, scheme), "User-Agent": USER_AGENT, "Accept": "*/*"}
        given = {name.lower() for name in headers}
        request_headers = [(k, v) for k, v in defaults.items() if k.lower() not in given]
        request_headers += [*headers.items(), ("Connection", "close")]
        if body:
            request_headers.append(("Content-Length", str(len(body))))
        try:
            out = connection.send(h11.Request(method=method, target=endpoint.base + path, headers=request_headers))
        except (h11.LocalProtocolError, UnicodeError):
            raise NotHTTP from None
        if body:
            out += connection.send(h11.Data(data=body))
        out += connection.send(h11.EndOfMessage())
        status: int | None = None
        reply_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        size = 0
        sse: _SSEWatch | None = None
        try:
            writer.write(out)
            while True:
                try:
                    event = connection.next_event()
                except h11.RemoteProtocolError:
                    if status is None:
                        raise NotHTTP from None
                    break
                if event is h11.NEED_DATA:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    reply_headers = {k.decode("latin-1").lower(): v.decode("latin-1")[:1024] for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data)[: BODY_CAP - size])
                    size += len(chunks[-1])
                    if size >= BODY_CAP or time.monotonic() > deadline:
                        break
                    if sse is None and reply_headers.get("content-type", "").startswith("text/event-stream"):
                        sse = _SSEWatch()
                    if sse is not None and sse.feed(chunks[-1]):
                        break
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        except TimeoutError:
            if status is None:
                raise Silent from None  # a stream that sent its head keeps what it sent
        except (OSError, ssl.SSLError):
            if status is None:
                raise Unreachable from None
        if status is None:
            raise NotHTTP
        body_bytes = b"".join(chunks)
        if status == 400 and any(marker in body_bytes for marker in _PLAIN_TO_TLS):
            raise NotHTTP
        return Reply(status, reply_headers, body_bytes)


class _SSEWatch:
    """Tells when an SSE answer's first event with data is complete. Looks at each chunk once (a peer may send
    one byte per chunk), keeping only a few bytes of overlap and whether the current event has data."""

    def __init__(self) -> None:
        self._tail = b""
        self._has_data = False

    def feed(self, chunk: bytes) -> bool:
        text = (self._tail + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = text.split(b"\n\n")
        for block in blocks[:-1]:
            if self._has_data or b"data:" in block:
                return True
            self._has_data = False
        self._has_data = self._has_data or b"data:" in blocks[-1]
        self._tail = blocks[-1][-5:]
        return False


async def detect_scheme(prober: Prober, endpoint: Endpoint) -> tuple[Scheme, Reply] | None:
    """Find which scheme the port speaks, with the first probe (GET /); None when it speaks no HTTP."""
    order: list[Scheme] = ["https", "http"] if endpoint.port in (443, 8443) else ["http", "https"]
    if endpoint.scheme is not None:
        order = [endpoint.scheme]
    for scheme in order:
        try:
            return scheme, await prober.request(endpoint, scheme, "GET", "/", {})
        except NotHTTP:
            continue
        except Unreachable:
            return None
    return None


async def run_probe(
    prober: Prober, endpoint: Endpoint, scheme: Scheme, probe: Probe, session: dict[str, str]
) -> Reply | None:
    """Send one catalog probe. MCP calls follow the protocol: initialize, then (with its session) tools/list."""
    headers = dict(probe.headers)
    body = b""
    if probe.jsonrpc is not None:
        headers.update({"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        if probe.jsonrpc == "tools/list":
            if "initialized" not in session:
                return None
            if session.get("id"):
                headers["Mcp-Session-Id"] = session["id"]
            headers["MCP-Protocol-Version"] = MCP_PROTOCOL
            try:  # the spec requires this notification before any other request
                await prober.request(
                    endpoint, scheme, "POST", probe.path, headers, jsonrpc_body("notifications/initialized", None)
                )
            except (Unreachable, NotHTTP):
                return None
        body = jsonrpc_body(probe.jsonrpc, 1 if probe.jsonrpc == "initialize" else 2)
    try:
        reply = await prober.request(endpoint, scheme, probe.method, probe.path, headers, body)
    except (Unreachable, NotHTTP):
        return None
    if probe.jsonrpc == "initialize" and reply.status == 200:
        session["initialized"] = "1"
        session_id = reply.headers.get("mcp-session-id", "")
        session["id"] = session_id if _SESSION_ID.fullmatch(session_id) else ""  # visible ASCII only, per the spec
    return reply
