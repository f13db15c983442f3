"""`aiperimeter db` as a user runs it: upgrade and status on SQLite and PostgreSQL, and how it fails."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from aiperimeter.state.postgres import LATEST
from tests.integration.conftest import in_schema

PASSWORD = "Zq7-not-a-real-pw-91x"  # must never be printed


def db(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiperimeter", "db", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_postgres_status_and_upgrade_on_a_fresh_schema(schema_url: str) -> None:
    before = db("status", "--database", schema_url, "--json")
    assert before.returncode == 0, before.stderr
    assert orjson.loads(before.stdout) | {"database": None} == {"database": None, "current": 0, "latest": LATEST}
    assert "run 'aiperimeter db upgrade'" in db("status", "--database", schema_url).stdout

    upgraded = db("upgrade", "--database", schema_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "before:   0" in upgraded.stdout and f"after:    {LATEST}" in upgraded.stdout

    again = db("upgrade", "--database", schema_url, "--json")
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in orjson.loads(again.stdout).items() if k != "database"} == {
        "before": LATEST,
        "after": LATEST,
    }

    after = db("status", "--json", env={"AIPERIMETER_DATABASE": schema_url})  # the URL from the environment
    assert after.returncode == 0, after.stderr
    assert {k: v for k, v in orjson.loads(after.stdout).items() if k != "database"} == {
        "current": LATEST,
        "latest": LATEST,
    }
    with psycopg.connect(schema_url) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, LATEST + 1)
        )


def test_postgres_newer_database_is_refused(schema_url: str) -> None:
    assert db("upgrade", "--database", schema_url).returncode == 0
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (LATEST + 1, time.time()))
    refused = db("upgrade", "--database", schema_url)
    assert_clean_failure(refused)
    assert "upgrade aiperimeter" in refused.stderr
    status = db("status", "--database", schema_url)
    assert (
        status.returncode == 0 and f"current:  {LATEST + 1}" in status.stdout and "upgrade aiperimeter" in status.stdout
    )


def test_postgres_password_is_redacted_in_output(schema_url: str) -> None:
    # The test server trusts local connections, so any password is accepted: it shows the output, redacted.
    with_password = schema_url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)
    if with_password == schema_url:
        pytest.skip("the test URL does not start with postgresql://postgres@")
    result = db("upgrade", "--database", with_password)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and "postgres:***@" in result.stdout


def test_postgres_missing_schema_is_explained(postgres_url: str) -> None:
    result = db("upgrade", "--database", in_schema(postgres_url, f"aip_test_missing_{secrets.token_hex(4)}"))
    assert_clean_failure(result)
    assert "no schema" in result.stderr and "CREATE SCHEMA" in result.stderr


@pytest.mark.parametrize(
    ("command", "url", "says"),
    [
        ("upgrade", f"mysql://app:{PASSWORD}@127.0.0.1/keys", "is not a PostgreSQL URL"),
        ("status", f"http://app:{PASSWORD}@127.0.0.1/keys", "postgresql://user@host:5432/dbname"),
        ("upgrade", f"postgresql://app:{PASSWORD}@127.0.0.1:notaport/keys", "not a valid PostgreSQL URL"),
        ("status", f"postgresql://app:{PASSWORD}@127.0.0.1:5432/keys?sslmode=bogus&password={PASSWORD}", "sslmode"),
    ],
)
def test_bad_urls_exit_2_without_the_password(command: str, url: str, says: str) -> None:
    result = db(command, "--database", url)
    assert_clean_failure(result)
    assert says in result.stderr


@pytest.mark.parametrize("command", ["upgrade", "status"])
def test_unreachable_database_exits_2_quickly_without_the_password(command: str) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/keys"
    start = time.monotonic()
    result = db(command, "--database", url)
    assert time.monotonic() - start < 30  # refused at once; the margin is for interpreter start-up on a busy host
    assert_clean_failure(result)
    assert "cannot reach the database" in result.stderr and "app:***@127.0.0.1" in result.stderr


def test_sqlite_status_and_upgrade(tmp_path: Path) -> None:
    fresh = db("status", "--data-dir", str(tmp_path), "--json")
    assert fresh.returncode == 0, fresh.stderr
    assert orjson.loads(fresh.stdout) == {"database": str(tmp_path / "aiperimeter.db"), "current": 0, "latest": LATEST}
    assert not (tmp_path / "aiperimeter.db").exists()  # status changes nothing

    upgraded = db("upgrade", "--data-dir", str(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "before:   0" in upgraded.stdout and f"after:    {LATEST}" in upgraded.stdout
    done = db("status", "--data-dir", str(tmp_path), "--json")
    assert orjson.loads(done.stdout)["current"] == LATEST


def test_sqlite_newer_store_is_refused(tmp_path: Path) -> None:
    import sqlite3

    store = sqlite3.connect(tmp_path / "aiperimeter.db")
    store.execute("PRAGMA user_version = 9")
    store.close()
    assert_clean_failure(refused := db("upgrade", "--data-dir", str(tmp_path)))
    assert "upgrade aiperimeter" in refused.stderr
