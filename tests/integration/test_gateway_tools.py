"""The tool policy through the real gateway, read by the official SDKs: in all four wire formats, streamed and not,
allowed calls arrive intact, disallowed ones are stripped with a notice or block the response, and the request side
refuses undeclared, hosted and unanswered tools before the model server sees anything."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from tests.support import toolwire
from tests.support.gateway import GatewayProcess, add_key, run_gateway_expecting_exit, start_gateway
from tests.support.leaks import LEAKS
from tests.support.toolwire import Call
from tests.support.upstream import FakeUpstream

POLICY = """
description: weather and read-only order lookups
action: {action}
tools:
  get_weather:
    args:
      city: {{type: string, max_length: 64}}
  run_sql:
    args:
      query: {{required: true, sql: {{dialect: postgres, tables: [orders]}}}}
"""
WEATHER: Call = ("call_w", "get_weather", '{"city": "Paris"}')
SQL_OK: Call = ("call_s", "run_sql", '{"query": "SELECT id, total FROM orders WHERE id = 7"}')
SQL_BAD: Call = ("call_x", "run_sql", '{"query": "SELECT 1; DROP TABLE orders"}')
SECRET_ARG = "tok-9f8e7d6c5b4a-never-logged"
SQL_SECRET: Call = ("call_z", "run_sql", orjson.dumps({"query": "SELECT * FROM users", "note": SECRET_ARG}).decode())
TOOLS_OPENAI = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "run_sql", "parameters": {"type": "object"}}},
]
TOOLS_RESPONSES = [
    {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "run_sql")
]
TOOLS_ANTHROPIC = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "run_sql")]
TEXT = "Let me look that up for you."


@dataclass
class Seen:
    """What a client made of the response."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    error: str | None = None


@dataclass
class Env:
    gateway: GatewayProcess
    upstream: FakeUpstream
    keys: dict[str, str]
    canned: dict[str, tuple[list[bytes], bytes]]
    answer: Callable[[web.BaseRequest], Any]
    seen_records: int = 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data = tmp_path_factory.mktemp("tools")
    policies = data / "policies"
    policies.mkdir()
    for action in ("block", "strip", "audit"):
        (policies / f"agent-{action}.yaml").write_text(POLICY.format(action=action))
    keys = {action: add_key(data, action, tool_policy=f"agent-{action}")[1] for action in ("block", "strip", "audit")}
    keys["free"] = add_key(data, "free")[1]
    keys["ghost"] = add_key(data, "ghost", tool_policy="no-such-policy")[1]
    canned: dict[str, tuple[list[bytes], bytes]] = {}
    upstream = FakeUpstream().start()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        doc = orjson.loads(await request.read())
        pieces, body = canned[request.path]
        streamed = doc.get("stream", request.path == "/api/chat")  # Ollama streams unless told otherwise
        if not streamed:
            return web.Response(body=body, content_type="application/json")
        kind = "application/x-ndjson" if request.path == "/api/chat" else "text/event-stream"
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.001)  # separate writes: the gateway meets the events split as servers send them
        await response.write_eof()
        return response

    for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/api/chat"):
        upstream.script(path, answer)
    gateway = start_gateway(data, upstream.url, "ollama", "--tool-policies", str(policies))
    try:
        yield Env(gateway, upstream, keys, canned, answer)
    finally:
        gateway.stop()
        upstream.stop()


# --- clients: the official SDKs, and plain NDJSON for Ollama -----------------------------------------------------


def chat(env: Env, key: str, stream: bool) -> Seen:
    client = openai.OpenAI(base_url=env.gateway.url + "/v1", api_key=key, max_retries=0)
    seen = Seen()
    try:
        if not stream:
            choice = client.chat.completions.create(model="m", messages=[], tools=TOOLS_OPENAI).choices[0]  # type: ignore[arg-type]
            seen.text = choice.message.content or ""
            seen.finish = choice.finish_reason
            for call in choice.message.tool_calls or []:
                seen.calls.append((call.function.name, orjson.loads(call.function.arguments)))  # type: ignore[union-attr]
            return seen
        calls: dict[int, list[str]] = {}
        for chunk in client.chat.completions.create(model="m", messages=[], tools=TOOLS_OPENAI, stream=True):  # type: ignore[arg-type]
            for choice in chunk.choices:
                seen.text += choice.delta.content or ""
                seen.finish = choice.finish_reason or seen.finish
                for delta in choice.delta.tool_calls or []:
                    entry = calls.setdefault(delta.index, ["", ""])
                    if delta.function and delta.function.name:
                        entry[0] = delta.function.name
                    if delta.function and delta.function.arguments:
                        entry[1] += delta.function.arguments
        seen.calls = [(name, orjson.loads(args)) for _, (name, args) in sorted(calls.items())]
    except openai.APIError as exc:
        seen.error = str(exc.message)
    return seen


def responses(env: Env, key: str, stream: bool) -> Seen:
    client = openai.OpenAI(base_url=env.gateway.url + "/v1", api_key=key, max_retries=0)
    seen = Seen()
    try:
        if stream:
            final = None
            added: list[int] = []
            for event in client.responses.create(model="m", input="hi", tools=TOOLS_RESPONSES, stream=True):  # type: ignore[arg-type]
                if event.type == "response.output_item.added":
                    added.append(event.output_index)
                if event.type == "response.output_text.delta":
                    seen.text += event.delta
                if event.type == "response.completed":
                    final = event.response
                if event.type == "error":  # the Responses stream's error event: the SDK yields it, as documented
                    seen.error = event.message
            assert added == list(range(len(added))), "output items must arrive at consecutive indexes"
            if seen.error is not None:
                assert final is None  # nothing follows the error
                return seen
            assert final is not None
        else:
            final = client.responses.create(model="m", input="hi", tools=TOOLS_RESPONSES)  # type: ignore[arg-type]
        texts = []
        for item in final.output:
            if item.type == "function_call":
                seen.calls.append((item.name, orjson.loads(item.arguments)))
            elif item.type == "message":
                texts += [part.text for part in item.content if part.type == "output_text"]
        seen.text = "".join(texts)
        seen.finish = final.status
    except openai.APIError as exc:
        seen.error = str(exc.message)
    return seen


def messages(env: Env, key: str, stream: bool) -> Seen:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key=key, max_retries=0)
    seen = Seen()
    try:
        if stream:
            with client.messages.stream(model="m", max_tokens=100, messages=[], tools=TOOLS_ANTHROPIC) as s:  # type: ignore[arg-type]
                message = s.get_final_message()
        else:
            message = client.messages.create(model="m", max_tokens=100, messages=[], tools=TOOLS_ANTHROPIC)  # type: ignore[arg-type]
        for block in message.content:
            if block.type == "tool_use":
                seen.calls.append((block.name, dict(block.input)))  # type: ignore[arg-type]
            elif block.type == "text":
                seen.text += block.text
        seen.finish = message.stop_reason
    except anthropic.APIError as exc:
        seen.error = str(exc.message)
    return seen


def ollama(env: Env, key: str, stream: bool) -> Seen:
    seen = Seen()
    body = {"model": "m", "messages": [], "tools": TOOLS_OPENAI, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", env.gateway.url + "/api/chat", json=body, headers=headers) as response,
    ):
        lines = [orjson.loads(line) for line in response.iter_lines() if line.strip()]
    for doc in lines:
        if "error" in doc:
            seen.error = str(doc["error"]["message"] if isinstance(doc["error"], dict) else doc["error"])
            continue
        message = doc.get("message") or {}
        seen.text += message.get("content") or ""
        for call in message.get("tool_calls") or []:
            seen.calls.append((call["function"]["name"], call["function"]["arguments"]))
        if doc.get("done"):
            seen.finish = doc.get("done_reason")
    return seen


Client = Callable[[Env, str, bool], Seen]
FORMATS: dict[str, tuple[str, Client, Callable[..., list[bytes]], Callable[..., bytes]]] = {
    "chat": ("/v1/chat/completions", chat, toolwire.chat_stream, toolwire.chat_body),
    "responses": ("/v1/responses", responses, toolwire.responses_stream, toolwire.responses_body),
    "anthropic": ("/v1/messages", messages, toolwire.anthropic_stream, toolwire.anthropic_body),
    "ollama": ("/api/chat", ollama, toolwire.ollama_stream, toolwire.ollama_body),
}
CASES = [pytest.param(name, stream, id=f"{name}-{'stream' if stream else 'whole'}") for name in FORMATS
         for stream in (True, False)]  # fmt: skip


def run(env: Env, fmt: str, stream: bool, key: str, calls: Sequence[Call], text: str = TEXT) -> Seen:
    path, client, build_stream, build_body = FORMATS[fmt]
    env.canned[path] = (build_stream(text, calls), build_body(text, calls))
    env.seen_records = len(env.gateway.audit())
    return client(env, env.keys[key], stream)


def last_record(env: Env, path: str) -> dict[str, Any]:
    """The audit record of the request `run` just made (written when the request finishes, after the client has
    read the response)."""
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in env.gateway.audit()[env.seen_records :] if r.get("path") == path]
        if records or time.monotonic() > deadline:
            assert len(records) == 1, records
            return records[0]
        time.sleep(0.01)


def args_of(call: Call) -> dict[str, Any]:
    value = orjson.loads(call[2])
    assert isinstance(value, dict)
    return value


# --- response side --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_allowed_calls_arrive_intact(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "block", [WEATHER, SQL_OK])
    assert seen.error is None
    assert seen.calls == [("get_weather", args_of(WEATHER)), ("run_sql", args_of(SQL_OK))]
    assert seen.text == TEXT
    record = last_record(env, FORMATS[fmt][0])
    assert [(t["tool"], t["decision"]) for t in record["tools"]] == [("get_weather", "allow"), ("run_sql", "allow")]


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_a_disallowed_call_is_stripped_with_a_notice_and_the_rest_delivered(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "strip", [SQL_BAD, WEATHER])
    assert seen.error is None
    assert seen.calls == [("get_weather", args_of(WEATHER))]
    assert seen.text.startswith(TEXT)
    assert "'run_sql' was removed by the gateway's tool policy" in seen.text
    record = last_record(env, FORMATS[fmt][0])
    decisions = [(t["tool"], t["decision"], t["rule"]) for t in record["tools"]]
    assert decisions == [("run_sql", "strip", "tools.run_sql.args.query.sql"), ("get_weather", "allow", None)]


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_when_every_call_is_stripped_the_turn_ends_normally(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "strip", [SQL_BAD])
    assert seen.error is None and seen.calls == []
    assert seen.finish in ("stop", "end_turn", "completed"), seen.finish  # no agent loop waits for a missing call


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_a_disallowed_call_blocks_the_response(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "block", [WEATHER, SQL_BAD])
    assert seen.error is not None and "'run_sql' is not allowed" in seen.error
    assert ("run_sql", args_of(SQL_BAD)) not in seen.calls
    record = last_record(env, FORMATS[fmt][0])
    assert record["deny"] == "tool_call_blocked"
    assert ("run_sql", "block") in [(t["tool"], t["decision"]) for t in record["tools"]]


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_audit_delivers_and_records_the_violation(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "audit", [SQL_BAD])
    assert seen.error is None and seen.calls == [("run_sql", args_of(SQL_BAD))]
    record = last_record(env, FORMATS[fmt][0])
    assert [(t["tool"], t["decision"], t["rule"]) for t in record["tools"]] == [
        ("run_sql", "audit", "tools.run_sql.args.query.sql")
    ]


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_a_key_without_a_policy_is_not_touched(env: Env, fmt: str, stream: bool) -> None:
    seen = run(env, fmt, stream, "free", [SQL_BAD])
    assert seen.error is None and seen.calls == [("run_sql", args_of(SQL_BAD))]
    assert last_record(env, FORMATS[fmt][0])["tools"] is None


@pytest.mark.parametrize(("fmt", "stream"), CASES)
def test_the_audit_log_summarises_arguments_without_their_values(env: Env, fmt: str, stream: bool) -> None:
    run(env, fmt, stream, "block", [SQL_SECRET])
    record = last_record(env, FORMATS[fmt][0])
    assert record["tools"][0]["args"] == {"query": "string(19)", "note": f"string({len(SECRET_ARG)})"}
    assert SECRET_ARG not in (env.gateway.data_dir / "audit.jsonl").read_text()


def test_stream_text_is_not_held_behind_a_pending_call(env: Env) -> None:
    """The upstream sends the text and half a call, then waits until the client has the text."""
    release = threading.Event()
    pieces = toolwire.chat_stream(TEXT, [SQL_OK])
    split = next(i for i, p in enumerate(pieces) if b"tool_calls" in p) + 2

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces[:split]:
            await response.write(piece)
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        for piece in pieces[split:]:
            await response.write(piece)
        await response.write_eof()
        return response

    env.upstream.script("/v1/chat/completions", answer)
    body = {"model": "m", "messages": [], "tools": TOOLS_OPENAI, "stream": True}
    headers = {"Authorization": f"Bearer {env.keys['block']}"}
    text, had_text_before_release, calls = "", False, []
    try:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", env.gateway.url + "/v1/chat/completions", json=body, headers=headers) as response,
        ):
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = orjson.loads(line[6:])["choices"]
                delta = choices[0]["delta"] if choices else {}
                text += delta.get("content") or ""
                calls += delta.get("tool_calls") or []
                if text == TEXT and not release.is_set():
                    had_text_before_release = not calls
                    release.set()
    finally:
        release.set()
        env.upstream.script("/v1/chat/completions", env.answer)
    assert had_text_before_release
    assert [c["function"]["name"] for c in calls] == ["run_sql"]


# --- request side ---------------------------------------------------------------------------------------------------


def post(env: Env, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = httpx.post(env.gateway.url + path, json=body, headers={"Authorization": f"Bearer {env.keys[key]}"})
    return response.status_code, response.json()


REQUESTS = [
    pytest.param("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "rm_rf"}}]},
                 "tool_not_allowed", id="chat-undeclared-tool"),
    pytest.param("/v1/chat/completions", {"tools": TOOLS_OPENAI, "tool_choice": {"type": "function",
                 "function": {"name": "shell"}}}, "tool_not_allowed", id="chat-forced-unlisted-tool"),
    pytest.param("/v1/chat/completions", {"functions": [{"name": "exec"}]}, "tool_not_allowed",
                 id="chat-deprecated-functions"),
    pytest.param("/v1/responses", {"tools": [{"type": "web_search"}]}, "hosted_tool_not_allowed",
                 id="responses-hosted-web-search"),
    pytest.param("/v1/responses", {"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]},
                 "hosted_tool_not_allowed", id="responses-hosted-mcp"),
    pytest.param("/v1/messages", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
                 "hosted_tool_not_allowed", id="anthropic-server-tool"),
    pytest.param("/v1/messages", {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
                 "hosted_tool_not_allowed", id="anthropic-mcp-connector"),
    pytest.param("/api/chat", {"tools": [{"type": "function", "function": {"name": "delete_db"}}]},
                 "tool_not_allowed", id="ollama-undeclared-tool"),
    pytest.param("/v1/chat/completions", {"messages": [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "run_sql", "arguments": '{"query": "DELETE FROM orders"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42 rows deleted"}]},
        "tool_result_not_allowed", id="chat-result-of-a-disallowed-call"),
    pytest.param("/v1/chat/completions", {"messages": [{"role": "tool", "tool_call_id": "c9", "content": "x"}]},
                 "tool_result_unknown", id="chat-result-of-no-call"),
    pytest.param("/v1/responses", {"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
                 "tool_result_unknown", id="responses-result-of-no-call"),
    pytest.param("/v1/messages", {"messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shell", "input": {"c": "id"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "uid=0"}]}]},
        "tool_result_not_allowed", id="anthropic-result-of-an-unlisted-tool"),
    pytest.param("/api/chat", {"messages": [{"role": "tool", "tool_name": "shell", "content": "uid=0"}]},
                 "tool_result_not_allowed", id="ollama-result-of-an-unlisted-tool"),
    pytest.param("/api/generate", {"tools": TOOLS_OPENAI}, "tools_not_supported_here", id="tools-on-a-toolless-route"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "extra", "code"), REQUESTS)
def test_requests_the_policy_refuses_never_reach_the_model(
    env: Env, path: str, extra: dict[str, Any], code: str
) -> None:
    env.upstream.clear()
    body: dict[str, Any] = {"model": "m", "messages": [], "max_tokens": 10, **extra}
    status, doc = post(env, path, "block", body)
    assert (status, doc["error"]["code"]) == (403, code), doc
    assert env.upstream.calls() == []


def test_results_of_allowed_calls_pass(env: Env) -> None:
    env.canned["/v1/chat/completions"] = ([], toolwire.chat_body("done", []))
    body = {"model": "m", "tools": TOOLS_OPENAI, "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "-3 C"}]}  # fmt: skip
    status, doc = post(env, "/v1/chat/completions", "block", body)
    assert status == 200 and doc["choices"][0]["message"]["content"] == "done"


def test_a_key_naming_a_policy_the_gateway_lacks_is_refused(env: Env) -> None:
    env.upstream.clear()
    status, doc = post(env, "/v1/chat/completions", "ghost", {"model": "m", "messages": []})
    assert (status, doc["error"]["code"]) == (403, "tool_policy_unknown")
    assert env.upstream.calls() == []
    assert any("no-such-policy" in line for line in env.gateway.output)  # said once, at start


def test_an_invalid_policy_stops_the_start_with_its_file_and_field(tmp_path: Path) -> None:
    add_key(tmp_path, "k")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "broken.yaml").write_text("tools:\n  run_sql:\n    args:\n      query: {sql: {dialect: nosuch}}\n")
    code, text = run_gateway_expecting_exit(
        tmp_path, "--upstream", "http://127.0.0.1:9", "--tool-policies", str(policies)
    )
    assert code == 2
    assert "broken.yaml" in text and "tools.run_sql.args.query.sql.dialect" in text
    assert "Traceback" not in text


def test_a_key_created_with_the_cli_is_held_to_its_policy_at_once(env: Env) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "aiperimeter", "keys", *args, "--data-dir", str(env.gateway.data_dir)]
        return subprocess.run(command, capture_output=True, timeout=60, check=False)

    done = cli("create", "--name", "cli-bot", "--tool-policy", "agent-block", "--json")
    assert done.returncode == 0, done.stderr
    created = orjson.loads(done.stdout)
    LEAKS.secrets.add(created["secret"])
    assert created["tool_policy"] == "agent-block"
    env.keys["cli"] = created["secret"]
    env.upstream.clear()
    status, doc = post(env, "/v1/chat/completions", "cli", {"model": "m", "messages": [], "functions": [{"name": "x"}]})
    assert (status, doc["error"]["code"]) == (403, "tool_not_allowed") and env.upstream.calls() == []
    listed = {k["name"]: k["tool_policy"] for k in orjson.loads(cli("list", "--json").stdout)}
    assert listed["cli-bot"] == "agent-block" and listed["free"] is None
    refused = cli("create", "--name", "x", "--tool-policy", "Bad Name")
    assert refused.returncode == 2 and b"--tool-policy takes a policy name" in refused.stderr
