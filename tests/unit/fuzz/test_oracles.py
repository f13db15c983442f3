"""Each oracle can fail: given code that decides wrongly (a permissive path check, a first-wins body reader, a
framer that loses data, a guard that passes every call, an engine that allows everything), it reports the failure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aiperimeter.gateway.streams import NDJSONFramer
from aiperimeter.policy.calls import ALLOW, Judge
from tests.hardening.fuzz import bodies, paths, policy, streams, tool_guards
from tests.hardening.fuzz.engine import OracleFailure


def _no_check(target: str, host: str | None) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path, query


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/v1/models/m/../../../slots", id="dot-segments"),
        pytest.param(b"/v1/models/m/%2e%2e/%2e%2e/%2e%2e/metrics", id="encoded-dots"),
        pytest.param(b"/v1/models/x/..\\..\\..\\metrics", id="backslashes"),
        pytest.param(b"/v1/models/m/%252e%252e/%252e%252e/%252e%252e/slots", id="double-encoded"),
    ],
)
def test_the_path_oracle_catches_a_climb_to_an_admin_route(target: bytes) -> None:
    paths.check(target)  # the gateway refuses it
    with pytest.raises(OracleFailure, match="admin"):
        paths.check(target, split=_no_check)


def test_the_path_oracle_accepts_plain_routes_under_a_permissive_check() -> None:
    paths.check(b"/v1/chat/completions", split=_no_check)
    paths.check(b"/v1/models/llama3", split=_no_check)


def _orjson_only(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"evil","model":"llama3"}', id="duplicate"),
        pytest.param(b'{"model":"llama3","Model":"evil"}', id="case-variant"),
        pytest.param(b'{"\\u006dodel":"evil","model":"llama3"}', id="escaped-key"),
    ],
)
def test_the_body_oracle_catches_a_second_reading_of_the_model(body: bytes) -> None:
    bodies.check(body)
    with pytest.raises(OracleFailure):
        bodies.check(body, parse=_orjson_only)


class _LossyNDJSON(NDJSONFramer):
    """Drops a line that arrives split across chunks."""

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = super().feed(chunk)
        self._buffer = b""
        return lines


def test_the_stream_oracle_catches_a_framer_that_loses_split_lines() -> None:
    data = b'{"a":1}\n{"usage":{"prompt_tokens":1}}\n'
    streams.check(data)
    with pytest.raises(OracleFailure):
        streams.check_one(data, _LossyNDJSON, streams.reference_ndjson)


class _PassThrough:
    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def close(self) -> bytes:
        return b""


@pytest.mark.parametrize("fmt", sorted(tool_guards.FORMATS))
def test_the_guard_oracle_catches_a_guard_that_passes_a_forbidden_call(fmt: str) -> None:
    make, read, build = tool_guards.FORMATS[fmt]
    data = b"".join(build("hi", [("c1", "get_time", '{"tz":"UTC"}'), ("c2", "run_sql", '{"q":"DROP"}')]))
    tool_guards.check_guard(data, make, read)
    with pytest.raises(OracleFailure, match="the client reads call"):
        tool_guards.check_guard(data, _PassThrough, read)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00/srv/data/../../etc/passwd", id="path-escape"),
        pytest.param(b"\x01https://evil.com/", id="url-host"),
        pytest.param(b'{"name":"rm","arguments":{}}', id="not-listed"),
    ],
)
def test_the_policy_oracle_catches_an_engine_that_allows_everything(data: bytes) -> None:
    policy.check(data)
    with pytest.raises(OracleFailure):
        policy.check(data, evaluate=lambda call: ALLOW)
