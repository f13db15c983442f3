"""The attack catalog (tests/data/attacks) against real gateways: one test per case, and controls showing that the
detector can fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.attacks import (
    CATEGORIES,
    CORS_ORIGIN,
    DEPLOYMENTS,
    AttackEnv,
    Case,
    CatalogError,
    MustNot,
    UpstreamRule,
    build_request,
    load_catalog,
    run_case,
    statuses,
)
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

CASES = load_catalog()


@pytest.fixture(scope="module")
def env(upstream: FakeUpstream) -> Iterator[AttackEnv]:
    with AttackEnv(upstream) as attack_env:
        yield attack_env


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}/{c.id}" for c in CASES])
def test_attack_case(env: AttackEnv, case: Case) -> None:
    verdict = run_case(env, case)
    assert verdict.ok, f"{case.category}/{case.id}: {'; '.join(verdict.reasons)}"


def test_catalog_covers_every_category_and_deployment() -> None:
    assert {c.category for c in CASES} == set(CATEGORIES)
    assert {c.deployment for c in CASES} == set(DEPLOYMENTS)
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) >= 250


def control(**fields: object) -> Case:
    base: dict[str, object] = {
        "id": "control",
        "category": "control",
        "deployment": "ollama",
        "raw": "POST /api/chat HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n",
        "body": '{"model":"llama3","messages":[]}',
        "must_not": MustNot(reach_upstream="any"),
    }
    return Case.model_validate({**base, **fields})


def test_an_allowed_request_is_detected_when_it_must_not_reach_the_upstream(env: AttackEnv) -> None:
    verdict = run_case(env, control())
    assert not verdict.ok
    assert verdict.upstream_seen == ("POST /api/chat",)
    assert verdict.status == 200


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"must_not": MustNot(reach_upstream=UpstreamRule(path_regex="^/api/chat$"))}, id="path-rule"),
        pytest.param({"must_not": MustNot(reach_upstream=UpstreamRule(body_regex="llama3"))}, id="body-rule"),
        pytest.param({"must_not": MustNot(status=("2xx",))}, id="status"),
        pytest.param({"must_not": MustNot(), "expect_status": (403,)}, id="expected-status"),
        pytest.param({"must_not": MustNot(), "expect_statuses": (200, 200)}, id="expected-sequence"),
        pytest.param({"must_not": MustNot(forward_header=("content-type",))}, id="forwarded-header"),
        pytest.param(
            {
                "deployment": "llamacpp",
                "raw": f"GET /props HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {{key}}\nOrigin: {CORS_ORIGIN}\n",
                "body": None,
                "must_not": MustNot(response_header=("access-control-allow-origin",)),
            },
            id="response-header",
        ),
        pytest.param(
            {
                "raw": "GET /api/tags?k={key} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n",
                "body": None,
                "must_not": MustNot(leak_key=True),
            },
            id="leaked-key",
        ),
    ],
)
def test_every_rule_can_fail(env: AttackEnv, fields: dict[str, object]) -> None:
    seen = len(LEAKS.texts)
    verdict = run_case(env, control(**fields))
    del LEAKS.texts[seen:]  # the leaked-key control leaks on purpose: the fake upstream echoes the query it saw
    assert not verdict.ok


def test_a_refused_request_passes_the_same_rules(env: AttackEnv) -> None:
    verdict = run_case(
        env,
        control(
            raw="POST /api/pull HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n",
            must_not=MustNot(reach_upstream="any", status=("2xx",), forward_header=("content-type",)),
            expect_status=(403,),
        ),
    )
    assert verdict.ok, verdict.reasons
    assert verdict.upstream_seen == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- id: a\n  deployment: nowhere\n  raw: x\n  must_not: {}\n", "deployment", id="deployment"),
        pytest.param("- id: a\n  deployment: ollama\n  must_not: {}\n", "exactly one of", id="no-request"),
        pytest.param("- id: a\n  deployment: ollama\n  raw: x\n  must_not: {status: [2x]}\n", "status", id="status"),
        pytest.param("- id: a\n  deployment: ollama\n  raw: x\n  must_not: {}\n  extra: 1\n", "extra", id="extra"),
        pytest.param(
            "- id: a\n  deployment: ollama\n  slow: [[x, 9]]\n  must_not: {}\n", "add up to", id="slow-budget"
        ),
        pytest.param(
            "- {id: a, deployment: ollama, raw: x, must_not: {}}\n" * 2,
            "already used",
            id="duplicate-id",
        ),
    ],
)
def test_invalid_catalog_is_refused_with_file_and_case(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog(tmp_path)
    assert "broken.yaml: case a" in str(caught.value)


def test_bytes_are_built_as_documented(env: AttackEnv) -> None:
    ollama = env.deployments["ollama"]
    key = ollama.keys["key"]
    head = "GET /x?{repeat:3:ab} HTTP/1.1\nX-A: a\\rb\\x00\\\\\nAuthorization: Bearer {key}\n"
    built = build_request(control(raw=head, body='{"a":"\\u0041\\x41","{b}":1}'), env, ollama)
    body = b'{"a":"\\u0041A","{b}":1}'
    assert built == (
        f"GET /x?ababab HTTP/1.1\r\nX-A: a\rb\x00\\\r\nAuthorization: Bearer {key}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    raw = control(raw="GET / HTTP/1.1\nHost: x\n\n", body=None, raw_body=True, crlf="literal")
    assert build_request(raw, env, ollama) == b"GET / HTTP/1.1\nHost: x\n\n"


def test_responses_on_one_connection_are_told_apart() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nHTTP/1.1 200"
    )
    assert statuses(answer) == [100, 200, 403, 400]
