"""`aiperimeter keys`: create, list, show and revoke the gateway's API keys."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from aiperimeter.cli.common import DataDir, console, fail, parse_duration
from aiperimeter.config import default_data_dir
from aiperimeter.keys import ID_RE, KNOWN_SCOPES, KeyRecord, new_key
from aiperimeter.state.base import KeyStore, open_key_store

app = typer.Typer(
    help="Manage the gateway's API keys. Secrets are shown once, at creation; only their hash is stored.",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store(data_dir: Any) -> KeyStore:
    return open_key_store(data_dir or default_data_dir())


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


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
    json_out: Json = False,
    data_dir: DataDir = None,
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
    )

    async def add() -> None:
        store = _store(data_dir)
        try:
            await store.add(record, _actor())
        finally:
            await store.close()

    asyncio.run(add())
    if json_out:
        typer.echo(orjson.dumps({**record.public(now), "secret": secret}).decode())
        return
    console.print(f"Created key [bold]{record.id}[/] ({record.name}). This is the only time the secret is shown:\n")
    console.print(f"    {secret}\n", soft_wrap=True)
    console.print("Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').")


@app.command("list")
def list_keys(json_out: Json = False, data_dir: DataDir = None) -> None:
    """List keys (never their secrets)."""

    async def load() -> list[KeyRecord]:
        store = _store(data_dir)
        try:
            return await store.list_all()
        finally:
            await store.close()

    records, now = asyncio.run(load()), time.time()
    if json_out:
        typer.echo(orjson.dumps([r.public(now) for r in records]).decode())
        return
    table = Table("id", "name", "status", "scopes", "models", "created", "expires")
    for r in records:
        table.add_row(
            r.id,
            r.name,
            r.status(now),
            ",".join(sorted(r.scopes)) or "-",
            ",".join(sorted(r.models)) if r.models is not None else "all",
            _when(r.created_at),
            _when(r.expires_at),
        )
    console.print(table)


def _get(key_id: str, data_dir: Any) -> KeyRecord:
    if not ID_RE.fullmatch(key_id):
        fail(f"{key_id!r} is not a key id; ids are 12 characters, as shown by 'aiperimeter keys list'")

    async def load() -> KeyRecord | None:
        store = _store(data_dir)
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
) -> None:
    """Show one key (never its secret)."""
    record, now = _get(key_id, data_dir), time.time()
    if json_out:
        typer.echo(orjson.dumps(record.public(now)).decode())
        return
    for field, value in record.public(now).items():
        if field.endswith("_at"):
            value = _when(value)  # type: ignore[arg-type]
        console.print(f"{field:>11}: {value}")


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's public id.")],
    json_out: Json = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke a key. Running gateways refuse it within a second."""
    _get(key_id, data_dir)

    async def apply() -> KeyRecord | None:
        store = _store(data_dir)
        try:
            return await store.revoke(key_id, time.time(), _actor())
        finally:
            await store.close()

    record = asyncio.run(apply())
    assert record is not None
    if json_out:
        typer.echo(orjson.dumps(record.public(time.time())).decode())
        return
    console.print(f"Revoked key {key_id} ({record.name}).")
