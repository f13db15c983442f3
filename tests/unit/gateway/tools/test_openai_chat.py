from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.tools import hold
from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, MAX_EVENT_BYTES, Declared, RequestTools, SSESplitter
from aiperimeter.gateway.tools.hold import ObjectEnd
from aiperimeter.gateway.tools.openai_chat import StreamGuard, judge_body, read_request
from aiperimeter.policy.calls import ToolCall
from tests.support import guards, toolwire
from tests.support.guards import Judge, Scenario, cuts, feed_all, mutate, notice_text, splits

# --- captures ---------------------------------------------------------------------------------------------------------

ENV = '"id":"chatcmpl-9","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-mini"'


def chunk(*choices: str, extra: str = "") -> str:
    return "{" + ENV + ',"choices":[' + ",".join(choices) + "]" + extra + "}"


def choice(delta: str, index: int = 0, finish: str = "null") -> str:
    return f'{{"index":{index},"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'


def call(index: int, args: str, call_id: str | None = None, name: str | None = None, kind: str = "function") -> str:
    head = f'"index":{index}' + (f',"id":"{call_id}","type":"{kind}"' if call_id else "")
    text = "input" if kind == "custom" else "arguments"
    body = (f'"name":"{name}",' if name else "") + f'"{text}":{orjson.dumps(args).decode()}'
    return '{"tool_calls":[{' + head + f',"{kind}":{{' + body + "}}]}"


def stream(*datas: str) -> bytes:
    return "".join(f"data: {data}\n\n" for data in datas).encode()


ROLE = chunk(choice('{"role":"assistant","content":""}'))
HI = chunk(choice('{"content":"Let me check."}'))
FINISH_CALLS = chunk(choice("{}", finish='"tool_calls"'))
USAGE = chunk(extra=',"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}')
DONE = "[DONE]"
SQL = ("run_sql", {"query": "SELECT 1"}, "call_abc", "function", None)
TIME = ("get_time", {"tz": "UTC"}, "call_t", "function", None)


def split_args(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


SCENARIOS = {
    "text-only": Scenario(
        stream(
            ROLE,
            chunk(choice('{"content":"Hel"}')),
            chunk(choice('{"content":"lo"}')),
            chunk(choice("{}", finish='"stop"')),
            USAGE,
            DONE,
        ),
        [],
    ),
    "single-call": Scenario(
        stream(
            chunk(choice('{"role":"assistant","content":null}')),
            HI,
            chunk(choice(call(0, "", "call_abc", "run_sql"))),
            chunk(choice(call(0, '{"query":"SEL'))),
            chunk(choice(call(0, 'ECT 1"}'))),
            FINISH_CALLS,
            DONE,
        ),
        [SQL],
    ),
    "parallel": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, "", "call_abc", "run_sql"))),
            chunk(choice(call(0, '{"query":"SELECT 1"}'))),
            chunk(choice(call(1, "", "call_t", "get_time"))),
            chunk(choice(call(1, '{"tz":'))),
            chunk(choice(call(1, '"UTC"}'))),
            FINISH_CALLS,
            USAGE,
            DONE,
        ),
        [SQL, TIME],
    ),
    "interleaved": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, "", "call_abc", "run_sql"))),
            chunk(choice(call(1, "", "call_t", "get_time"))),
            chunk(choice(call(0, '{"query":'))),
            chunk(choice(call(1, '{"tz":'))),
            chunk(choice(call(1, '"UTC"}'))),
            chunk(choice(call(0, '"SELECT 1"}'))),
            FINISH_CALLS,
            DONE,
        ),
        [TIME, SQL],  # judged as each completes
    ),
    "many-chunks": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, "", "call_abc", "run_sql"))),
            *[chunk(choice(call(0, piece))) for piece in split_args('{"query": "SELECT \\"}{\\\\\\" 1"}', 3)],
            FINISH_CALLS,
            DONE,
        ),
        [("run_sql", {"query": 'SELECT "}{\\" 1'}, "call_abc", "function", None)],
    ),
    "index-reused": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, '{"query":"SELECT 1"}', "call_abc", "run_sql"))),
            chunk(choice(call(0, '{"tz":"UTC"}', "call_t", "get_time"))),
            FINISH_CALLS,
            DONE,
        ),
        [SQL, TIME],
    ),
    "custom-tool": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, "", "call_c", "apply_patch", kind="custom"))),
            chunk(choice(call(0, "*** Begin Patch\n", kind="custom"))),
            chunk(choice(call(0, "*** End Patch", kind="custom"))),
            FINISH_CALLS,
            DONE,
        ),
        [("apply_patch", {"input": "*** Begin Patch\n*** End Patch"}, "call_c", "custom", None)],
    ),
    "usage-and-obfuscation": Scenario(
        stream(
            chunk(choice('{"role":"assistant","content":"","refusal":null}'), extra=',"obfuscation":"a1B2"'),
            chunk(choice(call(0, "", "call_abc", "run_sql")), extra=',"obfuscation":"zz"'),
            chunk(choice(call(0, '{"query":"SELECT 1"}')), extra=',"obfuscation":"q"'),
            chunk(choice("{}", finish='"tool_calls"'), extra=',"obfuscation":"Xy0"'),
            chunk(extra=',"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"obfuscation":"p"'),
            DONE,
        ),
        [SQL],
    ),
    "invalid-json": Scenario(
        stream(
            ROLE,
            chunk(choice(call(0, "", "call_abc", "run_sql"))),
            chunk(choice(call(0, '{"query": SELECT 1'))),
            FINISH_CALLS,
            DONE,
        ),
        [("run_sql", None, "call_abc", "function", "invalid_json")],
    ),
    "ends-mid-call": Scenario(
        stream(HI, chunk(choice(call(0, "", "call_abc", "run_sql"))), chunk(choice(call(0, '{"query":"SEL')))),
        [("run_sql", None, "call_abc", "function", "incomplete")],
    ),
    "two-choices": Scenario(
        stream(
            chunk(choice('{"role":"assistant","content":"A"}', 0), choice('{"role":"assistant","content":"B"}', 1)),
            chunk(choice(call(0, "", "call_abc", "run_sql"), 0)),
            chunk(choice(call(0, "", "call_t", "get_time"), 1)),
            chunk(choice(call(0, '{"query":"SELECT 1"}'), 0)),
            chunk(choice(call(0, '{"tz":"UTC"}'), 1)),
            chunk(choice("{}", 0, '"tool_calls"'), choice("{}", 1, '"tool_calls"')),
            DONE,
        ),
        [SQL, TIME],
    ),
    "deprecated-function-call": Scenario(
        stream(
            chunk(choice('{"role":"assistant","content":null,"function_call":{"name":"run_sql","arguments":""}}')),
            chunk(choice('{"function_call":{"arguments":"{\\"query\\":"}}')),
            chunk(choice('{"function_call":{"arguments":"\\"SELECT 1\\"}"}}')),
            chunk(choice("{}", finish='"function_call"')),
            DONE,
        ),
        [("run_sql", {"query": "SELECT 1"}, None, "function", None)],
    ),
    "whole-call-with-finish": Scenario(
        stream(
            chunk(
                choice(
                    '{"role":"assistant","content":"ok",' + call(0, "{}", "call_t", "get_time")[1:], 0, '"tool_calls"'
                )
            ),
            DONE,
        ),
        [("get_time", {}, "call_t", "function", None)],
    ),
}


# --- what the client sees ---------------------------------------------------------------------------------------------


def payloads(out: bytes) -> list[Any]:
    events = []
    for block in out.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data:
            joined = b"\n".join(data)
            events.append(DONE if joined == b"[DONE]" else orjson.loads(joined))
    return events


def view(out: bytes) -> dict[str, Any]:
    """What an SDK accumulates: per choice its text, its calls by index, its finish reason; errors; usage; [DONE]."""
    events = payloads(out)
    choices: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    usage = 0
    for event in events:
        if event == DONE:
            continue
        if "error" in event:
            errors.append(event["error"]["code"])
            continue
        usage += bool(event.get("usage"))
        for part in event.get("choices") or []:
            state = choices.setdefault(part["index"], {"content": "", "calls": {}, "finish": None})
            delta = part.get("delta") or {}
            state["content"] += delta.get("content") or ""
            for tool in delta.get("tool_calls") or []:
                acc = state["calls"].setdefault(tool["index"], [None, None, "", ""])
                body = tool.get("function") or tool.get("custom") or {}
                acc[0] = acc[0] or tool.get("id")
                acc[1] = acc[1] or tool.get("type")
                acc[2] += body.get("name") or ""
                acc[3] += body.get("arguments") or body.get("input") or ""
            if "function_call" in delta:
                acc = state["calls"].setdefault("legacy", [None, "legacy", "", ""])
                acc[2] += delta["function_call"].get("name") or ""
                acc[3] += delta["function_call"].get("arguments") or ""
            state["finish"] = part.get("finish_reason") or state["finish"]
    if errors:
        assert events[-2:] == [events[-2], DONE] and "error" in events[-2], "nothing may follow the error event"
    return {
        "choices": {
            i: {**c, "calls": [tuple(v) for _, v in sorted(c["calls"].items(), key=str)]} for i, c in choices.items()
        },
        "errors": errors,
        "usage": usage,
        "done": DONE in events,
    }


def run(data: bytes, judge: Judge, pieces: list[bytes] | None = None) -> tuple[bytes, StreamGuard]:
    return guards.run(StreamGuard, data, judge, pieces)


SQL_CALL = ("call_abc", "function", "run_sql", '{"query":"SELECT 1"}')
TIME_CALL = ("call_t", "function", "get_time", '{"tz":"UTC"}')

CASES = [
    pytest.param("text-only", {}, {0: ("Hello", [], "stop")}, [], id="text-only"),
    pytest.param("single-call", {}, {0: ("Let me check.", [SQL_CALL], "tool_calls")}, ["allow"], id="single-allow"),
    pytest.param(
        "single-call",
        {"run_sql": "strip"},
        {0: ("Let me check." + notice_text("run_sql"), [], "stop")},
        ["strip"],
        id="single-strip",
    ),
    pytest.param(
        "single-call",
        {"run_sql": "audit"},
        {0: ("Let me check.", [SQL_CALL], "tool_calls")},
        ["audit"],
        id="single-audit",
    ),
    pytest.param("single-call", {"run_sql": "block"}, "tool_call_blocked", ["block"], id="single-block"),
    pytest.param("parallel", {}, {0: ("", [SQL_CALL, TIME_CALL], "tool_calls")}, ["allow", "allow"], id="parallel"),
    pytest.param(
        "parallel",
        {"run_sql": "strip"},
        {0: (notice_text("run_sql"), [TIME_CALL], "tool_calls")},
        ["strip", "allow"],
        id="parallel-strip-first-renumbers",
    ),
    pytest.param(
        "parallel", {"get_time": "block"}, "tool_call_blocked", ["allow", "block"], id="parallel-block-second"
    ),
    pytest.param(
        "interleaved",
        {"get_time": "strip"},
        {0: (notice_text("get_time"), [SQL_CALL], "tool_calls")},
        ["strip", "allow"],
        id="interleaved",
    ),
    pytest.param(
        "many-chunks",
        {},
        {0: ("", [("call_abc", "function", "run_sql", '{"query": "SELECT \\"}{\\\\\\" 1"}')], "tool_calls")},
        ["allow"],
        id="many-chunks",
    ),
    pytest.param(
        "index-reused", {}, {0: ("", [SQL_CALL, TIME_CALL], "tool_calls")}, ["allow", "allow"], id="index-reused"
    ),
    pytest.param(
        "index-reused",
        {"run_sql": "strip", "get_time": "strip"},
        {0: (notice_text("run_sql") + notice_text("get_time"), [], "stop")},
        ["strip", "strip"],
        id="index-reused-all-stripped",
    ),
    pytest.param(
        "custom-tool",
        {},
        {0: ("", [("call_c", "custom", "apply_patch", "*** Begin Patch\n*** End Patch")], "tool_calls")},
        ["allow"],
        id="custom-tool",
    ),
    pytest.param(
        "usage-and-obfuscation",
        {"run_sql": "strip"},
        {0: (notice_text("run_sql"), [], "stop")},
        ["strip"],
        id="usage-and-obfuscation",
    ),
    pytest.param(
        "invalid-json",
        {"run_sql": "strip"},
        {0: (notice_text("run_sql"), [], "stop")},
        ["strip"],
        id="invalid-json",
    ),
    pytest.param(
        "ends-mid-call",
        {"run_sql": "strip"},
        {0: ("Let me check." + notice_text("run_sql"), [], None)},
        ["strip"],
        id="ends-mid-call",
    ),
    pytest.param("ends-mid-call", {"run_sql": "block"}, "tool_call_blocked", ["block"], id="ends-mid-call-block"),
    pytest.param(
        "two-choices",
        {"run_sql": "strip"},
        {0: ("A" + notice_text("run_sql"), [], "stop"), 1: ("B", [TIME_CALL], "tool_calls")},
        ["strip", "allow"],
        id="two-choices",
    ),
    pytest.param(
        "deprecated-function-call",
        {},
        {0: ("", [(None, "legacy", "run_sql", '{"query":"SELECT 1"}')], "function_call")},
        ["allow"],
        id="deprecated-allow",
    ),
    pytest.param(
        "deprecated-function-call",
        {"run_sql": "strip"},
        {0: (notice_text("run_sql"), [], "stop")},
        ["strip"],
        id="deprecated-strip",
    ),
    pytest.param(
        "whole-call-with-finish",
        {},
        {0: ("ok", [("call_t", "function", "get_time", "{}")], "tool_calls")},
        ["allow"],
        id="whole-call-with-finish",
    ),
]


@pytest.mark.parametrize(("scenario", "table", "expected", "decisions"), CASES)
def test_stream_scenarios_in_every_split(
    scenario: str, table: dict[str, str], expected: dict[int, Any] | str, decisions: list[str]
) -> None:
    data = SCENARIOS[scenario].data

    def check_first(out: bytes, guard: StreamGuard) -> None:
        seen = view(out)
        if isinstance(expected, str):
            assert seen["errors"] == [expected] and seen["done"]
            assert guard.blocked is not None and guard.blocked.verdict.decision == "block"
        else:
            got = {i: (c["content"], c["calls"], c["finish"]) for i, c in seen["choices"].items()}
            assert got == expected
            assert seen["errors"] == [] and guard.blocked is None
            assert seen["done"] == (DONE.encode() in data)

    guards.same_in_every_split(StreamGuard, SCENARIOS[scenario], table, decisions, payloads, check_first)


def test_text_only_and_allowed_streams_pass_text_chunks_unchanged() -> None:
    data = SCENARIOS["text-only"].data
    assert run(data, Judge({}))[0] == data
    out, _ = run(SCENARIOS["usage-and-obfuscation"].data, Judge({}))
    assert b'"obfuscation":"a1B2"' in out and b'"usage":{"prompt_tokens":3' in out


def test_usage_chunk_waits_behind_a_held_call() -> None:
    data = stream(
        ROLE,
        chunk(choice(call(0, "", "call_abc", "run_sql"))),
        USAGE,
        chunk(choice(call(0, '{"query":"SELECT 1"}'))),
        FINISH_CALLS,
        DONE,
    )
    events = payloads(run(data, Judge({}))[0])
    kinds = [
        "usage" if e != DONE and e.get("usage") else "call" if e != DONE and "tool_calls" in str(e) else "other"
        for e in events
    ]
    assert kinds.index("call") < kinds.index("usage")


def test_text_is_out_before_the_call_completes() -> None:
    data = SCENARIOS["single-call"].data
    middle = data.index(b"SEL") + 2
    judge = Judge({}, SCENARIOS["single-call"].complete)
    guard = StreamGuard(judge)
    early = guard.feed(data[:middle])
    assert b"Let me check." in early and b"tool_calls" not in early and judge.seen == []
    rest = guard.feed(data[middle:]) + guard.close()
    assert b'"name":"run_sql"' in rest and len(judge.seen) == 1


def test_released_calls_are_renumbered_densely() -> None:
    out, _ = run(SCENARIOS["parallel"].data, Judge({"run_sql": "strip"}))
    indexes = [
        t["index"] for e in payloads(out) if e != DONE for c in e["choices"] for t in c["delta"].get("tool_calls", [])
    ]
    assert indexes == [0]
    out, _ = run(SCENARIOS["index-reused"].data, Judge({}))
    indexes = [
        t["index"] for e in payloads(out) if e != DONE for c in e["choices"] for t in c["delta"].get("tool_calls", [])
    ]
    assert indexes == [0, 1]


def test_a_held_call_does_not_delay_another_choice() -> None:
    data = stream(
        chunk(choice(call(0, '{"query":"SEL', "call_abc", "run_sql"), 0)), chunk(choice('{"content":"B"}', 1))
    )
    guard = StreamGuard(Judge({}))
    out = guard.feed(data)
    assert view(out)["choices"] == {1: {"content": "B", "calls": [], "finish": None}}


@pytest.mark.parametrize(
    ("text", "closes"),
    [
        pytest.param('{"a": "x}"}', True, id="brace-in-string"),
        pytest.param(r'{"a": "\\"}', True, id="escaped-backslash"),
        pytest.param(r'{"a": "\\\"}"}', True, id="escaped-quote-then-brace"),
        pytest.param('  {"a": {"b": [1, {"c": "}"}]}}', True, id="nested"),
        pytest.param(r'{"a": "\\"', False, id="open"),
        pytest.param(r'{"a": "\"}"', False, id="quote-after-escape-is-open-string"),
        pytest.param("[1, {}]", False, id="not-an-object"),
        pytest.param("", False, id="empty"),
    ],
)
def test_object_end_in_every_fragmentation(text: str, closes: bool) -> None:
    data = text.encode()
    for size in range(1, len(data) + 1):
        end = ObjectEnd()
        results = [end.feed(data[i : i + size]) for i in range(0, len(data), size)]
        assert (results[-1] if results else False) == closes, size
        assert not any(results[:-1]), size  # never closes early


def test_block_writes_nothing_more() -> None:
    data = SCENARIOS["parallel"].data
    guard = StreamGuard(Judge({"run_sql": "block"}))
    out = guard.feed(data)
    assert payloads(out)[-1] == DONE and "error" in payloads(out)[-2]
    assert guard.feed(stream(HI)) == b"" and guard.close() == b""
    assert [d.call.name for d in guard.decisions] == ["run_sql"]  # get_time was never judged


def test_nothing_after_done_reaches_the_client() -> None:
    data = SCENARIOS["text-only"].data + stream(chunk(choice(call(0, '{"query":"x"}', "call_z", "run_sql"))))
    judge = Judge({})
    out, guard = run(data, judge)
    assert out == SCENARIOS["text-only"].data and guard.decisions == []


def test_late_fragments_of_a_judged_call_are_dropped() -> None:
    data = stream(
        ROLE,
        chunk(choice(call(0, '{"query":"SELECT 1"}', "call_abc", "run_sql"))),
        chunk(choice(call(0, '{"query":"DROP"}'))),
        FINISH_CALLS,
        DONE,
    )
    judge = Judge({}, [SQL])
    out, _ = run(data, judge)
    assert view(out)["choices"][0]["calls"] == [SQL_CALL] and judge.seen == [SQL]


def test_a_call_without_a_name_is_judged_unnamed() -> None:
    data = stream(chunk(choice(call(0, '{"a":1}', "call_x"))), FINISH_CALLS, DONE)
    judge = Judge({"(unnamed)": "strip"})
    out, _ = run(data, judge)
    assert judge.seen == [("(unnamed)", {"a": 1}, "call_x", "function", None)]
    assert view(out)["choices"][0]["finish"] == "stop"


CALL_CHUNK = chunk(choice(call(0, '{"query":"DROP TABLE orders"}', "call_d", "run_sql")))
NAN_CALL = CALL_CHUNK[:-1].encode() + b',"x":NaN}'
CASE_VARIANTS = [  # keys a Go client reads as the field they fold to
    ("tool_calls", "Tool_calls"),
    ("tool_calls", "TOOL_CALLS"),
    ("tool_calls", "tool_callſ"),  # U+017F folds to s
    ('"delta"', '"Delta"'),
    ('"choices"', '"Choices"'),
    ('"function"', '"Function"'),
    ('"arguments"', '"Arguments"'),
    ('"name"', '"\\u004eame"'),  # an escaped capital: the same key to every reader
]
TWO_BODIES = [  # which body a reader runs depends on the reader: none is the call
    ('{"tool_calls":[{"index":0,"id":"c1","custom":{"name":"get_time","input":"now"},'
     '"function":{"name":"run_sql","arguments":"{}"}}]}', "custom-and-function"),
    ('{"tool_calls":[{"index":0,"id":"c1","type":"custom","function":{"name":"run_sql","arguments":"{}"}}]}',
     "custom-type-function-body"),
    ('{"tool_calls":[{"index":0,"id":"c1","type":"function","custom":{"name":"run_sql","input":"x"}}]}',
     "function-type-custom-body"),
    ('{"tool_calls":[{"index":0,"id":"c1","type":"code","function":{"name":"run_sql","arguments":"{}"}}]}',
     "unknown-type"),
]  # fmt: skip

UNREADABLE = [
    pytest.param(b"data: {not json\n\n", id="not-json"),
    pytest.param(b"data: [1, 2]\n\n", id="json-array"),
    pytest.param(stream('{"choices":{"0":{"delta":{"tool_calls":[]}}}}'), id="choices-object"),
    pytest.param(stream(chunk(choice('{"tool_calls":{"index":0}}'))), id="tool-calls-object"),
    pytest.param(stream(chunk(choice('{"tool_calls":["x"]}'))), id="tool-call-string"),
    pytest.param(stream(chunk(choice('{"tool_calls":[{"index":0,"function":{"name":1}}]}'))), id="name-number"),
    pytest.param(stream(chunk(choice('{"tool_calls":[{"index":0,"function":{"arguments":[1]}}]}'))), id="args-list"),
    pytest.param(stream(chunk('{"index":0,"message":{"tool_calls":[{"id":"c"}]}}')), id="message-in-chunk"),
    pytest.param(b"event: ping\ndata: ping\n\n", id="ping-not-json"),
    pytest.param(b"event: ping\ndata: " + NAN_CALL + b"\n\n", id="ping-nan"),
    pytest.param(b'event: ping\ndata: {"type":"ping","x":Infinity}\n\n', id="ping-infinity"),
    pytest.param(b'event: ping\ndata: {"type":"ping","x":"\\ud800"}\n\n', id="ping-lone-surrogate"),
    pytest.param(b"data: " + NAN_CALL + b"\n\n", id="nan-unnamed"),
    pytest.param(stream(CALL_CHUNK).replace(b"\n\n", b"\nfoo: 1\n\n"), id="odd-line"),
    pytest.param(stream(CALL_CHUNK).replace(b"data:", b"\xef\xbb\xbfdata:"), id="bom-not-at-start"),
    pytest.param(stream(CALL_CHUNK).replace(b"data:", b"Data:"), id="field-name-case"),
    *[pytest.param(stream(CALL_CHUNK.replace(k, v)), id=f"case-{v}") for k, v in CASE_VARIANTS],
    *[pytest.param(stream(chunk(choice(d))), id=i) for i, d in TWO_BODIES],
]


@pytest.mark.parametrize("bad", UNREADABLE)
def test_unreadable_events_fail_closed(bad: bytes) -> None:
    data = stream(HI) + bad + stream(chunk(choice('{"content":" more"}')), DONE)
    out, guard = run(data, Judge({"(unreadable)": "block"}))
    seen = view(out)
    assert seen["errors"] == ["tool_call_blocked"] and seen["choices"][0]["content"] == "Let me check."
    assert guard.blocked is not None and guard.blocked.call.error == "unreadable"
    out, guard = run(data, Judge({"(unreadable)": "allow"}))  # allowed or not, unreadable bytes are never delivered
    assert view(out)["errors"] == ["tool_call_blocked"] and guard.blocked is not None
    out, guard = run(data, Judge({"(unreadable)": "strip"}))
    seen = view(out)
    assert seen["choices"][0]["content"] == "Let me check." + notice_text("(unreadable)") + " more"
    assert guard.blocked is None and seen["done"]


@pytest.mark.parametrize(
    "quiet",
    [
        pytest.param(b": keep-alive\n\n", id="comment"),
        pytest.param(b"event: ping\ndata:\n\n", id="ping-empty"),
        pytest.param(b"event: ping\n\n", id="ping-no-data"),
        pytest.param(b'event: ping\ndata: {"type":"ping"}\n\n', id="ping-object"),
        pytest.param(b"id: 7\nretry: 100\n\n", id="id-retry"),
    ],
)
def test_events_that_carry_no_call_pass(quiet: bytes) -> None:
    data = quiet + stream(HI, DONE)
    out, guard = run(data, Judge({}))
    assert out == data and guard.decisions == []


def test_a_later_fragment_of_another_kind_is_unreadable() -> None:
    other = '{"tool_calls":[{"index":0,"custom":{"input":"DROP TABLE orders"}}]}'
    data = stream(chunk(choice(call(0, '{"query":', "call_abc", "run_sql"))), chunk(choice(other)),
                  chunk(choice(call(0, '"SELECT 1"}'))), FINISH_CALLS, DONE)  # fmt: skip
    out, guard = run(data, Judge({"(unreadable)": "strip"}))
    assert [d.call.name for d in guard.decisions] == ["(unreadable)", "run_sql"]
    assert view(out)["choices"][0]["calls"] == [("call_abc", "function", "run_sql", '{"query":"SELECT 1"}')]
    assert b"DROP" not in out


def test_a_leading_byte_order_mark_is_dropped_and_the_event_judged() -> None:
    data = b"\xef\xbb\xbf" + stream(CALL_CHUNK, FINISH_CALLS, DONE)
    for pieces in splits(data)[:60]:
        out, guard = run(data, Judge({"run_sql": "block"}), pieces)
        assert guard.blocked is not None and guard.blocked.call.name == "run_sql", pieces
        assert b"DROP" not in out and not out.startswith(b"\xef")


@pytest.mark.parametrize("key", ["arguments", "other"])
def test_objects_nested_too_deep_to_rewrite_are_unreadable(key: str) -> None:
    deep = '{"x":' * 300 + "1" + "}" * 300
    entry = '{"index":0,"id":"c","type":"function","function":{"name":"run_sql","arguments":' + deep + "}}"
    if key == "other":
        entry = '{"index":0,"id":"c","type":"function","deep":' + deep + ',"function":{"name":"run_sql"}}'
    data = stream(HI, chunk(choice('{"tool_calls":[' + entry + "]}")), FINISH_CALLS, DONE)
    out, guard = run(data, Judge({"(unreadable)": "block"}))
    assert guard.blocked is not None and guard.blocked.call.error == "unreadable"
    assert view(out)["errors"] == ["tool_call_blocked"]


def test_an_oversized_event_fails_closed() -> None:
    data = stream(HI) + b"data: " + b"x" * (MAX_EVENT_BYTES + 10) + b"\n\n" + stream(DONE)
    out, guard = run(data, Judge({}), [data[i : i + 1 << 20] for i in range(0, len(data), 1 << 20)])
    assert view(out)["errors"] == ["tool_call_blocked"] and guard.blocked is not None
    assert b"Let me check." in out


def test_arguments_over_the_cap_are_too_large() -> None:
    big = '{"query":"' + "x" * MAX_CALL_BYTES + '"}'
    data = stream(
        chunk(choice(call(0, "", "call_abc", "run_sql"))),
        *[chunk(choice(call(0, p))) for p in split_args(big, 1 << 16)],
        FINISH_CALLS,
        DONE,
    )
    judge = Judge({})
    out, guard = run(data, judge)
    assert judge.seen == [("run_sql", None, "call_abc", "function", "too_large")]
    assert guard.decisions[0].call.raw_size > MAX_CALL_BYTES
    assert view(out)["choices"][0]["calls"] == []  # allowed, but never kept whole: not delivered


def test_held_bytes_over_the_cap_end_held_calls_as_incomplete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "MAX_HELD_BYTES", 4096)
    filler = [chunk(choice('{"content":"' + "y" * 500 + '"}')) for _ in range(10)]
    data = stream(chunk(choice(call(0, '{"query":"SEL', "call_abc", "run_sql"))), *filler, DONE)
    judge = Judge({"run_sql": "strip"})
    out, _ = run(data, judge)
    assert judge.seen == [("run_sql", None, "call_abc", "function", "incomplete")]
    assert view(out)["choices"][0]["content"] == notice_text("run_sql") + "y" * 5000


def test_too_many_calls_fail_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "MAX_CALLS", 3)
    data = stream(*[chunk(choice(call(i, "{}", f"c{i}", "get_time"))) for i in range(5)], DONE)
    out, guard = run(data, Judge({"(unreadable)": "strip"}))
    assert guard.blocked is not None and guard.blocked.call.name == "(unreadable)"
    assert len(view(out)["choices"][0]["calls"]) == 3


def delivered_names(event: Any) -> list[str]:
    """The tool names a client reads from an event: `choices[].delta` / `.message`, `tool_calls` or `function_call`."""
    choices = event.get("choices") if isinstance(event, dict) else None
    names = []
    for part in choices if isinstance(choices, list) else []:
        for holder in (part.get("delta"), part.get("message")) if isinstance(part, dict) else ():
            if not isinstance(holder, dict):
                continue
            calls = holder.get("tool_calls")
            for tool in calls if isinstance(calls, list) else []:
                body = (tool.get("function") or tool.get("custom")) if isinstance(tool, dict) else None
                names.append((body.get("name") if isinstance(body, dict) else None) or "(unnamed)")
            if isinstance(holder.get("function_call"), dict):
                names.append(holder["function_call"].get("name") or "(unnamed)")
    return names


def test_hostile_mutations_never_raise_and_never_deliver_an_unjudged_call() -> None:
    rng = random.Random(7)
    bases = [s.data for s in SCENARIOS.values()]
    for _ in range(600):
        data = mutate(rng, bases)
        guard = StreamGuard(Judge({"run_sql": "strip"}))
        cut = rng.randrange(len(data) + 1)
        out = feed_all(guard, [data[:cut], data[cut:]])
        allowed = {d.call.name for d in guard.decisions if d.verdict.delivered}
        for block in out.split(b"\n\n"):
            for line in block.split(b"\n"):
                try:
                    event = orjson.loads(line[6:]) if line.startswith(b"data: ") else None
                except orjson.JSONDecodeError:
                    continue
                assert set(delivered_names(event)) <= allowed - {"run_sql"}, out


# --- non-streamed bodies ----------------------------------------------------------------------------------------------


def body(*calls: dict[str, Any], content: Any = None, finish: str = "tool_calls", **message: Any) -> bytes:
    msg = {"role": "assistant", "content": content, **message}
    if calls:
        msg["tool_calls"] = list(calls)
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        }
    )


SQL_BODY = {"id": "call_abc", "type": "function", "function": {"name": "run_sql", "arguments": '{"query":"SELECT 1"}'}}
TIME_BODY = {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}}
PATCH_BODY = {"id": "call_c", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin Patch"}}


def test_body_all_allowed_is_unchanged() -> None:
    raw = body(SQL_BODY, TIME_BODY, PATCH_BODY)
    judge = Judge({})
    result = judge_body(raw, judge)
    assert result.body == raw and result.blocked is None
    assert judge.seen == [SQL, TIME, ("apply_patch", {"input": "*** Begin Patch"}, "call_c", "custom", None)]


@pytest.mark.parametrize(
    ("raw", "table", "calls", "content", "finish"),
    [
        pytest.param(
            body(SQL_BODY, TIME_BODY),
            {"run_sql": "strip"},
            [TIME_BODY],
            notice_text("run_sql"),
            "tool_calls",
            id="one-of-two",
        ),
        pytest.param(
            body(SQL_BODY, content="Sure."),
            {"run_sql": "strip"},
            None,
            "Sure.\n" + notice_text("run_sql"),
            "stop",
            id="all",
        ),
        pytest.param(
            body(function_call={"name": "run_sql", "arguments": "{}"}, finish="function_call"),
            {"run_sql": "strip"},
            None,
            notice_text("run_sql"),
            "stop",
            id="deprecated-function-call",
        ),
        pytest.param(
            body({**SQL_BODY, "function": {"name": "run_sql", "arguments": "{oops"}}),
            {"run_sql": "strip"},
            None,
            notice_text("run_sql"),
            "stop",
            id="invalid-json",
        ),
    ],
)
def test_body_strip(raw: bytes, table: dict[str, str], calls: Any, content: str, finish: str) -> None:
    result = judge_body(raw, Judge(table))
    doc = orjson.loads(result.body)
    message = doc["choices"][0]["message"]
    assert message.get("tool_calls") == calls and "function_call" not in message
    assert message["content"] == content and doc["choices"][0]["finish_reason"] == finish
    assert result.blocked is None


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        pytest.param(body(SQL_BODY, TIME_BODY), "get_time", id="blocked-call"),
        pytest.param(b"<html>bad gateway</html>", "(unreadable)", id="not-json"),
        pytest.param(b'{"choices": {"0": {}}}', "(unreadable)", id="choices-object"),
        pytest.param(body(tool_calls="run_sql"), "(unreadable)", id="tool-calls-string"),
    ],
)
def test_body_block(raw: bytes, name: str) -> None:
    result = judge_body(raw, Judge({"get_time": "block"}))
    assert result.blocked is not None and result.blocked.call.name == name
    assert result.blocked.verdict.decision == "block"
    assert orjson.loads(result.body)["error"]["code"] == "tool_call_blocked"


BODY_UNREADABLE = [
    *[pytest.param(body(SQL_BODY).replace(k.encode(), v.encode()), id=f"case-{v}") for k, v in CASE_VARIANTS
      if k != '"delta"'],
    pytest.param(body({"id": "c1", "custom": {"name": "get_time", "input": "now"}, "function": SQL_BODY["function"]}),
                 id="custom-and-function"),
    pytest.param(body({**SQL_BODY, "type": "custom"}), id="custom-type-function-body"),
    pytest.param(body({**PATCH_BODY, "type": "function"}), id="function-type-custom-body"),
    pytest.param(body({**SQL_BODY, "type": "code"}), id="unknown-type"),
    pytest.param(body(SQL_BODY, content="x", deep="@").replace(b'"@"', b'{"x":' * 300 + b"1" + b"}" * 300),
                 id="too-deep-to-rewrite"),
]  # fmt: skip


@pytest.mark.parametrize("raw", BODY_UNREADABLE)
def test_body_unreadable(raw: bytes) -> None:
    result = judge_body(raw, Judge({"run_sql": "strip", "(unreadable)": "strip"}))
    assert result.blocked is not None and result.blocked.call.error == "unreadable"
    assert b"SELECT" not in result.body


@pytest.mark.parametrize(
    ("call", "delivered"),
    [
        pytest.param({**SQL_BODY, "index": 0, "extra": {"function": {}}}, SQL_BODY, id="fields-not-read"),
        pytest.param({"id": "call_abc", "function": SQL_BODY["function"]}, SQL_BODY, id="no-type"),
        pytest.param({**SQL_BODY, "custom": None}, SQL_BODY, id="null-second-body"),
        pytest.param({"id": "call_c", "custom": PATCH_BODY["custom"]}, PATCH_BODY, id="custom-no-type"),
    ],
)
def test_body_delivers_calls_as_judged(call: dict[str, Any], delivered: dict[str, Any]) -> None:
    judge = Judge({})
    result = judge_body(body(call), judge)
    assert orjson.loads(result.body)["choices"][0]["message"]["tool_calls"] == [delivered]
    assert len(judge.seen) == 1 and judge.seen[0][2:4] == (delivered["id"], delivered["type"])


def test_arguments_nested_too_deep_are_judged_unusable() -> None:
    deep = b'{"x":' * 300 + b"1" + b"}" * 300
    call = {"id": "c", "type": "function", "function": {"name": "run_sql", "arguments": "@"}}
    judge = Judge({})
    judge_body(body(call).replace(b'"@"', deep), judge)
    assert judge.seen == [("run_sql", None, "c", "function", "too_deep")]
    history = orjson.dumps({"messages": [{"role": "assistant", "tool_calls": [call]}]}).replace(b'"@"', deep)
    with pytest.raises(BadRequest):
        read_request(orjson.loads(history))


def test_body_without_choices_passes() -> None:
    raw = b'{"error":{"message":"rate limited"}}'
    assert judge_body(raw, Judge({})).body == raw


# --- requests ---------------------------------------------------------------------------------------------------------

FN = {"type": "function", "function": {"name": "run_sql", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {"tools": [FN, {"type": "custom", "custom": {"name": "apply_patch"}}], "tool_choice": "auto"},
            RequestTools(declared=[Declared("run_sql", "function"), Declared("apply_patch", "custom")]),
            id="function-and-custom",
        ),
        pytest.param(
            {
                "tools": [
                    {"type": "web_search"},
                    {"type": "mcp", "server_label": "x"},
                    {"type": "file_search", "name": "f"},
                ]
            },
            RequestTools(
                declared=[
                    Declared(None, "web_search", True),
                    Declared(None, "mcp", True),
                    Declared("f", "file_search", True),
                ]
            ),
            id="hosted-types",
        ),
        pytest.param(
            {"tools": ["run_sql", {"type": 3}, {"type": "function"}, {"function": {"name": "x"}}]},
            RequestTools(
                declared=[
                    Declared(None, "invalid"),
                    Declared(None, "invalid"),
                    Declared(None, "function"),
                    Declared("x", "function"),
                ]
            ),
            id="hostile-entries",
        ),
        pytest.param(
            {"tools": {"type": "function"}}, RequestTools(declared=[Declared(None, "invalid")]), id="tools-object"
        ),
        pytest.param(
            {"functions": [{"name": "run_sql"}, 7], "function_call": {"name": "run_sql"}},
            RequestTools(declared=[Declared("run_sql", "function"), Declared(None, "function")], forced=["run_sql"]),
            id="deprecated-functions",
        ),
        pytest.param(
            {"tool_choice": {"type": "function", "function": {"name": "run_sql"}}},
            RequestTools(forced=["run_sql"]),
            id="named-choice",
        ),
        pytest.param(
            {"tool_choice": {"type": "custom", "custom": {"name": "apply_patch"}}},
            RequestTools(forced=["apply_patch"]),
            id="named-custom",
        ),
        pytest.param(
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [
                            {"type": "function", "function": {"name": "a"}},
                            {"type": "custom", "custom": {"name": "b"}},
                            5,
                        ],
                    },
                }
            },
            RequestTools(forced=["a", "b"]),
            id="allowed-tools",
        ),
        pytest.param(
            {"web_search_options": {}}, RequestTools(hosted_other=["web_search_options"]), id="web-search-options"
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            SQL_BODY,
                            PATCH_BODY,
                            "x",
                            {"id": "call_bad", "function": {"name": "run_sql", "arguments": "[1]"}},
                        ],
                    },
                    {"role": "assistant", "function_call": {"name": "get_time", "arguments": ""}},
                    {"role": "tool", "tool_call_id": "call_abc", "content": "1"},
                    {"role": "tool", "content": "no id"},
                    {"role": "function", "name": "get_time", "content": "noon"},
                    "junk",
                ]
            },
            RequestTools(
                history=[
                    ToolCall("run_sql", {"query": "SELECT 1"}, "call_abc", raw_size=20),
                    ToolCall("apply_patch", {"input": "*** Begin Patch"}, "call_c", "custom", raw_size=15),
                    ToolCall("run_sql", None, "call_bad", error="not_an_object", raw_size=3),
                    ToolCall("get_time", {}, None),
                ],
                results=[("call_abc", None), (None, None), (None, "get_time")],
            ),
            id="history-and-results",
        ),
        pytest.param("not a dict", RequestTools(), id="not-an-object"),
    ],
)
def test_read_request(doc: Any, expected: RequestTools) -> None:
    assert read_request(doc) == expected


# --- the fast paths do what the general path does ---------------------------------------------------------------------


class GeneralOnly(StreamGuard):
    """The guard with its fast paths off: every chunk is read the general way."""

    def _next_fragment(self, doc: Any, raw: bytes) -> bool:
        return False


class WithoutFrames(StreamGuard):
    """The guard parsing every argument fragment whole: frames are learnt but never used."""

    def _same_frame(self, raw: bytes) -> bool:
        return False


class Counting(StreamGuard):
    """Counts the events each fast path took."""

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self.framed = 0
        self.parsed = 0

    def _same_frame(self, raw: bytes) -> bool:
        taken = super()._same_frame(raw)
        self.framed += taken
        return taken

    def _next_fragment(self, doc: Any, raw: bytes) -> bool:
        taken = super()._next_fragment(doc, raw)
        self.parsed += taken
        return taken


def assert_paths_agree(pieces_list: list[list[bytes]]) -> None:
    """The guard as it ships and without frames against the general path alone."""
    guards.assert_paths_agree(GeneralOnly, [StreamGuard, WithoutFrames], pieces_list)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fast_paths_agree_with_the_general_path_in_many_splits(scenario: str) -> None:
    data = SCENARIOS[scenario].data
    rng = random.Random(len(data))
    three = [sorted(rng.sample(range(len(data) + 1), 2)) for _ in range(20)]
    assert_paths_agree(
        [[data], *cuts(data, list(range(0, len(data) + 1, 7))), *[[data[:a], data[a:b], data[b:]] for a, b in three]]
    )


def test_fast_paths_agree_with_the_general_path_on_mutated_streams() -> None:
    rng = random.Random(13)
    bases = [s.data for s in SCENARIOS.values()] + [NEAR_MISS_OPEN + NEAR_MISS_CLOSE, PADDED_OPEN + PADDED_CLOSE]
    for _ in range(400):
        data = mutate(rng, bases, b'{}[]":,\\\n\r0a ')
        at = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 3)))
        assert_paths_agree([[data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]])


def fragment_chunk(body: str, *, part: str = ',"logprobs":null,"finish_reason":null', extra: str = "") -> str:
    """A chunk whose only call entry is `body`, written out by hand so odd bytes stay as they are."""
    return "{" + ENV + ',"choices":[{"index":0,"delta":{"tool_calls":[' + body + "]}" + part + "}]" + extra + "}"


# A call open with part of its arguments, so a frame was learnt from the last fragment; then a variant; then the rest.
NEAR_MISS_OPEN = stream(
    ROLE,
    chunk(choice(call(0, "", "call_abc", "run_sql"))),
    chunk(choice(call(0, '{"query":"SEL'))),
    chunk(choice(call(0, "ECT"))),
)
NEAR_MISS_CLOSE = stream(chunk(choice(call(0, ' 1"}'))), FINISH_CALLS, USAGE, DONE)
NEAR_MISS = [
    pytest.param(stream(chunk(choice(call(0, " 2")))), id="same-frame"),
    pytest.param(stream(chunk(choice(call(0, " 2", name="drop_table")))), id="name"),
    pytest.param(stream(chunk(choice(call(0, '{"x":1}', "call_new", "get_time")))), id="id-opens-a-new-call"),
    pytest.param(stream(fragment_chunk('{"index":0,"id":null,"function":{"arguments":" 2"}}')), id="id-null"),
    pytest.param(stream(fragment_chunk('{"index":0,"id":7,"function":{"arguments":" 2"}}')), id="id-number"),
    pytest.param(stream(fragment_chunk('{"index":0,"type":"function","function":{"arguments":" 2"}}')), id="type"),
    pytest.param(stream(fragment_chunk('{"index":0,"type":"custom","function":{"arguments":" 2"}}')), id="type-custom"),
    pytest.param(
        stream(fragment_chunk('{"index":0,"custom":{"input":"x"},"function":{"arguments":" 2"}}')), id="custom-body"
    ),
    pytest.param(stream(fragment_chunk('{"index":0,"custom":{"input":7}}')), id="custom-body-bad"),
    pytest.param(stream(fragment_chunk('{"index":true,"function":{"arguments":" 2"}}')), id="index-bool"),
    pytest.param(stream(fragment_chunk('{"index":-1,"function":{"arguments":" 2"}}')), id="index-negative"),
    pytest.param(stream(fragment_chunk('{"function":{"arguments":" 2"}}')), id="index-missing"),
    pytest.param(stream(fragment_chunk('{"index":1,"function":{"arguments":" 2"}}')), id="index-not-open"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":{"a":1}}}')), id="arguments-object"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":7}}')), id="arguments-number"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":null}}')), id="arguments-null"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2","name":null}}')), id="name-null"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2","name":""}}')), id="name-empty"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2","x":1}}')), id="body-extra"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":"x"}')), id="body-string"),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}},{"index":0,"function":{"arguments":"!"}}')),
        id="two-entries",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part=',"logprobs":{"content":[]}')),
        id="logprobs-set",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part=',"finish_reason":"tool_calls"')),
        id="finish",
    ),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part="")), id="part-bare"),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part=',"finish_reason":null,"x":1')),
        id="part-extra",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part=',"finish_reason":null,"x":null')),
        id="part-extra-null",
    ),
    pytest.param(
        stream(
            fragment_chunk(
                '{"index":0,"function":{"arguments":" 2"}}', part=',"logprobs":null,"finish_reason":null,"x":[1]'
            )
        ),
        id="part-extra-beside-nulls",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', part=',"message":{"content":"x"}')),
        id="message-beside",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', extra=',"usage":{"total_tokens":3}')),
        id="usage",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', extra=',"usage":null')), id="usage-null"
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"}}', extra=',"obfuscation":"Zq"')),
        id="obfuscation",
    ),
    pytest.param(
        stream(chunk(choice('{"content":"hi","tool_calls":[{"index":0,"function":{"arguments":" 2"}}]}'))),
        id="text-beside",
    ),
    pytest.param(
        stream(chunk(choice('{"content":null,"tool_calls":[{"index":0,"function":{"arguments":" 2"}}]}'))),
        id="null-text-beside",
    ),
    pytest.param(stream(chunk(choice(call(0, " 2")), choice(call(0, " 3"), 1))), id="two-choices"),
    pytest.param(stream(chunk(choice(call(0, " 2"), 1))), id="other-choice"),
    pytest.param(
        stream(*[chunk(choice(call(0, *args), 1)) for args in [("", "call_t", "get_time"), ('{"tz":',), ('"UTC"',)]])
        + stream(chunk(choice(call(0, " 2"))), chunk(choice(call(0, "}"), 1))),
        id="call-in-other-choice",
    ),
    # the bytes of the learnt frame around something that is not one string token
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments": " 2"}}')), id="space-before-string"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2" }}')), id="space-after-string"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2","x":"y"}}')), id="string-then-key"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":" 2"\n}}')), id="newline-after-string"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":\n" 2"}}')), id="newline-before-string"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"a\\"}}')), id="unterminated"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"a\\u00"}}')), id="bad-escape"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"\\ud800"}}')), id="lone-surrogate"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"a\tb"}}')), id="raw-tab"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"a\nb"}}')), id="raw-newline"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"a\rb"}}')), id="raw-cr"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"\\"x\\""}}')), id="escaped-quotes"),
    pytest.param(stream(fragment_chunk('{"index":0,"function":{"arguments":"\\u0020\\/"}}')), id="odd-escapes"),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":"é✓"}}')).replace(b"\xc3\xa9", b"\xc3"),
        id="invalid-utf8",
    ),
    pytest.param(
        stream(fragment_chunk('{"index":0,"function":{"arguments":" 2","arguments":" 3"}}')), id="duplicate-key"
    ),
    pytest.param(stream(chunk(choice(call(0, " 2")))).replace(b"\n", b"\r\n"), id="crlf"),
    pytest.param(b"data:" + stream(chunk(choice(call(0, " 2"))))[6:], id="no-space-after-data"),
    pytest.param(b"data:  " + stream(chunk(choice(call(0, " 2"))))[6:], id="two-spaces-after-data"),
    pytest.param(b"event: x\n" + stream(chunk(choice(call(0, " 2")))), id="event-name"),
    pytest.param(b"id: 4\n" + stream(chunk(choice(call(0, " 2")))), id="id-field"),
    pytest.param(stream(chunk(choice(call(0, " 2"))))[:-1] + b"data: x\n\n", id="two-data-lines"),
    pytest.param(b": keep-alive\n" + stream(chunk(choice(call(0, " 2")))), id="comment-first"),
    pytest.param(stream(chunk(choice(call(0, " 2"))), chunk(choice(call(0, " 3")))), id="two-events"),
    pytest.param(stream(chunk(choice(call(0, '"}')))) + stream(chunk(choice(call(0, " late")))), id="late-fragment"),
    pytest.param(
        stream(
            chunk(choice(call(0, '"}'))), chunk(choice(call(0, "", "call_t", "get_time"))), chunk(choice(call(0, "{}")))
        ),
        id="new-call-same-index",
    ),
    pytest.param(
        stream(chunk(choice(call(0, '"}'))), chunk(choice(call(0, "", "call_c", "apply_patch", kind="custom"))))
        + stream(chunk(choice(call(0, " 2"))), chunk(choice(call(0, "*** x", kind="custom")))),
        id="custom-call-same-index",
    ),
    pytest.param(stream(DONE, chunk(choice(call(0, " after")))), id="after-done"),
]


@pytest.mark.parametrize("variant", NEAR_MISS)
def test_fast_paths_agree_with_the_general_path_on_near_misses(variant: bytes) -> None:
    data = NEAR_MISS_OPEN + variant + NEAR_MISS_CLOSE
    start, end = len(NEAR_MISS_OPEN), len(NEAR_MISS_OPEN) + len(variant)
    edges = [start - 2, start - 1, start, start + 1, start + 6, (start + end) // 2, end - 3, end - 2, end - 1, end + 1]
    assert_paths_agree(
        [
            [data],
            [NEAR_MISS_OPEN, variant, NEAR_MISS_CLOSE],  # each its own chunk: the variant is read as one whole chunk
            [NEAR_MISS_OPEN, *[variant[i : i + 9] for i in range(0, len(variant), 9)], NEAR_MISS_CLOSE],
            *cuts(data, edges),
        ]
    )


def padded(data: str, pad: str = '"Zq0"') -> str:
    """The chunk with OpenAI's `obfuscation` padding as its last member (`pad` as written)."""
    return data[:-1] + ',"obfuscation":' + pad + "}"


# The single call with padding on every chunk (a frame is learnt from its first fragment), a variant, then the rest.
PADDED_OPEN = stream(
    padded(chunk(choice('{"role":"assistant","content":null}')), '""'),
    padded(chunk(choice(call(0, "", "call_abc", "run_sql"))), '"a"'),
    padded(chunk(choice(call(0, '{"query":"SEL'))), '"bb"'),
)
PADDED_CLOSE = stream(padded(chunk(choice(call(0, ' 1"}')))), padded(FINISH_CALLS), DONE)
PADDED = [
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"a1B2c3"')), id="other-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '""')), id="empty-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), r'"\u0041\""')), id="escaped-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), "7")), id="padding-number"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), "null")), id="padding-null"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"a\nb"')), id="padding-raw-newline"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), ' "x"')), id="padding-space"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"x","y":1')), id="member-after-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"x","obfuscation":"y"')), id="padding-twice"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"x"}')), id="brace-after-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"x"') + " "), id="space-after-chunk"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))), '"x"')[:-1] + "]"), id="bracket-for-brace"),
    pytest.param(stream(chunk(choice(call(0, "ECT")))), id="no-padding"),
    pytest.param(stream(padded(chunk(choice(call(0, '","obfuscation":'))))), id="pad-key-in-arguments"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT"))))).replace(b"}\n\n", b"}\r\n\r\n"), id="crlf"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT", name="drop_table"))))), id="name"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT")), extra=',"usage":{"total_tokens":1}'))), id="usage"),
    pytest.param(stream(padded(chunk(choice(call(0, "ECT")), extra=',"usage":null'))), id="usage-null"),
]


@pytest.mark.parametrize("variant", PADDED)
def test_fast_paths_agree_with_the_general_path_on_padded_chunks(variant: bytes) -> None:
    data = PADDED_OPEN + variant + PADDED_CLOSE
    start, end = len(PADDED_OPEN), len(PADDED_OPEN) + len(variant)
    edges = [start - 1, start + 1, (start + end) // 2, end - 3, end - 2, end - 1]
    assert_paths_agree([[data], [PADDED_OPEN, variant, PADDED_CLOSE], *cuts(data, edges)])


def decoyed(real: str, decoy: str, *, before: bool = False) -> str:
    """A fragment whose arguments are `real` as written, beside another `arguments` key holding `decoy`."""
    body = '{"index":0,"function":{"arguments":' + real + "}}"
    if before:
        return '{"x":{"arguments":' + decoy + "}," + fragment_chunk(body)[1:]
    return fragment_chunk(body, extra=',"x":{"arguments":' + decoy + "}")


# The first fragments of a call, the ones a frame is learnt from, in shapes where learning must not go wrong.
OPENING = [
    pytest.param(stream(*[decoyed('"\\u0041"', f'"{t}"') for t in ("A", "DROP", "B")]), id="decoy-after-real-escaped"),
    pytest.param(
        stream(*[decoyed('"\\u0041"', f'"{t}"', before=True) for t in ("A", "DROP", "B")]),
        id="decoy-before-real-escaped",
    ),
    pytest.param(stream(*[decoyed(f'"{t}"', f'"{t}"') for t in ("A", "A", "B")]), id="decoy-same-bytes"),
    pytest.param(
        stream(*[fragment_chunk('{"index":0,"function":{"arguments":"' + t + '","arguments":"A"}}') for t in "ABC"]),
        id="duplicate-key-first-changes",
    ),
    pytest.param(
        stream(*[fragment_chunk('{"index":0,"function":{"arguments":"A","arguments":"' + t + '"}}') for t in "ABC"]),
        id="duplicate-key-last-changes",
    ),
    pytest.param(
        stream(*[fragment_chunk('{"index":0,"function":{"arguments":"' + t + '"},"function":{}}') for t in "ABC"]),
        id="duplicate-function",
    ),
    pytest.param(stream(*[decoyed(f'"{t}"', '"\\"A\\""') for t in ("A", "B")]), id="decoy-inside-string"),
    pytest.param(stream(*[padded(decoyed(f'"{t}"', '"x"'), f'"{t}"') for t in "AAB"]), id="padding-holds-the-text"),
    pytest.param(
        stream(*[padded(fragment_chunk(r'{"index":0,"function":{"arguments":"\u0041"}}'), f'"{t}"') for t in "AAB"]),
        id="padding-holds-the-text-arguments-escaped",
    ),
    pytest.param(
        stream(*[padded(fragment_chunk('{"index":0,"function":{"arguments":"A"}}'), '"A","obfuscation":"B"')] * 2),
        id="padding-overridden",
    ),
]


@pytest.mark.parametrize("opening", OPENING)
@pytest.mark.parametrize(
    "first",
    [
        pytest.param(chunk(choice(call(0, "", "call_abc", "run_sql"))), id="named"),
        pytest.param(chunk(choice(call(0, "", "call_abc"))), id="unnamed"),
        pytest.param(chunk(choice(call(0, "", "call_c", "apply_patch", kind="custom"))), id="custom"),
    ],
)
def test_fast_paths_agree_with_the_general_path_as_a_call_opens(first: str, opening: bytes) -> None:
    named_later = stream(chunk(choice(call(0, "", name="late_name"))))
    for middle in (opening, named_later + opening, opening + named_later):
        data = stream(ROLE, first) + middle + stream(FINISH_CALLS, DONE)
        assert_paths_agree([[data], [stream(ROLE, first), middle, stream(FINISH_CALLS, DONE)]])


@pytest.mark.parametrize("pending", [b": keep-alive", b"event: x", b"data: 1", b"\r", b"\n"])
def test_a_fragment_chunk_behind_a_pending_line_is_read_with_that_line(pending: bytes) -> None:
    fragment = stream(chunk(choice(call(0, " 2"))))
    assert_paths_agree([[NEAR_MISS_OPEN, pending, fragment, NEAR_MISS_CLOSE]])


def measured_stream(extra: Callable[[int], dict[str, Any]] | None = None) -> list[bytes]:
    """A call whose arguments arrive a few bytes per chunk, as servers send them; `extra` adds fields to chunk i."""
    columns = ", ".join(f"o.col{i}" for i in range(40))
    query = f"SELECT {columns} FROM \"orders\" WHERE note = 'a\\b'"  # noqa: S608 (arguments, never run)
    pieces = toolwire.chat_stream("Let me check.", [("call_1", "run_sql", orjson.dumps({"query": query}).decode())])
    if extra is None:
        return pieces
    return [
        stream(orjson.dumps({**orjson.loads(p[6:]), **extra(i)}).decode()) if p.startswith(b"data: {") else p
        for i, p in enumerate(pieces)
    ]


@pytest.mark.parametrize(
    ("extra", "framed"),
    [
        pytest.param(None, True, id="same-bytes-around-each-fragment"),
        pytest.param(lambda i: {"obfuscation": "x", "system_fingerprint": "fp"}, True, id="constant-extra-fields"),
        pytest.param(lambda i: {"usage": None, "obfuscation": "p" * (i % 7)}, True, id="padding-per-chunk"),
        pytest.param(lambda i: {"obfuscation": str(i), "n": 1}, False, id="padding-not-last"),
        pytest.param(lambda i: {"system_fingerprint": str(i)}, False, id="field-changing-per-chunk"),
    ],
)
def test_argument_fragments_take_the_fast_paths(extra: Callable[[int], dict[str, Any]] | None, framed: bool) -> None:
    pieces = measured_stream(extra)
    fragments = sum(b'"arguments"' in p and b'"name"' not in p for p in pieces)
    guard = Counting(Judge({}))
    out = feed_all(guard, pieces)
    assert view(out)["choices"][0]["calls"][0][2] == "run_sql" and len(guard.decisions) == 1
    if framed:  # the first fragment is parsed whole and teaches the frame the rest arrive in
        assert (guard.parsed, guard.framed) == (1, fragments - 1)
    else:
        assert (guard.parsed, guard.framed) == (fragments, 0)
    assert_paths_agree([pieces, [b"".join(pieces)]])


# --- the SSE splitter ------------------------------------------------------------------------------------------------


class ReferenceSplitter:
    """The splitter as first written, re-scanning its buffer on every chunk: what SSESplitter must still return."""

    def __init__(self, max_event: int) -> None:
        self.buffer, self.lines, self.size, self.max = b"", [], 0, max_event
        self.oversized = False

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes, bytes]]:
        buffer, held = self.buffer + chunk, b""
        if buffer.endswith(b"\r"):
            buffer, held = buffer[:-1], b"\r"
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self.buffer = lines.pop() + held
        events = []
        for line in lines:
            if line:
                self.lines.append(line)
                self.size += len(line) + 1
            elif self.lines:
                events.append(self.event())
        if self.size + len(self.buffer) > self.max:
            self.oversized, self.buffer, self.lines, self.size = True, b"", [], 0
        return events

    def close(self) -> list[tuple[str | None, bytes, bytes]]:
        if self.buffer:
            self.lines.append(self.buffer)
        return [self.event()] if self.lines else []

    def event(self) -> tuple[str | None, bytes, bytes]:
        lines, self.lines, self.size = self.lines, [], 0
        name, data = None, []
        for line in lines:
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                name = (line[7:] if line.startswith(b"event: ") else line[6:]).decode("utf-8", "replace")
        return name, b"\n".join(data), b"\n".join(lines) + b"\n\n"


def split_both(pieces: list[bytes], cap: int) -> tuple[list[Any], list[Any]]:
    reference, splitter = ReferenceSplitter(cap), SSESplitter(cap)
    want: list[Any] = [(reference.feed(piece), reference.oversized) for piece in pieces] + [reference.close()]
    got: list[Any] = []
    for piece in pieces:
        single = splitter.single(piece)
        events = [(e.event, e.data, e.raw) for e in splitter.feed(piece)]
        assert single is None or events == [(None, single, piece)], piece  # `single` is what `feed` returns
        got.append((events, splitter.oversized))
    return want, [*got, [(e.event, e.data, e.raw) for e in splitter.close()]]


def test_sse_splitter_returns_what_the_reference_does_in_any_split() -> None:
    rng = random.Random(5)
    alphabet = [b"\r", b"\n", b"\r\n", b"\n\n", b"data:", b"data: x", b"data: {}", b"event: e", b"id: 1", b":c", b" "]
    for _ in range(4000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        at = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 6)))
        pieces = [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]
        cap = rng.choice([6, 12, 24, MAX_EVENT_BYTES])
        want, got = split_both(pieces, cap)
        assert got == want, (pieces, cap)


def test_sse_splitter_drops_a_leading_byte_order_mark_in_any_split() -> None:
    data = b"\xef\xbb\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n"
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1):
            splitter = SSESplitter()
            events = [e for p in (data[:cut], data[cut:second], data[second:]) for e in splitter.feed(p)]
            events += splitter.close()
            assert [(e.data, e.odd_lines) for e in events] == [(b"x", False), (b"", True)], (cut, second)
    for short in (b"\xef", b"\xef\xbb"):  # a stream that ends inside what could have been a mark is a line
        splitter = SSESplitter()
        assert splitter.feed(short) == [] and not splitter.idle()
        assert [(e.raw, e.odd_lines) for e in splitter.close()] == [(short + b"\n\n", True)]


@pytest.mark.parametrize(
    ("text", "data", "name", "odd"),
    [
        pytest.param(b"data: a\nevent: e\nid: 1\nretry: 5\n: c\n\n", b"a", "e", False, id="every-field"),
        pytest.param(b"data\ndata: a\nevent\nid\nretry\n\n", b"\na", "", False, id="fields-without-colon"),
        pytest.param(b"data: a\nfoo: b\n\n", b"a", None, True, id="unknown-field"),
        pytest.param(b"data: a\nDATA: b\n\n", b"a", None, True, id="field-case"),
        pytest.param(b"data: a\n data: b\n\n", b"a", None, True, id="leading-space"),
        pytest.param(b"data: a\n\xef\xbb\xbfdata: b\n\n", b"a", None, True, id="inner-mark"),
    ],
)
def test_sse_splitter_flags_lines_that_are_no_field(text: bytes, data: bytes, name: str | None, odd: bool) -> None:
    splitter = SSESplitter()
    events = splitter.feed(b"data: 0\n\n" + text)
    assert [(e.data, e.event, e.odd_lines) for e in events] == [(b"0", None, False), (data, name, odd)]


def test_sse_splitter_keeps_a_long_line_in_pieces_until_it_ends() -> None:
    line = b"data: " + b"x" * 300_000
    pieces = [line[i : i + 1000] for i in range(0, len(line), 1000)] + [b"\r", b"\n\r\n"]
    want, got = split_both(pieces, MAX_EVENT_BYTES)
    assert got == want and got[-2][0] == [(None, line[6:], line + b"\n\n")]
    want, got = split_both(pieces, 100_000)  # past the cap while the line is still open: dropped, flagged
    assert got == want and got[100] == ([], True)
