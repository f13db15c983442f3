"""The CLI as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.leaks import LEAKS


def cli(*args: str, data_dir: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "aiperimeter", *args, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    return result


def test_keys_lifecycle(tmp_path: Path) -> None:
    created = cli(
        "keys",
        "create",
        "--name",
        "app",
        "--models",
        "m1,m2",
        "--scope",
        "admin",
        "--expires",
        "30d",
        "--json",
        data_dir=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    key = orjson.loads(created.stdout)
    LEAKS.secrets.add(key["secret"])
    assert key["secret"].startswith(f"aip_{key['id']}_")
    assert key["models"] == ["m1", "m2"] and key["scopes"] == ["admin"] and key["status"] == "active"

    listed = cli("keys", "list", "--json", data_dir=tmp_path)
    table = cli("keys", "list", data_dir=tmp_path)
    shown = cli("keys", "show", key["id"], data_dir=tmp_path)
    for result in (listed, table, shown):
        assert result.returncode == 0
        LEAKS.texts.append(result.stdout + result.stderr)
        assert key["secret"] not in result.stdout
    assert [k["id"] for k in orjson.loads(listed.stdout)] == [key["id"]]
    assert key["id"] in table.stdout and "app" in table.stdout

    revoked = cli("keys", "revoke", key["id"], "--json", data_dir=tmp_path)
    assert revoked.returncode == 0 and orjson.loads(revoked.stdout)["status"] == "revoked"


def test_secret_is_printed_once_in_text_mode(tmp_path: Path) -> None:
    created = cli("keys", "create", "--name", "text", data_dir=tmp_path)
    assert created.returncode == 0
    secret = next(word for word in created.stdout.split() if word.startswith("aip_"))
    LEAKS.secrets.add(secret)
    assert created.stdout.count(secret) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["keys", "create", "--name", "x", "--expires", "soon"], "not a duration", id="bad-duration"),
        pytest.param(["keys", "create", "--name", "x", "--scope", "root"], "unknown scope", id="bad-scope"),
        pytest.param(["keys", "show", "nope"], "not a key id", id="bad-id"),
        pytest.param(["keys", "revoke", "abcdefghijkl"], "no key with id", id="unknown-id"),
        pytest.param(["keys", "create", "--name", " "], "--name", id="blank-name"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPERIMETER_HOME", str(tmp_path / "home"))
    created = cli("keys", "create", "--name", "env", "--json")
    assert created.returncode == 0
    LEAKS.secrets.add(orjson.loads(created.stdout)["secret"])
    assert (tmp_path / "home" / "aiperimeter.db").exists()


def test_help_teaches() -> None:
    result = cli("gateway", "--help")
    assert result.returncode == 0
    for words in ("--upstream", "--kind", "--expose", "aiperimeter keys create", "Examples"):
        assert words in result.stdout


def test_demo_runs_end_to_end() -> None:
    result = cli("demo", "--no-serve", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "401" in output and "403" in output and "200" in output and "curl" in output
    assert "--upstream http://127.0.0.1:11434 --kind ollama" in output
    assert "came through the aiperimeter gateway" in output
