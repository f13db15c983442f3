"""The Anthropic Messages guard on captures built from the wire format: what a client reading the stream sees.

Every streamed scenario runs whole, one byte at a time, split at every offset and at a sample of three-way splits,
and must give the same bytes and the same decisions each time. The judge refuses to see partial input. The client
view follows the SDK: blocks are addressed by their index, so a replaced block must keep its index.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from aiperimeter.gateway.tools import event_guard
from aiperimeter.gateway.tools.anthropic import StreamGuard, judge_body, read_request
from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, Declared, SSESplitter
from aiperimeter.policy.calls import Verdict
from tests.support import guards
from tests.support.guards import FakeJudge, by_decision, chunks, notice_of, per_event

# --- captures ------------------------------------------------------------------------------------------------------


def start(content: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content or [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    return {"type": "message_start", "message": message}


def block(index: int, content_block: dict[str, Any], deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": content_block},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def text(index: int, pieces: list[str]) -> list[dict[str, Any]]:
    return block(index, {"type": "text", "text": ""}, [{"type": "text_delta", "text": piece} for piece in pieces])


def thinking(index: int) -> list[dict[str, Any]]:
    deltas = [
        {"type": "thinking_delta", "thinking": "Hmm, "},
        {"type": "thinking_delta", "thinking": "a query."},
        {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
    ]
    return block(index, {"type": "thinking", "thinking": "", "signature": ""}, deltas)


def tool_use(
    index: int, name: str, call_id: str, pieces: list[str], *, kind: str = "tool_use", start_input: Any = None
) -> list[dict[str, Any]]:
    head = {"type": kind, "id": call_id, "name": name, "input": {} if start_input is None else start_input}
    return block(index, head, [{"type": "input_json_delta", "partial_json": piece} for piece in pieces])


def end(reason: str) -> list[dict[str, Any]]:
    usage = {"output_tokens": 89}
    return [
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": usage},
        {"type": "message_stop"},
    ]


PING = {"type": "ping"}


def wire(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n" for event in events
    )


SQL_PIECES = ['{"query"', ': "SEL', "ECT ", '1"}']
SQL = {"query": "SELECT 1"}
RM_PIECES = ['{"pa', 'th": "/"', "}"]
LONG = {"query": "SELECT id FROM t", "filter": {"id": [4, 2]}, "limit": 10}
WHOLE = {"toolu_1": SQL, "toolu_2": {"path": "/"}, "toolu_m": LONG, "toolu_e": {}, "toolu_s": {"a": 1}}
LEAD_EVENTS = text(0, ["Let me ", "check."])


def scenario_text_only() -> bytes:
    return wire([start(), PING, *thinking(0), *text(1, ["Hello", " there"]), *end("end_turn")])


def scenario_single_call() -> bytes:
    return wire([start(), *LEAD_EVENTS, *tool_use(1, "run_sql", "toolu_1", SQL_PIECES), *end("tool_use")])


def scenario_parallel(second: str = "rm") -> bytes:
    calls = [*tool_use(1, "run_sql", "toolu_1", SQL_PIECES), PING, *tool_use(2, second, "toolu_2", RM_PIECES)]
    return wire([start(), *LEAD_EVENTS, *calls, *end("tool_use")])


def scenario_all_stripped() -> bytes:
    return wire([start(), *LEAD_EVENTS, *tool_use(1, "rm", "toolu_2", RM_PIECES), *end("tool_use")])


def scenario_many_chunks() -> bytes:
    raw = json.dumps(LONG)
    return wire([start(), *tool_use(0, "run_sql", "toolu_m", chunks(raw)), *end("tool_use")])


def scenario_no_input() -> bytes:
    empty = tool_use(1, "list_tables", "toolu_e", [])
    whole = tool_use(2, "list_tables", "toolu_s", [], start_input={"a": 1})
    blank = tool_use(3, "list_tables", "toolu_b", [""])
    return wire([start(), *LEAD_EVENTS, *empty, *whole, *blank, *end("tool_use")])


def scenario_invalid_partials() -> bytes:
    # fine-grained tool streaming: fragments that do not parse on their own, then a buffer that never closes
    fine = tool_use(1, "run_sql", "toolu_1", ['{"query": "SEL', 'ECT 1"', "}"])
    broken = tool_use(2, "rm", "toolu_x", ['{"path": "/', "tmp"])
    return wire([start(), *LEAD_EVENTS, *fine, *broken, *end("tool_use")])


def scenario_hosted() -> bytes:
    search = tool_use(1, "web_search", "srvtoolu_1", ['{"query": ', '"x"}'], kind="server_tool_use")
    result = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": [
            {"type": "web_search_result", "url": "https://intranet.example/", "title": "t", "encrypted_content": "abc"}
        ],
    }
    return wire([start(), *LEAD_EVENTS, *search, *block(2, result, []), *text(3, ["Found it."]), *end("end_turn")])


def scenario_ends_mid_call() -> bytes:
    return wire([start(), *LEAD_EVENTS, *tool_use(1, "run_sql", "toolu_1", SQL_PIECES)[:3]])


def scenario_stop_without_block_stop() -> bytes:
    return wire([start(), *LEAD_EVENTS, *tool_use(1, "run_sql", "toolu_1", SQL_PIECES)[:-1], *end("max_tokens")])


def scenario_start_carries_blocks() -> bytes:
    content = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_2", "name": "rm", "input": {"path": "/"}},
    ]
    return wire([start(content), *text(2, ["Done."]), *end("tool_use")])


def scenario_comments_crlf() -> bytes:
    return b": keep-alive\n\n" + scenario_single_call().replace(b"\n", b"\r\n")


# --- what a client sees ---------------------------------------------------------------------------------------------


@dataclass
class View:
    blocks: list[tuple[Any, ...]]
    stop_reason: str | None
    usage: dict[str, Any] | None
    errors: list[dict[str, Any]]


def summary(content_block: dict[str, Any]) -> tuple[Any, ...]:
    kind = content_block["type"]
    if kind == "text":
        return ("text", content_block["text"])
    if kind == "thinking":
        return ("thinking", content_block["thinking"], content_block["signature"])
    if kind == "tool_use":
        return ("tool", content_block["name"], content_block["id"], content_block["input"])
    if kind.endswith("_tool_result"):
        return ("result", content_block["tool_use_id"])
    return ("hosted", kind, content_block.get("name"))


def client_view(out: bytes) -> View:
    """Accumulates the stream the way the Anthropic SDK does: a start appends a block, deltas address it by index."""
    splitter = SSESplitter()
    blocks: list[dict[str, Any]] = []
    buffers: dict[int, str] = {}
    stop_reason, usage, errors = None, None, []
    for event in splitter.feed(out) + splitter.close():
        if not event.data:
            continue
        doc = orjson.loads(event.data)
        kind = doc["type"]
        assert event.event == kind
        assert not errors, "nothing may follow an error event"
        if kind == "message_start":
            blocks = json.loads(json.dumps(doc["message"]["content"]))
        elif kind == "content_block_start":
            assert doc["index"] == len(blocks), "blocks are addressed by index: none may go missing"
            blocks.append(dict(doc["content_block"]))
        elif kind == "content_block_delta":
            target, delta = blocks[doc["index"]], doc["delta"]
            if delta["type"] == "text_delta":
                target["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                buffers[doc["index"]] = buffers.get(doc["index"], "") + delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                target["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                target["signature"] = delta["signature"]
        elif kind == "content_block_stop":
            assert doc["index"] < len(blocks)
        elif kind == "message_delta":
            stop_reason, usage = doc["delta"]["stop_reason"], doc["usage"]
        elif kind == "error":
            errors.append(doc)
    for index, buffer in buffers.items():
        if buffer:
            blocks[index]["input"] = json.loads(buffer)
    return View([summary(b) for b in blocks], stop_reason, usage, errors)


def run(data: bytes, judge: FakeJudge, pieces: list[bytes]) -> tuple[bytes, list[tuple[str, str | None, str]]]:
    return guards.run_judged(StreamGuard, judge, pieces)


TABLE = {"run_sql": "allow", "rm": "strip", "list_tables": "allow", "grep": "audit"}
LEAD = ("text", "Let me check.")
CALL = ("tool", "run_sql", "toolu_1", SQL)


STREAMS = [
    pytest.param(
        scenario_text_only,
        [("thinking", "Hmm, a query.", "EqQBCgIYAhIM"), ("text", "Hello there")],
        "end_turn",
        [],
        id="text-thinking-ping",
    ),
    pytest.param(scenario_single_call, [LEAD, CALL], "tool_use", [("run_sql", None, "allow")], id="single-call"),
    pytest.param(
        scenario_parallel,
        [LEAD, CALL, notice_of("rm")],
        "tool_use",
        [("run_sql", None, "allow"), ("rm", None, "strip")],
        id="parallel-one-stripped",
    ),
    pytest.param(
        lambda: scenario_parallel("grep"),
        [LEAD, CALL, ("tool", "grep", "toolu_2", {"path": "/"})],
        "tool_use",
        [("run_sql", None, "allow"), ("grep", None, "audit")],
        id="parallel-audited",
    ),
    pytest.param(
        scenario_all_stripped, [LEAD, notice_of("rm")], "end_turn", [("rm", None, "strip")], id="all-stripped"
    ),
    pytest.param(
        scenario_many_chunks,
        [("tool", "run_sql", "toolu_m", LONG)],
        "tool_use",
        [("run_sql", None, "allow")],
        id="many-chunks",
    ),
    pytest.param(
        scenario_no_input,
        [
            LEAD,
            ("tool", "list_tables", "toolu_e", {}),
            ("tool", "list_tables", "toolu_s", {"a": 1}),
            ("tool", "list_tables", "toolu_b", {}),
        ],
        "tool_use",
        [("list_tables", None, "allow")] * 3,
        id="empty-and-start-input",
    ),
    pytest.param(
        scenario_invalid_partials,
        [LEAD, CALL, notice_of("rm")],
        "tool_use",
        [("run_sql", None, "allow"), ("rm", "invalid_json", "strip")],
        id="fine-grained-partials",
    ),
    pytest.param(
        scenario_hosted,
        [LEAD, notice_of("web_search"), notice_of("web_search"), ("text", "Found it.")],
        "end_turn",
        [("web_search", "hosted", "strip")],
        id="server-tool",
    ),
    pytest.param(
        scenario_ends_mid_call, [LEAD, notice_of("run_sql")], None, [("run_sql", "incomplete", "strip")], id="cut-off"
    ),
    pytest.param(
        scenario_stop_without_block_stop, [LEAD, CALL], "max_tokens", [("run_sql", None, "allow")], id="no-block-stop"
    ),
    pytest.param(
        scenario_start_carries_blocks,
        [LEAD, notice_of("rm"), ("text", "Done.")],
        "end_turn",
        [("rm", None, "strip")],
        id="start-carries-blocks",
    ),
    pytest.param(scenario_comments_crlf, [LEAD, CALL], "tool_use", [("run_sql", None, "allow")], id="comments-crlf"),
]


@pytest.mark.parametrize(("build", "blocks", "stop_reason", "decisions"), STREAMS)
def test_stream_whole_bytewise_and_split_everywhere(
    build: Any, blocks: list[tuple[Any, ...]], stop_reason: str | None, decisions: list[tuple[str, str | None, str]]
) -> None:
    expected = guards.judged_in_every_split(StreamGuard, build(), lambda: FakeJudge(TABLE, WHOLE), decisions)
    view = client_view(expected)
    assert view.blocks == blocks
    assert view.stop_reason == stop_reason
    assert view.usage == ({"output_tokens": 89} if stop_reason else None)
    assert view.errors == []


def test_text_before_a_call_is_out_before_the_call_completes() -> None:
    data = scenario_single_call()
    cut = data.index(b"ECT ")
    judge = FakeJudge(TABLE)
    guard = StreamGuard(judge)
    out = guard.feed(data[:cut])
    assert client_view(out).blocks == [LEAD]
    assert judge.calls == []
    out += guard.feed(data[cut:]) + guard.close()
    assert client_view(out).blocks == [LEAD, CALL]


def test_a_blocked_call_ends_the_stream_with_an_error_event() -> None:
    data = scenario_parallel()
    for pieces in ([data], [data[i : i + 5] for i in range(0, len(data), 5)]):
        out, decisions = run(data, FakeJudge({"run_sql": "allow", "rm": "block"}), pieces)
        view = client_view(out)
        assert decisions == [("run_sql", None, "allow"), ("rm", None, "block")]
        assert view.blocks == [LEAD, CALL]  # released stays released; the blocked call never appears
        assert view.stop_reason is None
        assert [error["error"]["type"] for error in view.errors] == ["permission_error"]
        assert "'rm' is not allowed by rule tools.rm" in view.errors[0]["error"]["message"]
        assert b'"path"' not in out


def test_nothing_is_written_after_a_block() -> None:
    guard = StreamGuard(FakeJudge({}))
    assert client_view(guard.feed(scenario_single_call())).errors
    assert guard.blocked is not None and guard.blocked.call.name == "run_sql"
    assert guard.feed(wire(text(2, ["more"]))) == b""
    assert guard.close() == b""


def test_released_input_is_the_judged_one() -> None:
    # duplicate keys: whatever the client's parser keeps, it gets the object the judge saw
    data = wire(
        [
            start(),
            *tool_use(0, "run_sql", "toolu_9", ['{"query": "SELECT 1", ', '"query": "DROP TABLE t"}']),
            *end("tool_use"),
        ]
    )
    judge = FakeJudge(TABLE)
    out, _ = run(data, judge, [data])
    assert judge.calls[0].arguments == {"query": "DROP TABLE t"}
    assert b"SELECT 1" not in out
    assert client_view(out).blocks == [("tool", "run_sql", "toolu_9", {"query": "DROP TABLE t"})]


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"data: {not json\n\n", id="not-json"),
        pytest.param(b'data: "content_block_start"\n\n', id="not-an-object"),
        pytest.param(b'event: ping\ndata: {"type": "content_block_start"}\n\n', id="renamed"),
        pytest.param(
            b'data: {"type": "content_block_delta", "index": 7, "delta": {"type": "input_json_delta", '
            b'"partial_json": "{}"}}\n\n',
            id="input-without-block",
        ),
        pytest.param(
            b'data: {"type": "content_block_start", "content_block": {"type": "tool_use"}}\n\n', id="no-index"
        ),
        pytest.param(b'event: ping\ndata: {"type": "ping", "x": NaN}\n\n', id="ping-nan"),
        pytest.param(b"event: ping\ndata: Infinity\n\n", id="ping-infinity"),
        pytest.param(b'event: ping\ndata: {"type": "ping", "x": "\\ud800"}\n\n', id="ping-lone-surrogate"),
        pytest.param(b'data: {"type": "message_stop", "x": NaN}\n\n', id="nan-unnamed"),
        pytest.param(b'data: {"type": "message_stop"}\nDATA: 1\n\n', id="odd-field-line"),
        pytest.param(b'data: {"type": "message_stop"}\nretry_after: 5\n\n', id="unknown-field-line"),
        pytest.param(
            b'event: ping\ndata: {"type": "ping", "content_block": {"type": "tool_use", "name": "rm"}}\n\n',
            id="ping-with-more",
        ),
        pytest.param(
            b'data: {"type": "ping", "content_block": {"type": "tool_use", "name": "rm"}}\n\n', id="ping-type-with-more"
        ),
        pytest.param(b'event: ping\ndata: {"type": "message_stop"}\n\n', id="ping-named-other-type"),
        pytest.param(
            b'data: {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}\n\n',
            id="index-skips-a-block",
        ),
        pytest.param(
            b'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}, '
            b'"Content_block": {"type": "tool_use", "id": "t", "name": "rm", "input": {}}}\n\n',
            id="case-variant-key",
        ),
        pytest.param(
            b'data: {"type": "message_delta", "delta": {"\xc5\xbftop_reason": "tool_use"}}\n\n',
            id="long-s-key",
        ),
        pytest.param(
            b'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "", '
            b'"TYPE": "tool_use"}}\n\n',
            id="case-variant-nested-key",
        ),
        pytest.param(b'data: {"type": "message_start", "message": {"content": []}}\n\n', id="second-message-start"),
    ],
)
def test_unreadable_events_are_judged_and_never_delivered(event: bytes) -> None:
    guards.assert_unreadable_event_withheld(StreamGuard, wire([start()]), event, lambda out: client_view(out).errors)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"event: ping\ndata: \n\n", id="ping-empty"),
        pytest.param(b'event: ping\ndata: {"type": "ping"}\n\n', id="ping"),
        pytest.param(b'data: {"type": "ping"}\n\n', id="ping-unnamed"),
        pytest.param(b": keep-alive\n\n", id="comment"),
        pytest.param(
            b'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "A"}, '
            b'"X-Trace": "Type", "Stop": 1}\n\n',
            id="uppercase-keys-that-are-no-field",
        ),
    ],
)
def test_events_that_hide_nothing_pass_as_they_are(event: bytes) -> None:
    guards.assert_event_passes(StreamGuard, wire([start()]), event)


def test_the_input_of_a_call_is_not_checked_for_case_variants() -> None:
    # a tool's input is its own data: keys in it are the tool's, whatever they fold to
    data = wire([start(), *tool_use(0, "run_sql", "toolu_x", ['{"Name": 1, "TYPE": "x"}']), *end("tool_use")])
    out, decisions = run(data, FakeJudge(TABLE), [data])
    assert decisions == [("run_sql", None, "allow")]
    assert client_view(out).blocks == [("tool", "run_sql", "toolu_x", {"Name": 1, "TYPE": "x"})]


@pytest.mark.parametrize(
    ("first", "indexes"),
    [
        pytest.param([], [1], id="first-block-not-at-0"),
        pytest.param([], [0, 0], id="index-reused"),
        pytest.param([], [0, 2], id="index-skipped"),
        pytest.param([{"type": "text", "text": "ok"}], [0], id="start-content-not-counted"),
        pytest.param([{"type": "text", "text": "ok"}], [1, 1], id="start-content-then-reused"),
    ],
)
def test_a_block_at_an_index_a_client_would_not_give_it_is_unreadable(
    first: list[dict[str, Any]], indexes: list[int]
) -> None:
    # the SDK appends each started block and applies deltas to content[index]: the guard's index must be the client's
    calls = [
        tool_use(index, "get_time", f"toolu_{n}", ['{"query": "DROP TABLE t"}']) for n, index in enumerate(indexes)
    ]
    data = wire([start(first), *(event for call in calls for event in call), *end("tool_use")])
    for decision in ("block", "strip"):
        judge = FakeJudge({"get_time": "allow"}, on_error=decision)
        out, decisions = run(data, judge, [data])
        assert ("(unreadable)", "unreadable", decision) in decisions
        view = client_view(out)
        assert bool(view.errors) == (decision == "block")
        assert all(block[0] != "tool" or block[3] == {"query": "DROP TABLE t"} for block in view.blocks)


def test_blocks_after_the_start_content_are_read_at_their_place() -> None:
    data = wire([start([TEXT_BLOCK]), *tool_use(1, "run_sql", "toolu_1", SQL_PIECES), *end("tool_use")])
    out, decisions = run(data, FakeJudge(TABLE), [data])
    assert decisions == [("run_sql", None, "allow")]
    assert client_view(out).blocks == [LEAD, CALL]


def test_more_calls_than_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_CALLS", 3)
    calls = [event for n in range(5) for event in tool_use(n, "run_sql", "toolu_1", SQL_PIECES)]
    data = wire([start(), *calls, *end("tool_use")])
    for decision in ("allow", "strip"):
        out, decisions = run(data, FakeJudge({"run_sql": decision}, on_error=decision), [data])
        assert decisions[-1] == ("(unreadable)", "unreadable", "block")
        assert len(decisions) <= 4
        assert client_view(out).errors
    raw = body(*[SQL_BLOCK] * 5)
    result = judge_body(raw, FakeJudge(TABLE))
    assert result.blocked is not None and result.blocked.call.error == "unreadable"


def test_input_over_the_cap_is_judged_too_large_at_once() -> None:
    events = tool_use(0, "run_sql", "toolu_1", ['{"query": "' + "x" * MAX_CALL_BYTES, '"}'])
    judge = FakeJudge(TABLE)
    guard = StreamGuard(judge)
    out = guard.feed(wire([start(), *events[:2]]))
    assert [(c.name, c.error, c.arguments) for c in judge.calls] == [("run_sql", "too_large", None)]
    out += guard.feed(wire([*events[2:], *end("tool_use")])) + guard.close()
    assert client_view(out).blocks == [notice_of("run_sql")]
    assert client_view(out).stop_reason == "end_turn"
    assert len(out) < 4096


def test_what_waits_behind_a_held_call_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_EVENT_BYTES", 2000)
    events = [start(), *tool_use(0, "run_sql", "toolu_1", SQL_PIECES)[:2], *text(1, ["x" * 300] * 10)]
    out, decisions = run(wire(events), FakeJudge(TABLE), [wire(events)])
    assert decisions == [("run_sql", "too_large", "strip")]
    assert client_view(out).blocks == [notice_of("run_sql"), ("text", "x" * 3000)]


def test_a_fragment_that_passes_the_cap_on_what_waits_releases_it_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_EVENT_BYTES", 2000)
    call = tool_use(0, "run_sql", "toolu_1", ['{"query": "', "x" * 300, '"}'])
    guard = StreamGuard(FakeJudge(TABLE))
    out = guard.feed(wire([start(), *call[:2]]))
    out += guard.feed(wire(text(1, ["y" * 1500])))
    assert client_view(out).blocks == []  # the text waits behind the held block
    out += guard.feed(wire(call[2:3]))  # only a fragment, but it takes what waits past the cap
    assert client_view(out).blocks == [notice_of("run_sql"), ("text", "y" * 1500)]


def test_an_audited_call_cut_short_streams_on() -> None:
    events = [start(), *tool_use(0, "grep", "toolu_1", ['{"path": "' + "x" * MAX_CALL_BYTES, '"}']), *end("tool_use")]
    out, decisions = run(wire(events), FakeJudge(TABLE, on_error="audit"), [wire(events)])
    assert decisions == [("grep", "too_large", "audit")]
    assert client_view(out).blocks == [("tool", "grep", "toolu_1", {"path": "x" * MAX_CALL_BYTES})]


def test_an_allowed_server_tool_streams_through() -> None:
    events = [start(), *tool_use(0, "web_search", "srvtoolu_1", ['{"q": 1}'], kind="server_tool_use"), *end("end_turn")]
    out, decisions = run(wire(events), FakeJudge({}, on_error="audit"), [wire(events)])
    assert decisions == [("web_search", "hosted", "audit")]
    assert out == wire(events)


# --- non-streamed ----------------------------------------------------------------------------------------------------


def body(*content: Any, stop_reason: str = "tool_use") -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": list(content),
            "stop_reason": stop_reason,
            "usage": {"input_tokens": 1, "output_tokens": 2},
        }
    )


TEXT_BLOCK = {"type": "text", "text": "Let me check."}
SQL_BLOCK = {"type": "tool_use", "id": "toolu_1", "name": "run_sql", "input": SQL}
RM_BLOCK = {"type": "tool_use", "id": "toolu_2", "name": "rm", "input": {"path": "/"}}
SERVER_BLOCK = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch", "input": {"url": "http://x"}}
RESULT_BLOCK = {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_1", "content": {"type": "web_fetch_result"}}


@pytest.mark.parametrize(
    ("raw", "content", "stop_reason", "decisions", "unchanged"),
    [
        pytest.param(body(TEXT_BLOCK, stop_reason="end_turn"), [LEAD], "end_turn", [], True, id="text-only"),
        pytest.param(
            body(TEXT_BLOCK, SQL_BLOCK), [LEAD, CALL], "tool_use", [("run_sql", None, "allow")], True, id="ok"
        ),
        pytest.param(
            body(TEXT_BLOCK, SQL_BLOCK, RM_BLOCK),
            [LEAD, CALL, notice_of("rm")],
            "tool_use",
            [("run_sql", None, "allow"), ("rm", None, "strip")],
            False,
            id="one-stripped",
        ),
        pytest.param(
            body(TEXT_BLOCK, RM_BLOCK), [LEAD, notice_of("rm")], "end_turn", [("rm", None, "strip")], False, id="all"
        ),
        pytest.param(
            body({**SQL_BLOCK, "input": "SELECT 1"}),
            [notice_of("run_sql")],
            "end_turn",
            [("run_sql", "not_an_object", "strip")],
            False,
            id="input-not-an-object",
        ),
        pytest.param(
            body(SERVER_BLOCK, RESULT_BLOCK, TEXT_BLOCK, stop_reason="end_turn"),
            [notice_of("web_fetch"), notice_of("web_fetch"), LEAD],
            "end_turn",
            [("web_fetch", "hosted", "strip")],
            False,
            id="server-tool-and-its-result",
        ),
    ],
)
def test_judge_body(
    raw: bytes,
    content: list[tuple[Any, ...]],
    stop_reason: str,
    decisions: list[tuple[str, str | None, str]],
    unchanged: bool,
) -> None:
    doc = guards.judged_body(judge_body, raw, FakeJudge(TABLE), decisions, unchanged)
    assert [summary(b) for b in doc["content"]] == content
    assert doc["stop_reason"] == stop_reason
    assert doc["usage"] == {"input_tokens": 1, "output_tokens": 2}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(body(TEXT_BLOCK, SQL_BLOCK, RM_BLOCK), id="blocked-call"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"content": {"type": "tool_use"}}', id="content-not-a-list"),
        pytest.param(body(TEXT_BLOCK, ["tool_use"]), id="block-not-an-object"),
        pytest.param(body(TEXT_BLOCK)[:-1] + b',"Content":[' + orjson.dumps(RM_BLOCK) + b"]}", id="case-variant-key"),
        pytest.param(body({**TEXT_BLOCK, "TYPE": "tool_use", "name": "rm"}), id="case-variant-in-a-block"),
        pytest.param(
            body(TEXT_BLOCK, stop_reason="end_turn").replace(b'"stop_reason"', b'"Stop_Reason"'), id="any-field"
        ),
    ],
)
def test_judge_body_blocks_with_the_policy_error(raw: bytes) -> None:
    result = judge_body(raw, FakeJudge({"run_sql": "allow"}, on_error="block"))
    assert result.blocked is not None and result.blocked.verdict.decision == "block"
    assert orjson.loads(result.body)["error"]["code"] == "tool_call_blocked"


def test_judge_body_passes_an_api_error_unchanged() -> None:
    raw = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    assert judge_body(raw, FakeJudge({})).body == raw


# --- requests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "declared", "forced", "hosted_other"),
    [
        pytest.param(
            {
                "tools": [
                    {"name": "run_sql", "input_schema": {}},
                    {"type": "custom", "name": "rm", "input_schema": {}},
                    {"type": "bash_20250124", "name": "bash"},
                    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                    {"type": "computer_20250124", "name": "computer"},
                    {"type": "memory_20250818", "name": "memory"},
                ]
            },
            [
                Declared("run_sql", "custom"),
                Declared("rm", "custom"),
                Declared("bash", "bash_20250124"),
                Declared("str_replace_based_edit_tool", "text_editor_20250728"),
                Declared("computer", "computer_20250124"),
                Declared("memory", "memory_20250818"),
            ],
            [],
            [],
            id="client-tools",
        ),
        pytest.param(
            {
                "tools": [
                    {"type": "web_search_20250305", "name": "web_search"},
                    {"type": "code_execution_20250825", "name": "code_execution"},
                    {"type": "web_fetch_20250910", "name": "web_fetch"},
                    {"type": "mcp_toolset", "mcp_server_name": "x"},
                    {"type": 7, "name": "n"},
                ]
            },
            [
                Declared("web_search", "web_search_20250305", True),
                Declared("code_execution", "code_execution_20250825", True),
                Declared("web_fetch", "web_fetch_20250910", True),
                Declared(None, "mcp_toolset", True),
                Declared("n", "(untyped)", True),
            ],
            [],
            [],
            id="hosted-fail-closed",
        ),
        pytest.param(
            {"tools": ["run_sql", {"input_schema": {}}, {"name": None}]},
            [Declared(None, "(invalid)", True), Declared(None, "custom"), Declared(None, "custom")],
            [],
            [],
            id="malformed-entries",
        ),
        pytest.param({"tools": "run_sql"}, [Declared(None, "(invalid)", True)], [], [], id="tools-not-a-list"),
        pytest.param({"tool_choice": {"type": "tool", "name": "run_sql"}}, [], ["run_sql"], [], id="forced"),
        pytest.param({"tool_choice": {"type": "any"}}, [], [], [], id="any"),
        pytest.param({"tool_choice": {"type": "tool", "name": 3}}, [], [], [], id="forced-name-not-a-string"),
        pytest.param(
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}], "container": "container_1"},
            [],
            [],
            ["mcp_servers", "container"],
            id="mcp-servers-and-container",
        ),
        pytest.param({"mcp_servers": [], "container": None}, [], [], [], id="empty-hosted-fields"),
        pytest.param({"mcp_servers": "x", "container": {"skills": []}}, [], [], ["mcp_servers", "container"], id="odd"),
    ],
)
def test_read_request_tools(
    doc: dict[str, Any], declared: list[Declared], forced: list[str], hosted_other: list[str]
) -> None:
    tools = read_request(doc)
    assert tools.declared == declared
    assert tools.forced == forced
    assert tools.hosted_other == hosted_other


def test_read_request_history_and_results() -> None:
    tools = read_request(
        {
            "messages": [
                {"role": "user", "content": "Query the database."},
                {"role": "assistant", "content": [TEXT_BLOCK, SQL_BLOCK, {**RM_BLOCK, "input": [1]}, SERVER_BLOCK]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1"},
                        {"type": "tool_result", "tool_use_id": 5, "is_error": True},
                    ],
                },
                {"role": "assistant", "content": [{"type": "tool_use", "name": ["x"], "input": {}}, "stray"]},
                "stray",
                {"role": "user", "content": {"type": "tool_result"}},
            ]
        }
    )
    assert [(c.name, c.call_id, c.arguments, c.error) for c in tools.history] == [
        ("run_sql", "toolu_1", SQL, None),
        ("rm", "toolu_2", None, "not_an_object"),
        ("(unnamed)", None, {}, None),
    ]
    assert tools.results == [("toolu_1", None), (None, None)]
    assert tools.hosted_other == []


# --- hostile streams -------------------------------------------------------------------------------------------------

ODD_VALUES = [*guards.ODD_VALUES, {"type": "tool_use"}, "input_json_delta"]
NOT_CALLS = ("text", "thinking", "redacted_thinking")


def leaked_calls(out: bytes) -> list[Any]:
    """Events through which a client would get a call: a block that is not text or a result, or a call's input."""
    splitter = SSESplitter()
    found = []
    for event in splitter.feed(out) + splitter.close():
        doc = orjson.loads(event.data)
        kind, delta = doc.get("type"), doc.get("delta")
        blocks = [doc.get("content_block")] if kind == "content_block_start" else []
        message = doc.get("message") if kind == "message_start" else None
        blocks += message["content"] if isinstance(message, dict) and isinstance(message.get("content"), list) else []
        kinds = [str(b.get("type")) if isinstance(b, dict) else "?" for b in blocks]
        if any(k not in NOT_CALLS and not k.endswith("_tool_result") for k in kinds) or (
            isinstance(delta, dict) and delta.get("type") == "input_json_delta"
        ):
            found.append(doc)
    return found


def event_docs(raw: bytes) -> list[Any]:
    splitter = SSESplitter()
    return [orjson.loads(e.data) for e in splitter.feed(raw) + splitter.close() if e.data]


def mangled_streams(rng: random.Random) -> list[bytes]:
    """Five of the scenarios with their events mangled, some shuffled, some without an `event:` line."""
    return guards.mangled_streams(rng, [param.values[0] for param in STREAMS], event_docs, ODD_VALUES)


@pytest.mark.parametrize("seed", range(50))
def test_mangled_streams_never_raise_and_leak_no_call_when_all_are_stripped(seed: int) -> None:
    rng = random.Random(seed)
    PATHS.assert_mangled_streams_fail_safe(rng, mangled_streams(rng), leaked_calls)
    raw = orjson.dumps(
        guards.mangle(rng, orjson.loads(body(TEXT_BLOCK, SQL_BLOCK, RM_BLOCK, SERVER_BLOCK, RESULT_BLOCK)), ODD_VALUES)
    )
    for decision in ("allow", "strip", "block", "unknown"):
        result = judge_body(raw, lambda call, decision=decision: Verdict(decision))
        content = orjson.loads(result.body).get("content")
        if decision == "strip" and result.blocked is None and isinstance(content, list):
            kinds = [str(b.get("type")) if isinstance(b, dict) else "?" for b in content]
            assert all(k in NOT_CALLS or k.endswith("_tool_result") for k in kinds)


# --- the fast path ---------------------------------------------------------------------------------------------------


def held_total_is_exact(guard: StreamGuard) -> None:
    """The cap on what waits behind held blocks rests on the held total: exact whichever way each event went."""
    assert guard._held == sum(use.size for use in guard._uses.values())


PATHS = guards.EventPaths(StreamGuard, held_total_is_exact)
agree = PATHS.agree


@pytest.mark.parametrize("build", [param.values[0] for param in STREAMS], ids=[param.id for param in STREAMS])
@pytest.mark.parametrize("decision", ["allow", "strip", "block"])
def test_the_fast_path_agrees_with_the_general_path(build: Any, decision: str) -> None:
    data = build()
    table = FakeJudge(TABLE)
    agree(per_event(data), table)
    PATHS.agree_in_many_ways(data, by_decision(decision))


def test_the_fast_path_takes_each_fragment_of_a_held_block() -> None:
    data = scenario_single_call()
    assert agree(per_event(data), FakeJudge(TABLE)) == len(SQL_PIECES)
    assert agree([data], FakeJudge(TABLE)) == len(SQL_PIECES)
    assert agree(per_event(scenario_hosted()), FakeJudge({}, on_error="audit")) == 0  # streams through: not held


SECOND_FRAGMENT = (
    b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":": \\"SEL"}}'
)


@pytest.mark.parametrize(
    ("event", "taken"),
    [
        pytest.param(b"event: content_block_delta\ndata: " + SECOND_FRAGMENT, True, id="as-sent"),
        pytest.param(b"data: " + SECOND_FRAGMENT, True, id="no-event-name"),
        pytest.param(
            b'data: { "delta" : {"partial_json": ": \\"SEL", "type": "input_json_delta", "x": 1}, "index": 1, '
            b'"type": "content_block_delta", "extra": [1]}',
            True,
            id="other-key-order-spacing-and-extra-keys",
        ),
        pytest.param(
            b'data: {"type":"content_block_delta","index":7,"index":1,"delta":{"type":"input_json_delta",'
            b'"partial_json":": \\"SEL"}}',
            True,
            id="duplicate-index-key",
        ),
        pytest.param(b"event: content_block_stop\ndata: " + SECOND_FRAGMENT, False, id="event-name-differs"),
        pytest.param(b"event: ping\ndata: " + SECOND_FRAGMENT, False, id="named-ping"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":true'), False, id="index-bool"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":1.0'), False, id="index-float"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":"1"'), False, id="index-string"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":-1'), False, id="index-negative"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":[1]'), False, id="index-list"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":{"1":1}'), False, id="index-object"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":0'), False, id="index-of-a-text-block"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1', b'"index":5'), False, id="index-of-no-block"),
        pytest.param(SECOND_FRAGMENT.replace(b'"index":1,', b""), False, id="no-index"),
        pytest.param(b'data: {"type":"content_block_delta","index":1,"delta":[1]}', False, id="delta-list"),
        pytest.param(b'data: {"type":"content_block_delta","index":1}', False, id="no-delta"),
        pytest.param(SECOND_FRAGMENT.replace(b"input_json_delta", b"text_delta"), False, id="text-delta"),
        pytest.param(SECOND_FRAGMENT.replace(b'"type":"input_json_delta",', b""), False, id="untyped-delta"),
        pytest.param(SECOND_FRAGMENT.replace(b'": \\"SEL"', b"7"), False, id="partial-number"),
        pytest.param(SECOND_FRAGMENT.replace(b'": \\"SEL"', b"null"), False, id="partial-null"),
        pytest.param(SECOND_FRAGMENT.replace(b'": \\"SEL"', b'[": \\"SEL"]'), False, id="partial-list"),
        pytest.param(SECOND_FRAGMENT.replace(b"content_block_delta", b"content_block_delta "), False, id="odd-type"),
        pytest.param(SECOND_FRAGMENT.replace(b'"type":"content_block_delta",', b""), False, id="no-type"),
        pytest.param(b"data: [" + SECOND_FRAGMENT + b"]", False, id="in-a-list"),
        pytest.param(b"data: " + SECOND_FRAGMENT[:-1], False, id="cut-short"),
    ],
)
def test_every_other_shape_of_a_fragment_goes_the_general_way(event: bytes, taken: bool) -> None:
    PATHS.agree_with_an_event_replaced(scenario_single_call(), b"SEL", event, len(SQL_PIECES) - (not taken))


def test_a_fragment_that_passes_the_cap_goes_the_general_way() -> None:
    events = tool_use(0, "run_sql", "toolu_1", ['{"query": "', "x" * MAX_CALL_BYTES, '"}'])
    data = wire([start(), *events, *end("tool_use")])
    for decision in ("allow", "strip", "block"):
        assert agree(per_event(data), by_decision(decision)) == 1  # the first fragment only
        assert agree([data], by_decision(decision)) == 1


@pytest.mark.parametrize("seed", range(30))
def test_mangled_streams_go_the_same_way_fast_or_general(seed: int) -> None:
    rng = random.Random(seed)
    PATHS.agree_on_mangled(rng, mangled_streams(rng))
