"""The attack runner: every case of the catalog (tests/hardening/attack_catalog.py, which documents the format) sent
as exact bytes to a real gateway in front of a recording upstream, and judged by what reached the upstream and what
the gateway answered.

Every case is also held to the invariants: no 101 (no tunnel), no credential in any header the upstream saw, and the
deployment still serves a normal request afterwards (else the case failed: the gateway crashed or hung).

Plain-Python API (no pytest needed): `load_catalog()`, `AttackEnv` (context manager), `run_case(env, case)` ->
`Verdict`, `run_all()` -> `Summary` with per-category counts; every process started here is stopped on exit.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aiperimeter.keys import generate_key
from tests.hardening.attack_catalog import (
    CATALOG,
    CATEGORIES,
    DEPLOYMENTS,
    GATEWAY_OF,
    Case,
    CatalogError,
    MustNot,
    UpstreamRule,
    load_catalog,
)
from tests.hardening.attack_wire import exchange, header_field, read_answer, statuses
from tests.hardening.jwts import JWTForge
from tests.support.gateway import GatewayProcess, add_key, revoke_key, start_gateway
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream, Seen

__all__ = [
    "CATALOG", "CATEGORIES", "CORS_ORIGIN", "DEPLOYMENTS", "AttackEnv", "Case", "CatalogError", "CategoryCount",
    "MustNot", "Summary", "UpstreamRule", "Verdict", "build_request", "exchange", "iter_failures", "load_catalog",
    "run_all", "run_case", "statuses",
]  # fmt: skip

START_TIMEOUT = 60.0  # generous: a loaded machine (a soak next door) slows the gateway's imports, not its checks
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
_PLACEHOLDER = re.compile(
    r"\{(key|admin_key|scoped_key|revoked_key|expired_key|unknown_key|key_truncated|key_upper|key_flipped|"
    r"key_cyrillic|key_id_only|basic_user|basic_pass|gateway_port|upstream_port|jwt:[a-z0-9_-]+|repeat:\d+:[^{}]*)\}"
)
_RAW_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt\\])")
_BODY_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_SIMPLE = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}

# A tool policy for the ollama-tools deployment: its normal key may declare get_weather and read-only SQL only.
TOOL_POLICY = """
description: attack catalog
action: block
tools:
  get_weather:
    args:
      city: {type: string, max_length: 64}
  run_sql:
    args:
      query: {required: true, sql: {dialect: postgres, tables: [orders]}}
"""
CORS_ORIGIN = "https://chat.example.com"  # the one browser origin the llamacpp gateway serves
CHAT = '{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}'
# What each deployment answers for its normal key: served after every case to prove the gateway still works.
HEALTH: dict[str, tuple[str, str, str]] = {
    "ollama": ("POST", "/api/chat", CHAT),
    "vllm": ("POST", "/v1/chat/completions", CHAT),
    "llamacpp": ("POST", "/completion", CHAT),
    "vllm-jwt": ("POST", "/v1/chat/completions", CHAT),
    "ollama-tools": ("POST", "/api/chat", CHAT),
}


# ---- the deployments ----------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    name: str
    gateway: GatewayProcess
    keys: dict[str, str]

    @property
    def port(self) -> int:
        return self.gateway.port


class AttackEnv:
    """The upstream (own or given) and one gateway per upstream kind, each with its data dir and keys.

    Deployments that differ only in credentials share a gateway, since starting one costs seconds: `ollama-tools` is
    the ollama gateway seen through keys held to a tool policy, `vllm-jwt` the vllm gateway seen through JWTs. The
    llamacpp gateway serves one browser origin (CORS_ORIGIN), so lookalike origins have something to imitate.
    """

    def __init__(self, upstream: FakeUpstream | None = None, deployments: Iterable[str] = DEPLOYMENTS) -> None:
        self._own_upstream = upstream is None
        self.upstream = upstream or FakeUpstream()
        self.names = tuple(deployments)
        self.deployments: dict[str, Deployment] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.jwt = JWTForge()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> AttackEnv:
        try:
            if self._own_upstream:
                self.upstream.start()
            self._tmp = tempfile.TemporaryDirectory(prefix="aip-attacks-")
            root = Path(self._tmp.name)
            kinds = sorted({GATEWAY_OF[name] for name in self.names})
            with ThreadPoolExecutor(2) as pool:  # two at a time: each start takes seconds, mostly imports
                futures = {kind: pool.submit(self._start, kind, root / kind) for kind in kinds}
                for kind, future in futures.items():
                    with contextlib.suppress(Exception):
                        self.gateways[kind], keys = future.result()
                        for name in self.names:
                            if GATEWAY_OF[name] == kind:
                                own = keys[f"{name}:key"] if f"{name}:key" in keys else keys["key"]
                                scoped = keys.get(f"{name}:scoped_key", keys["scoped_key"])
                                view = {**keys, "key": own, "scoped_key": scoped, **spellings(own)}
                                self.deployments[name] = Deployment(name, self.gateways[kind], view)
                for future in futures.values():
                    future.result()  # the first failure, once every started gateway is known (and stopped below)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for gateway in self.gateways.values():
            gateway.stop()
            # The audit log goes with the temporary directory below: what the leak check must read, it reads now.
            audit = gateway.data_dir / "audit.jsonl"
            if audit.exists():
                LEAKS.texts.append(audit.read_text(errors="replace"))
        self.gateways.clear()
        self.deployments.clear()
        if self._own_upstream and self.upstream.port:
            self.upstream.stop()
            self.upstream.port = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _start(self, kind: str, data_dir: Path) -> tuple[GatewayProcess, dict[str, str]]:
        data_dir.mkdir(parents=True)
        extra: list[str] = []
        keys = {
            "key": add_key(data_dir, "normal")[1],
            "admin_key": add_key(data_dir, "admin", scopes=frozenset({"admin"}))[1],
            "scoped_key": add_key(data_dir, "scoped", models=frozenset({"llama3"}))[1],
            "expired_key": add_key(data_dir, "expired", expires_at=time.time() - 60)[1],
        }
        revoked, keys["revoked_key"] = add_key(data_dir, "revoked")
        revoke_key(data_dir, revoked.id)
        keys["unknown_key"] = generate_key()[1]
        if kind == "ollama":
            (data_dir / "policies").mkdir()
            (data_dir / "policies" / "catalog.yaml").write_text(TOOL_POLICY)
            extra += ["--tool-policies", str(data_dir / "policies")]
            keys["ollama-tools:key"] = add_key(data_dir, "tools", tool_policy="catalog")[1]
            keys["ollama-tools:scoped_key"] = add_key(
                data_dir, "tools-scoped", models=frozenset({"llama3"}), tool_policy="catalog"
            )[1]
        # Short client timeouts, so that a slow client's case can show the gateway hangs up on it (`closed_within`).
        settings = CLIENT_TIMEOUTS
        if kind == "llamacpp":
            settings += f"cors_origins: ['{CORS_ORIGIN}']\n"
        if kind == "vllm":
            settings += yaml.safe_dump(yaml.safe_load(self.jwt.settings_yaml(data_dir)))
        config = data_dir / "gateway.yaml"
        config.write_text(settings)
        extra += ["--config", str(config)]
        for name, value in spellings(keys["key"]).items():
            if name not in ("key_id_only", "key_flipped"):  # the public id; a flipped key is the key but one char
                LEAKS.secrets.add(value)
        LEAKS.secrets.add(keys["unknown_key"])
        return start_gateway(data_dir, self.upstream.url, kind, *extra, timeout=START_TIMEOUT), keys

    def secrets(self) -> set[str]:
        """Every credential the cases send, and spellings that would reveal one (not the public key id)."""
        out = set(self.jwt.issued)
        for deployment in self.deployments.values():
            out |= {value for name, value in deployment.keys.items() if name != "key_id_only"}
        return out


CLIENT_TIMEOUTS = "timeouts: {client_idle: 2.0, keepalive: 2.0}\n"


def spellings(key: str) -> dict[str, str]:
    """Near misses of a valid key: each must be refused like any other unknown credential."""
    last = key[-1]
    return {
        "key_truncated": key[:-1],
        "key_upper": key.upper(),
        "key_flipped": key[:-1] + ("A" if last != "A" else "B"),  # breaks the checksum
        "key_cyrillic": key.replace("a", "\u0430", 1),
        "key_id_only": key[: key.index("_", 4)],
        "basic_user": base64.b64encode(f"{key}:".encode()).decode(),
        "basic_pass": base64.b64encode(f"x:{key}".encode()).decode(),
    }


# ---- building the bytes -------------------------------------------------------------------------------------------


def _substitute(text: str, env: AttackEnv, deployment: Deployment) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("repeat:"):
            _, count, piece = name.split(":", 2)
            return piece * int(count)
        if name.startswith("jwt:"):
            return env.jwt.token(name[4:])
        if name == "gateway_port":
            return str(deployment.port)
        if name == "upstream_port":
            return str(env.upstream.port)
        return deployment.keys[name]

    return _PLACEHOLDER.sub(one, text)


def _raw_bytes(text: str, crlf: bool) -> bytes:
    data = text.encode("utf-8")
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    return _RAW_ESCAPE.sub(lambda m: _SIMPLE.get(m.group(1)) or bytes([int(m.group(1)[1:], 16)]), data)


def build_request(case: Case, env: AttackEnv, deployment: Deployment) -> bytes:
    assert case.raw is not None
    text = _substitute(case.raw, env, deployment)
    if case.raw_body:
        return _raw_bytes(text, case.crlf == "crlf")
    head = text.rstrip("\n") + "\n"
    body = b""
    if case.body is not None:
        body = _BODY_ESCAPE.sub(
            lambda m: bytes([int(m.group(1), 16)]), _substitute(case.body, env, deployment).encode("utf-8")
        )
        head += f"Content-Type: application/json\nContent-Length: {len(body)}\n"
    head += "Connection: close\n\n"
    return _raw_bytes(head, case.crlf == "crlf") + body


# ---- the wire -----------------------------------------------------------------------------------------------------


def health_request(deployment: Deployment, env: AttackEnv) -> bytes:
    method, path, body = HEALTH[deployment.name]
    credential = env.jwt.token("valid") if deployment.name == "vllm-jwt" else deployment.keys["key"]
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {credential}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


# ---- judging ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    case_id: str
    category: str
    ok: bool
    reasons: tuple[str, ...]
    status: int | None  # the first status answered, None when the gateway answered nothing
    upstream_seen: tuple[str, ...]  # "METHOD raw_path" of every call the case caused


@dataclass
class CategoryCount:
    tried: int = 0
    bypasses: int = 0


@dataclass
class Summary:
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def by_category(self) -> dict[str, CategoryCount]:
        counts: dict[str, CategoryCount] = {name: CategoryCount() for name in CATEGORIES}
        for verdict in self.verdicts:
            count = counts.setdefault(verdict.category, CategoryCount())
            count.tried += 1
            count.bypasses += not verdict.ok
        return counts

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok]


def _send_slow(case: Case, env: AttackEnv, deployment: Deployment, ignored: list[Seen]) -> tuple[bytes, list[str]]:
    reasons: list[str] = []
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=4.0) as sock:
        for text, pause in case.slow:
            piece = _raw_bytes(_substitute(text, env, deployment), case.crlf == "crlf")
            try:
                sock.sendall(piece)
            except OSError:
                break  # the gateway gave up on this client: what it answered is read below
            if pause:
                started = time.monotonic()
                if case.probe_between:
                    before = len(env.upstream.calls())
                    got = statuses(exchange(deployment.port, health_request(deployment, env)))
                    ignored.extend(env.upstream.calls()[before:])
                    if got[:1] != [200]:
                        reasons.append(f"a normal request during the slow client got {got or 'no answer'}")
                time.sleep(max(0.0, pause - (time.monotonic() - started)))
        answer = read_answer(sock, time.monotonic() + 1.0)
        if case.closed_within is not None and not _closed_by_peer(sock, case.closed_within):
            reasons.append(f"the gateway still held the slow client's connection {case.closed_within} s later")
        return answer, reasons


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the gateway closes the connection within `within` seconds (what it still sends is drained)."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True  # reset: closed as well
    return False


def run_case(env: AttackEnv, case: Case) -> Verdict:
    deployment = env.deployments[case.deployment]
    env.upstream.clear()
    ignored: list[Seen] = []
    reasons: list[str] = []
    if case.slow:
        answer, reasons = _send_slow(case, env, deployment, ignored)
    else:
        answer = exchange(deployment.port, build_request(case, env, deployment))
    calls = [c for c in env.upstream.calls() if not any(c is i for i in ignored)]
    LEAKS.texts.append(answer.decode("latin-1"))
    got = statuses(answer)
    must_not = case.must_not
    for rule in must_not.rules():
        for call in calls:
            if rule.matches(call):
                reasons.append(f"reached the upstream: {call.method} {call.raw_path[:120]}")
    for status in got:
        if status == 101 or must_not.forbids(status):
            reasons.append(f"answered {status}")
    sent_back = {name for name, _ in map(header_field, answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:])}
    for header in must_not.response_header:
        if header.lower().encode() in sent_back:
            reasons.append(f"answered with {header}")
    secrets = env.secrets()
    if must_not.leak_key and any(s.encode() in answer for s in secrets):
        reasons.append("the response holds a credential")
    for call in calls:
        names = {name.lower() for name, _ in call.header_list}
        for header in must_not.forward_header:
            if header.lower() in names:
                reasons.append(f"forwarded the {header} header")
        if any(secret in value for _, value in call.header_list for secret in secrets):
            reasons.append("a credential reached the upstream in a header")
    first = got[0] if got else None
    if case.expect_status and (first or 0) not in case.expect_status:
        reasons.append(f"expected {list(case.expect_status)}, got {first or 'no answer'}")
    if case.expect_statuses is not None and tuple(got) != case.expect_statuses:
        reasons.append(f"expected the statuses {list(case.expect_statuses)}, got {got}")
    reasons += _still_serving(env, deployment)
    # Whatever reached the upstream after the answer was read (a request forwarded late, behind the normal one),
    # other than the normal request itself, is judged too.
    method, path, body = HEALTH[deployment.name]
    late = [c for c in env.upstream.calls() if not any(c is i for i in ignored) and not any(c is k for k in calls)]
    normal = next((c for c in late if (c.method, c.raw_path, c.body) == (method, path, body.encode())), None)
    for call in late:
        if call is not normal and any(rule.matches(call) for rule in must_not.rules()):
            reasons.append(f"reached the upstream late: {call.method} {call.raw_path[:120]}")
    env.upstream.clear()
    return Verdict(
        case.id, case.category, not reasons, tuple(reasons), first, tuple(f"{c.method} {c.raw_path}" for c in calls)
    )


def _still_serving(env: AttackEnv, deployment: Deployment) -> list[str]:
    if deployment.gateway.process.poll() is not None:
        return [f"the {deployment.name} gateway exited with {deployment.gateway.process.returncode}"]
    try:
        got = statuses(exchange(deployment.port, health_request(deployment, env)))
    except OSError as exc:
        return [f"the {deployment.name} gateway refused a normal request afterwards: {exc}"]
    return [] if got[:1] == [200] else [f"a normal request afterwards got {got or 'no answer'}"]


def run_all(
    directory: Path = CATALOG, *, upstream: FakeUpstream | None = None, cases: list[Case] | None = None
) -> Summary:
    """Run every case (or the given ones) against fresh deployments; every process started here is stopped."""
    chosen = cases if cases is not None else load_catalog(directory)
    needed = sorted({c.deployment for c in chosen}, key=DEPLOYMENTS.index)
    summary = Summary()
    started = time.monotonic()
    with AttackEnv(upstream, needed) as env:
        for case in chosen:
            summary.verdicts.append(run_case(env, case))
    summary.seconds = time.monotonic() - started
    return summary


def iter_failures(summary: Summary) -> Iterator[str]:
    for verdict in summary.failed:
        yield f"{verdict.category}/{verdict.case_id}: {'; '.join(verdict.reasons)}"
