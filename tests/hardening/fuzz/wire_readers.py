"""Independent client readers: the tool calls a client would take out of a guard's output, one reader per wire format.

Written the way the official SDKs accumulate streams (OpenAI: deltas merged by index, strings concatenated;
Anthropic: blocks appended at `content_block_start`, `partial_json` concatenated per block; Responses: items by
output index, argument deltas appended, `done` and `completed` items taken as they are; Ollama: each line's
`message.tool_calls`), without any code of the gateway. A call is (name, arguments as text or object).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson

ClientCall = tuple[str, Any]


def sse_data(out: bytes) -> list[Any]:
    """The JSON documents of the complete events of an SSE stream (unparsable data is skipped, as by a lenient
    client; one that raises reads less)."""
    docs: list[Any] = []
    if out.startswith(b"\xef\xbb\xbf"):
        out = out[3:]
    data: list[bytes] | None = None
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", out):
        line = match.group(1)
        if not line:
            if data is not None:
                with contextlib.suppress(orjson.JSONDecodeError):
                    docs.append(orjson.loads(b"\n".join(data)))
            data = None
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data = [*(data or []), value[1:] if value.startswith(b" ") else value]
    return docs


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def openai_chat(out: bytes) -> list[ClientCall]:
    calls: dict[tuple[Any, Any], list[str]] = {}
    for doc in sse_data(out):
        for choice in _list(_dict(doc).get("choices")):
            choice = _dict(choice)
            for entry in _list(_dict(choice.get("delta")).get("tool_calls")):
                entry = _dict(entry)
                slot = calls.setdefault((choice.get("index"), entry.get("index")), ["", ""])
                for kind, text in (("function", "arguments"), ("custom", "input")):
                    body = _dict(entry.get(kind))
                    slot[0] += _str(body.get("name"))
                    slot[1] += _str(body.get(text))
    return [(name, args) for name, args in calls.values() if name or args]


def anthropic(out: bytes) -> list[ClientCall]:
    content: list[dict[str, Any]] = []
    buffers: dict[int, str] = {}
    for doc in sse_data(out):
        doc = _dict(doc)
        kind = doc.get("type")
        if kind == "message_start":
            content = [dict(_dict(b)) for b in _list(_dict(doc.get("message")).get("content"))]
        elif kind == "content_block_start":
            content.append(dict(_dict(doc.get("content_block"))))
        elif kind == "content_block_delta":
            index, delta = doc.get("index"), _dict(doc.get("delta"))
            if isinstance(index, int) and 0 <= index < len(content) and delta.get("type") == "input_json_delta":
                buffers[id(content[index])] = buffers.get(id(content[index]), "") + _str(delta.get("partial_json"))
    calls = []
    for block in content:
        if str(block.get("type", "")).endswith("tool_use"):
            raw = buffers.get(id(block))
            calls.append((_str(block.get("name")), raw if raw else block.get("input")))
    return calls


def openai_responses(out: bytes) -> list[ClientCall]:
    items: dict[Any, dict[str, Any]] = {}
    final: list[Any] = []
    for doc in sse_data(out):
        doc = _dict(doc)
        kind, index = doc.get("type"), doc.get("output_index")
        if kind in ("response.output_item.added", "response.output_item.done"):
            items[index] = dict(_dict(doc.get("item")))
        elif kind == "response.function_call_arguments.delta" and index in items:
            items[index]["arguments"] = _str(items[index].get("arguments")) + _str(doc.get("delta"))
        elif kind == "response.custom_tool_call_input.delta" and index in items:
            items[index]["input"] = _str(items[index].get("input")) + _str(doc.get("delta"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            final = _list(_dict(doc.get("response")).get("output"))
    calls = []
    for item in [*items.values(), *final]:
        item = _dict(item)
        if item.get("type") == "function_call":
            calls.append((_str(item.get("name")), item.get("arguments")))
        elif item.get("type") == "custom_tool_call":
            calls.append((_str(item.get("name")), {"input": item.get("input")}))
    return calls


def ollama(out: bytes) -> list[ClientCall]:
    calls = []
    for line in out.split(b"\n"):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        for entry in _list(_dict(_dict(doc).get("message")).get("tool_calls")):
            function = _dict(_dict(entry).get("function"))
            calls.append((_str(function.get("name")), function.get("arguments")))
    return calls
