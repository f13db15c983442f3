"""`aiperimeter keys`: create, list, show, rotate, suspend, resume and revoke the gateway's API keys.

`keys create --canary` makes a tripwire: a key that looks like any other, to plant where a leak would be found. The
gateway answers it as an invalid key, never forwards it, and records each use with the caller's details.

Every change is recorded twice: in the store's change feed (with who did it), which every gateway follows, and as
a `key` event in the audit log of the data dir.

With `--server URL` every command works through the admin API of a running gateway (its `--admin-listen`) instead of
the local store, authenticated by a key with the admin scope (`AIPERIMETER_ADMIN_KEY` or `--admin-key`). The output
is the same; the gateway records the change in its store, its bus and its audit log.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from aiperimeter import __version__
from aiperimeter.cli.common import DataDir, console, err_console, fail, parse_duration
from aiperimeter.config import default_data_dir
from aiperimeter.hosts import is_loopback_host
from aiperimeter.keys import (
    ID_RE,
    KNOWN_SCOPES,
    POLICY_NAME_RE,
    KeyRecord,
    canary_conflicts,
    new_key,
    new_secret,
    parse_key,
)
from aiperimeter.state.base import KeyStore, open_key_store

app = typer.Typer(
    help="Manage the gateway's API keys. Secrets are shown once, at creation; only their hash is stored.",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="AIPERIMETER_DATABASE",
        help="postgresql://... key store of a cluster. Default: SQLite in the data dir.",
        show_default=False,
    ),
]
Redis = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="AIPERIMETER_REDIS",
        help="redis://... of a cluster: the change reaches every gateway in milliseconds (else within a second).",
        show_default=False,
    ),
]


Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="URL of a running gateway's admin API (its --admin-listen), as http://127.0.0.1:8788: make the change "
        "there rather than in a local store (--data-dir, --database and --redis then do not apply).",
        show_default=False,
    ),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="AIPERIMETER_ADMIN_KEY",
        help="A key with the admin scope, for --server. Prefer the variable: other users of this machine can read "
        "command-line arguments.",
        show_default=False,
    ),
]
CaCert = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        help="PEM file of the CA that signed the admin API's TLS certificate, for an https:// --server. "
        "Default: the system's CAs.",
        show_default=False,
    ),
]

# --- the admin API of a running gateway (--server) ---------------------------------------------------------------

TIMEOUT = 30.0
MAX_RESPONSE = 64 * 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the admin key elsewhere: it is an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Remote:
    base: str
    admin_key: str = field(repr=False)
    tls: ssl.SSLContext | None

    def call(self, method: str, path: str, body: dict[str, object] | None = None) -> Any:
        """One request to the admin API: its JSON answer, or exit 2 with the server's message."""
        data = orjson.dumps(body) if body is not None else None
        headers = {
            "Authorization": f"Bearer {self.admin_key}",
            "Accept": "application/json",
            "User-Agent": f"aiperimeter/{__version__}",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)  # noqa: S310
        # Straight to the server: no proxy from the environment sees the admin key, no redirect takes it elsewhere.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _NoRedirect(), urllib.request.HTTPSHandler(context=self.tls)
        )
        try:
            with opener.open(request, timeout=TIMEOUT) as response:
                payload = response.read(MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            _server_error(exc)
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror or str(reason) if isinstance(reason, OSError) else str(reason)
            fail(f"cannot reach the admin API at {escape(self.base)}: {escape(str(text))}")
        except (OSError, http.client.HTTPException) as exc:
            fail(f"the admin API at {escape(self.base)} did not answer: {escape(str(exc) or type(exc).__name__)}")
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            fail(f"{escape(self.base)} did not answer with JSON; is it a gateway's admin API (--admin-listen)?")


def _server_error(exc: urllib.error.HTTPError) -> NoReturn:
    """The server's message and code from its error envelope; exit 2."""
    message, code = "", ""
    try:
        error = orjson.loads(exc.read(65536)).get("error")
        if isinstance(error, dict):
            message, code = str(error.get("message") or ""), str(error.get("code") or "")
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        pass
    finally:
        exc.close()
    if not message:
        message = "redirects are not followed" if 300 <= exc.code < 400 else str(exc.reason or "error")
    fail(f"the admin API refused: {escape(message)} (HTTP {exc.code}{', ' + escape(code) if code else ''})")


def _remote(server: str | None, admin_key: str | None, ca_cert: Path | None) -> Remote | None:
    """The admin API to use, or None for the local store."""
    if server is None:
        return None
    server = server.strip()
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail("--server must be an http:// or https:// URL of a gateway's admin API, as http://127.0.0.1:8788")
    if parts.username or parts.password or parts.query or parts.fragment:
        fail("--server must be a plain URL, without credentials, query or fragment")
    key = (admin_key or "").strip()
    if not key:
        fail("--server needs a key with the admin scope: set AIPERIMETER_ADMIN_KEY (or pass --admin-key)")
    if not key.isascii() or parse_key(key) is None:
        fail("the admin key is not an aiperimeter key (aip_...); check AIPERIMETER_ADMIN_KEY or --admin-key")
    tls = None
    if parts.scheme == "https":
        try:
            tls = ssl.create_default_context(cafile=str(ca_cert) if ca_cert is not None else None)
        except (OSError, ssl.SSLError) as exc:
            fail(f"cannot load --ca-cert {escape(str(ca_cert))}: {escape(str(exc))}")
    elif not is_loopback_host(parts.hostname):
        err_console.print(
            "[bold yellow]warning:[/] the admin key crosses the network in clear text; serve the admin API over "
            "https:// (--tls-cert/--tls-key on the gateway)",
            soft_wrap=True,
        )
    return Remote(server.rstrip("/"), key, tls)


def _check_id(key_id: str) -> None:
    if not ID_RE.fullmatch(key_id):
        fail(f"{key_id!r} is not a key id; ids are 12 characters, as shown by 'aiperimeter keys list'")


# --- the local store ---------------------------------------------------------------------------------------------


def _store(data_dir: Any, database: str | None = None) -> KeyStore:
    return open_key_store(data_dir or default_data_dir(), database)


async def _announce(redis: str | None, key_id: str) -> None:
    """Push the change to every gateway at once. The store has it already; gateways also poll it every 0.25 s."""
    if not redis:
        return
    from aiperimeter.errors import BackendUnavailable
    from aiperimeter.state.bus import RedisBus

    bus = RedisBus(redis)
    try:
        await bus.publish(key_id)
    except BackendUnavailable:
        err_console.print(
            "warning: Redis is unreachable; gateways will see the change through the store within a second"
        )
    finally:
        await bus.close()


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _record_event(data_dir: Any, action: str, record: KeyRecord, actor: str, **extra: object) -> None:
    """The lifecycle event in the audit log, next to the request records of the gateways of this data dir."""
    from aiperimeter.gateway.stages.audit_log import AuditSink

    try:
        sink = AuditSink((data_dir or default_data_dir()) / "audit.jsonl")
    except OSError as exc:
        fail(f"the key was changed, but the audit log could not be written: {exc.strerror}", code=1)
    try:
        sink.write(
            {"time": time.time(), "event": "key", "action": action, "key_id": record.id, "actor": actor, **extra}
        )
    finally:
        sink.close()


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def _split(values: str | None) -> frozenset[str] | None:
    if values is None:
        return None
    items = frozenset(v.strip() for v in values.split(",") if v.strip())
    if not items:
        raise typer.BadParameter("give at least one name, comma-separated")
    return items


CANARY_ADVICE = (
    "This is a [bold]canary[/] key: use it nowhere. Plant it where a leak would be found: a .env file "
    "(OPENAI_API_KEY=...), a CI variable, a config file in a repository, a wiki page. The gateway answers it "
    "exactly as an invalid key and never forwards it; any use of it is recorded in the audit log with the caller's "
    "address, user agent, method and path, and raises a critical alert. 'aiperimeter keys list' marks it CANARY."
)


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. the application using it.")],
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated models this key may use. Default: all.")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="Extra scope; 'admin' allows model pull/delete and the like."),
    ] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Lifetime, as 12h, 30d, 2w. Default: none.")] = None,
    rpm: Annotated[
        int | None, typer.Option("--rpm", min=1, help="Requests per minute. Default: the gateway's.")
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option("--tpm", min=1, help="Tokens per minute (prompt + completion). Default: the gateway's."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Requests at once. Default: the gateway's.")
    ] = None,
    tool_policy: Annotated[
        str | None,
        typer.Option(
            "--tool-policy",
            help="Hold this key's tool calls to the named policy (a NAME.yaml in the gateway's --tool-policies "
            "folder). Default: the gateway's default policy, if any.",
        ),
    ] = None,
    canary: Annotated[
        bool,
        typer.Option(
            "--canary",
            help="Make a canary: a key to plant where a leak would be found (a .env file, CI settings, a repository). "
            "It looks like any key; the gateway answers it as an invalid key, never forwards it, and any use raises "
            "a critical alert with the caller's details.",
        ),
    ] = False,
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Create a key and print its secret once."""
    if not name.strip() or len(name) > 200:
        fail("--name must be 1 to 200 characters")
    options = {"--models": models, "--scope": scope, "--expires": expires, "--rpm": rpm, "--tpm": tpm}
    options |= {"--concurrency": concurrency, "--tool-policy": tool_policy}
    if canary and (given := canary_conflicts(options)):
        fail(
            f"--canary cannot be combined with {', '.join(given)}: a canary key is never served, so what it may do, "
            "for how long or how fast does not apply (and an admin scope on a planted key would be a hazard)"
        )
    scopes = frozenset(scope or ())
    if unknown := scopes - KNOWN_SCOPES:
        fail(f"unknown scope {', '.join(sorted(unknown))}; known scopes: {', '.join(sorted(KNOWN_SCOPES))}")
    lifetime = parse_duration(expires) if expires else None
    model_names = _split(models)
    if tool_policy is not None and not POLICY_NAME_RE.fullmatch(tool_policy):
        fail("--tool-policy takes a policy name: lowercase letters, digits and _ . - (the file name without .yaml)")
    remote = _remote(server, admin_key, ca_cert)
    if remote is not None:
        doc: dict[str, Any] = remote.call(
            "POST",
            "/admin/keys",
            {
                "name": name.strip(),
                "models": sorted(model_names) if model_names is not None else None,
                "scopes": sorted(scopes),
                "expires_in": lifetime,
                "rpm": rpm,
                "tpm": tpm,
                "concurrency": concurrency,
                "tool_policy": tool_policy,
                **({"canary": True} if canary else {}),
            },
        )
    else:
        now = time.time()
        record, secret = new_key(
            name.strip(),
            scopes=scopes,
            models=model_names,
            expires_at=now + lifetime if lifetime else None,
            now=now,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            tool_policy=tool_policy,
            canary=canary,
        )
        actor = _actor()

        async def add() -> None:
            store = _store(data_dir, database)
            try:
                await store.add(record, actor)
            finally:
                await store.close()

        asyncio.run(add())
        _record_event(data_dir, "create", record, actor)
        doc = {**record.public(now), "secret": secret}
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
        return
    console.print(f"Created key [bold]{doc['id']}[/] ({doc['name']}). This is the only time the secret is shown:\n")
    console.print(f"    {doc['secret']}\n", soft_wrap=True)
    if doc.get("canary"):
        console.print(CANARY_ADVICE, soft_wrap=True)
        return
    console.print("Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').")


@app.command("list")
def list_keys(
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """List keys (never their secrets), with their limits and pending rotations."""
    remote = _remote(server, admin_key, ca_cert)
    if remote is not None:
        entries: list[dict[str, Any]] = remote.call("GET", "/admin/keys")["data"]
    else:

        async def load() -> list[KeyRecord]:
            store = _store(data_dir, database)
            try:
                return await store.list_all()
            finally:
                await store.close()

        records, now = asyncio.run(load()), time.time()
        entries = [r.public(now) for r in records]
    if json_out:
        typer.echo(orjson.dumps(entries).decode())
        return
    table = Table(
        "id", "name", "status", "scopes", "models", "limits", "tool policy", "created", "expires",
        "old secret valid until",
    )  # fmt: skip
    for e in entries:
        limits = ", ".join(
            f"{n} {e['limits'][k]}"
            for n, k in (("rpm", "rpm"), ("tpm", "tpm"), ("at once", "concurrency"))
            if e["limits"][k]
        )
        table.add_row(
            e["id"],
            e["name"],
            _status(e),
            ",".join(e["scopes"]) or "-",
            ",".join(e["models"]) if e["models"] is not None else "all",
            limits or "default",
            e.get("tool_policy") or "-",
            _when(e["created_at"]),
            _when(e["expires_at"]),
            _when(e["rotation_grace_until"]) if e["rotation_grace_until"] else "-",
        )
    console.print(table)


def _status(entry: dict[str, Any]) -> str:
    """A canary stands out in a listing: it is bait, not a credential anyone uses."""
    if not entry.get("canary"):
        return str(entry["status"])
    return "[bold yellow]CANARY[/]" + ("" if entry["status"] == "active" else f" ({entry['status']})")


def _get(key_id: str, data_dir: Any, database: str | None = None) -> KeyRecord:
    _check_id(key_id)

    async def load() -> KeyRecord | None:
        store = _store(data_dir, database)
        try:
            return await store.get(key_id)
        finally:
            await store.close()

    record = asyncio.run(load())
    if record is None:
        fail(f"no key with id {key_id}; see 'aiperimeter keys list'")
    return record


@app.command()
def show(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Show one key (never its secret)."""
    remote = _remote(server, admin_key, ca_cert)
    if remote is not None:
        _check_id(key_id)
        doc: dict[str, Any] = remote.call("GET", f"/admin/keys/{key_id}")
    else:
        doc = _get(key_id, data_dir, database).public(time.time())
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
        return
    for name, value in doc.items():
        if name.endswith("_at"):
            value = _when(value)
        console.print(f"{name:>11}: {value}")


def _change(
    key_id: str, where: tuple[Any, str | None, str | None], action: str, apply: Any, **extra: object
) -> KeyRecord:
    """Apply one lifecycle change through the store, announce it to the gateways, record it in the audit log."""
    data_dir, database, redis = where
    _get(key_id, data_dir, database)
    actor = _actor()

    async def run() -> KeyRecord | None:
        store = _store(data_dir, database)
        try:
            result: KeyRecord | None = await apply(store, actor)
        finally:
            await store.close()
        if result is not None:
            await _announce(redis, key_id)
        return result

    record = asyncio.run(run())
    if record is None:
        fail(f"key {key_id} cannot be changed: it is revoked")
    _record_event(data_dir, action, record, actor, **extra)
    return record


def _remote_change(remote: Remote, key_id: str, action: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    """The same change through the admin API of a running gateway: the key as it is now."""
    _check_id(key_id)
    doc: dict[str, Any] = remote.call("POST", f"/admin/keys/{key_id}/{action}", body)
    return doc


def _local_or_remote(
    remote: Remote | None, key_id: str, where: tuple[Any, str | None, str | None], action: str, apply: Any
) -> dict[str, Any]:
    """A lifecycle change without arguments, through the admin API when given a server, else through the store."""
    if remote is not None:
        return _remote_change(remote, key_id, action)
    return _change(key_id, where, action, apply).public(time.time())


def _done(doc: dict[str, Any], json_out: bool, message: str) -> None:
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
    else:
        console.print(message)


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Revoke a key, for good. Running gateways refuse it within a second (milliseconds with --redis)."""
    remote = _remote(server, admin_key, ca_cert)
    doc = _local_or_remote(
        remote,
        key_id,
        (data_dir, database, redis),
        "revoke",
        lambda store, actor: store.revoke(key_id, time.time(), actor),
    )
    _done(doc, json_out, f"Revoked key {key_id} ({doc['name']}).")


@app.command()
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    grace: Annotated[
        str, typer.Option("--grace", help="How long the old secret keeps working, as 0s, 10m, 12h, 2d.")
    ] = "10m",
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Issue a new secret for a key. The old one keeps working until the grace ends, then is refused everywhere."""
    seconds = 0.0 if grace.strip() in ("0", "0s") else parse_duration(grace)
    remote = _remote(server, admin_key, ca_cert)
    _check_id(key_id)
    current = remote.call("GET", f"/admin/keys/{key_id}") if remote is not None else None
    if (current.get("canary") if current is not None else _get(key_id, data_dir, database).canary) is True:
        fail(
            f"key {key_id} is a canary: a new secret would be bait no one has found. Create another canary "
            "(aiperimeter keys create --canary) and revoke this one"
        )
    if remote is not None:
        doc = _remote_change(remote, key_id, "rotate", {"grace": seconds})
        answered = doc.pop("grace_until", None)
        until = float(answered) if isinstance(answered, int | float) else time.time() + seconds
    else:
        secret, new_hash = new_secret(key_id)
        until = time.time() + seconds
        record = _change(
            key_id,
            (data_dir, database, redis),
            "rotate",
            lambda store, actor: store.rotate(key_id, new_hash, until, actor),
            grace_until=until,
        )
        doc = {**record.public(time.time()), "secret": secret}
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
        return
    console.print(f"Rotated key [bold]{key_id}[/] ({doc['name']}). This is the only time the new secret is shown:\n")
    console.print(f"    {doc['secret']}\n", soft_wrap=True)
    console.print(f"The old secret works until {_when(until)}.")


@app.command()
def suspend(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Refuse a key until it is resumed (reversible, unlike revoke)."""
    remote = _remote(server, admin_key, ca_cert)
    doc = _local_or_remote(
        remote,
        key_id,
        (data_dir, database, redis),
        "suspend",
        lambda store, actor: store.suspend(key_id, time.time(), actor),
    )
    _done(doc, json_out, f"Suspended key {key_id} ({doc['name']}); 'aiperimeter keys resume {key_id}' undoes it.")


@app.command()
def resume(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
    server: Server = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
) -> None:
    """Accept a suspended key again."""
    remote = _remote(server, admin_key, ca_cert)
    doc = _local_or_remote(
        remote, key_id, (data_dir, database, redis), "resume", lambda store, actor: store.resume(key_id, actor)
    )
    _done(doc, json_out, f"Resumed key {key_id} ({doc['name']}).")
