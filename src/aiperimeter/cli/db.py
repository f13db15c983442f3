"""`aiperimeter db`: the key store's schema version, and upgrading it (SQLite in the data dir, or PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer

from aiperimeter.cli.common import DataDir, console, fail
from aiperimeter.config import default_data_dir
from aiperimeter.errors import BackendUnavailable, ConfigError
from aiperimeter.state import sqlite
from aiperimeter.state.base import DB_FILE

app = typer.Typer(
    help=(
        "The key store's schema: show its version, apply migrations. Gateways migrate at start too; run "
        "'db upgrade' to do it ahead of a rollout."
    ),
    no_args_is_help=True,
)

Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="AIPERIMETER_DATABASE",
        help=(
            "PostgreSQL URL, as postgresql://user@host:5432/dbname (a schema: ?options=-csearch_path%3Dname). "
            "Prefer the environment, or PGPASSWORD/.pgpass, for the password. Default: SQLite in the data dir."
        ),
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]

T = TypeVar("T")


def _unreachable(url: str, exc: BackendUnavailable) -> NoReturn:
    from aiperimeter.state import postgres

    cause = exc.__cause__
    reason = postgres.redact_text(str(cause).strip(), url) if cause is not None else ""
    if isinstance(cause, TimeoutError) or not reason:
        reason = "no answer in time"
    fail(f"cannot reach the database {postgres.redact_url(url)}: {reason}")


def _run_pg(url: str, work: Coroutine[Any, Any, T]) -> T:
    from aiperimeter.state import postgres

    try:
        return asyncio.run(work)
    except ConfigError as exc:
        fail(postgres.redact_text(str(exc), url))
    except BackendUnavailable as exc:
        _unreachable(url, exc)


async def _pg_upgrade(url: str) -> tuple[int, int]:
    from aiperimeter.state import postgres

    before = await postgres.read_version(url)  # connects directly: a clear error when the server cannot be reached
    store = postgres.PostgresKeyStore(url, min_size=1, max_size=1)
    try:
        await store.open()
    finally:
        await store.close()
    return before, postgres.LATEST


def _sqlite_version(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the key store: {exc}", source=str(path)) from None


def _sqlite_path(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()) / DB_FILE


def _sqlite_upgrade(path: Path) -> tuple[int, int]:
    before = _sqlite_version(path)

    async def open_and_close() -> None:
        await sqlite.SQLiteKeyStore(path).close()  # opening migrates

    asyncio.run(open_and_close())
    return before, len(sqlite.MIGRATIONS)


def _print(json_out: bool, where: str, rows: dict[str, Any], hint: str | None) -> None:
    if json_out:
        typer.echo(orjson.dumps({"database": where, **rows}).decode())
        return
    console.print(f"database: {where}", soft_wrap=True)
    for name, value in rows.items():
        console.print(f"{name + ':':<9} {value}")
    if hint:
        console.print(hint)


@app.command()
def upgrade(database: Database = None, data_dir: DataDir = None, json_out: Json = False) -> None:
    """Apply the migrations this aiperimeter knows, once, even with gateways starting at the same time."""
    from aiperimeter.state import postgres

    try:
        if database:
            postgres.parse_url(database)
            before, after = _run_pg(database, _pg_upgrade(database))
            where = postgres.redact_url(database)
        else:
            path = _sqlite_path(data_dir)
            before, after = _sqlite_upgrade(path)
            where = str(path)
    except ConfigError as exc:
        fail(str(exc))
    hint = "already at the latest version; nothing to do" if before == after else None
    _print(json_out, where, {"before": before, "after": after}, hint)


@app.command()
def status(database: Database = None, data_dir: DataDir = None, json_out: Json = False) -> None:
    """Show the schema version of the key store and the latest this aiperimeter knows. Changes nothing."""
    from aiperimeter.state import postgres

    try:
        if database:
            postgres.parse_url(database)
            current = _run_pg(database, postgres.read_version(database))
            latest, where = postgres.LATEST, postgres.redact_url(database)
        else:
            path = _sqlite_path(data_dir)
            current, latest, where = _sqlite_version(path), len(sqlite.MIGRATIONS), str(path)
    except ConfigError as exc:
        fail(str(exc))
    hint = None
    if current < latest:
        hint = "run 'aiperimeter db upgrade' to migrate (gateways also migrate when they start)"
    elif current > latest:
        hint = "the key store is newer than this aiperimeter understands; upgrade aiperimeter"
    _print(json_out, where, {"current": current, "latest": latest}, hint)
