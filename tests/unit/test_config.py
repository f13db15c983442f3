from __future__ import annotations

from pathlib import Path

import pytest

from aiperimeter.config import load_gateway_settings, split_host_port
from aiperimeter.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("[::1]:80", ("::1", 80)),
        ("9000", ("127.0.0.1", 9000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize("value", ["::1:80", "host", ":80", "host:99999", "host:x", "[::1"])
def test_split_host_port_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(value)


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: http://127.0.0.1:1\nkind: vllm\nworkers: 3\nlisten: 127.0.0.1:9001\n")
    monkeypatch.setenv("AIPERIMETER_WORKERS", "2")
    settings = load_gateway_settings(config, {"listen": "127.0.0.1:9002", "kind": None})
    assert (settings.kind, settings.workers, settings.listen) == ("vllm", 2, "127.0.0.1:9002")


def test_kind_defaults_from_port() -> None:
    assert load_gateway_settings(None, {"upstream": "http://127.0.0.1:11434"}).kind == "ollama"
    assert load_gateway_settings(None, {"upstream": "http://127.0.0.1:8000"}).kind == "openai"


def test_upstream_key_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPERIMETER_UPSTREAM_API_KEY", "sk-upstream-value")
    settings = load_gateway_settings(None, {"upstream": "http://127.0.0.1:8000"})
    assert settings.upstream_api_key is not None
    assert "sk-upstream-value" not in repr(settings) and "sk-upstream-value" not in str(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("upstream: http://x:1\nworkers: 0\n", "workers"),
        ("upstream: http://x:1\ntimeouts: {connect: -1}\n", "timeouts.connect"),
        ("upstream: http://x:1\nsurprise: 1\n", "unknown setting"),
        ("- a\n- b\n", "mapping"),
        ("upstream: [\n", "not valid YAML"),
    ],
)
def test_file_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_gateway_settings(config, {})
    assert message in str(error.value) and str(config) in str(error.value)


def test_env_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPERIMETER_WORKERS", "many")
    with pytest.raises(ConfigError, match="AIPERIMETER_WORKERS"):
        load_gateway_settings(None, {"upstream": "http://127.0.0.1:1"})
