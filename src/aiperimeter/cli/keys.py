"""`aiperimeter keys`: create, list, show, rotate, suspend, resume and revoke the gateway's API keys.

Every change is recorded twice: in the store's change feed (with who did it), which every gateway follows, and as
a `key` event in the audit log of the data dir.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from aiperimeter.cli.common import DataDir, console, err_console, fail, parse_duration
from aiperimeter.config import default_data_dir
from aiperimeter.keys import ID_RE, KNOWN_SCOPES, KeyRecord, new_key, new_secret
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
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Create a key and print its secret once."""
    if not name.strip() or len(name) > 200:
        fail("--name must be 1 to 200 characters")
    scopes = frozenset(scope or ())
    if unknown := scopes - KNOWN_SCOPES:
        fail(f"unknown scope {', '.join(sorted(unknown))}; known scopes: {', '.join(sorted(KNOWN_SCOPES))}")
    now = time.time()
    record, secret = new_key(
        name.strip(),
        scopes=scopes,
        models=_split(models),
        expires_at=now + parse_duration(expires) if expires else None,
        now=now,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
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
    if json_out:
        typer.echo(orjson.dumps({**record.public(now), "secret": secret}).decode())
        return
    console.print(f"Created key [bold]{record.id}[/] ({record.name}). This is the only time the secret is shown:\n")
    console.print(f"    {secret}\n", soft_wrap=True)
    console.print("Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').")


@app.command("list")
def list_keys(json_out: Json = False, data_dir: DataDir = None, database: Database = None) -> None:
    """List keys (never their secrets), with their limits and pending rotations."""

    async def load() -> list[KeyRecord]:
        store = _store(data_dir, database)
        try:
            return await store.list_all()
        finally:
            await store.close()

    records, now = asyncio.run(load()), time.time()
    if json_out:
        typer.echo(orjson.dumps([r.public(now) for r in records]).decode())
        return
    table = Table("id", "name", "status", "scopes", "models", "limits", "created", "expires", "old secret valid until")
    for r in records:
        limits = ", ".join(f"{n} {v}" for n, v in (("rpm", r.rpm), ("tpm", r.tpm), ("at once", r.concurrency)) if v)
        table.add_row(
            r.id,
            r.name,
            r.status(now),
            ",".join(sorted(r.scopes)) or "-",
            ",".join(sorted(r.models)) if r.models is not None else "all",
            limits or "default",
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.previous_until) if r.previous_until and r.previous_until > now else "-",
        )
    console.print(table)


def _get(key_id: str, data_dir: Any, database: str | None = None) -> KeyRecord:
    if not ID_RE.fullmatch(key_id):
        fail(f"{key_id!r} is not a key id; ids are 12 characters, as shown by 'aiperimeter keys list'")

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
) -> None:
    """Show one key (never its secret)."""
    record, now = _get(key_id, data_dir, database), time.time()
    if json_out:
        typer.echo(orjson.dumps(record.public(now)).decode())
        return
    for field, value in record.public(now).items():
        if field.endswith("_at"):
            value = _when(value)  # type: ignore[arg-type]
        console.print(f"{field:>11}: {value}")


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


def _done(record: KeyRecord, json_out: bool, message: str) -> None:
    if json_out:
        typer.echo(orjson.dumps(record.public(time.time())).decode())
    else:
        console.print(message)


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
) -> None:
    """Revoke a key, for good. Running gateways refuse it within a second (milliseconds with --redis)."""
    record = _change(
        key_id, (data_dir, database, redis), "revoke", lambda store, actor: store.revoke(key_id, time.time(), actor)
    )
    _done(record, json_out, f"Revoked key {key_id} ({record.name}).")


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
) -> None:
    """Issue a new secret for a key. The old one keeps working until the grace ends, then is refused everywhere."""
    seconds = 0.0 if grace.strip() in ("0", "0s") else parse_duration(grace)
    secret, new_hash = new_secret(key_id)
    until = time.time() + seconds
    record = _change(
        key_id,
        (data_dir, database, redis),
        "rotate",
        lambda store, actor: store.rotate(key_id, new_hash, until, actor),
        grace_until=until,
    )
    if json_out:
        typer.echo(orjson.dumps({**record.public(time.time()), "secret": secret}).decode())
        return
    console.print(f"Rotated key [bold]{key_id}[/] ({record.name}). This is the only time the new secret is shown:\n")
    console.print(f"    {secret}\n", soft_wrap=True)
    console.print(f"The old secret works until {_when(until)}.")


@app.command()
def suspend(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
) -> None:
    """Refuse a key until it is resumed (reversible, unlike revoke)."""
    record = _change(
        key_id, (data_dir, database, redis), "suspend", lambda store, actor: store.suspend(key_id, time.time(), actor)
    )
    _done(record, json_out, f"Suspended key {key_id} ({record.name}); 'aiperimeter keys resume {key_id}' undoes it.")


@app.command()
def resume(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
    database: Database = None,
    redis: Redis = None,
) -> None:
    """Accept a suspended key again."""
    record = _change(key_id, (data_dir, database, redis), "resume", lambda store, actor: store.resume(key_id, actor))
    _done(record, json_out, f"Resumed key {key_id} ({record.name}).")
