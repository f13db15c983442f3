"""OpenAI Chat Completions: the tools a request declares, forces and answers, and the calls a response makes.

Function tools carry arguments as a JSON string, custom tools a free-text `input`; the deprecated `functions` /
`function_call` fields (one call, no id) are read too. The streamed guard lives in `openai_chat_stream`.
"""

from __future__ import annotations

from typing import Any

import orjson

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.tools.base import BodyResult, Declared, RequestTools, error_json, notice, parse_arguments
from aiperimeter.gateway.tools.hold import REWRITABLE, UNNAMED, UNREADABLE
from aiperimeter.gateway.tools.openai_chat_stream import (
    FREE_FORM,
    KNOWN_FIELDS,
    StreamGuard,
    bad_calls,
    hides_case_variant,
)
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

__all__ = ["FREE_FORM", "KNOWN_FIELDS", "StreamGuard", "judge_body", "read_request"]

CLIENT_TYPES = ("function", "custom")
INVALID = "invalid"  # the type recorded for a tool entry that is not an object


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _field(doc: Any, key: str) -> Any:
    return doc.get(key) if isinstance(doc, dict) else None


def declared_tools(tools: Any) -> list[Declared]:
    """Tools in the OpenAI `tools` shape (Ollama uses it too). A missing type is a function, as servers read it;
    any type other than function/custom runs at the provider, whatever its name (fail closed)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        return [Declared(None, INVALID)]
    out: list[Declared] = []
    for tool in tools:
        kind = tool.get("type", "function") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            out.append(Declared(None, INVALID))
        elif kind in CLIENT_TYPES:
            out.append(Declared(_name(_field(tool.get(kind), "name")), kind))
        else:
            out.append(Declared(_name(_field(tool, "name")), kind[:64], hosted=True))
    return out


def arguments_of(value: Any) -> tuple[dict[str, Any] | None, str | None, int]:
    """(arguments, error, size) of a call's arguments: a JSON string, or an object some servers send."""
    if value is None:
        return {}, None, 0
    if isinstance(value, str):
        args, error = parse_arguments(value)
        return args, error, len(value.encode("utf-8", "replace"))
    if isinstance(value, dict):
        try:
            return value, None, len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # nested deeper than can be written back: nothing a policy can check
            return None, "too_deep", 0
    return None, "not_an_object", 0


def message_call(call: dict[str, Any], *, legacy: bool = False) -> ToolCall:
    """A call in an assistant message: `tool_calls[]` entry, or the deprecated `function_call` object."""
    if legacy:
        args, error, size = arguments_of(call.get("arguments"))
        return ToolCall(_name(call.get("name")) or UNNAMED, args, None, "function", error, size)
    call_id = _name(call.get("id"))
    if call.get("type") == "custom" or (call.get("type") is None and call.get("custom") is not None):
        body = _field(call, "custom")
        text = _field(body, "input")
        name = _name(_field(body, "name")) or UNNAMED
        if text is not None and not isinstance(text, str):
            return ToolCall(name, None, call_id, "custom", "invalid_json")
        text = text or ""
        return ToolCall(name, {"input": text}, call_id, "custom", None, len(text.encode("utf-8", "replace")))
    body = _field(call, "function")
    args, error, size = arguments_of(_field(body, "arguments"))
    return ToolCall(_name(_field(body, "name")) or UNNAMED, args, call_id, "function", error, size)


def refuse_deep_history(history: list[ToolCall]) -> None:
    """Arguments nested too deep to write back cannot be checked: the request is refused, as a body nested too deep
    is, rather than passed with a call the policy could not read."""
    if any(call.error == "too_deep" for call in history):
        raise BadRequest("invalid_json", "A tool call's arguments in the conversation are nested too deeply.")


def _forced(choice: Any) -> list[str]:
    """Names a tool_choice (or deprecated function_call) forces: a named tool, or an allowed_tools list."""
    if not isinstance(choice, dict):
        return []
    if choice.get("type") == "allowed_tools":
        tools = _field(choice.get("allowed_tools"), "tools")
        return [name for tool in tools for name in _forced(tool)] if isinstance(tools, list) else []
    name = _name(choice.get("name"))  # the deprecated function_call object, or a flat named choice
    for kind in CLIENT_TYPES:
        name = name or _name(_field(choice.get(kind), "name"))
    return [name] if name else []


def read_request(doc: dict[str, Any]) -> RequestTools:
    out = RequestTools()
    body: Any = doc  # the caller parsed JSON: anything may be here
    if not isinstance(body, dict):
        return out
    out.declared = declared_tools(doc.get("tools"))
    functions = doc.get("functions")
    if isinstance(functions, list):
        out.declared += [Declared(_name(_field(f, "name")), "function") for f in functions]
    elif functions is not None:
        out.declared.append(Declared(None, INVALID))
    out.forced = _forced(doc.get("tool_choice")) + _forced(doc.get("function_call"))
    if doc.get("web_search_options") is not None:
        out.hosted_other.append("web_search_options")  # search-preview models search at OpenAI, out of sight
    messages = doc.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    out.history.append(message_call(call))
            if isinstance(message.get("function_call"), dict):
                out.history.append(message_call(message["function_call"], legacy=True))
        elif role == "tool":
            out.results.append((_name(message.get("tool_call_id")), None))
        elif role == "function":
            out.results.append((None, _name(message.get("name"))))
    refuse_deep_history(out.history)
    return out


def append_notices(message: dict[str, Any], notices: list[str]) -> None:
    """Put the notices of stripped calls after the message's text (a string, null, or a list of parts)."""
    text = "\n".join(notices)
    content = message.get("content")
    if isinstance(content, list):
        content.append({"type": "text", "text": text})
    elif isinstance(content, str) and content:
        message["content"] = f"{content}\n{text}"
    else:
        message["content"] = text


def rebuilt(tool: ToolCall, raw: dict[str, Any], *, legacy: bool = False) -> dict[str, Any]:
    """A delivered call as it was judged: its id, type and one body with the name and the text that were read.
    Fields the judge did not read (a second body, a stray type) do not reach the client."""
    text_field = "input" if tool.kind == "custom" else "arguments"
    body = raw if legacy else _field(raw, tool.kind)
    text = _field(body, text_field)
    if not isinstance(text, str | dict):
        text = "" if tool.kind == "custom" else "{}"  # judged as no arguments
    if legacy:
        return {"name": tool.name, "arguments": text}
    call: dict[str, Any] = {"id": tool.call_id} if tool.call_id is not None else {}
    call["type"] = tool.kind
    call[tool.kind] = {"name": tool.name, text_field: text}
    return call


def unreadable_body(judge: Judge, decisions: list[Decision]) -> BodyResult:
    """A body where calls could hide that cannot be read: judged as one synthetic call, and always refused."""
    tool = ToolCall(UNREADABLE, None, error="unreadable")
    verdict = judge(tool)
    if verdict.decision != "block":
        verdict = Verdict("block", verdict.rule, verdict.reason)
    decision = Decision(tool, verdict)
    decisions.append(decision)
    return BodyResult(error_json(tool, verdict), decisions, decision)


def judge_body(body: bytes, judge: Judge) -> BodyResult:
    decisions: list[Decision] = []
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return unreadable_body(judge, decisions)
    if not isinstance(doc, dict) or hides_case_variant(body, doc):
        return unreadable_body(judge, decisions)
    choices = doc.get("choices")
    if choices is None:
        return BodyResult(body, decisions)
    if not isinstance(choices, list):
        return unreadable_body(judge, decisions)
    messages = [(c, c["message"]) for c in choices if isinstance(c, dict) and isinstance(c.get("message"), dict)]
    if any(bad_calls(message) for _, message in messages):
        return unreadable_body(judge, decisions)
    changed = False
    for choice, message in messages:
        calls = message.get("tool_calls") or []
        legacy = message.get("function_call")
        found = [(message_call(call), call) for call in calls]
        if isinstance(legacy, dict):
            found.append((message_call(legacy, legacy=True), None))
        kept: list[Any] = []
        notices: list[str] = []
        delivered = 0
        for tool, raw in found:
            verdict = judge(tool)
            decision = Decision(tool, verdict)
            decisions.append(decision)
            if verdict.decision not in ("allow", "audit", "strip"):
                return BodyResult(error_json(tool, verdict), decisions, decision)
            if not verdict.delivered:
                notices.append(notice(tool, verdict))
                if raw is None:
                    message.pop("function_call", None)
                continue
            delivered += 1
            if raw is None:
                call = rebuilt(tool, legacy, legacy=True)
                if call != legacy:
                    message["function_call"], changed = call, True
            else:
                call = rebuilt(tool, raw)
                kept.append(call)
                changed = changed or call != raw
        if not notices:
            if kept != calls:
                message["tool_calls"] = kept
            continue
        changed = True
        if kept:
            message["tool_calls"] = kept
        elif calls:
            message.pop("tool_calls", None)
        append_notices(message, notices)
        if not delivered and choice.get("finish_reason") in REWRITABLE:
            choice["finish_reason"] = "stop"
    if not changed:
        return BodyResult(body, decisions)
    try:
        return BodyResult(orjson.dumps(doc), decisions)
    except orjson.JSONEncodeError:  # nested too deep to write back: what else it holds cannot be delivered
        return unreadable_body(judge, decisions)
