"""`aiperimeter watch` as an operator runs it: alerts and blocks in the store, and replaying an audit log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from aiperimeter.state.sqlite import SQLiteKeyStore
from aiperimeter.watch.alerts import Alert
from tests.integration.test_cli import cli
from tests.support.traffic import DAY, MONDAY, burst, office, record


def keep(data_dir: Path, *alerts: Alert) -> None:
    async def run() -> None:
        store = SQLiteKeyStore(data_dir / "aiperimeter.db")
        try:
            for alert in alerts:
                await store.add_alert(alert.to_dict())
        finally:
            await store.close()

    asyncio.run(run())


def alert(kind: str, severity: str, at: float, summary: str) -> Alert:
    return Alert(
        id=Alert.make_id(kind, summary, at), time=at, kind=kind, severity=severity, key="k1", client="203.0.113.5",  # type: ignore[arg-type]
        summary=summary, baseline="usual", observed="seen", evidence=("r1",),
    )  # fmt: skip


def test_alerts_newest_first_filtered_by_severity_and_age(tmp_path: Path) -> None:
    now = time.time()
    keep(
        tmp_path,
        alert("new_model", "medium", now - 3 * DAY, "old medium"),
        alert("volume_spike", "high", now - 60, "recent high"),
        alert("new_route", "low", now - 30, "recent low <b>[bold]x[/]"),
    )
    listed = cli("watch", "alerts", "--json", data_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [a["summary"] for a in orjson.loads(listed.stdout)] == [
        "recent low <b>[bold]x[/]",
        "recent high",
        "old medium",
    ]
    recent = cli("watch", "alerts", "--since", "1d", "--severity", "medium", "--json", data_dir=tmp_path)
    assert [a["summary"] for a in orjson.loads(recent.stdout)] == ["recent high"]
    table = cli("watch", "alerts", data_dir=tmp_path)
    assert table.returncode == 0 and "[bold]x[/]" in table.stdout  # markup in data is shown, not interpreted
    bad = cli("watch", "alerts", "--severity", "urgent", data_dir=tmp_path)
    assert bad.returncode == 2 and "low, medium, high, critical" in bad.stderr


def test_block_list_and_unblock(tmp_path: Path) -> None:
    assert cli("watch", "blocks", data_dir=tmp_path).stdout.strip() == "No address is blocked."
    done = cli("watch", "block", "203.0.113.7", "--for", "2h", "--reason", "scanner", data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(cli("watch", "blocks", "--json", data_dir=tmp_path).stdout)
    assert [(r["address"], r["reason"]) for r in rows] == [("203.0.113.7", "scanner")]
    assert 7100 < rows[0]["until"] - time.time() <= 7200
    assert cli("watch", "unblock", "203.0.113.7", data_dir=tmp_path).returncode == 0
    assert cli("watch", "unblock", "203.0.113.7", data_dir=tmp_path).returncode == 1
    assert cli("watch", "block", "2001:db8:1:2:aaaa::9/64", data_dir=tmp_path).returncode == 0
    rows = orjson.loads(cli("watch", "blocks", "--json", data_dir=tmp_path).stdout)
    assert [r["address"] for r in rows] == ["2001:db8:1:2::/64"]
    assert cli("watch", "unblock", "2001:db8:1:2::/64", data_dir=tmp_path).returncode == 0
    refused = cli("watch", "block", "not-an-ip", data_dir=tmp_path)
    assert refused.returncode == 2 and "not an IP address" in refused.stderr


def test_replay_an_audit_log_through_the_detector(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with audit.open("wb") as handle:
        for obs in [*office(days=21), *burst(MONDAY + 21 * DAY + 3 * 3600, 200, 3.0)]:
            handle.write(orjson.dumps(record(obs), option=orjson.OPT_APPEND_NEWLINE))
        handle.write(b'{"time": "garbage"}\nnot json at all\n')
    replayed = cli("watch", "replay", str(audit), "--json")
    assert replayed.returncode == 0, replayed.stderr
    kinds = {a["kind"] for a in orjson.loads(replayed.stdout)}
    assert {"idle_hour", "volume_spike"} <= kinds
    table = cli("watch", "replay", str(audit))
    assert "replayed" in table.stdout and "volume_spike" in table.stdout
    missing = cli("watch", "replay", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
