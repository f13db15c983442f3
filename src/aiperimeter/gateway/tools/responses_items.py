"""OpenAI Responses output items: whole items read as calls, judged once each, and what the client gets in
their place in any snapshot of the response (`response.completed`, a non-streamed body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, notice, parse_arguments
from aiperimeter.gateway.tools.event_guard import Verdicts, label, unreadable
from aiperimeter.policy.calls import ToolCall, Verdict

SAFE_ITEMS = frozenset({"message", "reasoning"})  # output items that are not tool calls; any other type is one
CALL_ITEMS = {"function_call": ("function", "arguments"), "custom_tool_call": ("custom", "input")}


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


@dataclass(slots=True)
class Record:
    type: str
    item: dict[str, Any] | None  # what the client got for the item (released or notice item); None: as given


class Items:
    """Judges whole output items once each, and says what the client gets in their place in any snapshot."""

    def __init__(self, verdicts: Verdicts) -> None:
        self._verdicts = verdicts
        self._records: dict[tuple[str, Any], Record] = {}

    @staticmethod
    def _keys(item: dict[str, Any], index: int) -> list[tuple[str, Any]]:
        keys = [(name, value) for name in ("id", "call_id") if (value := text_of(item.get(name)))]
        return keys or [("index", index)]  # an item without ids is known by its place

    def remember(self, item: dict[str, Any], index: int, record: Record) -> None:
        for key in self._keys(item, index):
            self._records[key] = record

    def judge(self, item: dict[str, Any], index: int) -> Record | None:
        """Judges a whole item; None when it is blocked."""
        call = call_of_item(item)
        outcome = self._verdicts.take(call)
        if outcome == "block":
            return None
        hint = label(item.get("id"), str(index))
        record = Record(
            text_of(item.get("type")) or "",
            None if outcome == "deliver" else notice_item(call, self._verdicts.last, hint),
        )
        self.remember(item, index, record)
        return record

    def rewrite(self, items: list[Any]) -> tuple[list[Any], bool] | None:
        """The items as the client gets them, and whether that differs; None when one is blocked."""
        out: list[Any] = []
        changed = False
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                if self._verdicts.take(unreadable()) == "block":
                    return None
                changed = True  # never delivered, whatever the verdict
                continue
            kind = text_of(item.get("type"))
            if kind in SAFE_ITEMS:
                out.append(item)
                continue
            found = [self._records[key] for key in self._keys(item, index) if key in self._records]
            record = next((found_ for found_ in found if found_.type == (kind or "")), None) or self.judge(item, index)
            if record is None:
                return None
            out.append(item if record.item is None else record.item)
            changed = changed or record.item is not None
        return out, changed
