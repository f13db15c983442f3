"""Model responses carrying tool calls, as each wire format sends them, streamed and not, for the fake upstream.

A call is (id, name, arguments as a JSON string). Streams split each call's arguments into small deltas the way
real servers do; `text` comes first, as models write it.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

Call = tuple[str, str, str]
STEP = 7  # bytes of arguments per delta: calls arrive split across many events


def _pieces(text: str) -> list[str]:
    return [text[i : i + STEP] for i in range(0, len(text), STEP)] or [""]


def _sse(doc: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


# --- OpenAI Chat Completions ----------------------------------------------------------------------------------------


def chat_stream(text: str, calls: Sequence[Call]) -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in _pieces(text)] if text else []
    for index, (call_id, name, args) in enumerate(calls):
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        out.append(chunk({"tool_calls": [first]}))
        for piece in _pieces(args):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, "tool_calls" if calls else "stop"))
    out.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}))
    out.append(b"data: [DONE]\n\n")
    return out


def chat_body(text: str, calls: Sequence[Call]) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
        ]
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    )


# --- OpenAI Responses -------------------------------------------------------------------------------------------------


def _responses_items(text: str, calls: Sequence[Call]) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    if text:
        items.append(
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for n, (call_id, name, args) in enumerate(calls):
        items.append(
            {"type": "function_call", "id": f"fc_{n}", "call_id": call_id, "name": name, "arguments": args,
             "status": "completed"}
        )  # fmt: skip
    return items


def _response(status: str, output: list[dict[str, object]]) -> dict[str, object]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "m",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18} if status == "completed" else None,
    }


def responses_stream(text: str, calls: Sequence[Call]) -> list[bytes]:
    seq = iter(range(10_000))
    out = [_sse({"type": "response.created", "sequence_number": next(seq), "response": _response("in_progress", [])},
                "response.created")]  # fmt: skip
    items = _responses_items(text, calls)
    for index, item in enumerate(items):
        if item["type"] == "message":
            empty = {**item, "status": "in_progress", "content": []}
            out.append(_sse({"type": "response.output_item.added", "sequence_number": next(seq),
                             "output_index": index, "item": empty}, "response.output_item.added"))  # fmt: skip
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(_sse({"type": "response.content_part.added", "sequence_number": next(seq), "item_id": "msg_1",
                             "output_index": index, "content_index": 0, "part": part},
                            "response.content_part.added"))  # fmt: skip
            for piece in _pieces(text):
                out.append(_sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                                 "item_id": "msg_1", "output_index": index, "content_index": 0, "delta": piece,
                                 "logprobs": []}, "response.output_text.delta"))  # fmt: skip
            out.append(_sse({"type": "response.output_text.done", "sequence_number": next(seq), "item_id": "msg_1",
                             "output_index": index, "content_index": 0, "text": text, "logprobs": []},
                            "response.output_text.done"))  # fmt: skip
            done_part = {"type": "output_text", "text": text, "annotations": []}
            out.append(_sse({"type": "response.content_part.done", "sequence_number": next(seq), "item_id": "msg_1",
                             "output_index": index, "content_index": 0, "part": done_part},
                            "response.content_part.done"))  # fmt: skip
        else:
            args = str(item["arguments"])
            added = {**item, "arguments": "", "status": "in_progress"}
            out.append(_sse({"type": "response.output_item.added", "sequence_number": next(seq),
                             "output_index": index, "item": added}, "response.output_item.added"))  # fmt: skip
            for piece in _pieces(args):
                out.append(_sse({"type": "response.function_call_arguments.delta", "sequence_number": next(seq),
                                 "item_id": item["id"], "output_index": index, "delta": piece},
                                "response.function_call_arguments.delta"))  # fmt: skip
            out.append(_sse({"type": "response.function_call_arguments.done", "sequence_number": next(seq),
                             "item_id": item["id"], "output_index": index, "arguments": args, "name": item["name"]},
                            "response.function_call_arguments.done"))  # fmt: skip
        out.append(_sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": index,
                         "item": item}, "response.output_item.done"))  # fmt: skip
    out.append(_sse({"type": "response.completed", "sequence_number": next(seq),
                     "response": _response("completed", items)}, "response.completed"))  # fmt: skip
    return out


def responses_body(text: str, calls: Sequence[Call]) -> bytes:
    return orjson.dumps(_response("completed", _responses_items(text, calls)))


# --- Anthropic Messages -----------------------------------------------------------------------------------------------


def _message(content: list[dict[str, object]], stop: str | None) -> dict[str, object]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 7},
    }


def anthropic_stream(text: str, calls: Sequence[Call]) -> list[bytes]:
    out = [_sse({"type": "message_start", "message": _message([], None)}, "message_start")]
    index = 0
    if text:
        out.append(_sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                        "content_block_start"))  # fmt: skip
        for piece in _pieces(text):
            out.append(_sse({"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"))  # fmt: skip
        out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        index = 1
    out.append(_sse({"type": "ping"}, "ping"))
    for offset, (call_id, name, args) in enumerate(calls):
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        at = index + offset
        out.append(_sse({"type": "content_block_start", "index": at, "content_block": block}, "content_block_start"))
        for piece in _pieces(args):
            out.append(_sse({"type": "content_block_delta", "index": at,
                             "delta": {"type": "input_json_delta", "partial_json": piece}},
                            "content_block_delta"))  # fmt: skip
        out.append(_sse({"type": "content_block_stop", "index": at}, "content_block_stop"))
    out.append(_sse({"type": "message_delta", "delta": {"stop_reason": "tool_use" if calls else "end_turn",
                     "stop_sequence": None}, "usage": {"output_tokens": 7}}, "message_delta"))  # fmt: skip
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return out


def anthropic_body(text: str, calls: Sequence[Call]) -> bytes:
    content: list[dict[str, object]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": orjson.loads(a)} for i, n, a in calls]
    return orjson.dumps(_message(content, "tool_use" if calls else "end_turn"))


# --- Ollama /api/chat -------------------------------------------------------------------------------------------------


def _ollama_calls(calls: Sequence[Call]) -> list[dict[str, object]]:
    return [
        {"type": "function", "function": {"index": n, "name": name, "arguments": orjson.loads(args)}}
        for n, (_, name, args) in enumerate(calls)
    ]


def ollama_stream(text: str, calls: Sequence[Call]) -> list[bytes]:
    def line(doc: dict[str, object]) -> bytes:
        return orjson.dumps({"model": "m", "created_at": "2026-01-01T00:00:00Z", **doc}) + b"\n"

    out = [line({"message": {"role": "assistant", "content": piece}, "done": False}) for piece in _pieces(text)]
    if calls:
        out.append(line({"message": {"role": "assistant", "content": "", "tool_calls": _ollama_calls(calls)},
                         "done": False}))  # fmt: skip
    out.append(line({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                     "prompt_eval_count": 11, "eval_count": 7}))  # fmt: skip
    return out


def ollama_body(text: str, calls: Sequence[Call]) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = _ollama_calls(calls)
    return orjson.dumps(
        {"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": message, "done": True,
         "done_reason": "stop", "prompt_eval_count": 11, "eval_count": 7}
    )  # fmt: skip
