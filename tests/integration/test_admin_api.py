"""The admin API of a running gateway (`--admin-listen`), and `aiperimeter keys ... --server` on top of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest

from aiperimeter.keys import KEY_RE
from tests.support.gateway import GatewayProcess, add_key, run_gateway_expecting_exit, start_gateway
from tests.support.http import Response, raw, request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

ADMIN_LINE = "aiperimeter admin API listening on"


def admin_url(gateway: GatewayProcess) -> str:
    lines = [line for line in gateway.output if ADMIN_LINE in line]
    assert len(lines) == 1, "".join(gateway.output)
    return next(word for word in lines[0].split() if word.startswith("http"))


def admin_port(gateway: GatewayProcess) -> int:
    return int(admin_url(gateway).rsplit(":", 1)[1])


def start(tmp_path: Path, upstream: FakeUpstream, *extra: str) -> tuple[GatewayProcess, int, str]:
    """A gateway with its admin API on a port of its own, and an admin key: (gateway, admin port, admin key)."""
    _, admin = add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--admin-listen", "127.0.0.1:0", *extra)
    return gateway, admin_port(gateway), admin


SHOWN_ONCE = "<the secret shown once>"


def shown_once(text: str, secret: str | None) -> str:
    """A command or response that hands over a new secret shows it exactly once: that showing is no leak, but any
    other appearance still is (the leak check sees the rest of the text)."""
    if secret is None:
        return text
    LEAKS.secrets.add(secret)
    return text.replace(secret, SHOWN_ONCE, 1)


def api(port: int, method: str, path: str, key: str | None, body: dict[str, object] | bytes | None = None) -> Response:
    response = request(port, method, path, key=key, body=body)  # records the response in LEAKS.texts
    if response.body.startswith(b"{"):
        secret = response.json().get("secret")
        if isinstance(secret, str):
            LEAKS.texts[-1] = shown_once(LEAKS.texts[-1], secret)
    return response


def new_secret_in(stdout: str) -> str | None:
    """The secret a `keys create` or `keys rotate` printed (JSON or text), if any."""
    if stdout.startswith("{"):
        secret = orjson.loads(stdout).get("secret")
        return secret if isinstance(secret, str) else None
    _, marker, rest = stdout.partition("This is the only time")
    match = KEY_RE.search(rest) if marker else None
    return match.group(0) if match else None


def keys_cli(admin: str | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "AIPERIMETER_ADMIN_KEY"}
    environment.update({"COLUMNS": "200", **(env or {})})
    if admin is not None:
        environment["AIPERIMETER_ADMIN_KEY"] = admin
    done = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    LEAKS.texts.append(shown_once(done.stdout + done.stderr, new_secret_in(done.stdout)))
    if admin is not None:
        assert admin not in done.stdout + done.stderr
    return done


def cli_json(admin: str, *args: str) -> dict[str, object]:
    done = keys_cli(admin, *args, "--json")
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


def wait_for(check: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


def gateway_status(gateway: GatewayProcess, key: str) -> tuple[int, str | None]:
    response = request(gateway.port, "GET", "/v1/models", key=key)
    return response.status, response.code if response.status != 200 else None


def key_events(gateway: GatewayProcess) -> list[dict[str, object]]:
    return [r for r in gateway.audit() if r.get("event") == "key"]


# --- the API ----------------------------------------------------------------------------------------------------


def test_crud_and_lifecycle_through_the_api(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    caller = admin[4:16]
    try:
        health = api(port, "GET", "/admin/healthz", admin)
        assert health.status == 200 and health.json() == {"status": "ok"}
        assert health.headers["server"] == "aiperimeter" and health.headers["cache-control"] == "no-store"

        created = api(
            port,
            "POST",
            "/admin/keys",
            admin,
            {"name": "svc", "models": ["m1"], "expires_in": 3600, "rpm": 60, "tpm": 5000, "concurrency": 2},
        )
        assert created.status == 201, created.body
        doc = created.json()
        key_id, secret = str(doc["id"]), str(doc["secret"])
        assert secret.startswith(f"aip_{key_id}_") and doc["models"] == ["m1"] and doc["status"] == "active"
        assert doc["limits"] == {"rpm": 60, "tpm": 5000, "concurrency": 2}
        assert 3590 < float(doc["expires_at"]) - time.time() <= 3600  # type: ignore[arg-type]
        wait_for(lambda: gateway_status(gateway, secret) == (200, None), 2)

        listed = api(port, "GET", "/admin/keys", admin).json()
        assert listed["object"] == "list"
        assert {k["id"] for k in listed["data"]} == {caller, key_id}  # type: ignore[union-attr, index]
        assert b"secret" not in orjson.dumps(listed)
        shown = api(port, "GET", f"/admin/keys/{key_id}", admin).json()
        assert shown["name"] == "svc" and "secret" not in shown

        rotated = api(port, "POST", f"/admin/keys/{key_id}/rotate", admin, {"grace": 30}).json()
        new = str(rotated["secret"])
        assert new != secret and new.startswith(f"aip_{key_id}_") and rotated["rotation_grace_until"] is not None
        assert gateway_status(gateway, new) == (200, None)
        assert gateway_status(gateway, secret) == (200, None)  # within the grace

        suspended = api(port, "POST", f"/admin/keys/{key_id}/suspend", admin)
        assert suspended.status == 200 and suspended.json()["status"] == "suspended"
        wait_for(lambda: gateway_status(gateway, new) == (401, "key_suspended"), 1.0)
        resumed = api(port, "POST", f"/admin/keys/{key_id}/resume", admin, {})
        assert resumed.status == 200 and resumed.json()["status"] == "active"
        wait_for(lambda: gateway_status(gateway, new) == (200, None), 1.0)

        revoked = api(port, "POST", f"/admin/keys/{key_id}/revoke", admin)
        assert revoked.status == 200 and revoked.json()["status"] == "revoked"
        again = api(port, "POST", f"/admin/keys/{key_id}/rotate", admin)
        assert again.status == 409 and again.code == "key_not_changeable"

        events = key_events(gateway)
        assert [(e["action"], e["key_id"], e["actor"]) for e in events] == [
            (action, key_id, f"admin-api:{caller}") for action in ("create", "rotate", "suspend", "resume", "revoke")
        ]
        assert all(set(e) >= {"time", "event", "action", "key_id", "actor"} for e in events)
        assert events[1]["grace_until"] == pytest.approx(time.time() + 30, abs=10)
    finally:
        gateway.stop()
    output = "".join(gateway.output)
    assert admin not in output and admin not in (tmp_path / "audit.jsonl").read_text()


def test_revocation_through_the_api_is_refused_by_the_gateway_within_a_second(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    record, secret = add_key(tmp_path, "app")
    try:
        assert gateway_status(gateway, secret) == (200, None)  # verified and cached by the gateway
        assert api(port, "POST", f"/admin/keys/{record.id}/revoke", admin).status == 200
        took = wait_for(lambda: gateway_status(gateway, secret) == (401, "key_revoked"), 1.0)
        assert took < 1.0
    finally:
        gateway.stop()


def test_only_an_active_admin_key_is_let_in(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    _, plain = add_key(tmp_path, "app")
    suspended, suspended_secret = add_key(tmp_path, "held", scopes=frozenset({"admin"}))
    try:
        assert api(port, "POST", f"/admin/keys/{suspended.id}/suspend", admin).status == 200
        cases: list[tuple[str | None, int, str]] = [
            (None, 401, "missing_credentials"),
            ("not-a-key", 401, "malformed_credentials"),
            (plain[:-1] + ("A" if plain[-1] != "A" else "B"), 401, "malformed_credentials"),  # bad checksum
            (plain, 403, "admin_scope_required"),
            (suspended_secret, 401, "key_suspended"),
        ]
        for key, status, code in cases:
            for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/nothing")):
                response = api(port, method, path, key, {"name": "sneaky"} if method == "POST" else None)
                assert (response.status, response.code) == (status, code), (key, method, path)
                assert response.headers["server"] == "aiperimeter"
                if status == 401:
                    assert response.headers["www-authenticate"].startswith("Bearer")
                if key is not None:
                    assert key.encode() not in response.body
        assert "x-api-key" not in api(port, "GET", "/admin/keys", None).json()["error"]["message"]  # type: ignore[index]
        # A non-admin key is 403 on the admin API, and nothing was created by any of the above.
        names = {k["name"] for k in api(port, "GET", "/admin/keys", admin).json()["data"]}  # type: ignore[union-attr]
        assert "sneaky" not in names
        # The admin key itself, once revoked, is refused at once (no cache on the admin API).
        ops_id = admin[4:16]
        assert api(port, "POST", f"/admin/keys/{ops_id}/revoke", admin).status == 200
        response = api(port, "GET", "/admin/keys", admin)
        assert (response.status, response.code) == (401, "key_revoked")
    finally:
        gateway.stop()
    assert admin not in "".join(gateway.output)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "words"),
    [
        pytest.param("GET", "/admin/keys/NOT-AN-ID", None, 400, "invalid_key_id", "12 characters", id="bad-id"),
        pytest.param("POST", "/admin/keys/abc/revoke", None, 400, "invalid_key_id", "key id", id="bad-id-action"),
        pytest.param(
            "POST",
            "/admin/keys",
            {"name": "x", "colour": "red"},
            400,
            "unknown_field",
            "unknown field 'colour'",
            id="unknown-field",
        ),
        pytest.param(
            "POST",
            "/admin/keys/abcdefghijkl/revoke",
            {"why": "x"},
            400,
            "unknown_field",
            "unknown field 'why'",
            id="unknown-field-action",
        ),
        pytest.param("POST", "/admin/keys", {"rpm": 5}, 400, "missing_field", "name is required", id="no-name"),
        pytest.param("POST", "/admin/keys", {"name": " "}, 400, "invalid_field", "name", id="blank-name"),
        pytest.param(
            "POST", "/admin/keys", {"name": "x", "rpm": "60"}, 400, "invalid_field", "rpm", id="string-number"
        ),
        pytest.param("POST", "/admin/keys", {"name": "x", "rpm": 0}, 400, "invalid_field", "rpm", id="zero-rpm"),
        pytest.param(
            "POST",
            "/admin/keys",
            {"name": "x", "scopes": ["root"]},
            400,
            "invalid_field",
            "unknown scope",
            id="unknown-scope",
        ),
        pytest.param(
            "POST", "/admin/keys/abcdefghijkl/rotate", {"grace": -1}, 400, "invalid_field", "grace", id="bad-grace"
        ),
        pytest.param("POST", "/admin/keys", b'{"name": "x",', 400, "invalid_json", "not valid JSON", id="bad-json"),
        pytest.param("POST", "/admin/keys", b'["x"]', 400, "invalid_json", "JSON object", id="json-array"),
        pytest.param(
            "POST",
            "/admin/keys",
            b'{"name": "' + b"x" * 70_000 + b'"}',
            413,
            "body_too_large",
            "65536 bytes",
            id="oversized-body",
        ),
        pytest.param("GET", "/admin/keys/abcdefghijkl", None, 404, "key_not_found", "abcdefghijkl", id="no-such-key"),
        pytest.param("GET", "/admin/keys?limit=5", None, 400, "unexpected_query", "query string", id="query"),
        pytest.param("DELETE", "/admin/keys", None, 405, "method_not_allowed", "GET or POST", id="method"),
        pytest.param("GET", "/v1/models", None, 404, "not_found", "no such admin API route", id="gateway-route"),
    ],
)
def test_bad_requests_get_a_clear_error(
    upstream: FakeUpstream,
    tmp_path: Path,
    method: str,
    path: str,
    body: dict[str, object] | bytes | None,
    status: int,
    code: str,
    words: str,
) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    try:
        response = api(port, method, path, admin, body)
        assert (response.status, response.code) == (status, code), response.body
        error = response.json()["error"]
        assert words in error["message"]  # type: ignore[index]
        assert b"Traceback" not in response.body
        assert response.headers["server"] == "aiperimeter"
        assert api(port, "GET", "/admin/healthz", admin).status == 200  # still serving
        assert len(api(port, "GET", "/admin/keys", admin).json()["data"]) == 1  # type: ignore[arg-type]
    finally:
        gateway.stop()


def test_malformed_http_is_refused_without_echo(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    try:
        response = raw(
            port, f"GET /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nBad\r\n\r\n".encode()
        )
        assert response.status == 400 and admin.encode() not in response.body
        assert response.headers["server"] == "aiperimeter"
    finally:
        gateway.stop()


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_keys_cli_with_server_manages_a_running_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, _, admin = start(tmp_path, upstream)
    server = admin_url(gateway)
    local_dir = tmp_path / "elsewhere"  # the CLI's own data dir is not where the keys are
    try:
        created = cli_json(
            admin, "create", "--name", "remote", "--models", "a,b", "--scope", "admin", "--expires", "1d",
            "--rpm", "7", "--server", server, "--data-dir", str(local_dir),
        )  # fmt: skip
        key_id, secret = str(created["id"]), str(created["secret"])
        assert created["models"] == ["a", "b"] and created["scopes"] == ["admin"]
        assert created["limits"] == {"rpm": 7, "tpm": None, "concurrency": None}
        assert not local_dir.exists()
        wait_for(lambda: gateway_status(gateway, secret) == (200, None), 2)

        listed = keys_cli(admin, "list", "--json", "--server", server)
        assert listed.returncode == 0
        assert sorted(k["id"] for k in orjson.loads(listed.stdout)) == sorted([admin[4:16], key_id])
        table = keys_cli(admin, "list", "--server", server)
        assert table.returncode == 0 and key_id in table.stdout and "remote" in table.stdout and "rpm 7" in table.stdout
        shown = keys_cli(admin, "show", key_id, "--server", server)
        assert shown.returncode == 0 and "remote" in shown.stdout and secret not in shown.stdout

        rotated = cli_json(admin, "rotate", key_id, "--grace", "0s", "--server", server)
        new = str(rotated["secret"])
        assert new != secret and set(rotated) == set(created)  # the same shape as the local command's output
        wait_for(lambda: gateway_status(gateway, secret) == (401, "key_rotated"), 1.0)
        assert cli_json(admin, "suspend", key_id, "--server", server)["status"] == "suspended"
        wait_for(lambda: gateway_status(gateway, new) == (401, "key_suspended"), 1.0)
        resumed = keys_cli(admin, "resume", key_id, "--server", server)
        assert resumed.returncode == 0 and f"Resumed key {key_id} (remote)." in resumed.stdout
        wait_for(lambda: gateway_status(gateway, new) == (200, None), 1.0)

        # --admin-key on the command line works as the variable does; the key is never printed.
        revoked = keys_cli(None, "revoke", key_id, "--server", server, "--admin-key", admin)
        assert revoked.returncode == 0 and f"Revoked key {key_id} (remote)." in revoked.stdout
        assert admin not in revoked.stdout + revoked.stderr
        wait_for(lambda: gateway_status(gateway, new) == (401, "key_revoked"), 1.0)

        # Text mode prints the new secret once, as the local command does.
        text = keys_cli(admin, "create", "--name", "text", "--server", server)
        assert text.returncode == 0
        printed = next(word for word in text.stdout.split() if word.startswith("aip_"))
        assert (
            printed == new_secret_in(text.stdout)
            and text.stdout.count(printed) == 1
            and "only time the secret is shown" in text.stdout
        )

        actors = {e["actor"] for e in key_events(gateway)}
        assert actors == {f"admin-api:{admin[4:16]}"}
    finally:
        gateway.stop()


def test_keys_cli_with_server_reports_errors_and_exits_2(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, port, admin = start(tmp_path, upstream)
    server = admin_url(gateway)
    record, plain = add_key(tmp_path, "app")
    try:
        cases: list[tuple[str | None, list[str], str]] = [
            (admin, ["show", "abcdefghijkl"], "No key has the id abcdefghijkl"),
            (admin, ["show", "nope"], "not a key id"),
            (plain, ["list"], "admin scope"),
            (None, ["list"], "AIPERIMETER_ADMIN_KEY"),
            ("aip_nonsense", ["list"], "not an aiperimeter key"),
            (admin, ["create", "--name", "x", "--scope", "root"], "unknown scope"),
            (admin, ["list", "--server", "ftp://127.0.0.1:1"], "http:// or https://"),
            (admin, ["list", "--server", f"http://user:pw@127.0.0.1:{port}"], "without credentials"),
            (admin, ["list", "--server", "http://127.0.0.1:1"], "cannot reach the admin API"),
            (admin, ["list", "--server", f"https://127.0.0.1:{port}"], "cannot reach the admin API"),  # no TLS there
        ]
        for key, args, message in cases:
            server_args = [] if "--server" in args else ["--server", server]
            done = keys_cli(key, *args, *server_args)
            output = done.stdout + done.stderr
            assert done.returncode == 2, (args, output)
            assert message in output, (args, output)
            assert "Traceback" not in output
        assert api(port, "POST", f"/admin/keys/{record.id}/revoke", admin).status == 200
        done = keys_cli(admin, "rotate", record.id, "--server", server)
        assert done.returncode == 2 and "it is revoked" in done.stderr and "409" in done.stderr
        helped = keys_cli(admin, "list", "--help")
        assert helped.returncode == 0 and "--server" in helped.stdout and "AIPERIMETER_ADMIN_KEY" in helped.stdout
    finally:
        gateway.stop()


def test_tls_admin_api_off_loopback_needs_expose_and_tls(upstream: FakeUpstream, tmp_path: Path) -> None:
    add_key(tmp_path)
    base = ["--upstream", upstream.url, "--listen", "127.0.0.1:0"]
    code, output = run_gateway_expecting_exit(tmp_path, *base, "--admin-listen", "0.0.0.0:0")
    assert code == 2 and "admin_listen" in output and "--expose" in output and "Traceback" not in output
    code, output = run_gateway_expecting_exit(tmp_path, *base, "--admin-listen", "0.0.0.0:0", "--expose")
    assert code == 2 and "--tls-cert" in output and "Traceback" not in output
    code, output = run_gateway_expecting_exit(tmp_path, *base, "--admin-listen", "127.0.0.1:", "--workers", "2")
    assert code == 2 and "admin_listen" in output and "Traceback" not in output
    code, output = run_gateway_expecting_exit(
        tmp_path, "--upstream", upstream.url, "--listen", "127.0.0.1:18787", "--admin-listen", "127.0.0.1:18787"
    )
    assert code == 2 and "port of its own" in output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        for workers in ("1", "2"):
            code, output = run_gateway_expecting_exit(tmp_path, *base, "--admin-listen", taken, "--workers", workers)
            assert code == 2 and "cannot serve the admin API" in output and "Traceback" not in output, output


def test_admin_api_over_tls_with_the_cli(upstream: FakeUpstream, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    _, admin = add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    gateway = start_gateway(
        tmp_path, upstream.url, "openai", "--listen", "0.0.0.0:0", "--expose", "--admin-listen", "0.0.0.0:0",
        "--tls-cert", str(cert_file), "--tls-key", str(key_file),
    )  # fmt: skip
    try:
        server = admin_url(gateway).replace("0.0.0.0", "127.0.0.1")
        assert server.startswith("https://")
        unverified = keys_cli(admin, "list", "--server", server)
        assert unverified.returncode == 2 and "certificate verify failed" in unverified.stderr
        listed = keys_cli(admin, "list", "--json", "--server", server, "--ca-cert", str(ca_file))
        assert listed.returncode == 0, listed.stderr
        assert [k["name"] for k in orjson.loads(listed.stdout)] == ["ops"]
    finally:
        gateway.stop()


# --- processes --------------------------------------------------------------------------------------------------


def listeners_on(root: psutil.Process, port: int) -> list[int]:
    """Pids among `root` and its children with a listening socket on `port`."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            found.append(process.pid)
    return found


def test_two_workers_serve_exactly_one_admin_listener(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway, port, admin = start(tmp_path, upstream, "--workers", "2")
    record, secret = add_key(tmp_path, "app")
    try:
        supervisor = psutil.Process(gateway.process.pid)
        workers = set(listeners_on(supervisor, gateway.port))  # the gateway's port: every worker
        assert len(workers) == 2 and supervisor.pid not in workers
        (serving,) = listeners_on(supervisor, port)  # the admin port: exactly one process, a worker
        assert serving in workers
        for _ in range(10):
            assert api(port, "GET", "/admin/healthz", admin).status == 200

        # A change made in the admin worker reaches every worker within a second.
        assert {gateway_status(gateway, secret) for _ in range(10)} == {(200, None)}
        assert api(port, "POST", f"/admin/keys/{record.id}/suspend", admin).status == 200
        wait_for(lambda: {gateway_status(gateway, secret) for _ in range(10)} == {(401, "key_suspended")}, 1.0)

        # When the admin worker dies, its replacement serves the admin API on the same port.
        os.kill(serving, signal.SIGKILL)
        wait_for(lambda: "restarted as pid" in "".join(gateway.output), 15)
        wait_for(lambda: len(listeners_on(supervisor, port)) == 1 and serving not in listeners_on(supervisor, port), 15)
        assert api(port, "GET", "/admin/healthz", admin).status == 200
        assert sum(ADMIN_LINE in line for line in gateway.output) == 1
    finally:
        gateway.stop()


def test_changes_are_published_on_the_bus(upstream: FakeUpstream, tmp_path: Path, redis_url: str) -> None:
    import redis

    gateway, port, admin = start(tmp_path, upstream, "--redis", redis_url)
    record, secret = add_key(tmp_path, "app")
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe("aiperimeter:keys")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        assert gateway_status(gateway, secret) == (200, None)
        assert api(port, "POST", f"/admin/keys/{record.id}/revoke", admin).status == 200
        heard: list[bytes] = []
        deadline = time.monotonic() + 5
        while record.id.encode() not in heard and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                heard.append(message["data"])
        assert record.id.encode() in heard
        wait_for(lambda: gateway_status(gateway, secret) == (401, "key_revoked"), 1.0)
    finally:
        pubsub.close()
        client.close()
        gateway.stop()


def test_keys_are_created_with_a_tool_policy_the_gateway_has_loaded(upstream: FakeUpstream, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "analytics.yaml").write_text("tools: {run_sql: }\n")
    gateway, port, admin = start(tmp_path, upstream, "--tool-policies", str(policies))
    try:
        created = api(port, "POST", "/admin/keys", admin, {"name": "bot", "tool_policy": "analytics"})
        assert created.status == 201 and created.json()["tool_policy"] == "analytics"
        unknown = api(port, "POST", "/admin/keys", admin, {"name": "bot", "tool_policy": "analytic"})
        assert (unknown.status, unknown.code) == (400, "unknown_tool_policy")
        assert "loaded: analytics" in unknown.json()["error"]["message"]  # type: ignore[index]
        invalid = api(port, "POST", "/admin/keys", admin, {"name": "bot", "tool_policy": "../etc"})
        assert invalid.status == 400
        listed = api(port, "GET", "/admin/keys", admin).json()["data"]
        assert sorted(str(k["tool_policy"]) for k in listed) == ["None", "analytics"]  # type: ignore[index, union-attr]
    finally:
        gateway.stop()
