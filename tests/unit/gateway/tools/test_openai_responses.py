"""The OpenAI Responses guard on captures built from the wire format: what a client reading the stream sees.

Every streamed scenario runs whole, one byte at a time, split at every offset and at a sample of three-way splits,
and must give the same bytes and the same decisions each time. The judge refuses to see partial arguments.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from aiperimeter.gateway.tools import event_guard
from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, MAX_EVENT_BYTES, Declared, SSESplitter
from aiperimeter.gateway.tools.openai_responses import StreamGuard, judge_body, read_request
from aiperimeter.policy.calls import Verdict
from tests.support import guards
from tests.support.guards import FakeJudge, by_decision, chunks, notice_of, per_event

# --- captures ------------------------------------------------------------------------------------------------------


def created() -> list[dict[str, Any]]:
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
    return [{"type": "response.created", "response": response}, {"type": "response.in_progress", "response": response}]


def message(index: int, pieces: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    item_id, text = f"msg_{index}", "".join(pieces)
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    events = [
        {"type": "response.output_item.added", "output_index": index, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
    return events, item


def function_call(
    index: int, name: str, call_id: str, pieces: list[str], *, kind: str = "function_call"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    payload, prefix = (
        ("input", "response.custom_tool_call_input")
        if kind == "custom_tool_call"
        else ("arguments", "response.function_call_arguments")
    )
    item_id, whole = f"fc_{index}", "".join(pieces)
    item = {"id": item_id, "type": kind, "status": "completed", "call_id": call_id, "name": name, payload: whole}
    where = {"item_id": item_id, "output_index": index}
    events = [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, payload: "", "status": "in_progress"},
        },
        *({"type": f"{prefix}.delta", **where, "delta": piece} for piece in pieces),
        {"type": f"{prefix}.done", **where, payload: whole},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
    return events, item


def completed(items: list[dict[str, Any]], kind: str = "response.completed") -> dict[str, Any]:
    usage = {"input_tokens": 12, "output_tokens": 34, "total_tokens": 46}
    status = kind.removeprefix("response.")
    return {
        "type": kind,
        "response": {"id": "resp_1", "object": "response", "status": status, "output": items, "usage": usage},
    }


def wire(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps({**event, "sequence_number": n}) + b"\n\n"
        for n, event in enumerate(events)
    )


SQL_PIECES = ['{"query"', ': "SEL', "ECT ", '1"}']
SQL = {"query": "SELECT 1"}
RM_PIECES = ['{"pa', 'th": "/"', "}"]
LONG = {"query": "SELECT id FROM t", "filter": {"id": [4, 2]}, "limit": 10}
WHOLE = {"call_1": SQL, "call_2": {"path": "/"}, "call_m": LONG}  # every scenario's whole arguments, by call id
TEXT, TEXT_ITEM = message(0, ["Let me ", "check."])


def scenario_text_only() -> bytes:
    return wire([*created(), *TEXT, completed([TEXT_ITEM])])


def scenario_single_call() -> bytes:
    call, item = function_call(1, "run_sql", "call_1", SQL_PIECES)
    return wire([*created(), *TEXT, *call, completed([TEXT_ITEM, item])])


def scenario_parallel(second: str = "rm") -> bytes:
    one, item_one = function_call(1, "run_sql", "call_1", SQL_PIECES)
    two, item_two = function_call(2, second, "call_2", RM_PIECES)
    return wire([*created(), *TEXT, *one, *two, completed([TEXT_ITEM, item_one, item_two])])


def scenario_interleaved() -> bytes:
    one, item_one = function_call(1, "run_sql", "call_1", SQL_PIECES)
    two, item_two = function_call(2, "rm", "call_2", RM_PIECES)
    mixed = [one[0], two[0], *(event for pair in zip(one[1:], two[1:], strict=False) for event in pair), *one[6:]]
    return wire([*created(), *mixed, completed([item_one, item_two])])


def scenario_many_chunks() -> bytes:
    text = json.dumps(LONG)
    call, item = function_call(0, "run_sql", "call_m", chunks(text))
    return wire([*created(), *call, completed([item])])


def scenario_reused_index() -> bytes:
    # a server that starts a second call at the same output_index: the first one has ended there
    one, _ = function_call(1, "run_sql", "call_1", SQL_PIECES)
    two, item_two = function_call(1, "rm", "call_2", RM_PIECES)
    return wire([*created(), *TEXT, *one[:-2], *two, completed([TEXT_ITEM, item_two])])


def scenario_custom(name: str = "apply_patch") -> bytes:
    call, item = function_call(1, name, "call_c", ["*** Begin", " Patch\n", "*** End Patch"], kind="custom_tool_call")
    return wire([*created(), *TEXT, *call, completed([TEXT_ITEM, item])])


def scenario_invalid_json() -> bytes:
    call, item = function_call(1, "run_sql", "call_1", ['{"query": ', '"SELECT 1"', ",}"])
    return wire([*created(), *TEXT, *call, completed([TEXT_ITEM, item])])


def scenario_ends_mid_call() -> bytes:
    call, _ = function_call(1, "run_sql", "call_1", SQL_PIECES)
    return wire([*created(), *TEXT, *call[:3]])


def scenario_incomplete() -> bytes:
    call, item = function_call(1, "run_sql", "call_1", SQL_PIECES[:2])  # max_output_tokens cut the arguments
    return wire([*created(), *TEXT, *call[:3], completed([TEXT_ITEM, item], "response.incomplete")])


def scenario_hosted() -> bytes:
    item = {"id": "ws_1", "type": "web_search_call", "status": "completed", "action": {"type": "search", "query": "x"}}
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress"}},
        {"type": "response.web_search_call.in_progress", "item_id": "ws_1", "output_index": 0},
        {"type": "response.web_search_call.completed", "item_id": "ws_1", "output_index": 0},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
    ]
    text, text_item = message(1, ["Found ", "it."])
    return wire([*created(), *events, *text, completed([item, text_item])])


def scenario_comments() -> bytes:
    return b": keep-alive\n\n" + scenario_single_call().replace(b"\n", b"\r\n") + b"data: [DONE]\n\n"


# --- what a client sees ---------------------------------------------------------------------------------------------


def events_of(out: bytes) -> list[tuple[str | None, Any]]:
    splitter = SSESplitter()
    raw = splitter.feed(out) + splitter.close()
    return [(event.event, orjson.loads(event.data) if event.data not in (b"", b"[DONE]") else None) for event in raw]


def summary(item: dict[str, Any]) -> tuple[Any, ...]:
    kind = item["type"]
    if kind == "function_call":
        return ("call", item["name"], item["call_id"], json.loads(item["arguments"]))
    if kind == "custom_tool_call":
        return ("custom", item["name"], item["call_id"], item["input"])
    if kind == "message":
        return ("text", "".join(part["text"] for part in item["content"]))
    return ("hosted", kind)


@dataclass
class View:
    streamed: list[tuple[Any, ...]]  # items as a client accumulates them from added + deltas
    done: list[tuple[Any, ...]]  # items as output_item.done events give them
    final: list[tuple[Any, ...]] | None  # `response.output` of the terminal event
    errors: list[dict[str, Any]]


def client_view(out: bytes) -> View:
    """Accumulates the stream the way the OpenAI SDK does, checking every event refers to an item it has."""
    items: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    final, errors = None, []
    for name, doc in events_of(out):
        if doc is None:
            continue
        kind = doc["type"]
        assert name == kind
        assert not errors, "nothing may follow an error event"
        index = doc.get("output_index")
        if kind == "response.output_item.added":
            items[index] = json.loads(json.dumps(doc["item"]))
        elif kind == "response.function_call_arguments.delta":
            items[index]["arguments"] += doc["delta"]
        elif kind == "response.custom_tool_call_input.delta":
            items[index]["input"] += doc["delta"]
        elif kind == "response.content_part.added":
            items[index]["content"].append(dict(doc["part"]))
        elif kind == "response.output_text.delta":
            items[index]["content"][doc["content_index"]]["text"] += doc["delta"]
        elif kind == "response.output_item.done":
            done[index] = doc["item"]
        elif kind in ("response.completed", "response.incomplete"):
            final = [summary(item) for item in doc["response"]["output"]]
        elif kind == "error":
            errors.append(doc)
        elif index is not None:
            assert index in items, f"{kind} for an item the client never got"
    return View([summary(items[i]) for i in sorted(items)], [summary(done[i]) for i in sorted(done)], final, errors)


def run(data: bytes, judge: FakeJudge, pieces: list[bytes]) -> tuple[bytes, list[tuple[str, str | None, str]]]:
    return guards.run_judged(StreamGuard, judge, pieces)


TABLE = {"run_sql": "allow", "rm": "strip", "apply_patch": "allow", "grep": "audit"}
CALL = ("call", "run_sql", "call_1", SQL)
LEAD = ("text", "Let me check.")


STREAMS = [
    pytest.param(scenario_text_only, [LEAD], [], id="text-only"),
    pytest.param(scenario_single_call, [LEAD, CALL], [("run_sql", None, "allow")], id="single-call"),
    pytest.param(
        scenario_parallel,
        [LEAD, CALL, notice_of("rm")],
        [("run_sql", None, "allow"), ("rm", None, "strip")],
        id="parallel-one-stripped",
    ),
    pytest.param(
        lambda: scenario_parallel("grep"),
        [LEAD, CALL, ("call", "grep", "call_2", {"path": "/"})],
        [("run_sql", None, "allow"), ("grep", None, "audit")],
        id="parallel-audited",
    ),
    pytest.param(
        scenario_interleaved,
        [CALL, notice_of("rm")],
        [("rm", None, "strip"), ("run_sql", None, "allow")],  # rm ends first
        id="interleaved",
    ),
    pytest.param(
        scenario_many_chunks,
        [("call", "run_sql", "call_m", LONG)],
        [("run_sql", None, "allow")],
        id="many-chunks",
    ),
    pytest.param(
        scenario_reused_index,
        [LEAD, notice_of("rm")],
        [("run_sql", None, "allow"), ("rm", None, "strip")],
        id="reused-index",
    ),
    pytest.param(
        scenario_custom,
        [LEAD, ("custom", "apply_patch", "call_c", "*** Begin Patch\n*** End Patch")],
        [("apply_patch", None, "allow")],
        id="custom-tool",
    ),
    pytest.param(
        lambda: scenario_custom("rm"), [LEAD, notice_of("rm")], [("rm", None, "strip")], id="custom-tool-stripped"
    ),
    pytest.param(
        scenario_invalid_json, [LEAD, notice_of("run_sql")], [("run_sql", "invalid_json", "strip")], id="invalid-json"
    ),
    pytest.param(
        scenario_ends_mid_call, [LEAD, notice_of("run_sql")], [("run_sql", "incomplete", "strip")], id="ends-mid-call"
    ),
    pytest.param(
        scenario_incomplete, [LEAD, notice_of("run_sql")], [("run_sql", "invalid_json", "strip")], id="incomplete"
    ),
    pytest.param(
        scenario_hosted,
        [notice_of("web_search_call"), ("text", "Found it.")],
        [("web_search_call", "hosted", "strip")],
        id="hosted-item",
    ),
    pytest.param(scenario_comments, [LEAD, CALL], [("run_sql", None, "allow")], id="comments-crlf-done"),
]


@pytest.mark.parametrize(("build", "items", "decisions"), STREAMS)
def test_stream_whole_bytewise_and_split_everywhere(
    build: Any, items: list[tuple[Any, ...]], decisions: list[tuple[str, str | None, str]]
) -> None:
    expected = guards.judged_in_every_split(StreamGuard, build(), lambda: FakeJudge(TABLE, WHOLE), decisions)
    view = client_view(expected)
    assert view.streamed == items
    assert view.done == items
    assert view.final in (items, None)
    assert view.errors == []


@pytest.mark.parametrize(
    ("build", "marker"),
    [
        pytest.param(scenario_single_call, b'"delta":": \\"SEL"', id="function"),
        pytest.param(scenario_custom, b'"delta":" Patch', id="custom"),
    ],
)
def test_text_before_a_call_is_out_before_the_call_completes(build: Any, marker: bytes) -> None:
    data = build()
    judge = FakeJudge(TABLE)
    guard = StreamGuard(judge)
    out = guard.feed(data[: data.index(marker) + len(marker) + 20])
    view = client_view(out)
    assert view.streamed == [LEAD]
    assert judge.calls == []
    rest = guard.feed(data[data.index(marker) + len(marker) + 20 :]) + guard.close()
    assert len(judge.calls) == 1
    assert client_view(out + rest).streamed[0] == LEAD


def test_a_blocked_call_ends_the_stream_with_an_error_event() -> None:
    data = scenario_parallel()
    for pieces in ([data], [data[i : i + 7] for i in range(0, len(data), 7)]):
        judge = FakeJudge({"run_sql": "allow", "rm": "block"})
        out, decisions = run(data, judge, pieces)
        view = client_view(out)
        assert decisions == [("run_sql", None, "allow"), ("rm", None, "block")]
        assert view.streamed == [LEAD, CALL]  # what was released stays released; the blocked call never appears
        assert view.final is None
        assert [(error["code"], error["sequence_number"] > 0) for error in view.errors] == [("tool_call_blocked", True)]
        assert "'rm' is not allowed by rule tools.rm" in view.errors[0]["message"]
        assert b'"path"' not in out


def test_nothing_is_written_after_a_block() -> None:
    guard = StreamGuard(FakeJudge({}))
    out = guard.feed(scenario_single_call())
    assert guard.blocked is not None and guard.blocked.call.name == "run_sql"
    assert client_view(out).errors
    assert guard.feed(wire([*TEXT])) == b""
    assert guard.close() == b""


def test_released_arguments_are_the_judged_ones() -> None:
    # the deltas say one thing, the done event another: the client gets what the judge saw, nothing else
    call, item = function_call(1, "run_sql", "call_1", ['{"query": "SELECT 1"}'])
    call[2]["arguments"] = '{"query": "DROP TABLE users"}'
    judge = FakeJudge(TABLE)
    out, _ = run(wire([*created(), *call, completed([item])]), judge, [wire([*created(), *call, completed([item])])])
    assert judge.calls[0].arguments == {"query": "DROP TABLE users"}
    view = client_view(out)
    assert view.streamed == view.done == [("call", "run_sql", "call_1", {"query": "DROP TABLE users"})]
    # the snapshot's item says something else under the same ids: it is judged on its own
    assert [c.arguments for c in judge.calls] == [{"query": "DROP TABLE users"}, SQL]
    assert view.final == [("call", "run_sql", "call_1", SQL)]


def test_a_call_only_in_the_final_snapshot_is_judged_there() -> None:
    _, item = function_call(0, "rm", "call_9", RM_PIECES)
    judge = FakeJudge(TABLE)
    out, decisions = run(wire([*created(), completed([item])]), judge, [wire([*created(), completed([item])])])
    assert decisions == [("rm", None, "strip")]
    assert client_view(out).final == [notice_of("rm")]


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"data: {not json\n\n", id="not-json"),
        pytest.param(b"data: [1, 2]\n\n", id="not-an-object"),
        pytest.param(b'data: {"delta": "x"}\n\n', id="no-type"),
        pytest.param(
            b'event: response.output_text.delta\ndata: {"type": "response.output_item.added"}\n\n', id="renamed"
        ),
        pytest.param(
            b'data: {"type": "response.function_call_arguments.delta", "output_index": 5, "delta": "{}"}\n\n',
            id="delta-without-call",
        ),
        pytest.param(
            b'data: {"type": "response.output_item.added", "item": {"type": "function_call"}}\n\n', id="no-index"
        ),
        pytest.param(b'event: ping\ndata: {"type": "response.completed", "x": NaN}\n\n', id="ping-nan"),
        pytest.param(b"event: ping\ndata: -Infinity\n\n", id="ping-infinity"),
        pytest.param(b'event: ping\ndata: {"type": "ping", "x": "\\udfff"}\n\n', id="ping-lone-surrogate"),
        pytest.param(b'data: {"type": "response.completed", "x": NaN}\n\n', id="nan-unnamed"),
        pytest.param(b'data: {"type": "response.in_progress"}\nDATA: 1\n\n', id="odd-field-line"),
        pytest.param(b'data: {"type": "response.in_progress"}\nretry_after: 5\n\n', id="unknown-field-line"),
        pytest.param(
            b'event: ping\ndata: {"type": "ping", "response": {"output": [{"type": "function_call"}]}}\n\n',
            id="ping-with-more",
        ),
        pytest.param(b'event: ping\ndata: {"type": "response.in_progress"}\n\n', id="ping-named-other-type"),
        pytest.param(
            b'data: {"type": "response.output_text.delta", "output_index": 0, "delta": "x", '
            b'"Item": {"type": "function_call", "name": "rm", "arguments": "{}"}}\n\n',
            id="case-variant-key",
        ),
        pytest.param(
            b'data: {"type": "response.in_progress", "response": {"Output": [{"type": "function_call"}]}}\n\n',
            id="case-variant-nested-key",
        ),
        pytest.param(
            b'data: {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", '
            b'"content": [], "TYPE": "function_call", "name": "rm"}}\n\n',
            id="case-variant-item-type",
        ),
        pytest.param(
            b'data: {"type": "response.output_text.delta", "output_index": 0, "\xe2\x84\xaaey": 1, '
            b'"\xc5\xbfequence_number": 3}\n\n',
            id="long-s-key",
        ),
    ],
)
def test_unreadable_events_are_judged_and_never_delivered(event: bytes) -> None:
    guards.assert_unreadable_event_withheld(StreamGuard, wire(created()), event, lambda out: client_view(out).errors)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"event: ping\ndata: \n\n", id="ping-empty"),
        pytest.param(b'event: ping\ndata: {"type": "ping"}\n\n', id="ping"),
        pytest.param(b'data: {"type": "ping"}\n\n', id="ping-unnamed"),
        pytest.param(b"data: [DONE]\n\n", id="done"),
        pytest.param(
            b'data: {"type": "response.in_progress", "X-Trace": "Type", "Outputs2": 1, "response": {"id": "r", '
            b'"tools": [{"type": "function", "name": "f", "parameters": {"properties": {"Name": {}, "TYPE": {}}}}], '
            b'"text": {"format": {"type": "json_schema", "schema": {"Output": 1}}}, "metadata": {"Item": "x"}}}\n\n',
            id="free-form-and-no-field",
        ),
    ],
)
def test_events_that_hide_nothing_pass_as_they_are(event: bytes) -> None:
    guards.assert_event_passes(StreamGuard, wire(created()), event)


@pytest.mark.parametrize("same", [True, False], ids=["same-call", "another-call"])
def test_a_snapshot_item_under_the_ids_of_a_judged_item_gets_the_judged_one_or_is_judged(same: bool) -> None:
    done = {**SQL_ITEM, "arguments": '{"query": "SELECT 1"}'}
    again = {**done, "status": "in_progress", "extra": 1} if same else {**done, "name": "rm", "arguments": "{}"}
    data = wire(
        [*created(), {"type": "response.output_item.done", "output_index": 0, "item": done}, completed([again])]
    )
    judge = FakeJudge(TABLE)
    out, decisions = run(data, judge, [data])
    view = client_view(out)
    if same:  # the client gets the item that was judged, once
        assert decisions == [("run_sql", None, "allow")]
        assert events_of(out)[-1][1]["response"]["output"] == [done]
    else:
        assert decisions == [("run_sql", None, "allow"), ("rm", None, "strip")]
        assert view.final == [notice_of("rm")]


def test_one_item_id_at_two_indexes_is_unreadable() -> None:
    # events that name only the item (by item_id) could go to either
    one, item = function_call(0, "run_sql", "call_1", SQL_PIECES)
    two, _ = function_call(1, "run_sql", "call_2", RM_PIECES)
    two[0]["item"]["id"] = item["id"]
    data = wire([*created(), one[0], two[0], *one[1:]])
    out, decisions = run(data, FakeJudge(TABLE), [data])
    assert decisions == [("(unreadable)", "unreadable", "strip"), ("run_sql", None, "allow")]
    assert client_view(out).streamed == [CALL]


def test_items_sharing_an_id_in_one_snapshot_are_unreadable() -> None:
    twin = {**SQL_ITEM, "id": "fc_9", "name": "rm"}  # the call_id of SQL_ITEM
    for raw in (body(TEXT_ITEM, SQL_ITEM, twin), body(SQL_ITEM, {**SQL_ITEM, "call_id": "call_9"})):
        result = judge_body(raw, FakeJudge(TABLE, on_error="strip"))
        assert [(d.call.name, d.call.error) for d in result.decisions] == [("(unreadable)", "unreadable")] * 2
        assert [item["type"] for item in orjson.loads(result.body)["output"]] in ([], ["message"])
        assert judge_body(raw, FakeJudge(TABLE, on_error="block")).blocked is not None
    data = wire([*created(), completed([SQL_ITEM, twin])])
    out, decisions = run(data, FakeJudge(TABLE), [data])
    assert decisions == [("(unreadable)", "unreadable", "strip")] * 2
    assert client_view(out).final == []


def test_more_calls_than_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_CALLS", 3)
    added = [
        {
            "type": "response.output_item.added",
            "output_index": n,
            "item": {**SQL_ITEM, "id": f"fc_{n}", "arguments": ""},
        }
        for n in range(5)
    ]
    data = wire([*created(), *added, completed([])])
    for decision in ("allow", "strip"):
        out, decisions = run(data, FakeJudge({"run_sql": decision}), [data])
        assert decisions == [("(unreadable)", "unreadable", "block")]
        assert client_view(out).errors
    items = [{**SQL_ITEM, "id": f"fc_{n}", "call_id": f"c{n}"} for n in range(5)]
    result = judge_body(body(*items), FakeJudge(TABLE))
    assert result.blocked is not None and result.blocked.call.error == "unreadable"
    assert len(result.decisions) == 4


def test_an_event_over_the_cap_is_unreadable() -> None:
    judge = FakeJudge({}, on_error="block")
    guard = StreamGuard(judge)
    out = guard.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1))
    assert judge.calls[0].error == "unreadable"
    assert client_view(out).errors


def test_arguments_over_the_cap_are_judged_too_large_at_once() -> None:
    call, _ = function_call(0, "run_sql", "call_1", ['{"query": "' + "x" * MAX_CALL_BYTES, '"}'])
    judge = FakeJudge(TABLE)
    guard = StreamGuard(judge)
    out = guard.feed(wire([*created(), *call[:2]]))
    assert [(c.name, c.error, c.arguments) for c in judge.calls] == [("run_sql", "too_large", None)]
    out += guard.feed(wire(call[2:])) + guard.close()
    assert client_view(out).streamed == [notice_of("run_sql")]
    assert len(out) < 4096


def test_what_waits_behind_a_held_call_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_EVENT_BYTES", 2000)
    call, _ = function_call(0, "run_sql", "call_1", SQL_PIECES)
    text, _ = message(1, ["x" * 300] * 10)
    judge = FakeJudge(TABLE)
    out, decisions = run(wire([*created(), *call[:2], *text]), judge, [wire([*created(), *call[:2], *text])])
    assert decisions == [("run_sql", "too_large", "strip")]
    assert client_view(out).streamed == [notice_of("run_sql"), ("text", "x" * 3000)]


def test_a_fragment_that_passes_the_cap_on_what_waits_releases_it_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_guard, "MAX_EVENT_BYTES", 2000)
    call, _ = function_call(0, "run_sql", "call_1", ['{"query": "', "x" * 300, '"}'])
    text, _ = message(1, ["y" * 1200])
    guard = StreamGuard(FakeJudge(TABLE))
    out = guard.feed(wire([*created(), *call[:2]]))
    out += guard.feed(wire(text[:3]))  # a message's first ~1800 bytes
    assert client_view(out).streamed == []  # the text waits behind the held call
    out += guard.feed(wire(call[2:3]))  # only a fragment, but it takes what waits past the cap
    assert client_view(out).streamed == [notice_of("run_sql"), ("text", "y" * 1200)]


def test_an_audited_call_cut_short_streams_on() -> None:
    call, item = function_call(0, "grep", "call_1", ['{"path": "' + "x" * MAX_CALL_BYTES, '"}'])
    judge = FakeJudge(TABLE, on_error="audit")
    data = wire([*created(), *call, completed([item])])
    out, decisions = run(data, judge, [data])
    assert decisions == [("grep", "too_large", "audit")]
    view = client_view(out)
    assert view.streamed == view.done == view.final == [("call", "grep", "call_1", {"path": "x" * MAX_CALL_BYTES})]


def test_an_item_event_is_read_as_one_whatever_else_it_carries() -> None:
    call, _ = function_call(0, "rm", "call_2", RM_PIECES)
    call[0]["response"] = {"output": [TEXT_ITEM]}  # a snapshot riding along must not let the call pass unheld
    data = wire([*created(), *call])
    out, decisions = run(data, FakeJudge(TABLE), [data])
    assert decisions == [("rm", None, "strip")]
    assert client_view(out).streamed == [notice_of("rm")]


def test_an_allowed_hosted_item_streams_through() -> None:
    data = scenario_hosted()
    out, decisions = run(data, FakeJudge({}, on_error="audit"), [data])
    assert decisions == [("web_search_call", "hosted", "audit")]
    assert out == data


# --- non-streamed ----------------------------------------------------------------------------------------------------


def body(*items: dict[str, Any], extra: Any = None) -> bytes:
    return orjson.dumps(
        {"id": "resp_1", "object": "response", "status": "completed", "output": list(items), **(extra or {})}
    )


SQL_ITEM = function_call(1, "run_sql", "call_1", SQL_PIECES)[1]
RM_ITEM = function_call(2, "rm", "call_2", RM_PIECES)[1]
WEB_ITEM = {"id": "ws_1", "type": "web_search_call", "status": "completed"}


@pytest.mark.parametrize(
    ("raw", "output", "decisions", "unchanged"),
    [
        pytest.param(body(TEXT_ITEM), [LEAD], [], True, id="text-only"),
        pytest.param(body(TEXT_ITEM, SQL_ITEM), [LEAD, CALL], [("run_sql", None, "allow")], True, id="allowed"),
        pytest.param(
            body(TEXT_ITEM, SQL_ITEM, RM_ITEM),
            [LEAD, CALL, notice_of("rm")],
            [("run_sql", None, "allow"), ("rm", None, "strip")],
            False,
            id="one-stripped",
        ),
        pytest.param(
            body({**SQL_ITEM, "arguments": "{'query': 1}"}),
            [notice_of("run_sql")],
            [("run_sql", "invalid_json", "strip")],
            False,
            id="invalid-json",
        ),
        pytest.param(
            body({**SQL_ITEM, "arguments": "[1]"}),
            [notice_of("run_sql")],
            [("run_sql", "not_an_object", "strip")],
            False,
            id="not-an-object",
        ),
        pytest.param(
            body(WEB_ITEM, TEXT_ITEM),
            [notice_of("web_search_call"), LEAD],
            [("web_search_call", "hosted", "strip")],
            False,
            id="hosted",
        ),
        pytest.param(body(extra={"error": {"code": "x"}, "output": None}), None, [], True, id="no-output"),
    ],
)
def test_judge_body(
    raw: bytes, output: list[tuple[Any, ...]] | None, decisions: list[tuple[str, str | None, str]], unchanged: bool
) -> None:
    doc = guards.judged_body(judge_body, raw, FakeJudge(TABLE), decisions, unchanged)
    assert (doc["output"] and [summary(item) for item in doc["output"]]) == (output or doc["output"])


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(body(TEXT_ITEM, SQL_ITEM, RM_ITEM), id="blocked-call"),
        pytest.param(b"<html>502</html>", id="not-json"),
        pytest.param(b'{"output": "run_sql"}', id="output-not-a-list"),
        pytest.param(body(TEXT_ITEM, "fc"), id="item-not-an-object"),
        pytest.param(body(TEXT_ITEM)[:-1] + b',"Output":[' + orjson.dumps(RM_ITEM) + b"]}", id="case-variant-key"),
        pytest.param(body({**TEXT_ITEM, "TYPE": "function_call", "name": "rm"}), id="case-variant-in-an-item"),
        pytest.param(body(TEXT_ITEM).replace(b'"status"', b'"\xc5\xbftatus"'), id="long-s"),
    ],
)
def test_judge_body_blocks_with_the_policy_error(raw: bytes) -> None:
    result = judge_body(raw, FakeJudge({"run_sql": "allow"}, on_error="block"))
    assert result.blocked is not None
    assert result.blocked.verdict.decision == "block"
    assert orjson.loads(result.body)["error"]["code"] == "tool_call_blocked"


def test_judge_body_never_delivers_an_unreadable_body_even_when_allowed() -> None:
    result = judge_body(b"garbage", FakeJudge({}, on_error="allow"))
    assert result.blocked is not None and result.blocked.call.error == "unreadable"


# --- requests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "declared", "forced"),
    [
        pytest.param(
            {"tools": [{"type": "function", "name": "run_sql", "parameters": {}}, {"type": "custom", "name": "patch"}]},
            [Declared("run_sql", "function"), Declared("patch", "custom")],
            [],
            id="client-tools",
        ),
        pytest.param(
            {
                "tools": [
                    {"type": "web_search"},
                    {"type": "mcp", "server_label": "x"},
                    {"type": "local_shell"},
                    {"type": "brand_new_tool", "name": "n"},
                    {"name": "no_type"},
                ]
            },
            [
                Declared(None, "web_search", True),
                Declared(None, "mcp", True),
                Declared(None, "local_shell", True),
                Declared("n", "brand_new_tool", True),
                Declared("no_type", "(untyped)", True),
            ],
            [],
            id="hosted-fail-closed",
        ),
        pytest.param(
            {"tools": ["run_sql", {"type": "function"}, {"type": "function", "name": 7}]},
            [Declared(None, "(invalid)", True), Declared(None, "function"), Declared(None, "function")],
            [],
            id="malformed-entries",
        ),
        pytest.param({"tools": {"run_sql": {}}}, [Declared(None, "(invalid)", True)], [], id="tools-not-a-list"),
        pytest.param({"tool_choice": {"type": "function", "name": "run_sql"}}, [], ["run_sql"], id="forced-function"),
        pytest.param({"tool_choice": {"type": "custom", "name": "patch"}}, [], ["patch"], id="forced-custom"),
        pytest.param(
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "function", "name": "a"}, {"type": "web_search"}, "b"],
                }
            },
            [],
            ["a"],
            id="allowed-tools",
        ),
        pytest.param({"tool_choice": "required", "input": "hello"}, [], [], id="plain-string-input"),
        pytest.param({"tool_choice": {"type": "function", "name": ["x"]}}, [], [], id="forced-name-not-a-string"),
    ],
)
def test_read_request_tools(doc: dict[str, Any], declared: list[Declared], forced: list[str]) -> None:
    tools = read_request(doc)
    assert tools.declared == declared
    assert tools.forced == forced
    assert tools.hosted_other == []


@pytest.mark.parametrize(
    "prompt",
    [{"id": "pmpt_1"}, {"id": "pmpt_1", "version": "2", "variables": {"x": "y"}}, "pmpt_1", {}, ""],
)
def test_read_request_reports_a_stored_prompt(prompt: Any) -> None:
    # a stored prompt can bring tools of its own, hosted ones too, that the request does not show
    tools = read_request({"prompt": prompt, "input": "hi"})
    assert tools.hosted_other == ["prompt"]
    assert read_request({"prompt": None, "input": "hi"}).hosted_other == []


def test_read_request_history_and_results() -> None:
    tools = read_request(
        {
            "include": ["web_search_call.action.sources"],
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c1", "name": "run_sql", "arguments": '{"query": "SELECT 1"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "1"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "patch", "input": "*** Begin"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": "ok"},
                {"type": "function_call", "call_id": "c3", "name": "rm", "arguments": "{oops"},
                {"type": "function_call", "name": {"x": 1}, "arguments": 5},
                {"type": "function_call_output", "call_id": 9, "output": "?"},
                {"type": ["function_call"]},
                "stray",
            ],
        }
    )
    assert [(c.name, c.call_id, c.kind, c.arguments, c.error) for c in tools.history] == [
        ("run_sql", "c1", "function", SQL, None),
        ("patch", "c2", "custom", {"input": "*** Begin"}, None),
        ("rm", "c3", "function", None, "invalid_json"),
        ("(unnamed)", None, "function", None, "invalid_json"),
    ]
    assert tools.results == [("c1", None), ("c2", None), (None, None)]
    assert tools.hosted_other == []


# --- hostile streams -------------------------------------------------------------------------------------------------

ODD_VALUES = [*guards.ODD_VALUES, {"type": "function_call"}, "response.completed"]


def leaked_calls(out: bytes) -> list[Any]:
    """Events through which a client would get a call: any item but a message or reasoning, or a call's payload."""
    found = []
    for _, doc in events_of(out):
        kind = doc.get("type") if isinstance(doc, dict) else None
        item = doc.get("item") if kind in ("response.output_item.added", "response.output_item.done") else None
        response = doc.get("response") if isinstance(doc, dict) else None
        items = [item] if isinstance(item, dict) else []
        items += response["output"] if isinstance(response, dict) and isinstance(response.get("output"), list) else []
        payload = isinstance(kind, str) and kind.startswith(tuple(EVENTS_OF_CALLS))
        if payload or any(not isinstance(i, dict) or i.get("type") not in ("message", "reasoning") for i in items):
            found.append(doc)
    return found


EVENTS_OF_CALLS = ("response.function_call_arguments.", "response.custom_tool_call_input.")


def event_docs(raw: bytes) -> list[Any]:
    return [doc for _, doc in events_of(raw) if doc is not None]


def mangled_streams(rng: random.Random) -> list[bytes]:
    """Five of the scenarios with their events mangled, some shuffled, some without an `event:` line."""
    return guards.mangled_streams(rng, [param.values[0] for param in STREAMS], event_docs, ODD_VALUES)


@pytest.mark.parametrize("seed", range(50))
def test_mangled_streams_never_raise_and_leak_no_call_when_all_are_stripped(seed: int) -> None:
    rng = random.Random(seed)
    PATHS.assert_mangled_streams_fail_safe(rng, mangled_streams(rng), leaked_calls)
    raw = orjson.dumps(guards.mangle(rng, orjson.loads(body(TEXT_ITEM, SQL_ITEM, RM_ITEM, WEB_ITEM)), ODD_VALUES))
    for decision in ("allow", "strip", "block", "unknown"):
        result = judge_body(raw, lambda call, decision=decision: Verdict(decision))
        output = orjson.loads(result.body).get("output")
        if decision == "strip" and result.blocked is None and isinstance(output, list):
            assert all(isinstance(i, dict) and i.get("type") in ("message", "reasoning") for i in output)


# --- the fast path ---------------------------------------------------------------------------------------------------


def held_calls_are_bounded(guard: StreamGuard) -> None:
    """The cap on what waits behind held calls rests on the held total, exact whichever way each event went; and
    what a call keeps per event is bounded."""
    assert guard._held == sum(call.size for call in guard._calls.values())
    assert all(len(call.seqs) <= 6 for call in guard._calls.values())


PATHS = guards.EventPaths(StreamGuard, held_calls_are_bounded)
agree = PATHS.agree


@pytest.mark.parametrize("build", [param.values[0] for param in STREAMS], ids=[param.id for param in STREAMS])
@pytest.mark.parametrize("decision", ["allow", "strip", "block"])
def test_the_fast_path_agrees_with_the_general_path(build: Any, decision: str) -> None:
    data = build()
    agree(per_event(data), FakeJudge(TABLE))
    PATHS.agree_in_many_ways(data, by_decision(decision))


def test_the_fast_path_takes_each_fragment_of_a_held_call() -> None:
    assert agree(per_event(scenario_single_call()), FakeJudge(TABLE)) == len(SQL_PIECES)
    assert agree([scenario_parallel()], FakeJudge(TABLE)) == len(SQL_PIECES) + len(RM_PIECES)
    assert agree([scenario_custom()], FakeJudge(TABLE)) == 3
    assert agree(per_event(scenario_text_only()), FakeJudge(TABLE)) == 0  # text deltas are no call's


SECOND_FRAGMENT = next(e for e in per_event(scenario_single_call()) if b"SEL" in e).split(b"data: ")[1].strip()
SEQ = b'"sequence_number":' + SECOND_FRAGMENT.rsplit(b":", 1)[1].rstrip(b"}")


@pytest.mark.parametrize(
    ("event", "taken"),
    [
        pytest.param(b"event: response.function_call_arguments.delta\ndata: " + SECOND_FRAGMENT, True, id="as-sent"),
        pytest.param(b"data: " + SECOND_FRAGMENT, True, id="no-event-name"),
        pytest.param(
            b'{ "delta" : ": \\"SEL", "obfuscation": "x", "output_index": 1, '
            + SEQ
            + b', "type": "response.function_call_arguments.delta"}',
            True,
            id="other-key-order-spacing-and-extra-keys",
        ),
        pytest.param(
            SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":7,"output_index":1'),
            True,
            id="duplicate-index-key",
        ),
        pytest.param(SECOND_FRAGMENT.replace(b'"item_id":"fc_1"', b'"item_id":"fc_9"'), True, id="index-wins"),
        pytest.param(
            b"event: response.function_call_arguments.done\ndata: " + SECOND_FRAGMENT, False, id="event-name-differs"
        ),
        pytest.param(
            SECOND_FRAGMENT.replace(b"function_call_arguments", b"custom_tool_call_input"),
            False,
            id="custom-input-for-a-function-call",
        ),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":true'), False, id="index-bool"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":1.0'), False, id="index-float"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":"1"'), False, id="index-string"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":-1'), False, id="index-negative"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":[1]'), False, id="index-list"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":0'), False, id="index-of-a-message"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1', b'"output_index":5'), False, id="index-of-no-call"),
        pytest.param(SECOND_FRAGMENT.replace(b'"output_index":1,', b""), False, id="routed-by-item-id"),
        pytest.param(SECOND_FRAGMENT.replace(b"," + SEQ, b""), False, id="no-sequence-number"),
        pytest.param(SECOND_FRAGMENT.replace(SEQ, b'"sequence_number":true'), False, id="sequence-bool"),
        pytest.param(SECOND_FRAGMENT.replace(SEQ, b'"sequence_number":-3'), False, id="sequence-negative"),
        pytest.param(SECOND_FRAGMENT.replace(SEQ, b'"sequence_number":"11"'), False, id="sequence-string"),
        pytest.param(SECOND_FRAGMENT.replace(SEQ, b'"sequence_number":99'), True, id="sequence-ahead"),
        pytest.param(SECOND_FRAGMENT.replace(SEQ, b'"sequence_number":0'), True, id="sequence-behind"),
        pytest.param(SECOND_FRAGMENT.replace(b'": \\"SEL"', b"7"), False, id="delta-number"),
        pytest.param(SECOND_FRAGMENT.replace(b'": \\"SEL"', b"null"), False, id="delta-null"),
        pytest.param(SECOND_FRAGMENT.replace(b'"delta":": \\"SEL",', b""), False, id="no-delta"),
        pytest.param(SECOND_FRAGMENT.replace(b"arguments.delta", b"arguments.delta "), False, id="odd-type"),
        pytest.param(
            SECOND_FRAGMENT.replace(b'"type":"response.function_call_arguments.delta",', b""), False, id="no-type"
        ),
        pytest.param(b"data: [" + SECOND_FRAGMENT + b"]", False, id="in-a-list"),
        pytest.param(b"data: " + SECOND_FRAGMENT[:-1], False, id="cut-short"),
    ],
)
def test_every_other_shape_of_a_fragment_goes_the_general_way(event: bytes, taken: bool) -> None:
    PATHS.agree_with_an_event_replaced(scenario_single_call(), b"SEL", event, len(SQL_PIECES) - (not taken))


def test_a_fragment_that_passes_the_cap_goes_the_general_way() -> None:
    call, item = function_call(0, "run_sql", "call_1", ['{"query": "', "x" * MAX_CALL_BYTES, '"}', "}"])
    data = wire([*created(), *call, completed([item])])
    for decision in ("allow", "audit", "strip", "block"):  # audited, the rest streams through; stripped, it is dropped
        assert agree(per_event(data), by_decision(decision)) == 1  # the first fragment only
        assert agree([data], by_decision(decision)) == 1


@pytest.mark.parametrize("seed", range(30))
def test_mangled_streams_go_the_same_way_fast_or_general(seed: int) -> None:
    rng = random.Random(seed)
    PATHS.agree_on_mangled(rng, mangled_streams(rng))
