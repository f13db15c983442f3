"""The policy engine: deny by default, the judging order, the three actions, the request-side checks, and a loader
that names the file and field of every mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aiperimeter.errors import BadRequest, ConfigError, ToolCallBlocked
from aiperimeter.gateway.tools.base import Declared, RequestTools
from aiperimeter.policy.calls import ToolCall
from aiperimeter.policy.engine import Policy, summarise
from aiperimeter.policy.loader import load_policies, load_policy
from aiperimeter.policy.model import PolicyFile

SPEC: dict[str, Any] = {
    "action": "block",
    "tools": {
        "get_time": None,
        "run_sql": {"args": {"query": {"required": True, "sql": {"tables": ["orders"]}}}},
        "send_payment": {
            "action": "strip",
            "schema": {"type": "object", "required": ["recipient", "amount"]},
            "args": {"recipient": {"in": ["alice@example.com"]}, "amount": {"type": "number", "min": 0, "max": 100}},
        },
        "fetch": {"args": {"url": {"url": {"hosts": ["api.example.com"]}}}, "allow_other_args": True},
    },
}


def policy(**changes: Any) -> Policy:
    return Policy("agent", PolicyFile.model_validate({**SPEC, **changes}))


JUDGED = [
    pytest.param(ToolCall("get_time", {"tz": "UTC", "anything": [1]}), "allow", None, id="listed-without-rules"),
    pytest.param(ToolCall("rm", {}), "block", "tools.not_listed", id="not-listed"),
    pytest.param(ToolCall("run_sql", {"query": "SELECT id FROM orders"}), "allow", None, id="sql-allowed"),
    pytest.param(ToolCall("run_sql", {"query": "DELETE FROM orders"}), "block", "tools.run_sql.args.query.sql",
                 id="sql-write"),
    pytest.param(ToolCall("run_sql", {}), "block", "tools.run_sql.args.query.required", id="required-missing"),
    pytest.param(ToolCall("run_sql", {"query": "SELECT 1", "db": "prod"}), "block", "tools.run_sql.args.not_listed",
                 id="unlisted-argument"),
    pytest.param(ToolCall("run_sql", None, error="invalid_json"), "block", "tools.run_sql.arguments",
                 id="invalid-json"),
    pytest.param(ToolCall("send_payment", {"recipient": "alice@example.com", "amount": 20}), "allow", None,
                 id="payment-ok"),
    pytest.param(ToolCall("send_payment", {"recipient": "alice@example.com"}), "strip", "tools.send_payment.schema",
                 id="schema-missing-amount-tool-action-strip"),
    pytest.param(ToolCall("send_payment", {"recipient": "mallory@example.com", "amount": 20}), "strip",
                 "tools.send_payment.args.recipient.value", id="recipient-not-in-list"),
    pytest.param(ToolCall("send_payment", {"recipient": "alice@example.com", "amount": 5000}), "strip",
                 "tools.send_payment.args.amount.value", id="amount-over-max"),
    pytest.param(ToolCall("send_payment", {"recipient": "alice@example.com", "amount": "20"}), "strip",
                 "tools.send_payment.args.amount.value", id="amount-as-string"),
    pytest.param(ToolCall("fetch", {"url": "https://api.example.com/v1", "timeout": 3}), "allow", None,
                 id="other-args-allowed"),
    pytest.param(ToolCall("fetch", {"url": "http://169.254.169.254/latest"}), "block", "tools.fetch.args.url.url",
                 id="ssrf"),
    pytest.param(ToolCall("web_search_call", None, error="hosted"), "block", "tools.hosted", id="hosted"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "decision", "rule"), JUDGED)
def test_judge(call: ToolCall, decision: str, rule: str | None) -> None:
    verdict = policy().judge(call)
    assert (verdict.decision, verdict.rule) == (decision, rule)
    assert verdict.delivered == (decision == "allow")
    if decision != "allow":
        assert verdict.reason


def test_audit_delivers_violations_but_never_unusable_arguments() -> None:
    audit = policy(action="audit")
    assert audit.judge(ToolCall("rm", {})).decision == "audit"
    assert audit.judge(ToolCall("run_sql", {"query": "DROP TABLE orders"})).delivered
    assert audit.judge(ToolCall("run_sql", None, error="incomplete")).decision == "strip"


def test_reasons_never_carry_argument_values() -> None:
    secret = "sk-live-very-secret-value-0123456789"
    verdict = policy().judge(ToolCall("send_payment", {"recipient": secret, "amount": 1}))
    assert secret not in (verdict.reason or "")


def test_summary_keeps_names_types_and_sizes_only() -> None:
    summary = summarise({"query": "SELECT secret", "n": 3, "ok": True, "tags": ["a"], "opts": {"x": 1}, "z": None})
    assert summary == {"query": "string(13)", "n": "number", "ok": "bool", "tags": "array(1)", "opts": "object(1)",
                       "z": "nonetype"}  # fmt: skip
    assert "SELECT" not in str(summary)


def call(name: str, arguments: dict[str, Any] | None, call_id: str | None) -> ToolCall:
    return ToolCall(name, arguments, call_id)


REFUSED = [
    pytest.param(RequestTools(declared=[Declared("rm", "function")]), ToolCallBlocked, "tool_not_allowed",
                 id="declared-unlisted"),
    pytest.param(RequestTools(declared=[Declared("web_search", "web_search", hosted=True)]), ToolCallBlocked,
                 "hosted_tool_not_allowed", id="hosted"),
    pytest.param(RequestTools(hosted_other=["mcp_servers"]), ToolCallBlocked, "hosted_tool_not_allowed",
                 id="hosted-field"),
    pytest.param(RequestTools(declared=[Declared(None, "function")]), BadRequest, "invalid_tools", id="nameless"),
    pytest.param(RequestTools(forced=["shell"]), ToolCallBlocked, "tool_not_allowed", id="forced-unlisted"),
    pytest.param(RequestTools(history=[call("run_sql", {"query": "DROP TABLE orders"}, "c1")], results=[("c1", None)]),
                 ToolCallBlocked, "tool_result_not_allowed", id="result-of-refused-call"),
    pytest.param(RequestTools(results=[("c9", None)]), ToolCallBlocked, "tool_result_unknown", id="result-of-no-call"),
    pytest.param(RequestTools(results=[(None, "shell")]), ToolCallBlocked, "tool_result_not_allowed",
                 id="named-result-unlisted"),
    pytest.param(RequestTools(results=[(None, None)]), BadRequest, "invalid_tool_result", id="anonymous-result"),
]  # fmt: skip


@pytest.mark.parametrize(("tools", "error", "code"), REFUSED)
def test_request_side_refusals(tools: RequestTools, error: type[Exception], code: str) -> None:
    with pytest.raises(error) as caught:
        policy().check_request(tools)
    assert caught.value.code == code  # type: ignore[attr-defined]


def test_request_side_passes_allowed_tools_and_their_results() -> None:
    tools = RequestTools(
        declared=[Declared("run_sql", "function"), Declared("get_time", "function")],
        forced=["run_sql"],
        history=[call("run_sql", {"query": "SELECT 1 FROM orders"}, "c1"), call("get_time", {}, None)],
        results=[("c1", None), (None, "get_time")],
    )
    assert policy().check_request(tools) == []


def test_request_side_under_audit_records_instead_of_refusing_but_still_refuses_hosted_tools() -> None:
    audit = policy(action="audit")
    recorded = audit.check_request(RequestTools(declared=[Declared("rm", "function")]))
    assert [(d.call.name, d.verdict.decision) for d in recorded] == [("rm", "audit")]
    with pytest.raises(ToolCallBlocked):
        audit.check_request(RequestTools(declared=[Declared(None, "code_interpreter", hosted=True)]))


# --- loading ----------------------------------------------------------------------------------------------------------

BAD = [
    pytest.param({"tools": {"x": {"args": {"q": {"sql": {"dialect": "nosuch"}}}}}}, "tools.x.args.q.sql.dialect",
                 id="unknown-dialect"),
    pytest.param({"tools": {"x": {"argz": {}}}}, "tools.x.argz", id="misspelt-field"),
    pytest.param({"action": "deny"}, "action", id="unknown-action"),
    pytest.param({"tools": {"x": {"args": {"q": {"sql": {}, "shell": {"commands": {}}}}}}}, "tools.x.args",
                 id="two-parsers"),
    pytest.param({"tools": {"bad name!": {}}}, "tools", id="bad-tool-name"),
    pytest.param({"tools": {"x": {"schema": {"type": "nonsense"}}}}, "tools.x.schema", id="invalid-json-schema"),
    pytest.param({"tools": {"x": {"args": {"q": {"pattern": "("}}}}}, "tools.x.args.q.pattern", id="bad-regex"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "field"), BAD)
def test_an_invalid_policy_names_its_file_and_field(tmp_path: Path, doc: dict[str, Any], field: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert str(path) in str(caught.value) and field in str(caught.value)


def test_folder_loading(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "b.yml").write_text("tools: {get_time: }\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    policies = load_policies(tmp_path)
    assert policies.names() == ["a", "b"]
    (tmp_path / "Bad Name.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="file name is its name"):
        load_policies(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        load_policies(tmp_path / "missing")
