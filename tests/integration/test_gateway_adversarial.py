"""An attacker's view of the gateway. With a normal key (or none) the attacker tries to reach admin routes, to
smuggle a second request past the gateway on one connection, to widen a model-scoped key, to turn the connection
into a tunnel, to make the gateway leak a key, reveal its versions or crash, and to starve other clients.

Every case states what must not happen; most check that the fake upstream saw nothing it must not see.

Keys that travel inside deliberately malformed bytes are registered with the suite-wide leak check like every other
key: no response or log line may repeat them (aiohttp's default error handler did; the gateway's does not). The
cases below also assert it one by one, so a regression names the request that caused it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from tests.hardening.attack_wire import exchange
from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.http import raw, request
from tests.support.upstream import FakeUpstream, Seen

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
CHAT = b'{"model":"llama3","prompt":"hi"}'


@dataclass
class Deployment:
    kind: str
    gateway: GatewayProcess
    normal: str  # registered with the leak check: only ever sent in well-formed requests
    scoped: str  # models={"llama3"}, registered
    raw: str  # normal scope: used in malformed traffic

    @property
    def port(self) -> int:
        return self.gateway.port


@pytest.fixture(scope="module")
def deployments(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Deployment]]:
    out: dict[str, Deployment] = {}
    try:
        for kind in ("ollama", "vllm", "llamacpp"):
            data_dir = tmp_path_factory.mktemp(f"adv-{kind}")
            _, normal = add_key(data_dir, "normal")
            _, scoped = add_key(data_dir, "scoped", models=frozenset({"llama3"}))
            _, raw_key = add_key(data_dir, "raw-traffic")
            out[kind] = Deployment(kind, start_gateway(data_dir, upstream.url, kind), normal, scoped, raw_key)
        yield out
    finally:
        for deployment in out.values():
            deployment.gateway.stop()


@pytest.fixture
def ollama(deployments: dict[str, Deployment]) -> Deployment:
    return deployments["ollama"]


# ---- raw wire helpers -----------------------------------------------------------------------------------------


def message(method: str, target: str, body: bytes | None = None, *, key: str | None, extra: str = "") -> bytes:
    """One well-formed HTTP/1.1 request (keep-alive unless `extra` says otherwise)."""
    lines = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if key is not None:
        lines += f"Authorization: Bearer {key}\r\n"
    lines += extra
    if body is not None:
        lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (lines + "\r\n").encode("latin-1") + (body or b"")


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in STATUS.findall(data)]


def header_names(call: Seen) -> set[str]:
    return {name.lower() for name, _ in call.header_list}


# ---- request smuggling: the upstream must never see the smuggled admin request ---------------------------------


@dataclass(frozen=True)
class Target:
    kind: str
    method: str
    path: str
    body: bytes


ALLOWED = {
    "ollama": Target("ollama", "POST", "/api/chat", CHAT),
    "vllm": Target("vllm", "POST", "/v1/chat/completions", CHAT),
    "llamacpp": Target("llamacpp", "POST", "/completion", CHAT),
}
ADMIN = {
    "ollama-pull": Target("ollama", "POST", "/api/pull", b'{"model":"llama3"}'),
    "ollama-delete": Target("ollama", "DELETE", "/api/delete", b'{"model":"llama3"}'),
    "vllm-invocations": Target("vllm", "POST", "/invocations", CHAT),
    "llamacpp-slot-save": Target("llamacpp", "POST", "/slots/0?action=save", b'{"filename":"x.bin"}'),
}

Builder = Callable[[Target, str, bytes], bytes]


def _head(allowed: Target, key: str, headers: str, version: str = "1.1") -> bytes:
    return (
        f"{allowed.method} {allowed.path} HTTP/{version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n{headers}\r\n"
    ).encode("latin-1")


def _te(value: str) -> Builder:
    return lambda a, k, s: _head(a, k, f"Transfer-Encoding: {value}\r\n") + chunked(a.body) + s


def _cl(*values: str) -> Builder:
    return lambda a, k, s: _head(a, k, "".join(f"Content-Length: {v}\r\n" for v in values)) + a.body + s


def _n(a: Target) -> str:
    return str(len(a.body))


# "split": the gateway reads the allowed request exactly, then the smuggled one as a request of its own (200, 403).
# "refused": the framing is refused outright (4xx only); the upstream sees nothing at all.
FRAMINGS: dict[str, tuple[str, Builder]] = {
    "pipelined": ("split", lambda a, k, s: message(a.method, a.path, a.body, key=k) + s),
    "cl-te": (
        "refused",
        lambda a, k, s: (
            _head(a, k, f"Content-Length: {len(chunked(a.body))}\r\nTransfer-Encoding: chunked\r\n")
            + chunked(a.body)
            + s
        ),
    ),
    "te-cl": (
        "refused",
        lambda a, k, s: _head(a, k, "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n") + chunked(a.body) + s,
    ),
    "te-xchunked": ("refused", _te("xchunked")),
    "te-quoted": ("refused", _te('"chunked"')),
    "te-with-parameter": ("refused", _te("chunked;q=1")),
    "te-chunked-identity": ("refused", _te("chunked, identity")),
    "te-leading-spaces": ("split", _te("   chunked")),
    "te-tab": ("split", _te("\tchunked")),
    "te-upper-case": ("split", _te("CHUNKED")),
    "te-identity-chunked": ("split", _te("identity, chunked")),
    "te-vertical-tab": ("refused", _te("chunked\x0b")),
    "te-form-feed": ("refused", _te("\x0cchunked")),
    "te-duplicated": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") + chunked(a.body) + s
        ),
    ),
    "te-obs-fold": (
        "refused",
        lambda a, k, s: _head(a, k, "Transfer-Encoding: identity\r\n chunked\r\n") + chunked(a.body) + s,
    ),
    "te-space-before-colon": (
        "refused",
        lambda a, k, s: _head(a, k, "Transfer-Encoding : chunked\r\n") + chunked(a.body) + s,
    ),
    "te-in-trailer": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n")
            + f"{len(a.body):x}\r\n".encode()
            + a.body
            + b"\r\n0\r\nTransfer-Encoding: x\r\n\r\n"
            + s
        ),
    ),
    "te-http10-keepalive": (
        "split",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n", "1.0") + chunked(a.body) + s
        ),
    ),
    "cl-duplicate-different": ("refused", lambda a, k, s: _cl(_n(a), str(len(a.body) + len(s)))(a, k, s)),
    "cl-duplicate-same": ("refused", lambda a, k, s: _cl(_n(a), _n(a))(a, k, s)),
    "cl-comma-list": ("refused", lambda a, k, s: _cl(f"{_n(a)}, {_n(a)}")(a, k, s)),
    "cl-plus-sign": ("refused", lambda a, k, s: _cl(f"+{_n(a)}")(a, k, s)),
    "cl-negative": ("refused", _cl("-1")),
    "cl-hex": ("refused", lambda a, k, s: _cl(hex(len(a.body)))(a, k, s)),
    "cl-leading-zeros": ("split", lambda a, k, s: _cl(f"000{_n(a)}")(a, k, s)),
    "cl-vertical-tab": ("refused", lambda a, k, s: _cl(f"{_n(a)}\x0b")(a, k, s)),
    "cl-obs-fold": ("refused", lambda a, k, s: _head(a, k, f"Content-Length: {_n(a)}\r\n 0\r\n") + a.body + s),
    "cl-too-short": ("refused", _cl("5")),
    "cl-covers-both": ("refused", lambda a, k, s: _cl(str(len(a.body) + len(s)))(a, k, s)),
    "chunk-size-overflow": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n")
            + b"1000000000000000"
            + f"{len(a.body):x}\r\n".encode()
            + a.body
            + b"\r\n0\r\n\r\n"
            + s
        ),
    ),
    "chunk-bare-lf": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n") + f"{len(a.body):x}\n".encode() + a.body + b"\n0\n\n" + s
        ),
    ),
    "chunk-ext-bare-lf": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n")
            + f"{len(a.body):x};a\nb\r\n".encode()
            + a.body
            + b"\r\n0\r\n\r\n"
            + s
        ),
    ),
    "chunk-size-with-space": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n")
            + f"{len(a.body):x} \r\n".encode()
            + a.body
            + b"\r\n0\r\n\r\n"
            + s
        ),
    ),
    "chunk-data-overrun": (
        "refused",
        lambda a, k, s: (
            _head(a, k, "Transfer-Encoding: chunked\r\n")
            + f"{len(a.body) - 4:x}\r\n".encode()
            + a.body
            + b"\r\n0\r\n\r\n"
            + s
        ),
    ),
    "bare-lf-line-endings": (
        "refused",
        lambda a, k, s: _head(a, k, f"Content-Length: {_n(a)}\r\n").replace(b"\r\n", b"\n") + a.body + s,
    ),
    "bare-cr-in-header": (
        "refused",
        lambda a, k, s: _head(a, k, f"X-A: a\rContent-Length: {_n(a)}\r\n") + a.body + s,
    ),
    "nul-in-header": (
        "refused",
        lambda a, k, s: _head(a, k, f"X-A: a\x00b\r\nContent-Length: {_n(a)}\r\n") + a.body + s,
    ),
    "expect-100-continue": (
        "split",
        lambda a, k, s: _head(a, k, f"Expect: 100-continue\r\nContent-Length: {_n(a)}\r\n") + a.body + s,
    ),
    "get-route-with-body": (
        "refused",
        lambda a, k, s: (
            (
                f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {k}\r\n"
                f"Content-Length: {len(s)}\r\n\r\n"
            ).encode()
            + s
        ),
    ),
}

# Every framing against Ollama's pull; a representative handful against the other kinds' admin routes.
SMUGGLING_CASES = [pytest.param("ollama-pull", framing, id=f"ollama-pull-{framing}") for framing in FRAMINGS] + [
    pytest.param(admin, framing, id=f"{admin}-{framing}")
    for admin in ("ollama-delete", "vllm-invocations", "llamacpp-slot-save")
    for framing in ("pipelined", "cl-te", "te-cl", "te-leading-spaces", "te-identity-chunked", "cl-leading-zeros")
]


@pytest.mark.parametrize(("admin_name", "framing"), SMUGGLING_CASES)
def test_smuggled_admin_request_never_reaches_the_upstream(
    deployments: dict[str, Deployment], upstream: FakeUpstream, admin_name: str, framing: str
) -> None:
    admin = ADMIN[admin_name]
    deployment = deployments[admin.kind]
    allowed = ALLOWED[admin.kind]
    expectation, build = FRAMINGS[framing]
    smuggled = message(admin.method, admin.path, admin.body, key=deployment.raw, extra="Connection: close\r\n")
    answer = exchange(deployment.port, build(allowed, deployment.raw, smuggled))
    calls = upstream.calls()
    admin_path = admin.path.partition("?")[0]
    assert not [c for c in calls if c.raw_path.partition("?")[0] == admin_path], "the upstream saw the admin route"
    for call in calls:
        assert (call.method, call.raw_path) == (allowed.method, allowed.path)
        assert call.body == allowed.body, "smuggled bytes travelled inside the forwarded body"
        assert "transfer-encoding" not in header_names(call)
        assert call.headers.get("content-length") == str(len(allowed.body))
    got = statuses(answer)
    assert 101 not in got
    if expectation == "split":
        assert got == [200, 403], answer[:300]
        assert len(calls) == 1
    else:
        assert got and all(400 <= s < 500 for s in got), answer[:300]
        assert calls == []


# ---- parser errors: no key echo, no versions ------------------------------------------------------------------

# When llhttp refuses a request, aiohttp's default handler (web_protocol.RequestHandler.handle_error) logs the
# parser exception at ERROR level, with the offending bytes, and answers with those bytes in a text/plain body under
# aiohttp's own Server header. When the bad byte sits on the credential line (say a key read from a file that ends
# in CRLF), the key lands in the log and in the response.
MALFORMED_WITH_KEY = {
    "bare-lf-line-endings": lambda key: f"GET /api/tags HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n\n",
    "nul-after-key": lambda key: (
        f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\x00\r\n\r\n"
    ),
    "control-char-after-key": lambda key: (
        f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\x01\r\n\r\n"
    ),
    "bare-cr-after-key": lambda key: (
        f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\rX-A: b\r\n\r\n"
    ),
    "x-api-key-with-vertical-tab": lambda key: (
        f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {key}\x0b\r\n\r\n"
    ),
}


@pytest.mark.parametrize("variant", sorted(MALFORMED_WITH_KEY))
def test_malformed_request_does_not_echo_the_key_in_the_response(
    ollama: Deployment, upstream: FakeUpstream, variant: str
) -> None:
    answer = exchange(ollama.port, MALFORMED_WITH_KEY[variant](ollama.raw).encode("latin-1"))
    assert statuses(answer) == [400]
    assert upstream.calls() == []
    assert ollama.raw.encode() not in answer, "the error response echoes the client's API key"


@pytest.mark.parametrize("variant", sorted(MALFORMED_WITH_KEY))
def test_malformed_request_does_not_write_the_key_to_the_log(
    ollama: Deployment, upstream: FakeUpstream, variant: str
) -> None:
    before = len(ollama.gateway.output)
    answer = exchange(ollama.port, MALFORMED_WITH_KEY[variant](ollama.raw).encode("latin-1"))
    assert statuses(answer) == [400]
    time.sleep(0.3)  # the worker logs before it answers; give the reader thread a moment
    logged = "".join(ollama.gateway.output[before:])
    assert ollama.raw not in logged, "the gateway log holds the client's API key"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", id="cl-cl"
        ),
        pytest.param(b"get /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="lowercase-method"),
        pytest.param(b"GET /api/tags HTTP/1.1\nHost: 127.0.0.1\n\n", id="bare-lf"),
        pytest.param(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
    ],
)
def test_parser_level_errors_do_not_reveal_versions(ollama: Deployment, upstream: FakeUpstream, data: bytes) -> None:
    answer = exchange(ollama.port, data)
    assert statuses(answer) == [400]
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"aiohttp" not in head and b"python" not in head, head.decode("latin-1")
    assert upstream.calls() == []


# ---- methods --------------------------------------------------------------------------------------------------

METHOD_TRICKS = [
    pytest.param("get /api/tags HTTP/1.1", 400, id="lowercase-get"),
    pytest.param("post /api/pull HTTP/1.1", 400, id="lowercase-post-admin"),
    pytest.param("Post /api/pull HTTP/1.1", 400, id="mixed-case-post-admin"),
    pytest.param("PULL /api/pull HTTP/1.1", 400, id="unknown-method"),
    pytest.param("A" * 5000 + " /api/pull HTTP/1.1", 400, id="very-long-method"),
    pytest.param("POST\t/api/pull HTTP/1.1", 400, id="tab-separator"),
    pytest.param("TRACE /api/pull HTTP/1.1", 403, id="trace"),
    pytest.param("PROPFIND /api/pull HTTP/1.1", 403, id="webdav-propfind"),
    pytest.param("HEAD /api/pull HTTP/1.1", 403, id="head-admin"),
    pytest.param("HEAD /api/blobs/sha256-" + "a" * 64 + " HTTP/1.1", 403, id="head-blob-admin"),
    pytest.param("OPTIONS * HTTP/1.1", 400, id="options-asterisk"),
    pytest.param("CONNECT 127.0.0.1:{upstream} HTTP/1.1", 400, id="connect-to-upstream"),
    pytest.param("CONNECT /api/pull HTTP/1.1", 403, id="connect-path"),
    pytest.param("PUT /api/pull HTTP/1.1", 403, id="put-admin"),
]


@pytest.mark.parametrize(("line", "status"), METHOD_TRICKS)
def test_method_tricks_never_reach_the_upstream(
    ollama: Deployment, upstream: FakeUpstream, line: str, status: int
) -> None:
    line = line.replace("{upstream}", str(upstream.port))
    body = b"" if line.startswith("HEAD") else b'{"model":"llama3"}'
    data = (
        f"{line}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ollama.raw}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    answer = exchange(ollama.port, data)
    assert statuses(answer)[:1] == [status], answer[:300]
    assert upstream.calls() == []


def test_pri_preface_is_refused(ollama: Deployment, upstream: FakeUpstream) -> None:
    answer = exchange(ollama.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert statuses(answer) in ([400], [])
    assert upstream.calls() == []


# ---- credentials: header tricks against an admin route --------------------------------------------------------

CREDENTIAL_TRICKS: list[tuple[str, Callable[[Deployment], str], int]] = [
    ("lowercase-bearer", lambda d: f"Authorization: bearer {d.normal}\r\n", 403),
    ("two-spaces", lambda d: f"Authorization: Bearer  {d.normal}\r\n", 403),
    ("trailing-spaces", lambda d: f"Authorization: Bearer {d.normal}   \r\n", 403),
    ("tab-separator", lambda d: f"Authorization: Bearer\t{d.normal}\r\n", 401),
    ("no-separator", lambda d: f"Authorization: Bearer{d.normal}\r\n", 401),
    ("bearer-twice", lambda d: f"Authorization: Bearer Bearer {d.normal}\r\n", 401),
    ("two-tokens", lambda d: f"Authorization: Bearer {d.normal} {d.scoped}\r\n", 401),
    ("comma-joined", lambda d: f"Authorization: Bearer {d.normal}, Bearer {d.scoped}\r\n", 401),
    ("dup-different-case", lambda d: f"Authorization: Bearer {d.normal}\r\nauthorization: Bearer {d.normal}\r\n", 401),
    ("auth-and-x-api-key-differ", lambda d: f"Authorization: Bearer {d.normal}\r\nX-API-KEY: {d.scoped}\r\n", 401),
    ("auth-and-empty-x-api-key", lambda d: f"Authorization: Bearer {d.normal}\r\nx-api-key: \r\n", 401),
    ("empty-x-api-key", lambda d: "x-api-key: \r\n", 401),
    ("empty-authorization", lambda d: "Authorization: \r\n", 401),
    ("cyrillic-a-prefix", lambda d: f"Authorization: Bearer {d.normal.replace('aip_', 'аip_')}\r\n", 401),
    ("fullwidth-bearer", lambda d: f"Authorization: Ｂearer {d.normal}\r\n", 401),
    ("nbsp-separator", lambda d: f"Authorization: Bearer\u00a0{d.normal}\r\n", 401),
    ("key-upper-cased", lambda d: f"Authorization: Bearer {d.normal.upper()}\r\n", 401),
    ("key-truncated", lambda d: f"Authorization: Bearer {d.normal[:-1]}\r\n", 401),
    ("key-in-cookie", lambda d: f"Cookie: key={d.normal}\r\n", 401),
    ("key-in-proxy-authorization", lambda d: f"Proxy-Authorization: Bearer {d.normal}\r\n", 401),
]


@pytest.mark.parametrize(
    ("make", "status"), [pytest.param(make, status, id=name) for name, make, status in CREDENTIAL_TRICKS]
)
def test_credential_tricks_never_unlock_admin_routes(
    ollama: Deployment, upstream: FakeUpstream, make: Callable[[Deployment], str], status: int
) -> None:
    body = b'{"model":"llama3"}'
    data = (
        f"POST /api/pull HTTP/1.1\r\nHost: 127.0.0.1\r\n{make(ollama)}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    response = raw(ollama.port, data)
    assert response.status == status
    assert upstream.calls() == []


def test_credentials_in_a_chunked_trailer_are_not_credentials(ollama: Deployment, upstream: FakeUpstream) -> None:
    body = ALLOWED["ollama"].body
    data = (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + f"\r\n0\r\nAuthorization: Bearer {ollama.raw}\r\n\r\n".encode()
    )
    assert statuses(exchange(ollama.port, data)) == [401]
    assert upstream.calls() == []


# ---- upgrade: never a tunnel, never forwarded -----------------------------------------------------------------

UPGRADES = [
    pytest.param("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n", id="websocket"),
    pytest.param("Connection: Upgrade\r\nUpgrade: h2c\r\n", id="h2c"),
    pytest.param(
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        id="h2c-settings",
    ),
    pytest.param("Upgrade: websocket\r\n", id="upgrade-without-connection"),
    pytest.param("Connection: keep-alive, Upgrade\r\nUpgrade: tls/1.2, websocket\r\n", id="upgrade-list"),
]


@pytest.mark.parametrize("upgrade", UPGRADES)
@pytest.mark.parametrize("first", ["GET /api/tags", "POST /api/chat"])
def test_upgrade_requests_do_not_become_tunnels(
    ollama: Deployment, upstream: FakeUpstream, upgrade: str, first: str
) -> None:
    method, path = first.split()
    body = ALLOWED["ollama"].body if method == "POST" else None
    smuggled = message("POST", "/api/pull", b'{"model":"llama3"}', key=ollama.raw, extra="Connection: close\r\n")
    answer = exchange(ollama.port, message(method, path, body, key=ollama.raw, extra=upgrade) + smuggled, timeout=1.5)
    got = statuses(answer)
    assert got[:1] == [200] and 101 not in got
    calls = upstream.calls()
    assert [(c.method, c.raw_path) for c in calls] == [(method, path)], "the smuggled admin request was forwarded"
    assert not header_names(calls[0]) & {"upgrade", "connection", "http2-settings"}


def test_expect_continue_with_an_oversized_body_is_refused_before_reading(
    ollama: Deployment, upstream: FakeUpstream
) -> None:
    data = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ollama.normal}\r\n"
        "Expect: 100-continue\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = exchange(ollama.port, data, timeout=2.0, idle=0.3)
    assert statuses(answer)[:1] == [413]
    assert b"100 Continue" not in answer
    assert time.monotonic() - started < 2.0
    assert upstream.calls() == []


def test_expect_header_is_not_forwarded(ollama: Deployment, upstream: FakeUpstream) -> None:
    response = request(
        ollama.port, "POST", "/api/chat", key=ollama.normal, headers=[("Expect", "100-continue")], body=CHAT
    )
    assert response.status == 200
    (call,) = upstream.calls()
    assert "expect" not in call.headers


# ---- bodies: model scope ----------------------------------------------------------------------------------------

DEEP_WITH_ESCAPE = b'{"model":"llama3","p":"\\u0041","x":' + b"[" * 1010 + b"]" * 1010 + b"}"

# Ollama decodes request bodies with Go's encoding/json, which matches object keys to struct fields
# case-insensitively and lets the last match win (golang/go#43664): {"model":"llama3","Model":"mixtral"} runs
# mixtral. A key limited to llama3 must not get there by spelling the field differently.
SCOPE_TRICKS = [
    pytest.param("/api/chat", b'{"model":"llama3","Model":"mixtral"}', 400, id="case-variant-Model"),
    pytest.param("/api/generate", b'{"model":"llama3","MODEL":"mixtral","prompt":"x"}', 400, id="case-variant-MODEL"),
    pytest.param("/api/embed", b'{"model":"llama3","mOdEl":"mixtral","input":"x"}', 400, id="case-variant-mOdEl"),
    pytest.param("/v1/chat/completions", b'{"model":"llama3","Model":"mixtral"}', 400, id="case-variant-openai-route"),
    pytest.param("/api/chat", b'{"model":"llama3","mod\\u0045l":"mixtral"}', 400, id="case-variant-escaped"),
    pytest.param("/api/show", b'{"name":"llama3","Model":"mixtral"}', 400, id="show-name-then-Model"),
    pytest.param("/api/chat", b'{"Model":"mixtral"}', 400, id="only-case-variant"),
    pytest.param("/api/chat", b'{"model":["llama3"]}', 400, id="model-array"),
    pytest.param("/api/chat", b'{"model":{"name":"llama3"}}', 400, id="model-object"),
    pytest.param("/api/show", b'{"name":["llama3"]}', 400, id="name-array"),
    pytest.param("/api/chat", DEEP_WITH_ESCAPE, 400, id="1010-levels-with-escape"),
    pytest.param("/api/chat", b'{"model":null}', 400, id="model-null"),
    pytest.param("/api/chat", b'{"model":""}', 403, id="model-empty"),
    pytest.param("/api/chat", b'{"model":"llama3","model":"mixtral"}', 400, id="duplicate-literal"),
    pytest.param("/api/show", b'{"name":"llama3","n\\u0061me":"mixtral"}', 400, id="duplicate-escaped-name"),
    pytest.param("/api/chat", b'{"model":"llama3"}{"model":"mixtral"}', 400, id="concatenated-objects"),
    pytest.param("/api/chat", b'\xef\xbb\xbf{"model":"mixtral"}', 400, id="utf8-bom"),
    pytest.param("/api/chat", b'{"model":"mixtral" /* llama3 */}', 400, id="comment"),
    pytest.param("/api/chat", b'{"model":"llama3","t":NaN}', 400, id="nan"),
    pytest.param("/api/chat", b'{"model":"llama3","t":Infinity}', 400, id="infinity"),
    pytest.param("/api/chat", b'{"model":"llama3","t":1e400}', 400, id="float-overflow"),
    pytest.param("/api/chat", b'{"model":"llama3","t":' + b"9" * 5000 + b"}", 400, id="huge-integer"),
    pytest.param("/api/chat", b'{"model":"llama3","p":"\\u0041","t":' + b"9" * 5000 + b"}", 400, id="huge-int-escape"),
    pytest.param("/api/chat", b'{"model":"llama3\\u0000"}', 403, id="model-with-nul"),
    pytest.param("/api/chat", b'{"model":"llama3","p":"\\ud800"}', 400, id="lone-surrogate"),
    pytest.param(
        "/api/chat", b'{"model":"llama3","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, id="100k-levels"
    ),
]


@pytest.mark.parametrize(("path", "body", "status"), SCOPE_TRICKS)
def test_body_tricks_do_not_widen_a_model_scoped_key(
    ollama: Deployment, upstream: FakeUpstream, path: str, body: bytes, status: int
) -> None:
    response = request(ollama.port, "POST", path, key=ollama.scoped, body=body)
    calls = upstream.calls()
    assert calls == [], f"the upstream received {calls[0].body[:80]!r}"
    assert response.status == status


def test_gateway_survives_hostile_json_and_keeps_serving(ollama: Deployment, upstream: FakeUpstream) -> None:
    hostile = [
        b'{"model":"llama3","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model":"llama3","x":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        DEEP_WITH_ESCAPE,
    ]
    for body in hostile:
        assert request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=body).status < 600
    assert request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=CHAT).status == 200
    assert len(upstream.calls()) == 1


def test_nested_model_fields_are_not_the_model(ollama: Deployment, upstream: FakeUpstream) -> None:
    body = b'{"model":"llama3","options":{"model":"mixtral","model":"x"}}'
    assert request(ollama.port, "POST", "/api/chat", key=ollama.scoped, body=body).status == 200
    (call,) = upstream.calls()
    assert call.body == body  # forwarded byte for byte, never re-serialised


def test_a_second_content_encoding_header_is_not_forwarded(ollama: Deployment, upstream: FakeUpstream) -> None:
    """The gateway checks only the first Content-Encoding; the upstream would read `identity, gzip`."""
    headers = [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
    response = request(ollama.port, "POST", "/api/chat", key=ollama.normal, headers=headers, body=CHAT)
    calls = upstream.calls()
    assert not [c for c in calls if "gzip" in [v.lower() for k, v in c.header_list if k.lower() == "content-encoding"]]
    assert response.status == 415


# ---- headers the upstream must not see ----------------------------------------------------------------------

# The gateway drops X-Forwarded-For/Host/Proto/Port/Prefix, X-Real-IP and X-Original-URL because a client must
# not choose its apparent address, host, scheme or path. These spellings say the same and still pass.
SPOOFING_HEADERS = [
    pytest.param("X-Forwarded-Server", "evil.example", id="x-forwarded-server"),
    pytest.param("X-Forwarded-Scheme", "https", id="x-forwarded-scheme"),
    pytest.param("X-Forwarded-Uri", "/api/pull", id="x-forwarded-uri"),
    pytest.param("X-Original-Host", "evil.example", id="x-original-host"),
    pytest.param("True-Client-IP", "10.9.9.9", id="true-client-ip"),
    pytest.param("X-Client-IP", "10.9.9.9", id="x-client-ip"),
]


@pytest.mark.parametrize(("name", "value"), SPOOFING_HEADERS)
def test_client_identity_and_rewrite_headers_are_not_forwarded(
    ollama: Deployment, upstream: FakeUpstream, name: str, value: str
) -> None:
    response = request(ollama.port, "GET", "/api/tags", key=ollama.normal, headers=[(name, value)])
    assert response.status == 200
    (call,) = upstream.calls()
    assert name.lower() not in header_names(call)


def test_credential_headers_never_reach_the_upstream(ollama: Deployment, upstream: FakeUpstream) -> None:
    headers = [("X-Api-Key", ollama.normal), ("Proxy-Authorization", "Basic eDp5")]
    response = request(ollama.port, "GET", "/api/tags", key=ollama.normal, headers=headers)
    assert response.status == 200
    (call,) = upstream.calls()
    assert not header_names(call) & {"authorization", "x-api-key", "proxy-authorization"}
    assert all(ollama.normal not in value for _, value in call.header_list)


def test_hop_by_hop_response_headers_named_in_connection_are_dropped(
    ollama: Deployment, upstream: FakeUpstream
) -> None:
    async def tags(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=b'{"models":[]}',
            content_type="application/json",
            headers={"Connection": "keep-alive, X-Upstream-Hop", "X-Upstream-Hop": "internal", "X-Kept": "1"},
        )

    upstream.script("/api/tags", tags)
    response = request(ollama.port, "GET", "/api/tags", key=ollama.normal)
    assert response.status == 200
    assert response.headers.get("x-kept") == "1"
    assert "x-upstream-hop" not in response.headers


def test_upstream_set_cookie_and_framing_headers_are_not_relayed(ollama: Deployment, upstream: FakeUpstream) -> None:
    async def tags(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=b'{"models":[]}',
            content_type="application/json",
            headers={"Set-Cookie": "s=1", "Keep-Alive": "timeout=1", "Proxy-Authenticate": "Basic"},
        )

    upstream.script("/api/tags", tags)
    response = request(ollama.port, "GET", "/api/tags", key=ollama.normal)
    assert response.status == 200
    assert not {"set-cookie", "keep-alive", "proxy-authenticate"} & set(response.headers)


# ---- targets, Host and Origin ---------------------------------------------------------------------------------

TARGET_TRICKS = [
    pytest.param("POST", "https://127.0.0.1/api/pull", "127.0.0.1", 403, id="absolute-https-admin"),
    pytest.param("POST", "http://LOCALHOST/api/pull", "127.0.0.1", 400, id="absolute-other-loopback-name"),
    pytest.param("POST", "http://127.0.0.1:1/api/pull", "127.0.0.1", 400, id="absolute-port-mismatch"),
    pytest.param("POST", "http://127.0.0.1?/api/pull", "127.0.0.1", 400, id="absolute-query-before-path"),
    pytest.param("POST", "/api/pull?x=/../chat", "127.0.0.1", 403, id="traversal-in-query"),
    pytest.param("POST", "/api/pull%3F/../chat", "127.0.0.1", 400, id="encoded-question-mark"),
    pytest.param("POST", "/api/pull%23", "127.0.0.1", 403, id="encoded-hash"),
    pytest.param("POST", "/api/pull%20", "127.0.0.1", 403, id="encoded-space"),
    pytest.param("POST", "/api/chat/../pull", "127.0.0.1", 400, id="dotdot-from-inference"),
    pytest.param("POST", "/api/pull", "[::ffff:127.0.0.1]", 403, id="host-v4-mapped"),
    pytest.param("POST", "/api/pull", "127.1", 403, id="host-short-ipv4"),
    pytest.param("POST", "/api/pull", "2130706433", 403, id="host-decimal-ipv4"),
]


@pytest.mark.parametrize(("method", "target", "host", "status"), TARGET_TRICKS)
def test_target_and_host_tricks_never_reach_admin_routes(
    ollama: Deployment, upstream: FakeUpstream, method: str, target: str, host: str, status: int
) -> None:
    body = b'{"model":"llama3"}'
    data = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ollama.normal}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    assert raw(ollama.port, data).status == status
    assert upstream.calls() == []


def test_absolute_form_never_redirects_the_upstream_connection(ollama: Deployment, upstream: FakeUpstream) -> None:
    data = (
        f"GET http://localhost:6379/api/tags HTTP/1.1\r\nHost: localhost:6379\r\n"
        f"Authorization: Bearer {ollama.normal}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert raw(ollama.port, data).status == 200
    (call,) = upstream.calls()  # the configured upstream answered, not localhost:6379
    assert call.raw_path == "/api/tags"
    assert call.headers["host"] == f"127.0.0.1:{upstream.port}"


ORIGIN_TRICKS = [
    pytest.param("http://localhost:3000@evil.example", id="userinfo"),
    pytest.param("http://evil.example#@localhost", id="fragment-userinfo"),
    pytest.param("http://localhost/evil", id="with-path"),
    pytest.param("http://localhost\\.evil.example", id="backslash"),
    pytest.param("ws://localhost", id="websocket-scheme"),
    pytest.param("http://localhost, http://evil.example", id="list"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("origin", ORIGIN_TRICKS)
def test_origin_tricks_are_refused(ollama: Deployment, upstream: FakeUpstream, origin: str) -> None:
    response = request(ollama.port, "GET", "/api/tags", key=ollama.normal, headers=[("Origin", origin)])
    assert response.status == 403
    assert upstream.calls() == []


def test_query_is_forwarded_verbatim_never_decoded(ollama: Deployment, upstream: FakeUpstream) -> None:
    target = "/api/tags?x=%0d%0aHost:%20evil.example&y=%2e%2e%2fpull"
    assert request(ollama.port, "GET", target, key=ollama.normal).status == 200
    (call,) = upstream.calls()
    assert call.raw_path == target
    assert call.headers["host"] == f"127.0.0.1:{upstream.port}"


# ---- errors -----------------------------------------------------------------------------------------------------


def test_internal_errors_reveal_nothing(ollama: Deployment, upstream: FakeUpstream) -> None:
    """Whatever status a hostile body earns, the response is the generic envelope without internals."""
    response = request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=b'{"model":[]}')
    text = response.body.decode()
    assert "Traceback" not in text and "TypeError" not in text and "unhashable" not in text
    assert set(response.json()["error"]) == {"message", "type", "code"}  # type: ignore[arg-type]
    assert upstream.calls() == []


# ---- slow clients -----------------------------------------------------------------------------------------------


def test_slow_clients_do_not_starve_others(ollama: Deployment, upstream: FakeUpstream) -> None:
    """Slowloris headers and a trickled body on 15 connections for ~3 s; every normal request meanwhile is fast."""
    slow: list[socket.socket] = []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", ollama.port), timeout=2)
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", ollama.port), timeout=2)
            sock.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ollama.normal}\r\n"
                "Content-Length: 100000\r\n\r\n{".encode()
            )
            slow.append(sock)
        deadline = time.monotonic() + 3.0
        served = 0
        for step in range(30):
            if time.monotonic() > deadline:
                break
            for index, sock in enumerate(slow):
                sock.sendall(b"X-Slow-%d: 1\r\n" % step if index < 10 else b" ")
            started = time.monotonic()
            response = request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=CHAT, timeout=5)
            assert response.status == 200
            assert time.monotonic() - started < 1.0
            served += 1
            time.sleep(0.2)
        assert served >= 5
    finally:
        for sock in slow:
            sock.close()
    assert request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=CHAT).status == 200


def test_audit_records_the_model_the_upstream_was_asked_for(ollama: Deployment, upstream: FakeUpstream) -> None:
    """Audit must not claim llama3 for a request the upstream decodes as mixtral."""
    before = len(ollama.gateway.audit())
    body = b'{"model":"llama3","Model":"mixtral"}'
    response = request(ollama.port, "POST", "/api/chat", key=ollama.normal, body=body)
    if response.status != 200:  # refusing the ambiguous body is the other acceptable answer
        assert (response.status, upstream.calls()) == (400, [])
        return
    record = ollama.gateway.wait_audit(before + 1)[-1]
    forwarded = orjson.loads(upstream.calls()[0].body)
    seen_by_go = [v for k, v in forwarded.items() if k.lower() == "model"][-1]
    assert record["model"] == seen_by_go, "the audit record names a different model than the upstream runs"
