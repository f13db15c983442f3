"""Attacks on the tool policy through the real gateway: requests that hide tools, and model responses that try to get
a call past the judge, or make a client read something other than what was judged.

A test marked xfail(strict=True) shows a hole in the current gateway: it fails (the attack works) until the hole is
closed. Every other test is an attack the gateway stops. Clients are the official SDKs wherever one reads the bytes;
where an attack targets another client family (Go's encoding/json, spec-following SSE parsers), the test reads the
delivered bytes the way that client does.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from aiohttp import web
from openai._streaming import SSEDecoder

from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

POLICY = """
description: adversarial review
action: {action}
tools:
  get_weather:
    args:
      city: {{type: string, max_length: 64}}
  run_sql:
    args:
      query: {{required: true, sql: {{dialect: postgres, tables: [orders]}}}}
  get_time: {{}}
"""
SELECT = '{"query": "SELECT id FROM orders"}'
DROP = '{"query": "DROP TABLE orders"}'
DROP_ARGS = {"query": "DROP TABLE orders"}
SECRET = "sk-adversarial-5e1d9c0b7a-never-logged"
SSE = "text/event-stream"
JSON = "application/json"
NDJSON = "application/x-ndjson"
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("get_weather", "run_sql", "get_time")
]
RESPONSES_TOOLS = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("run_sql", "get_time")]
ANTHROPIC_TOOLS = [{"name": n, "input_schema": {"type": "object"}} for n in ("run_sql", "get_time")]


# --- the scripted model server ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the fake model server answers: pieces written one by one, then the end (or a cut connection)."""

    pieces: Sequence[bytes]
    content_type: str = JSON
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    cut: bool = False  # close the connection before the chunked body's end


@dataclass
class Env:
    gateway: GatewayProcess
    fake: FakeUpstream
    keys: dict[str, str]
    replies: dict[str, Reply] = field(default_factory=dict)


def _script(fake: FakeUpstream, replies: dict[str, Reply], path: str) -> None:
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        reply = replies.get(path, Reply([b'{"ok": true}']))
        response = web.StreamResponse(status=reply.status)
        response.headers["Content-Type"] = reply.content_type
        for name, value in reply.headers:
            response.headers.add(name, value)
        await response.prepare(request)
        for piece in reply.pieces:
            await response.write(piece)
            await asyncio.sleep(0.001)  # separate writes: the gateway meets events split as servers send them
        if reply.cut and request.transport is not None:
            request.transport.close()
            return response
        await response.write_eof()
        return response

    fake.script(path, answer)


PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/api/chat")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data = tmp_path_factory.mktemp("tools-adversarial")
    policies = data / "policies"
    policies.mkdir()
    for action in ("block", "strip"):
        (policies / f"adv-{action}.yaml").write_text(POLICY.format(action=action))
    keys = {action: add_key(data, action, tool_policy=f"adv-{action}")[1] for action in ("block", "strip")}
    fake = FakeUpstream().start()
    replies: dict[str, Reply] = {}
    for path in PATHS:
        _script(fake, replies, path)
    gateway = start_gateway(data, fake.url, "ollama", "--tool-policies", str(policies))
    try:
        yield Env(gateway, fake, keys, replies)
    finally:
        gateway.stop()
        fake.stop()


def sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


# --- wire shapes ------------------------------------------------------------------------------------------------------


def chat_call(name: str, args: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def chat_body(*calls: dict[str, Any], message: dict[str, Any] | None = None) -> bytes:
    message = message or {"role": "assistant", "content": None, "tool_calls": list(calls)}
    return orjson.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    )  # fmt: skip


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def chat_stream(*deltas: dict[str, Any], framing: bytes = b"\n") -> list[bytes]:
    events = [b"data: " + orjson.dumps(chat_chunk(d)) + framing * 2 for d in deltas]
    return [
        *events,
        b"data: " + orjson.dumps(chat_chunk({}, "tool_calls")) + framing * 2,
        b"data: [DONE]" + framing * 2,
    ]


def tool_delta(name: str | None, args: str, index: int = 0, call_id: str | None = "call_1") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if name is not None:
        call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    return {"tool_calls": [call]}


def response_doc(output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status, "model": "m", "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}  # fmt: skip


def fc_item(args: str, name: str = "run_sql", item_id: str = "fc_1", call_id: str = "call_1") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": args,
            "status": "completed"}  # fmt: skip


def anthropic_message(content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 5}}  # fmt: skip


def ollama_line(message: dict[str, Any], done: bool = True) -> bytes:
    doc = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": message, "done": done}
    return orjson.dumps({**doc, "done_reason": "stop"} if done else doc) + b"\n"


# --- clients ----------------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments as the client parsed them)
    error: str | None = None


def _args(raw: Any) -> Any:
    """Arguments as a Python client parses them (the stdlib's json, not the gateway's orjson)."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def openai_client(env: Env, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gateway.url + "/v1", api_key=env.keys[key], max_retries=0, timeout=30)


def sdk_chat(env: Env, stream: bool, key: str = "block") -> Seen:
    client = openai_client(env, key)
    seen = Seen()
    try:
        if not stream:
            completion = client.chat.completions.create(model="m", messages=[], tools=OPENAI_TOOLS)  # type: ignore[arg-type]
            for call in completion.choices[0].message.tool_calls or []:
                body = getattr(call, "function", None)
                if body is not None:
                    seen.calls.append((body.name, _args(body.arguments)))
            return seen
        calls: dict[int, list[str]] = {}
        for chunk in client.chat.completions.create(model="m", messages=[], tools=OPENAI_TOOLS, stream=True):  # type: ignore[arg-type]
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    entry = calls.setdefault(delta.index, ["", ""])
                    if delta.function and delta.function.name:
                        entry[0] = delta.function.name
                    if delta.function and delta.function.arguments:
                        entry[1] += delta.function.arguments
        seen.calls = [(name, _args(args)) for _, (name, args) in sorted(calls.items())]
    except openai.APIError as exc:
        seen.error = str(exc.message)
    return seen


def sdk_responses(env: Env, stream: bool, key: str = "block") -> Seen:
    client = openai_client(env, key)
    seen = Seen()
    try:
        if stream:
            final = None
            for event in client.responses.create(model="m", input="hi", tools=RESPONSES_TOOLS, stream=True):  # type: ignore[arg-type]
                if event.type == "response.completed":
                    final = event.response
                if event.type == "error":
                    seen.error = event.message
            if final is None:
                return seen
        else:
            final = client.responses.create(model="m", input="hi", tools=RESPONSES_TOOLS)  # type: ignore[arg-type]
        items: list[Any] = list(final.output)
        seen.calls = [(item.name, _args(item.arguments)) for item in items if item.type == "function_call"]
    except openai.APIError as exc:
        seen.error = str(exc.message)
    return seen


def sdk_messages(env: Env, stream: bool, key: str = "block") -> Seen:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key=env.keys[key], max_retries=0, timeout=30)
    seen = Seen()
    try:
        if stream:
            with client.messages.stream(model="m", max_tokens=10, messages=[], tools=ANTHROPIC_TOOLS) as events:  # type: ignore[arg-type]
                content: list[Any] = list(events.get_final_message().content)
        else:
            content = list(client.messages.create(model="m", max_tokens=10, messages=[], tools=ANTHROPIC_TOOLS).content)  # type: ignore[arg-type]
        seen.calls = [(b.name, dict(b.input)) for b in content if b.type == "tool_use"]
    except anthropic.APIError as exc:
        seen.error = str(exc.message)
    return seen


def post(env: Env, path: str, body: dict[str, Any] | bytes, key: str = "block") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {env.keys[key]}", "Content-Type": JSON}
    return httpx.post(env.gateway.url + path, content=content, headers=headers, timeout=30)


def go_field(doc: Any, name: str) -> Any:
    """The value Go's encoding/json decodes into a struct field tagged `name` (Ollama's own client, go-openai, ...):
    keys match without regard to case, and the last match wins."""
    if not isinstance(doc, dict):
        return None
    found = None
    for key, value in doc.items():
        if key.lower() == name:
            found = value
    return found


def dropped(seen: Seen) -> bool:
    """The client ended up with the destructive call."""
    return any(
        name == "run_sql" and isinstance(a, dict) and a.get("query") == DROP_ARGS["query"] for name, a in seen.calls
    )


# --- request side: tools hidden where the gateway does not look -------------------------------------------------------


def attempt(env: Env, path: str, body: dict[str, Any] | bytes) -> tuple[int, str, bool]:
    """(status, error code, whether the model server saw the request)."""
    env.fake.clear()
    env.replies.pop(path.split("?")[0], None)
    response = post(env, path, body)
    code = response.json().get("error", {}).get("code", "") if response.status_code >= 400 else ""
    return response.status_code, code, bool(env.fake.calls())


GO_CASE = [
    pytest.param("/api/chat", b'{"model":"m","messages":[],"Tools":[{"type":"function","function":'
                 b'{"name":"delete_db"}}]}', id="ollama-Tools"),
    pytest.param("/v1/chat/completions",
                 b'{"model":"m","messages":[],"TOOLS":[{"type":"function","function":{"name":"delete_db"}}]}',
                 id="ollama-openai-TOOLS"),
    pytest.param("/api/chat", b'{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"get_time"},'
                 b'"Function":{"name":"delete_db"}}]}', id="ollama-nested-Function"),
    pytest.param("/v1/messages", b'{"model":"m","max_tokens":5,"messages":[],"Tools":[{"name":"delete_db",'
                 b'"input_schema":{"type":"object"}}]}', id="ollama-anthropic-Tools"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw"), GO_CASE)
def test_case_variant_tool_keys_for_go_upstreams_are_refused(env: Env, path: str, raw: bytes) -> None:
    status, _, reached = attempt(env, path, raw)
    assert status in (400, 403) and not reached


def test_a_stored_prompt_is_refused_for_a_key_with_a_policy(env: Env) -> None:
    body = {"model": "m", "prompt": {"id": "pmpt_1"}}
    assert attempt(env, "/v1/responses", body) == (403, "hosted_tool_not_allowed", False)


def test_a_result_whose_id_is_shared_with_a_refused_call_is_refused(env: Env) -> None:
    body = {"model": "m", "tools": OPENAI_TOOLS, "messages": [
        {"role": "assistant", "tool_calls": [chat_call("get_weather", '{"city": "Oslo"}', "c1"),
                                             chat_call("run_sql", DROP, "c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "table dropped"}]}  # fmt: skip
    assert attempt(env, "/v1/chat/completions", body) == (403, "tool_result_not_allowed", False)


REFUSED = [
    pytest.param("/v1/chat/completions", b'{"model":"m","messages":[],"tools":[{"type":"function","function":'
                 b'{"name":"get_time"}}],"tools":[{"type":"function","function":{"name":"delete_db"}}]}',
                 403, "tool_not_allowed", id="duplicate-tools-last-wins"),
    pytest.param("/v1/chat/completions?tools=1", {"model": "m", "messages": [], "functions": [{"name": "exec"}]},
                 403, "tool_not_allowed", id="query-string"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [], "tools": OPENAI_TOOLS, "tool_choice": {
                 "type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
                     {"type": "function", "function": {"name": "shell"}}]}}}, 403, "tool_not_allowed",
                 id="chat-allowed-tools-unlisted"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [], "tools": [{"function": {"name": "shell"}}]},
                 403, "tool_not_allowed", id="chat-untyped-tool"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [], "tools": {"get_time": {}}}, 400,
                 "invalid_tools", id="chat-tools-object"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [], "web_search_options": {}}, 403,
                 "hosted_tool_not_allowed", id="chat-web-search-options"),
    pytest.param("/v1/responses", {"model": "m", "tools": [{"type": "Function", "name": "get_time"}]}, 403,
                 "hosted_tool_not_allowed", id="responses-type-case"),
    pytest.param("/v1/responses", {"model": "m", "tools": [{"name": "get_time"}]}, 403, "hosted_tool_not_allowed",
                 id="responses-untyped"),
    pytest.param("/v1/responses", {"model": "m", "tools": [{"type": ["function"], "name": "get_time"}]}, 403,
                 "hosted_tool_not_allowed", id="responses-type-list"),
    pytest.param("/v1/responses", {"model": "m", "tool_choice": {"type": "allowed_tools", "mode": "auto",
                 "tools": [{"type": "function", "name": "shell"}]}}, 403, "tool_not_allowed",
                 id="responses-allowed-tools-unlisted"),
    pytest.param("/v1/responses", {"model": "m", "input": [fc_item(DROP), {"type": "function_call_output",
                 "call_id": "call_1", "output": "dropped"}]}, 403, "tool_result_not_allowed",
                 id="responses-result-of-refused-call"),
    pytest.param("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [], "tools": [
                 {"type": "bash_20250124", "name": "bash"}]}, 403, "tool_not_allowed", id="anthropic-client-builtin"),
    pytest.param("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [], "tools": [
                 {"type": "web_fetch_20250910", "name": "get_time"}]}, 403, "hosted_tool_not_allowed",
                 id="anthropic-server-tool-with-allowed-name"),
    pytest.param("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [], "tools": ANTHROPIC_TOOLS,
                 "tool_choice": {"type": "tool", "name": "shell"}}, 403, "tool_not_allowed",
                 id="anthropic-forced-unlisted"),
    pytest.param("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [], "container": "cntr_1"}, 403,
                 "hosted_tool_not_allowed", id="anthropic-container"),
    pytest.param("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
                 {"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]}, 403, "tool_result_unknown",
                 id="anthropic-result-in-assistant-role"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [
                 {"role": "user", "tool_calls": [chat_call("get_time", "{}", "c1")]},
                 {"role": "tool", "tool_call_id": "c1", "content": "x"}]}, 403, "tool_result_unknown",
                 id="chat-call-in-user-role"),
    pytest.param("/api/chat", {"model": "m", "messages": [{"role": "tool", "tool_name": "run_sql", "content": "x"}]},
                 403, "tool_result_not_allowed", id="ollama-result-of-no-call"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "code"), REFUSED)
def test_requests_hiding_tools_are_refused(
    env: Env, path: str, body: dict[str, Any] | bytes, status: int, code: str
) -> None:
    assert attempt(env, path, body) == (status, code, False)


def test_duplicate_tools_keys_resolve_as_the_upstream_reads_them(env: Env) -> None:
    """orjson, like Python's json and Go's encoding/json, keeps the last of two identical keys."""
    env.replies["/v1/chat/completions"] = Reply([chat_body(message={"role": "assistant", "content": "ok"})])
    env.fake.clear()
    raw = (b'{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"delete_db"}}],'
           b'"tools":[{"type":"function","function":{"name":"get_time"}}]}')  # fmt: skip
    assert post(env, "/v1/chat/completions", raw).status_code == 200
    [seen] = env.fake.calls()
    assert [t["function"]["name"] for t in json.loads(seen.body)["tools"]] == ["get_time"]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeUpstream, str]]:
    data = tmp_path_factory.mktemp("tools-vllm")
    policies = data / "policies"
    policies.mkdir()
    (policies / "adv.yaml").write_text(POLICY.format(action="block"))
    key = add_key(data, "ops", tool_policy="adv", scopes=frozenset({"admin"}))[1]
    fake = FakeUpstream().start()
    gateway = start_gateway(data, fake.url, "vllm", "--tool-policies", str(policies))
    try:
        yield gateway, fake, key
    finally:
        gateway.stop()
        fake.stop()


def test_vllm_invocations_is_held_to_the_policy(vllm: tuple[GatewayProcess, FakeUpstream, str]) -> None:
    gateway, fake, key = vllm
    body = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [chat_call("run_sql", DROP, "c1")]},
                                       {"role": "tool", "tool_call_id": "c1", "content": "dropped"}]}  # fmt: skip
    response = httpx.post(gateway.url + "/invocations", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403 and fake.calls() == []


# --- response side: holes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [SSE, NDJSON])
def test_a_json_body_labelled_as_a_stream_is_judged(env: Env, label: str) -> None:
    env.replies["/v1/chat/completions"] = Reply([chat_body(chat_call("run_sql", DROP))], label)
    seen = sdk_chat(env, stream=False)
    assert not dropped(seen), seen


@pytest.mark.parametrize("fmt", ["chat", "responses"])
def test_a_ping_event_cannot_carry_a_call(env: Env, fmt: str) -> None:
    if fmt == "chat":
        doc = orjson.dumps(chat_chunk(tool_delta("run_sql", DROP), "tool_calls"))[:-1] + b',"x":NaN}'
        env.replies["/v1/chat/completions"] = Reply([b"event: ping\ndata: " + doc + b"\n\n", b"data: [DONE]\n\n"], SSE)
        seen = sdk_chat(env, stream=True)
    else:
        doc = orjson.dumps({"type": "response.completed", "sequence_number": 1,
                            "response": response_doc([fc_item(DROP)])})[:-1] + b',"x":NaN}'  # fmt: skip
        env.replies["/v1/responses"] = Reply([b"event: ping\ndata: " + doc + b"\n\n"], SSE)
        seen = sdk_responses(env, stream=True)
    assert not dropped(seen), seen


def test_a_byte_order_mark_does_not_hide_a_call(env: Env) -> None:
    chunk = chat_chunk(tool_delta("run_sql", DROP), "tool_calls")
    env.replies["/v1/chat/completions"] = Reply([b"\xef\xbb\xbf" + sse(chunk), b"data: [DONE]\n\n"], SSE)
    body = {"model": "m", "messages": [], "tools": OPENAI_TOOLS, "stream": True}
    raw = post(env, "/v1/chat/completions", body).content
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # WHATWG: one leading U+FEFF is ignored
    calls: list[dict[str, Any]] = []
    for event in SSEDecoder().iter_bytes(iter([raw])):
        if event.data.startswith("{"):
            for choice in orjson.loads(event.data).get("choices", []):
                calls += choice.get("delta", {}).get("tool_calls") or []
    assert all(_args(c["function"]["arguments"]) != DROP_ARGS for c in calls), calls


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_items_sharing_an_id_are_each_judged(env: Env, stream: bool) -> None:
    if stream:
        pieces = [
            sse({"type": "response.created", "sequence_number": 0, "response": response_doc([], "in_progress")},
                "response.created"),
            sse({"type": "response.output_item.done", "sequence_number": 1, "output_index": 0,
                 "item": fc_item(SELECT)}, "response.output_item.done"),
            sse({"type": "response.completed", "sequence_number": 2, "response": response_doc([fc_item(DROP)])},
                "response.completed"),
        ]  # fmt: skip
        env.replies["/v1/responses"] = Reply(pieces, SSE)
    else:
        env.replies["/v1/responses"] = Reply([orjson.dumps(response_doc([fc_item(SELECT), fc_item(DROP)]))])
    seen = sdk_responses(env, stream)
    assert not dropped(seen), seen


def test_anthropic_block_indexes_cannot_move_input_between_calls(env: Env) -> None:
    def block(index: int, content: dict[str, Any]) -> bytes:
        return sse({"type": "content_block_start", "index": index, "content_block": content}, "content_block_start")

    def stop(index: int) -> bytes:
        return sse({"type": "content_block_stop", "index": index}, "content_block_stop")

    delta = {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": DROP}}
    pieces = [
        sse({"type": "message_start", "message": anthropic_message([{"type": "text", "text": "ok"}], None)},
            "message_start"),
        block(0, {"type": "tool_use", "id": "t1", "name": "run_sql", "input": orjson.loads(SELECT)}),
        stop(0),
        block(1, {"type": "tool_use", "id": "t2", "name": "get_time", "input": {}}),
        sse(delta, "content_block_delta"),
        stop(1),
        sse({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
             "usage": {"output_tokens": 5}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]  # fmt: skip
    env.replies["/v1/messages"] = Reply(pieces, SSE)
    seen = sdk_messages(env, stream=True)
    assert not dropped(seen), seen


def test_a_chat_call_with_two_bodies_is_refused(env: Env) -> None:
    call = {"id": "c1", "custom": {"name": "get_time", "input": "now"}, "function": {"name": "run_sql",
            "arguments": DROP}}  # fmt: skip
    env.replies["/v1/chat/completions"] = Reply([chat_body(call)])
    seen = sdk_chat(env, stream=False)
    assert not dropped(seen), seen


GO_RESPONSES = [
    pytest.param("/api/chat", ollama_line({"role": "assistant", "content": "", "Tool_calls": [
        {"function": {"name": "run_sql", "arguments": DROP_ARGS}}]}), NDJSON, ("message", "tool_calls"),
        id="ollama-Tool_calls"),
    pytest.param("/api/chat", orjson.dumps({"model": "m", "Message": {"role": "assistant", "tool_calls": [
        {"function": {"name": "run_sql", "arguments": DROP_ARGS}}]}, "done": True}) + b"\n", NDJSON,
        ("message", "tool_calls"), id="ollama-Message"),
    pytest.param("/v1/chat/completions", chat_body(message={"role": "assistant", "TOOL_CALLS": [
        chat_call("run_sql", DROP)]}), JSON, ("message", "tool_calls"), id="chat-TOOL_CALLS"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "line", "label", "where"), GO_RESPONSES)
def test_calls_under_case_variant_keys_are_judged(
    env: Env, path: str, line: bytes, label: str, where: tuple[str, str]
) -> None:
    env.replies[path] = Reply([line], label)
    body = {"model": "m", "messages": [], "tools": OPENAI_TOOLS, "stream": path == "/api/chat"}
    response = post(env, path, body)
    calls: list[dict[str, Any]] = []
    for text in response.content.splitlines():
        doc = orjson.loads(text) if text.strip() else {}
        holders = [doc] + [c for c in go_field(doc, "choices") or [] if isinstance(c, dict)]
        for holder in holders:
            calls += go_field(go_field(holder, where[0]), where[1]) or []
    assert all(_args(c["function"]["arguments"]) != DROP_ARGS for c in calls), calls


def test_a_redirect_does_not_take_the_client_past_the_guard(env: Env) -> None:
    elsewhere = FakeUpstream().start()
    try:
        replies = {"/v1/chat/completions": Reply([chat_body(chat_call("run_sql", DROP))])}
        _script(elsewhere, replies, "/v1/chat/completions")
        target = elsewhere.url + "/v1/chat/completions"
        env.replies["/v1/chat/completions"] = Reply([b""], status=307, headers=[("Location", target)])
        seen = sdk_chat(env, stream=False)
    finally:
        elsewhere.stop()
    assert not dropped(seen), seen


def test_a_second_content_encoding_header_is_not_a_way_around(env: Env) -> None:
    body = gzip.compress(b"".join([sse(chat_chunk(tool_delta("run_sql", DROP), "tool_calls")), b"data: [DONE]\n\n"]))
    headers = [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
    env.replies["/v1/chat/completions"] = Reply([body], SSE, headers=headers)
    seen = sdk_chat(env, stream=True)
    assert not dropped(seen), seen


DEEP = b'{"x":' * 300 + SELECT.encode() + b"}" * 300  # deeper than orjson.dumps goes (254), not orjson.loads (1024)


@pytest.mark.parametrize("side", ["response", "request"])
def test_deeply_nested_object_arguments_get_a_policy_answer(env: Env, side: str) -> None:
    if side == "response":
        call = {"id": "c1", "type": "function", "function": {"name": "run_sql", "arguments": "@"}}
        env.replies["/v1/chat/completions"] = Reply([chat_body(call).replace(b'"@"', DEEP)])
        response = post(env, "/v1/chat/completions", {"model": "m", "messages": [], "tools": OPENAI_TOOLS})
        assert (response.status_code, response.json()["error"]["code"]) == (403, "tool_call_blocked")
    else:
        history = {"role": "assistant", "tool_calls": [{"function": {"name": "run_sql", "arguments": "@"}}]}
        raw = orjson.dumps({"model": "m", "messages": [history]}).replace(b'"@"', DEEP)
        status, _, reached = attempt(env, "/api/chat", raw)
        assert status in (400, 403) and not reached


def test_many_held_responses_calls_do_not_stall_the_gateway(env: Env) -> None:
    count = 8000
    added = [
        sse({"type": "response.output_item.added", "sequence_number": i, "output_index": i,
             "item": {**fc_item("", "get_time", f"fc_{i}", f"c{i}"), "status": "in_progress"}},
            "response.output_item.added")
        for i in range(count)
    ]  # fmt: skip
    items = [{"type": "message", "id": f"m{i}", "role": "assistant", "content": []} for i in range(count)]
    snapshot = sse({"type": "response.completed", "sequence_number": count, "response": response_doc(items)},
                   "response.completed")  # fmt: skip
    env.replies["/v1/responses"] = Reply([b"".join(added), snapshot], SSE)
    body = {"model": "m", "input": "hi", "tools": RESPONSES_TOOLS, "stream": True}
    attack = threading.Thread(target=post, args=(env, "/v1/responses", body), daemon=True)
    attack.start()
    time.sleep(1.0)  # the gateway has the snapshot by now
    started = time.monotonic()
    httpx.get(env.gateway.url + "/api/version", headers={"Authorization": f"Bearer {env.keys['block']}"}, timeout=60)
    waited = time.monotonic() - started
    attack.join(60)
    assert waited < 1.0, f"another request waited {waited:.1f} s"


# --- response side: attacks the guards stop ---------------------------------------------------------------------------


def _pieces(text: str, step: int = 7) -> list[str]:
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def _embed(doc: Any, raw: str) -> bytes:
    """`doc` serialised with the raw JSON text `raw` in place of the string "@": arguments that are objects."""
    return orjson.dumps(doc).replace(b'"@"', raw.encode())


def one_call(fmt: str, stream: bool, raw: str, name: str = "run_sql") -> tuple[str, Reply]:
    """A response with one call whose arguments are the JSON text `raw`, as the format carries it."""
    if fmt == "chat":
        if not stream:
            return "/v1/chat/completions", Reply([chat_body(chat_call(name, raw))])
        deltas = [tool_delta(name, "")] + [tool_delta(None, piece) for piece in _pieces(raw)]
        return "/v1/chat/completions", Reply(chat_stream(*deltas), SSE)
    if fmt == "responses":
        if not stream:
            return "/v1/responses", Reply([orjson.dumps(response_doc([fc_item(raw, name)]))])
        where = {"item_id": "fc_1", "output_index": 0}
        events = [
            ("response.created", {"response": response_doc([], "in_progress")}),
            ("response.output_item.added", {"output_index": 0, "item": {**fc_item("", name), "status": "in_progress"}}),
        ]
        events += [("response.function_call_arguments.delta", {**where, "delta": p}) for p in _pieces(raw)]
        events += [("response.function_call_arguments.done", {**where, "arguments": raw}),
                   ("response.output_item.done", {"output_index": 0, "item": fc_item(raw, name)}),
                   ("response.completed", {"response": response_doc([fc_item(raw, name)])})]  # fmt: skip
        pieces = [sse({"type": kind, "sequence_number": n, **fields}, kind) for n, (kind, fields) in enumerate(events)]
        return "/v1/responses", Reply(pieces, SSE)
    if fmt == "anthropic":
        if not stream:
            block = {"type": "tool_use", "id": "t1", "name": name, "input": "@"}
            return "/v1/messages", Reply([_embed(anthropic_message([block], "tool_use"), raw)])
        block = {"type": "tool_use", "id": "t1", "name": name, "input": {}}
        events = [
            ("message_start", {"message": anthropic_message([], None)}),
            ("content_block_start", {"index": 0, "content_block": block}),
        ]
        events += [
            ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": p}})
            for p in _pieces(raw)
        ]
        events += [("content_block_stop", {"index": 0}),
                   ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
                   ("message_stop", {})]  # fmt: skip
        return "/v1/messages", Reply([sse({"type": kind, **fields}, kind) for kind, fields in events], SSE)
    message = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": "@"}}]}
    line = _embed({"model": "m", "message": message, "done": True, "done_reason": "stop"}, raw) + b"\n"
    return "/api/chat", Reply([line], NDJSON if stream else JSON)


def ollama_client(env: Env, stream: bool, key: str = "block") -> Seen:
    seen = Seen()
    body = {"model": "m", "messages": [], "tools": OPENAI_TOOLS, "stream": stream}
    for text in post(env, "/api/chat", body, key).content.splitlines():
        try:
            doc = json.loads(text)  # the stdlib, as the ollama Python client parses
        except ValueError:
            seen.error = "unparsable line"
            continue
        if "error" in doc:
            seen.error = str(doc["error"])
        for call in (doc.get("message") or {}).get("tool_calls") or []:
            seen.calls.append((call["function"]["name"], call["function"]["arguments"]))
    return seen


CLIENTS = {"chat": sdk_chat, "responses": sdk_responses, "anthropic": sdk_messages, "ollama": ollama_client}
WIRES = [pytest.param(fmt, stream, id=f"{fmt}-{'stream' if stream else 'whole'}") for fmt in CLIENTS
         for stream in (True, False)]  # fmt: skip
ARGUMENTS = [
    pytest.param('{"query": "SELECT id FROM orders", "query": "DROP TABLE orders"}', id="duplicate-key-drop-last"),
    pytest.param('{"query": "DROP TABLE orders", "query": "SELECT id FROM orders"}', id="duplicate-key-drop-first"),
    pytest.param('{"\\u0071uery": "DROP TABLE orders"}', id="escaped-key"),
    pytest.param('{"query": "\\u0044ROP TABLE orders"}', id="escaped-value"),
    pytest.param('{"query": "DROP TABLE orders", "n": NaN}', id="nan"),
    pytest.param('\ufeff{"query": "DROP TABLE orders"}', id="bom"),
    pytest.param('{"query": "DROP TABLE orders", "s": "\\ud800"}', id="lone-surrogate"),
    pytest.param('{"query": "DROP TABLE orders", "n": 1e400}', id="huge-number"),
    pytest.param('{"query": "SELECT id FROM orders"}{"query": "DROP TABLE orders"}', id="second-object"),
    pytest.param('{"query": "SELECT id FROM orders", "x": ' + "[" * 2000 + "]" * 2000 + "}", id="deep-array"),
]


@pytest.mark.parametrize("key", ["block", "strip"])
@pytest.mark.parametrize("raw", ARGUMENTS)
@pytest.mark.parametrize(("fmt", "stream"), WIRES)
def test_argument_tricks_never_deliver_what_the_judge_did_not_see(
    env: Env, fmt: str, stream: bool, raw: str, key: str
) -> None:
    path, reply = one_call(fmt, stream, raw)
    env.replies[path] = reply
    seen = CLIENTS[fmt](env, stream, key)
    assert not dropped(seen), seen


STREAM_TRICKS = [
    pytest.param([sse(chat_chunk({})), sse({**chat_chunk({}), "choices": [{"index": 0, "message": {
        "role": "assistant", "tool_calls": [chat_call("run_sql", DROP)]}, "delta": {}, "finish_reason": None}]}),
        b"data: [DONE]\n\n"], id="call-in-message"),
    pytest.param(chat_stream(tool_delta("get_weather", '{"city": "Paris"}'),
                             tool_delta("run_sql", DROP, index=1, call_id="call_1")), id="reused-id-new-index"),
    pytest.param(chat_stream(tool_delta("get_weather", '{"city": "Paris"}'),
                             tool_delta("run_sql", DROP, index=0, call_id="call_2")), id="new-id-same-index"),
    pytest.param(chat_stream(tool_delta("run_sql", DROP), framing=b"\r\n"), id="crlf"),
    pytest.param(chat_stream(tool_delta("run_sql", DROP), framing=b"\r"), id="cr"),
    pytest.param([b": keep-alive\n\n", sse(chat_chunk(tool_delta("run_sql", ""))), b": c\n\n",
                  sse(chat_chunk(tool_delta(None, DROP))), b":\n\n", *chat_stream()[-2:]],
                 id="comments-and-fields"),
    pytest.param([b"event: message\n" + sse(chat_chunk(tool_delta("run_sql", DROP), "tool_calls")),
                  b"data: [DONE]\n\n"], id="named-event"),
    pytest.param([b"data: " + orjson.dumps(chat_chunk(tool_delta("run_sql", DROP), "tool_calls"))[:40] + b"\ndata: "
                  + orjson.dumps(chat_chunk(tool_delta("run_sql", DROP), "tool_calls"))[40:] + b"\n\n",
                  b"data: [DONE]\n\n"], id="split-data-lines"),
    pytest.param(chat_stream({"tool_calls": [{"index": 0, "id": "c1", "custom": {"name": "get_time", "input": "x"},
                 "function": {"name": "run_sql", "arguments": DROP}}]}), id="two-bodies-streamed"),
    pytest.param(chat_stream({"function_call": {"name": "run_sql", "arguments": DROP}}), id="legacy-function-call"),
    pytest.param([*chat_stream(tool_delta("run_sql", ""))[:1], sse(chat_chunk(tool_delta(None, DROP[:9]))),
                  sse({**chat_chunk(tool_delta(None, DROP[9:])), "usage": {"prompt_tokens": 1}}),
                  *chat_stream()[-2:]], id="fragment-with-usage"),
]  # fmt: skip


@pytest.mark.parametrize("pieces", STREAM_TRICKS)
def test_chat_stream_tricks_are_judged(env: Env, pieces: list[bytes]) -> None:
    env.replies["/v1/chat/completions"] = Reply(pieces, SSE)
    seen = sdk_chat(env, stream=True)
    assert not dropped(seen), seen


def test_a_name_changed_in_a_later_delta_is_not_what_the_client_gets(env: Env) -> None:
    deltas = [tool_delta("get_time", '{"query": '), {"tool_calls": [{"index": 0, "function": {
        "name": "run_sql", "arguments": '"DROP TABLE orders"}'}}]}]  # fmt: skip
    env.replies["/v1/chat/completions"] = Reply(chat_stream(*deltas), SSE)
    seen = sdk_chat(env, stream=True)
    assert seen.calls == [("get_time", DROP_ARGS)]


def test_anthropic_stream_tricks_are_judged(env: Env) -> None:
    text = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": DROP}}
    tool = {"type": "tool_use", "id": "t1", "name": "run_sql", "input": DROP_ARGS}
    for pieces in (
        [sse({"type": "message_start", "message": anthropic_message([], None)}, "message_start"),
         sse(text, "content_block_start"), sse(delta, "content_block_delta")],
        [sse({"type": "message_start", "message": anthropic_message([tool], None)}, "message_start")],
        [sse({"type": "message_start", "message": anthropic_message([], None)}, "message_start"),
         sse({"type": "content_block_start", "index": 0, "content_block": tool})],  # no event name: SDKs skip it
        [sse({"type": "message_start", "message": anthropic_message([], None)}, "message_start"),
         sse({"type": "content_block_start", "index": 0, "content_block": {**tool, "type": "server_tool_use"}},
             "content_block_start")],
    ):  # fmt: skip
        end = [sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 1}},
                   "message_delta"), sse({"type": "message_stop"}, "message_stop")]  # fmt: skip
        env.replies["/v1/messages"] = Reply([*pieces, *end], SSE)
        seen = sdk_messages(env, stream=True)
        assert not dropped(seen), seen


def test_responses_stream_tricks_are_judged(env: Env) -> None:
    created = sse({"type": "response.created", "sequence_number": 0, "response": response_doc([], "in_progress")},
                  "response.created")  # fmt: skip
    completed = sse({"type": "response.completed", "sequence_number": 9, "response": response_doc([])},
                    "response.completed")  # fmt: skip
    added = {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": fc_item(DROP)}
    for pieces in (
        [created, sse(added, "response.content_part.added"), completed],  # event name and type disagree
        [created, sse({**added, "type": "response.output_item.mystery"}), completed],  # an item in an odd event
        [created, sse({"type": "response.function_call_arguments.delta", "sequence_number": 1, "output_index": 0,
                       "item_id": "fc_1", "delta": DROP}), completed],  # a payload with no call
        [created, sse({**added, "item": {**fc_item(DROP), "type": "mcp_call"}}), completed],
    ):  # fmt: skip
        env.replies["/v1/responses"] = Reply(pieces, SSE)
        seen = sdk_responses(env, stream=True)
        assert not dropped(seen), seen


TRANSPORT = [
    pytest.param(True, Reply([gzip.compress(b"".join(chat_stream(tool_delta("run_sql", DROP))))], SSE,
                 headers=[("Content-Encoding", "gzip")]), id="gzip-stream"),
    pytest.param(False, Reply([gzip.compress(chat_body(chat_call("run_sql", DROP)))],
                 headers=[("Content-Encoding", "gzip")]), id="gzip-whole"),
    pytest.param(True, Reply(chat_stream(tool_delta("run_sql", DROP)), JSON), id="stream-labelled-json"),
    pytest.param(True, Reply(chat_stream(tool_delta("run_sql", DROP)), "text/plain"), id="stream-labelled-text"),
    pytest.param(False, Reply([chat_body(chat_call("run_sql", DROP))], status=400), id="calls-in-a-400"),
    pytest.param(False, Reply([chat_body(chat_call("run_sql", DROP))], status=503), id="calls-in-a-503"),
    pytest.param(True, Reply(chat_stream(tool_delta("run_sql", DROP)), SSE, status=500), id="stream-in-a-500"),
]  # fmt: skip


@pytest.mark.parametrize(("stream", "reply"), TRANSPORT)
def test_transport_tricks_deliver_no_unjudged_call(env: Env, stream: bool, reply: Reply) -> None:
    env.replies["/v1/chat/completions"] = reply
    seen = sdk_chat(env, stream)
    assert not dropped(seen), seen


def test_a_stream_cut_inside_a_call_delivers_no_part_of_it(env: Env) -> None:
    pieces = chat_stream(tool_delta("run_sql", ""), *[tool_delta(None, p) for p in _pieces(DROP)])[:4]
    env.replies["/v1/chat/completions"] = Reply(pieces, SSE, cut=True)
    body = {"model": "m", "messages": [], "tools": OPENAI_TOOLS, "stream": True}
    got = b""
    headers = {"Authorization": f"Bearer {env.keys['block']}"}
    try:
        with httpx.stream("POST", env.gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
            for chunk in response.iter_bytes():
                got += chunk
    except httpx.HTTPError:
        pass  # the gateway cuts the stream too: the only honest signal once the headers are out
    assert b"run_sql" not in got and b"DROP" not in got


def test_head_on_a_tool_route_reaches_nothing(env: Env) -> None:
    env.fake.clear()
    response = httpx.head(
        env.gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {env.keys['block']}"}
    )
    assert response.status_code in (403, 404, 405) and env.fake.calls() == []


def test_argument_values_never_reach_the_audit_log(env: Env) -> None:
    LEAKS.secrets.add(SECRET)
    secret_args = orjson.dumps({"query": "SELECT 1; DROP TABLE orders", "note": {"deep": [SECRET]}}).decode()
    env.replies["/v1/chat/completions"] = Reply([chat_body(chat_call("run_sql", secret_args))])
    assert sdk_chat(env, stream=False).error is not None
    env.replies["/v1/chat/completions"] = Reply([b"data: {" + SECRET.encode() + b"\n\n"], SSE)  # unreadable
    assert not sdk_chat(env, stream=True).calls
    env.replies["/v1/chat/completions"] = Reply(chat_stream(tool_delta("run_sql", '{"query": "' + SECRET)), SSE)
    assert not sdk_chat(env, stream=True).calls  # incomplete at the end
    time.sleep(0.3)  # the audit record is written when the request finishes
    audit = (env.gateway.data_dir / "audit.jsonl").read_text()
    assert "tool_call_blocked" in audit and SECRET not in audit
    assert SECRET not in "".join(env.gateway.output)
