from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.tools import hold
from aiperimeter.gateway.tools.base import MAX_EVENT_BYTES, Declared, RequestTools
from aiperimeter.gateway.tools.ollama import StreamGuard, judge_body, read_request
from aiperimeter.policy.calls import ToolCall
from tests.support import guards
from tests.support.guards import Judge, Scenario, cuts, feed_all, mutate, notice_text

# --- captures (ollama/ollama docs/capabilities/tool-calling.mdx, streaming.mdx) ---------------------------------------

ENV = '"model":"qwen3","created_at":"2025-10-01T12:00:00.000000Z"'


def line(message: str | None = None, done: bool = False, extra: str = "") -> str:
    body = f',"message":{message}' if message is not None else ""
    return "{" + ENV + body + f',"done":{"true" if done else "false"}' + extra + "}"


def text(content: str, thinking: str | None = None) -> str:
    think = f',"thinking":{orjson.dumps(thinking).decode()}' if thinking is not None else ""
    return line('{"role":"assistant","content":' + orjson.dumps(content).decode() + think + "}")


def calls(*entries: str, content: str = "") -> str:
    return line(
        '{"role":"assistant","content":' + orjson.dumps(content).decode() + ',"tool_calls":[' + ",".join(entries) + "]}"
    )


def fn(name: str | None, args: Any, index: int | None = None) -> str:
    parts = [] if index is None else [f'"index":{index}']
    if name is not None:
        parts.append(f'"name":"{name}"')
    parts.append(f'"arguments":{orjson.dumps(args).decode()}')
    return '{"function":{' + ",".join(parts) + "}}"


FINAL = line(
    '{"role":"assistant","content":""}',
    done=True,
    extra=',"done_reason":"stop","total_duration":100,"prompt_eval_count":26,"eval_count":12',
)


def ndjson(*lines: str) -> bytes:
    return "".join(f"{item}\n" for item in lines).encode()


TEMP = ("get_temperature", {"city": "New York"}, None, "function", None)
COND = ("get_conditions", {"city": "New York"}, None, "function", None)
SQL = ("run_sql", {"query": "SELECT 1"}, None, "function", None)


SCENARIOS = {
    "text-only": Scenario(ndjson(text("The "), text("sky is blue."), FINAL), []),
    "single-call": Scenario(
        ndjson(
            text("", thinking="The user wants the temperature."),
            calls(fn("get_temperature", {"city": "New York"}, 0)),
            FINAL,
        ),
        [TEMP],
    ),
    "parallel-one-line": Scenario(
        ndjson(
            text("Checking."),
            calls(fn("get_temperature", {"city": "New York"}, 0), fn("get_conditions", {"city": "New York"}, 1)),
            FINAL,
        ),
        [TEMP, COND],
    ),
    "parallel-lines": Scenario(
        ndjson(
            calls(fn("get_temperature", {"city": "New York"}, 0)),
            calls(fn("get_conditions", {"city": "New York"}, 0)),
            FINAL,
        ),
        [TEMP, COND],
    ),
    "string-arguments-split": Scenario(
        ndjson(
            text("Let me check."),
            calls(fn("run_sql", '{"query":"SEL', 0)),
            text("(still thinking)"),
            calls(fn(None, 'ECT 1"}', 0)),
            FINAL,
        ),
        [SQL],
    ),
    "string-arguments-whole": Scenario(
        ndjson(calls(fn("run_sql", '{"query":"SELECT 1"}')), FINAL),
        [SQL],
    ),
    "invalid-json": Scenario(
        ndjson(calls(fn("run_sql", '{"query": SELECT', 0)), FINAL),
        [("run_sql", None, None, "function", "invalid_json")],
    ),
    "ends-mid-call": Scenario(
        ndjson(text("Let me check."), calls(fn("run_sql", '{"query":"SEL', 0))),
        [("run_sql", None, None, "function", "incomplete")],
    ),
    "whole-call-after-held": Scenario(
        ndjson(
            calls(fn("run_sql", '{"query":', 0)),
            calls(fn("get_temperature", {"city": "New York"}, 1)),
            calls(fn(None, '"SELECT 1"}', 0)),
            FINAL,
        ),
        [TEMP, SQL],
    ),
}


# --- what the client sees ---------------------------------------------------------------------------------------------


def lines(out: bytes) -> list[Any]:
    return [orjson.loads(item) for item in out.split(b"\n") if item.strip()]


def view(out: bytes) -> dict[str, Any]:
    content, thinking, found, errors = "", "", [], []
    done_reason = None
    events = lines(out)
    for event in events:
        if "error" in event:
            errors.append(event["error"])
            continue
        message = event.get("message") or {}
        content += message.get("content") or ""
        thinking += message.get("thinking") or ""
        found += [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        if event.get("done"):
            done_reason = event.get("done_reason")
    if errors:
        assert "error" in events[-1], "nothing may follow the error line"
    return {"content": content, "thinking": thinking, "calls": found, "done_reason": done_reason, "errors": errors}


def run(data: bytes, judge: Judge, pieces: list[bytes] | None = None) -> tuple[bytes, StreamGuard]:
    return guards.run(StreamGuard, data, judge, pieces)


TEMP_CALL = ("get_temperature", {"city": "New York"})
COND_CALL = ("get_conditions", {"city": "New York"})
SQL_CALL = ("run_sql", {"query": "SELECT 1"})

CASES = [
    pytest.param("text-only", {}, ("The sky is blue.", []), [], id="text-only"),
    pytest.param("single-call", {}, ("", [TEMP_CALL]), ["allow"], id="single-allow"),
    pytest.param(
        "single-call", {"get_temperature": "strip"}, (notice_text("get_temperature"), []), ["strip"], id="single-strip"
    ),
    pytest.param("single-call", {"get_temperature": "block"}, "block", ["block"], id="single-block"),
    pytest.param(
        "parallel-one-line", {}, ("Checking.", [TEMP_CALL, COND_CALL]), ["allow", "allow"], id="parallel-one-line"
    ),
    pytest.param(
        "parallel-one-line",
        {"get_temperature": "strip"},
        ("Checking." + notice_text("get_temperature"), [COND_CALL]),
        ["strip", "allow"],
        id="parallel-one-line-strip-first",
    ),
    pytest.param(
        "parallel-one-line", {"get_conditions": "block"}, "block", ["allow", "block"], id="parallel-one-line-block"
    ),
    pytest.param(
        "parallel-lines",
        {"get_conditions": "strip"},
        (notice_text("get_conditions"), [TEMP_CALL]),
        ["allow", "strip"],
        id="parallel-lines-index-reused",
    ),
    pytest.param(
        "string-arguments-split",
        {},
        ("Let me check.(still thinking)", [SQL_CALL]),
        ["allow"],
        id="string-arguments-split",
    ),
    pytest.param(
        "string-arguments-split",
        {"run_sql": "strip"},
        ("Let me check." + notice_text("run_sql") + "(still thinking)", []),
        ["strip"],
        id="string-arguments-split-strip",
    ),
    pytest.param("string-arguments-whole", {}, ("", [SQL_CALL]), ["allow"], id="string-arguments-whole"),
    pytest.param("invalid-json", {"run_sql": "strip"}, (notice_text("run_sql"), []), ["strip"], id="invalid-json"),
    pytest.param(
        "ends-mid-call",
        {"run_sql": "strip"},
        ("Let me check." + notice_text("run_sql"), []),
        ["strip"],
        id="ends-mid-call",
    ),
    pytest.param("ends-mid-call", {"run_sql": "block"}, "block", ["block"], id="ends-mid-call-block"),
    pytest.param(
        "whole-call-after-held", {}, ("", [SQL_CALL, TEMP_CALL]), ["allow", "allow"], id="whole-call-waits-behind-held"
    ),
]


@pytest.mark.parametrize(("scenario", "table", "expected", "decisions"), CASES)
def test_stream_scenarios_in_every_split(
    scenario: str, table: dict[str, str], expected: Any, decisions: list[str]
) -> None:

    def check_first(out: bytes, guard: StreamGuard) -> None:
        seen = view(out)
        if expected == "block":
            assert len(seen["errors"]) == 1 and "is not allowed by rule" in seen["errors"][0]
            assert guard.blocked is not None and guard.blocked.verdict.decision == "block"
        else:
            assert (seen["content"], seen["calls"]) == expected
            assert seen["errors"] == [] and guard.blocked is None

    guards.same_in_every_split(StreamGuard, SCENARIOS[scenario], table, decisions, lines, check_first)


@pytest.mark.parametrize("scenario", ["text-only", "single-call", "parallel-one-line", "parallel-lines"])
def test_whole_calls_that_are_allowed_pass_unchanged(scenario: str) -> None:
    data = SCENARIOS[scenario].data
    assert run(data, Judge({}))[0] == data


def test_thinking_and_stats_pass() -> None:
    out, _ = run(SCENARIOS["single-call"].data, Judge({"get_temperature": "strip"}))
    assert view(out)["thinking"] == "The user wants the temperature."
    assert lines(out)[-1]["eval_count"] == 12 and lines(out)[-1]["done"] is True


def test_text_is_out_before_the_call_completes() -> None:
    data = SCENARIOS["string-arguments-split"].data
    middle = data.index(b"ECT 1")
    judge = Judge({}, SCENARIOS["string-arguments-split"].complete)
    guard = StreamGuard(judge)
    early = guard.feed(data[:middle])
    assert b"Let me check." in early and b"tool_calls" not in early and b"still thinking" not in early
    assert judge.seen == []
    rest = guard.feed(data[middle:]) + guard.close()
    assert view(early + rest)["calls"] == [SQL_CALL] and len(judge.seen) == 1


def test_a_done_reason_that_promised_calls_becomes_stop_when_all_are_stripped() -> None:
    final = line('{"role":"assistant","content":""}', done=True, extra=',"done_reason":"tool_calls"')
    out, _ = run(ndjson(calls(fn("get_temperature", {"city": "Paris"})), final), Judge({"get_temperature": "strip"}))
    assert view(out)["done_reason"] == "stop"
    out, _ = run(ndjson(calls(fn("get_temperature", {"city": "Paris"})), final), Judge({}))
    assert view(out)["done_reason"] == "tool_calls"


def test_block_writes_nothing_more() -> None:
    guard = StreamGuard(Judge({"get_temperature": "block"}))
    out = guard.feed(SCENARIOS["single-call"].data)
    assert lines(out)[-1] == {
        "error": "The tool call 'get_temperature' is not allowed by rule tools.get_temperature: test rule."
    }
    assert guard.feed(ndjson(text("more"))) == b"" and guard.close() == b""


SQL_LINE = ndjson(calls(fn("run_sql", {"query": "SELECT 1"})))
DEEP = b'{"x":' * 300 + b"1" + b"}" * 300  # deeper than orjson writes (254), not than it reads
CASE_VARIANTS = [  # keys Ollama's Go client reads as the field they fold to
    (b'"tool_calls"', b'"Tool_calls"'),
    (b'"message"', b'"Message"'),
    (b'"function"', b'"FUNCTION"'),
    (b'"arguments"', b'"Arguments"'),
    (b'"name"', b'"\\u004eame"'),
    (b'"tool_calls"', '"tool_callſ"'.encode()),  # U+017F folds to s
]

UNREADABLE = [
    pytest.param(b"not json\n", id="not-json"),
    pytest.param(b"[1,2]\n", id="json-array"),
    pytest.param(ndjson(line('"hello"')), id="message-string"),
    pytest.param(ndjson(line('{"role":"assistant","tool_calls":{"function":{}}}')), id="tool-calls-object"),
    pytest.param(ndjson(line('{"role":"assistant","tool_calls":[{"name":"x"}]}')), id="call-without-function"),
    pytest.param(ndjson(calls('{"function":{"name":"x","arguments":[1]}}')), id="arguments-list"),
    pytest.param(ndjson(calls('{"function":{"name":7,"arguments":{}}}')), id="name-number"),
    *[pytest.param(SQL_LINE.replace(k, v), id=f"case-{v.decode()}") for k, v in CASE_VARIANTS],
    pytest.param(SQL_LINE.replace(b'{"query":"SELECT 1"}', DEEP), id="arguments-too-deep"),
    pytest.param(ndjson(calls(fn("run_sql", "{}", 0), content="@")).replace(b'"@"', DEEP), id="text-too-deep"),
]


@pytest.mark.parametrize("bad", UNREADABLE)
def test_unreadable_lines_fail_closed(bad: bytes) -> None:
    data = ndjson(text("Hello.")) + bad + ndjson(text(" more"), FINAL)
    out, guard = run(data, Judge({"(unreadable)": "audit"}))  # allowed or not, unreadable bytes are never delivered
    seen = view(out)
    assert seen["content"] == "Hello." and len(seen["errors"]) == 1
    assert guard.blocked is not None and guard.blocked.call.error == "unreadable"
    assert guard.blocked.verdict.decision == "block"
    out, guard = run(data, Judge({"(unreadable)": "strip"}))
    assert view(out)["content"] == "Hello." + notice_text("(unreadable)") + " more" and guard.blocked is None


def test_an_oversized_line_fails_closed() -> None:
    data = (
        ndjson(text("Hello."))
        + b'{"message":"'
        + b"x" * (MAX_EVENT_BYTES + 10)
        + b'"}\n'
        + ndjson(text(" more"), FINAL)
    )
    out, guard = run(
        data, Judge({"(unreadable)": "block"}), [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    )
    assert view(out)["content"] == "Hello." and guard.blocked is not None
    out, guard = run(
        data, Judge({"(unreadable)": "strip"}), [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    )
    assert view(out)["content"] == "Hello." + notice_text("(unreadable)") + " more" and guard.blocked is None


def test_blank_lines_and_error_lines_pass() -> None:
    data = b"\n" + ndjson(text("Hi"), '{"error":"model unloaded"}')
    out, guard = run(data, Judge({}))
    assert out == data and guard.decisions == []


def test_held_bytes_over_the_cap_end_held_calls_as_incomplete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "MAX_HELD_BYTES", 4096)
    data = ndjson(calls(fn("run_sql", '{"query":"SEL', 0)), *[text("y" * 500) for _ in range(10)], FINAL)
    judge = Judge({"run_sql": "strip"})
    out, _ = run(data, judge)
    assert judge.seen == [("run_sql", None, None, "function", "incomplete")]
    assert view(out)["content"] == notice_text("run_sql") + "y" * 5000


def test_hostile_mutations_never_raise_and_never_deliver_an_unjudged_call() -> None:
    rng = random.Random(11)
    bases = [s.data for s in SCENARIOS.values()]
    for _ in range(600):
        data = mutate(rng, bases)
        guard = StreamGuard(Judge({"run_sql": "strip", "get_conditions": "strip"}))
        cut = rng.randrange(len(data) + 1)
        out = feed_all(guard, [data[:cut], data[cut:]])
        allowed = {d.call.name for d in guard.decisions if d.verdict.delivered} - {"run_sql", "get_conditions"}
        for item in out.split(b"\n"):
            try:
                event = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            message = event.get("message") if isinstance(event, dict) else None
            found = message.get("tool_calls") if isinstance(message, dict) else None
            for entry in found if isinstance(found, list) else []:
                body = entry.get("function") if isinstance(entry, dict) else None
                name = body.get("name") if isinstance(body, dict) else None
                assert (name or "(unnamed)") in allowed, out  # a call without a name is judged as "(unnamed)"


# --- non-streamed bodies ----------------------------------------------------------------------------------------------


def body(*entries: dict[str, Any], content: str = "", done_reason: str = "stop") -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if entries:
        message["tool_calls"] = list(entries)
    return orjson.dumps(
        {"model": "qwen3", "message": message, "done": True, "done_reason": done_reason, "eval_count": 9}
    )


TEMP_BODY = {"function": {"index": 0, "name": "get_temperature", "arguments": {"city": "New York"}}}
COND_BODY = {"function": {"index": 1, "name": "get_conditions", "arguments": {"city": "New York"}}}


def test_body_all_allowed_is_unchanged() -> None:
    raw = body(TEMP_BODY, COND_BODY)
    judge = Judge({})
    result = judge_body(raw, judge)
    assert result.body == raw and result.blocked is None and judge.seen == [TEMP, COND]


@pytest.mark.parametrize(
    ("raw", "table", "kept", "content", "done_reason"),
    [
        pytest.param(
            body(TEMP_BODY, COND_BODY),
            {"get_temperature": "strip"},
            [COND_BODY],
            notice_text("get_temperature"),
            "stop",
            id="one-of-two",
        ),
        pytest.param(
            body(TEMP_BODY, content="Sure.", done_reason="tool_calls"),
            {"get_temperature": "strip"},
            None,
            "Sure.\n" + notice_text("get_temperature"),
            "stop",
            id="all",
        ),
        pytest.param(
            body({"function": {"name": "run_sql", "arguments": "{oops"}}),
            {"run_sql": "strip"},
            None,
            notice_text("run_sql"),
            "stop",
            id="string-arguments-invalid",
        ),
    ],
)
def test_body_strip(raw: bytes, table: dict[str, str], kept: Any, content: str, done_reason: str) -> None:
    result = judge_body(raw, Judge(table))
    doc = orjson.loads(result.body)
    assert doc["message"].get("tool_calls") == kept and doc["message"]["content"] == content
    assert doc["done_reason"] == done_reason and doc["eval_count"] == 9 and result.blocked is None


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        pytest.param(body(TEMP_BODY, COND_BODY), "get_conditions", id="blocked-call"),
        pytest.param(b"<html>bad gateway</html>", "(unreadable)", id="not-json"),
        pytest.param(b'{"message": "hi"}', "(unreadable)", id="message-string"),
        pytest.param(body({"name": "get_temperature"}), "(unreadable)", id="call-without-function"),
    ],
)
def test_body_block(raw: bytes, name: str) -> None:
    result = judge_body(raw, Judge({"get_conditions": "block"}))
    assert result.blocked is not None and result.blocked.call.name == name
    assert result.blocked.verdict.decision == "block"
    assert orjson.loads(result.body)["error"]["code"] == "tool_call_blocked"


@pytest.mark.parametrize(
    "raw",
    [
        *[pytest.param(body(TEMP_BODY).replace(k, v), id=f"case-{v.decode()}") for k, v in CASE_VARIANTS],
        pytest.param(body(TEMP_BODY)[:-1] + b',"deep":' + DEEP + b"}", id="too-deep-to-rewrite"),
    ],
)
def test_body_unreadable(raw: bytes) -> None:
    result = judge_body(raw, Judge({"get_temperature": "strip", "(unreadable)": "strip"}))
    assert result.blocked is not None and result.blocked.call.error == "unreadable"
    assert b"New York" not in result.body


def test_arguments_nested_too_deep_are_judged_unusable() -> None:
    entry = {"function": {"name": "run_sql", "arguments": "@"}}
    judge = Judge({})
    judge_body(body(entry).replace(b'"@"', DEEP), judge)
    assert judge.seen == [("run_sql", None, None, "function", "too_deep")]
    history = orjson.dumps({"messages": [{"role": "assistant", "tool_calls": [entry]}]}).replace(b'"@"', DEEP)
    with pytest.raises(BadRequest):
        read_request(orjson.loads(history))


def test_keys_spelled_exactly_pass() -> None:
    raw = body(TEMP_BODY, content="Tool_calls: MESSAGE")  # a capital in a value is no key
    assert judge_body(raw, Judge({})).body == raw


def test_body_without_calls_passes() -> None:
    raw = body(content="The sky is blue.")
    assert judge_body(raw, Judge({})).body == raw


# --- requests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {
                "tools": [
                    {"type": "function", "function": {"name": "get_temperature", "parameters": {}}},
                    {"function": {"name": "x"}},
                ]
            },
            RequestTools(declared=[Declared("get_temperature", "function"), Declared("x", "function")]),
            id="tools",
        ),
        pytest.param(
            {"tools": [{"type": "web_search"}, 3, {"type": "function"}]},
            RequestTools(
                declared=[Declared(None, "web_search", True), Declared(None, "invalid"), Declared(None, "function")]
            ),
            id="hostile-tools",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            TEMP_BODY,
                            {"id": "call_1", "function": {"name": "run_sql", "arguments": '{"query":"SELECT 1"}'}},
                            5,
                        ],
                    },
                    {"role": "tool", "tool_name": "get_temperature", "content": "22°C"},
                    {"role": "tool", "name": "run_sql", "tool_call_id": "call_1", "content": "1"},
                    {"role": "tool", "content": "anonymous"},
                    None,
                ]
            },
            RequestTools(
                history=[
                    ToolCall("get_temperature", {"city": "New York"}, raw_size=19),
                    ToolCall("run_sql", {"query": "SELECT 1"}, "call_1", raw_size=20),
                ],
                results=[(None, "get_temperature"), ("call_1", "run_sql"), (None, None)],
            ),
            id="history-and-results",
        ),
        pytest.param([], RequestTools(), id="not-an-object"),
    ],
)
def test_read_request(doc: Any, expected: RequestTools) -> None:
    assert read_request(doc) == expected


# --- the fast path does what the general path does --------------------------------------------------------------------


class GeneralOnly(StreamGuard):
    """The guard with its fast path off: every line is read the general way."""

    def _next_fragment(self, doc: Any) -> bool:
        return False


class Counting(StreamGuard):
    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self.fast = 0

    def _next_fragment(self, doc: Any) -> bool:
        taken = super()._next_fragment(doc)
        self.fast += taken
        return taken


def assert_paths_agree(pieces_list: list[list[bytes]]) -> None:
    guards.assert_paths_agree(GeneralOnly, [StreamGuard], pieces_list)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fast_path_agrees_with_the_general_path_in_many_splits(scenario: str) -> None:
    data = SCENARIOS[scenario].data
    assert_paths_agree([[data], *cuts(data, range(0, len(data) + 1, 3))])


OPEN = ndjson(text("Let me check."), calls(fn("run_sql", '{"query":"SEL', 0)))
REST = ndjson(calls(fn(None, 'ECT 1"}', 0)), FINAL)
NEAR_MISS = [
    pytest.param(ndjson(calls(fn(None, "ECT", 0))), id="fragment"),
    pytest.param(ndjson(calls(fn(None, "ECT"))), id="no-index"),
    pytest.param(ndjson(calls(fn(None, "ECT", 1))), id="index-not-open"),
    pytest.param(ndjson(calls('{"function":{"index":-1,"arguments":"ECT"}}')), id="index-negative"),
    pytest.param(ndjson(calls('{"function":{"index":true,"arguments":"ECT"}}')), id="index-bool"),
    pytest.param(ndjson(calls('{"function":{"index":"0","arguments":"ECT"}}')), id="index-string"),
    pytest.param(ndjson(calls('{"function":{"index":false,"arguments":"ECT"}}')), id="index-false"),
    pytest.param(ndjson(calls(fn("drop_table", "ECT", 0))), id="named"),
    pytest.param(ndjson(calls('{"function":{"index":0,"name":"","arguments":"ECT"}}')), id="name-empty"),
    pytest.param(ndjson(calls('{"function":{"index":0,"name":7,"arguments":"ECT"}}')), id="name-number"),
    pytest.param(ndjson(calls(fn(None, {"a": 1}, 0))), id="arguments-object"),
    pytest.param(ndjson(calls(fn(None, 7, 0))), id="arguments-number"),
    pytest.param(ndjson(calls(fn(None, None, 0))), id="arguments-null"),
    pytest.param(ndjson(calls(fn(None, "ECT", 0), fn(None, "!", 0))), id="two-entries"),
    pytest.param(ndjson(calls(fn(None, "ECT", 0), content="hi")), id="text-beside"),
    pytest.param(
        ndjson(calls('{"id":"c","type":"function","function":{"index":0,"arguments":"ECT"}}')), id="entry-extra"
    ),
    pytest.param(ndjson(calls('{"function":"ECT"}')), id="function-string"),
    pytest.param(ndjson(calls('"ECT"')), id="entry-string"),
    pytest.param(
        ndjson(line('{"role":"assistant","content":"","thinking":"hm","tool_calls":[' + fn(None, "ECT", 0) + "]}")),
        id="thinking-beside",
    ),
    pytest.param(
        ndjson(line('{"role":"assistant","thinking":"","images":null,"tool_calls":[' + fn(None, "ECT", 0) + "]}")),
        id="empty-fields-beside",
    ),
    pytest.param(ndjson(line('{"tool_calls":[' + fn(None, "ECT", 0) + "]}")), id="no-role"),
    pytest.param(ndjson(line('{"role":"assistant","tool_calls":[' + fn(None, "ECT", 0) + "]}", done=True)), id="done"),
    pytest.param(
        ndjson(line('{"role":"assistant","tool_calls":[' + fn(None, "ECT", 0) + "]}", extra=',"done":1')), id="done-one"
    ),
    pytest.param(ndjson(calls(fn(None, '"}', 0)), calls(fn(None, "late", 0))), id="late-fragment"),
    pytest.param(ndjson(calls(fn(None, "ECT", 0))).replace(b"\n", b"\r\n"), id="crlf"),
    pytest.param(b"\n" + ndjson(calls(fn(None, "ECT", 0))), id="blank-line-first"),
]


@pytest.mark.parametrize("variant", NEAR_MISS)
def test_fast_path_agrees_with_the_general_path_on_near_misses(variant: bytes) -> None:
    data = OPEN + variant + REST
    start, end = len(OPEN), len(OPEN) + len(variant)
    edges = [start - 1, start, start + 1, (start + end) // 2, end - 1, end, end + 1]
    assert_paths_agree([[data], [OPEN, variant, REST], *cuts(data, edges)])


def test_argument_fragments_take_the_fast_path() -> None:
    columns = ", ".join(f"c{i}" for i in range(40))
    args = orjson.dumps({"query": f'SELECT {columns} FROM "t"'}).decode()  # noqa: S608 (arguments, never run)
    pieces = [args[i : i + 7] for i in range(0, len(args), 7)]
    data = ndjson(calls(fn("run_sql", pieces[0], 0)), *[calls(fn(None, piece, 0)) for piece in pieces[1:]], FINAL)
    lines = data.splitlines(keepends=True)
    guard = Counting(Judge({}))
    out = feed_all(guard, lines)
    assert guard.fast == len(pieces) - 1 and view(out)["calls"] == [("run_sql", orjson.loads(args))]
    assert_paths_agree([lines, [data]])


def test_hostile_mutations_take_either_path_alike() -> None:
    rng = random.Random(17)
    bases = [s.data for s in SCENARIOS.values()] + [OPEN + ndjson(calls(fn(None, "ECT", 0))) + REST]
    for _ in range(300):
        data = mutate(rng, bases)
        cut = rng.randrange(len(data) + 1)
        assert_paths_agree([[data[:cut], data[cut:]], data.splitlines(keepends=True)])


def test_a_whole_line_over_the_cap_in_one_chunk_fails_closed() -> None:
    big = ndjson(text("x" * MAX_EVENT_BYTES))
    out, guard = run(ndjson(text("Hello.")) + big + ndjson(FINAL), Judge({"(unreadable)": "strip"}), None)
    assert view(out)["content"] == "Hello." + notice_text("(unreadable)") and guard.blocked is None
    pieces = [ndjson(text("Hello.")), big, ndjson(FINAL)]
    out, guard = run(b"", Judge({"(unreadable)": "strip"}), pieces)
    assert view(out)["content"] == "Hello." + notice_text("(unreadable)") and guard.blocked is None
