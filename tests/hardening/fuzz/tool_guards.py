"""Targets: the streamed tool-call guards, one per wire format, against an independent client reader.

The policy allows only `get_time`; any other call is blocked or stripped (which one depends on the input). The
stream is fed in random pieces. The oracle: every call a client reads out of the guard's output (see
`wire_readers`) has an allowed name and exactly the arguments of a call the guard judged and allowed; and nothing
escapes the guard but its own block (it never raises).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from aiperimeter.gateway.tools import anthropic, ollama, openai_chat, openai_responses
from aiperimeter.gateway.tools.base import StreamGuard
from aiperimeter.policy.calls import ALLOW, Judge, ToolCall, Verdict
from tests.hardening.fuzz import wire_readers
from tests.hardening.fuzz.engine import OracleFailure, Target
from tests.support import toolwire

ALLOWED = frozenset({"get_time"})
NAMES = ["get_time", "run_sql", "rm", "Get_time", "get_time ", "get_", "time", "", "get_time\u0000"]
ARGS = ['{"tz":"UTC"}', '{"query":"DROP TABLE x"}', "{}", "", '{"a":[1,{"b":null}]}', '{"tz":"UTC","tz":"X"}', "[1]"]


@dataclass
class PolicyJudge:
    """Allows `ALLOWED` names with readable arguments; refuses everything else with `action`."""

    action: str
    allowed: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(self, call: ToolCall) -> Verdict:
        if call.name in ALLOWED and call.error is None and call.arguments is not None:
            self.allowed.append((call.name, call.arguments))
            return ALLOW
        return Verdict(self.action, "tools.fuzz", "not allowed")


def _arguments(value: Any) -> Any:
    """Arguments as the client would hand them to the tool: JSON text parsed, blank text as no arguments."""
    if isinstance(value, str | bytes):
        if not value.strip():
            return {}
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return ("unparsable", value)
    return value


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def check_guard(
    data: bytes, make: Callable[[Judge], StreamGuard], read: Callable[[bytes], list[wire_readers.ClientCall]]
) -> None:
    seed = zlib.crc32(data)
    judge = PolicyJudge("block" if seed & 1 else "strip")
    guard = make(judge)
    out = b"".join(guard.feed(piece) for piece in pieces(data, random.Random(seed))) + guard.close()
    for name, raw in read(out):
        arguments = _arguments(raw)
        if name not in ALLOWED or (name, arguments) not in judge.allowed:
            raise OracleFailure(
                f"{make.__module__}: the client reads call {name!r} with {str(arguments)[:200]!r}, "
                f"but the guard allowed only {judge.allowed[:5]!r}"
            )


# --- inputs -----------------------------------------------------------------------------------------------------------

Build = Callable[[str, list[toolwire.Call]], list[bytes]]


def generator(build: Build) -> Callable[[random.Random], bytes]:
    def generate(rng: random.Random) -> bytes:
        calls = []
        for n in range(rng.randint(0, 3)):
            args = rng.choice(ARGS) if rng.random() < 0.3 else orjson.dumps({"tz": "UTC", "n": n}).decode()
            calls.append((f"call_{n}", rng.choice(NAMES), args))
        events = build(rng.choice(["", "Let me check.", "x" * 20]), calls if rng.random() < 0.9 else [])
        if rng.random() < 0.2:
            rng.shuffle(events)
        if rng.random() < 0.2 and events:
            del events[rng.randrange(len(events))]
        return b"".join(events)

    return generate


def _parsable_calls(build: Build) -> Build:
    """Ollama sends arguments as objects: only calls whose arguments are a JSON document can be built."""

    def safe(text: str, calls: list[toolwire.Call]) -> list[bytes]:
        ok = []
        for call_id, name, args in calls:
            try:
                orjson.loads(args)
            except orjson.JSONDecodeError:
                args = "{}"
            ok.append((call_id, name, args))
        return build(text, ok)

    return safe


TOKENS = [
    b'"tool_calls"', b'"function"', b'"name":"run_sql"', b'"name":"get_time"', b'"arguments"', b'"index":0',
    b'"index":1', b'"type":"tool_use"', b'"type":"function_call"', b'"partial_json"', b"\n\n", b"\r\n", b"data: ",
    b"event: ", b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u0000", b'"Name"', b'"TOOL_CALLS"', b'"input"', b":",
]  # fmt: skip
FORMATS: dict[str, tuple[Callable[[Judge], Any], Callable[[bytes], list[Any]], Build]] = {
    "openai_chat": (openai_chat.StreamGuard, wire_readers.openai_chat, toolwire.chat_stream),
    "anthropic": (anthropic.StreamGuard, wire_readers.anthropic, toolwire.anthropic_stream),
    "openai_responses": (openai_responses.StreamGuard, wire_readers.openai_responses, toolwire.responses_stream),
    "ollama": (ollama.StreamGuard, wire_readers.ollama, _parsable_calls(toolwire.ollama_stream)),
}


def _target(fmt: str) -> Target:
    make, read, build = FORMATS[fmt]
    seeds = [
        b"".join(build("hi", [("call_1", "get_time", '{"tz":"UTC"}'), ("call_2", "run_sql", '{"q":"x"}')])),
        b"".join(build("", [("call_1", "run_sql", '{"query":"SELECT 1"}')])),
    ]

    def check(data: bytes) -> None:
        check_guard(data, make, read)

    return Target(f"tool_guard_{fmt}", check, generator(build), seeds, TOKENS, max_len=8192)


TARGETS = [_target(fmt) for fmt in FORMATS]
