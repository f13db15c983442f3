"""OpenAI Responses output items: whole items read as calls, judged once each, and what the client gets in
their place in any snapshot of the response (`response.completed`, a non-streamed body).

An item read again under the id or call id of a judged one gets the judged item in its place when it holds the same
call, and is judged on its own when it does not; items of one snapshot that share an id are unreadable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, notice, parse_arguments
from aiperimeter.gateway.tools.event_guard import Verdicts, label, unreadable
from aiperimeter.policy.calls import ToolCall, Verdict

SAFE_ITEMS = frozenset({"message", "reasoning"})  # output items that are not tool calls; any other type is one
CALL_ITEMS = {"function_call": ("function", "arguments"), "custom_tool_call": ("custom", "input")}
ID_FIELDS = ("id", "call_id")
# Every field name of the response object, its events and output items: a key that folds to one of these but is not
# spelled as it is could be read as it by a case-insensitive client.
KNOWN_FIELDS = frozenset(
    {
        "action", "annotation", "annotation_index", "annotations", "arguments", "background", "call_id", "code",
        "container_id", "content", "content_index", "conversation", "created_at", "delta", "diff", "encrypted_content",
        "error", "id", "incomplete_details", "input", "instructions", "item", "item_id", "logprobs",
        "max_output_tokens", "max_tool_calls", "message", "metadata", "model", "name", "obfuscation", "object",
        "operation", "output", "output_index", "outputs", "parallel_tool_calls", "param", "part", "path",
        "previous_response_id", "prompt", "queries", "reasoning", "refusal", "response", "result", "results", "role",
        "sequence_number", "server_label", "status", "summary", "summary_index", "text", "tool_choice", "tools", "type",
        "usage",
    }
)  # fmt: skip
FREE_FORM = frozenset({"parameters", "schema", "metadata", "variables", "headers", "input_schema", "env"})


def text_of(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def call_of_item(item: dict[str, Any]) -> ToolCall:
    """A whole output or input item as a call: a function or custom tool call, else a provider-hosted one."""
    kind, call_id = text_of(item.get("type")), text_of(item.get("call_id"))
    if kind in CALL_ITEMS:
        return call_of_payload(kind, item.get("name"), call_id, item.get(CALL_ITEMS[kind][1]))
    return ToolCall(label(kind, "(untyped)"), None, call_id or text_of(item.get("id")), error="hosted")


def call_of_payload(kind: str, name: Any, call_id: str | None, payload: Any, error: str | None = None) -> ToolCall:
    tool_kind = CALL_ITEMS[kind][0]
    name = name if isinstance(name, str) else "(unnamed)"
    if not isinstance(payload, str):
        return ToolCall(name, None, call_id, tool_kind, error or "invalid_json")
    size = len(payload.encode())
    if error:
        return ToolCall(name, None, call_id, tool_kind, error, size)
    if tool_kind == "custom":
        if len(payload) > MAX_CALL_BYTES:
            return ToolCall(name, None, call_id, tool_kind, "too_large", size)
        return ToolCall(name, {"input": payload}, call_id, tool_kind, None, size)
    arguments, error = parse_arguments(payload)
    return ToolCall(name, arguments, call_id, tool_kind, error, size)


def notice_item(call: ToolCall, verdict: Verdict, hint: str) -> dict[str, Any]:
    """The `message` item a stripped call leaves in its place."""
    part = {"type": "output_text", "text": notice(call, verdict), "annotations": []}
    return {
        "id": f"msg_aiperimeter_{hint}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def same_call(judged: ToolCall, seen: ToolCall) -> bool:
    """Whether an item read again says what the judged one said."""
    return (judged.name, judged.kind, judged.call_id, judged.arguments, judged.error) == (
        seen.name,
        seen.kind,
        seen.call_id,
        seen.arguments,
        seen.error,
    )


def shared_ids(items: list[Any]) -> set[tuple[str, str]]:
    """The ids and call ids more than one item (other than a message or reasoning) in `items` carries."""
    seen: set[tuple[str, str]] = set()
    shared: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, dict) and text_of(item.get("type")) not in SAFE_ITEMS:
            for name in ID_FIELDS:
                if value := text_of(item.get(name)):
                    key = (name, value)
                    (shared if key in seen else seen).add(key)
    return shared


@dataclass(slots=True)
class Record:
    type: str
    item: dict[str, Any] | None  # what the client got for the item (released, judged or notice item); None: as given
    call: ToolCall | None = None  # what was judged: an item read again that differs is judged anew
    delivered: bool = True


class Items:
    """Judges whole output items once each, and says what the client gets in their place in any snapshot."""

    def __init__(self, verdicts: Verdicts) -> None:
        self._verdicts = verdicts
        self._records: dict[tuple[str, Any], Record] = {}

    @staticmethod
    def _keys(item: dict[str, Any], index: int) -> list[tuple[str, Any]]:
        keys = [(name, value) for name in ID_FIELDS if (value := text_of(item.get(name)))]
        return keys or [("index", index)]  # an item without ids is known by its place

    def remember(self, item: dict[str, Any], index: int, record: Record) -> None:
        for key in self._keys(item, index):
            self._records[key] = record

    def judge(self, item: dict[str, Any], index: int, whole: bool = True) -> Record | None:
        """Judges an item; None when it is blocked. A `whole` item delivered is what the client gets in its place in
        any later snapshot; one that streams on (`whole` False) is passed as given there, when it says the same."""
        call = call_of_item(item)
        outcome = self._verdicts.take(call)
        if outcome == "block":
            return None
        hint = label(item.get("id"), str(index))
        kind = text_of(item.get("type")) or ""
        if outcome == "deliver":
            record = Record(kind, item if whole else None, call)
        else:
            record = Record(kind, notice_item(call, self._verdicts.last, hint), call, delivered=False)
        self.remember(item, index, record)
        return record

    def rewrite(self, items: list[Any]) -> tuple[list[Any], bool] | None:
        """The items as the client gets them, and whether that differs; None when one is blocked."""
        out: list[Any] = []
        changed = False
        shared = shared_ids(items)
        for index, item in enumerate(items):
            kind = text_of(item.get("type")) if isinstance(item, dict) else None
            if isinstance(item, dict) and kind in SAFE_ITEMS:
                out.append(item)
                continue
            # Not an object, or an item that shares an id with another: clients could take either for the other.
            if not isinstance(item, dict) or any(key in shared for key in self._keys(item, index)):
                if self._verdicts.take(unreadable()) == "block":
                    return None
                changed = True  # never delivered, whatever the verdict
                continue
            found = [self._records[key] for key in self._keys(item, index) if key in self._records]
            record = next((found_ for found_ in found if found_.type == (kind or "")), None)
            if record is not None and record.call is not None and not same_call(record.call, call_of_item(item)):
                record = None  # the same id with another call in it: judged on its own
            record = record or self.judge(item, index)
            if record is None:
                return None
            out.append(item if record.item is None else record.item)
            changed = changed or (record.item is not None and record.item is not item and record.item != item)
        return out, changed
