"""Inputs the fuzzer found, kept as cases: each failed before the fix named with it."""

from __future__ import annotations

import pytest

from tests.hardening.fuzz import TARGETS

FOUND = [
    # gateway/tools/openai_chat_stream.py: a chunk whose choices held no object raised IndexError in the guard
    pytest.param(
        "tool_guard_openai_chat", b'data: {"choices":["Name"]}\n\ndata: [DONE]\n\n', id="chat-choices-no-object"
    ),
    pytest.param(
        "tool_guard_openai_chat",
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function",'
        b'"function":{"name":"get_time","arguments":"{}"}}]}}]}\n\ndata: {"choices":[1]}\n\ndata: [DONE]\n\n',
        id="chat-choices-no-object-behind-a-call",
    ),
    # gateway/streams.py: a line "dataX: ..." (another field) made the SSE framer hand over an empty event
    pytest.param("stream_framers", b"data: {}\n\ndataX: y\n\n", id="sse-field-named-like-data"),
    pytest.param("stream_framers", b"data[DONE]\n\ndata: 1\n\n", id="sse-data-prefix-without-colon"),
]


@pytest.mark.parametrize(("target", "data"), FOUND)
def test_found_inputs_pass(target: str, data: bytes) -> None:
    TARGETS[target].check(data)
