"""`aiperimeter watch`: the alerts a gateway's watcher raised, the client addresses it blocks, and replaying an audit
log through the detector.

Alerts and blocks live in the key store (SQLite in the data dir, or the cluster's PostgreSQL), so these commands see
what every replica raised. A block made here reaches every gateway worker within about a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from aiperimeter.cli.common import DataDir, console, fail, parse_duration
from aiperimeter.cli.keys import Database, Json, _store
from aiperimeter.config import SEVERITIES
from aiperimeter.watch.alerts import Alert, rank

app = typer.Typer(
    help="Anomaly alerts and blocked client addresses (the gateway's watcher raises them; see also its dashboard).",
    no_args_is_help=True,
)

_STYLE = {"low": "dim", "medium": "yellow", "high": "bold red", "critical": "bold white on red"}


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _alert_table(alerts: list[Alert]) -> Table:
    table = Table(show_lines=False)
    for column in ("time (UTC)", "severity", "kind", "key", "client", "what", "usual", "seen", "done"):
        table.add_column(column, overflow="fold")
    for alert in alerts:
        table.add_row(
            _when(alert.time),
            f"[{_STYLE.get(alert.severity, '')}]{alert.severity}[/]",
            alert.kind,
            escape(alert.key or "-"),
            escape(alert.client or "-"),
            escape(alert.summary),
            escape(alert.baseline),
            escape(alert.observed),
            escape(", ".join(alert.actions) or "-"),
        )
    return table


def _severity(value: str) -> str:
    if value not in SEVERITIES:
        raise typer.BadParameter(f"choose one of: {', '.join(SEVERITIES)}")
    return value


@app.command("alerts")
def alerts(
    data_dir: DataDir = None,
    database: Database = None,
    since: Annotated[str | None, typer.Option(help="Only alerts this recent, as 24h or 7d.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, newest first.")] = 50,
    severity: Annotated[str, typer.Option(callback=_severity, help="Only alerts at or above this.")] = "low",
    json: Json = False,
) -> None:
    """The alerts the watcher raised, newest first, with what was usual and what was seen."""
    cutoff = time.time() - parse_duration(since) if since else None

    async def load() -> list[dict[str, Any]]:
        store = _store(data_dir, database)
        try:
            return list(await store.alerts(limit, cutoff))
        finally:
            await store.close()

    found = [Alert.from_dict(doc) for doc in asyncio.run(load())]
    found = [a for a in found if rank(a.severity) >= rank(severity)]  # type: ignore[arg-type]
    if json:
        console.print_json(orjson.dumps([a.to_dict() for a in found]).decode())
        return
    if not found:
        console.print("No alerts." + (f" (since {since})" if since else ""))
        return
    console.print(_alert_table(found))


@app.command("blocks")
def blocks(data_dir: DataDir = None, database: Database = None, json: Json = False) -> None:
    """The client addresses refused now (by brute-force protection, an alert's action, or `watch block`)."""

    async def load() -> list[tuple[str, float, str]]:
        store = _store(data_dir, database)
        try:
            return list(await store.blocks(time.time()))
        finally:
            await store.close()

    rows = asyncio.run(load())
    if json:
        console.print_json(orjson.dumps([{"address": a, "until": u, "reason": r} for a, u, r in rows]).decode())
        return
    if not rows:
        console.print("No address is blocked.")
        return
    table = Table()
    for column in ("address", "until (UTC)", "reason"):
        table.add_column(column)
    for address, until, reason in rows:
        table.add_row(escape(address), _when(until), escape(reason))
    console.print(table)


def _address(value: str) -> str:
    """An address, or a network (brute-force protection blocks an IPv6 client's whole /64), spelled as stored."""
    value = value.strip()
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an IP address or network, as 203.0.113.7, 2001:db8::7 or 2001:db8:1:2::/64"
        ) from None


@app.command("block")
def block(
    address: Annotated[str, typer.Argument(callback=_address, help="The client address (or network) to refuse.")],
    duration: Annotated[str, typer.Option("--for", help="How long, as 30m, 12h or 7d.")] = "1h",
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "blocked by an operator",
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Refuse every request from an address for a while, on every gateway sharing this store."""
    until = time.time() + parse_duration(duration)

    async def run() -> None:
        store = _store(data_dir, database)
        try:
            await store.block(address, until, reason[:200], "cli")
        finally:
            await store.close()

    asyncio.run(run())
    console.print(f"Blocked {escape(address)} until {_when(until)} UTC. Undo with: aiperimeter watch unblock {address}")


@app.command("unblock")
def unblock(
    address: Annotated[str, typer.Argument(callback=_address, help="The address (or network) to serve again.")],
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Lift a block before it runs out."""

    async def run() -> bool:
        store = _store(data_dir, database)
        try:
            return await store.unblock(address, "cli")
        finally:
            await store.close()

    if not asyncio.run(run()):
        fail(f"{escape(address)} is not blocked; see 'aiperimeter watch blocks'", code=1)
    console.print(f"Unblocked {escape(address)}.")


@app.command("replay")
def replay(
    audit_log: Annotated[Path, typer.Argument(help="An audit log (JSON lines) written by the gateway.")],
    severity: Annotated[str, typer.Option(callback=_severity, help="Only alerts at or above this.")] = "medium",
    json: Json = False,
) -> None:
    """Run the detector over an audit log, as the watcher would have, and print its alerts. Nothing is kept,
    delivered or acted on: a way to see what the detector makes of your traffic before trusting its actions."""
    from aiperimeter.watch.detector import Detector  # imported here: every other command starts faster without it
    from aiperimeter.watch.feed import FileFeed
    from aiperimeter.watch.observation import Observation

    if not audit_log.is_file():
        fail(f"cannot read {escape(str(audit_log))}: no such file")

    async def run() -> tuple[int, list[Alert]]:
        feed, detector, found, records = FileFeed(audit_log), Detector(), [], 0
        while not feed.exhausted():
            for record in await feed.read():
                obs = Observation.from_record(record)
                if obs is not None:
                    records += 1
                    found.extend(detector.observe(obs))
        return records, found

    records, found = asyncio.run(run())
    found = [a for a in found if rank(a.severity) >= rank(severity)]  # type: ignore[arg-type]
    if json:
        console.print_json(orjson.dumps([a.to_dict() for a in found]).decode())
        return
    console.print(f"{records} requests replayed from {escape(str(audit_log))}; {len(found)} alerts.")
    if found:
        console.print(_alert_table(found))
