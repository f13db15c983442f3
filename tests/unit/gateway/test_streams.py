from __future__ import annotations

import pytest

from aiperimeter.gateway.streams import NDJSONFramer, SSEFramer, WholeBody, framer_for, usage_of

SSE = (
    b": keep-alive comment\n\n"
    b'event: message\ndata: {"a":1}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\r\rid: 7\ndata: [DONE]\n\n"
)
SSE_EVENTS = [b'{"a":1}', b"line one\nline two", b"no-space", b"[DONE]"]
NDJSON = b'{"a":1}\n\n{"b":2}\r\n{"done":true}'
NDJSON_EVENTS = [b'{"a":1}', b'{"b":2}', b'{"done":true}']


def feed_all(framer: SSEFramer | NDJSONFramer, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out.extend(framer.feed(piece))
    return out + framer.close()


@pytest.mark.parametrize(
    ("factory", "data", "expected"),
    [
        pytest.param(SSEFramer, SSE, SSE_EVENTS, id="sse"),
        pytest.param(NDJSONFramer, NDJSON, NDJSON_EVENTS, id="ndjson"),
    ],
)
def test_framers_whole_bytewise_and_split_everywhere(factory: type, data: bytes, expected: list[bytes]) -> None:
    assert feed_all(factory(), [data]) == expected
    assert feed_all(factory(), [data[i : i + 1] for i in range(len(data))]) == expected
    for cut in range(len(data) + 1):
        assert feed_all(factory(), [data[:cut], data[cut:]]) == expected, cut
    for first in range(0, len(data), 3):
        for second in range(first, len(data), 5):
            assert feed_all(factory(), [data[:first], data[first:second], data[second:]]) == expected


def test_sse_drops_an_event_larger_than_its_cap() -> None:
    framer = SSEFramer(max_event=64)
    assert framer.feed(b"data: " + b"x" * 100) == []
    assert framer.feed(b"\n\ndata: ok\n\n") == [b"ok"]


def test_whole_body_is_one_event_under_the_cap() -> None:
    body = WholeBody(cap=10)
    body.feed(b"12345")
    body.feed(b"678")
    assert body.close() == [b"12345678"]
    big = WholeBody(cap=4)
    big.feed(b"12345")
    assert big.close() == []


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream; charset=utf-8", SSEFramer),
        ("application/x-ndjson", NDJSONFramer),
        ("application/json", WholeBody),
        ("", WholeBody),
    ],
)
def test_framer_for(content_type: str, kind: type) -> None:
    assert isinstance(framer_for(content_type), kind)


@pytest.mark.parametrize(
    ("event", "usage"),
    [
        pytest.param(b'{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}', (3, 4), id="openai"),
        pytest.param(
            b'{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}',
            (5, 6),
            id="responses-stream",
        ),
        pytest.param(b'{"usage":{"input_tokens":8,"output_tokens":9}}', (8, 9), id="anthropic"),
        pytest.param(
            b'{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}',
            (25, 1),
            id="anthropic-message-start",
        ),
        pytest.param(b'{"type":"message_delta","usage":{"output_tokens":15}}', (None, 15), id="anthropic-delta"),
        pytest.param(b'{"done":true,"prompt_eval_count":26,"eval_count":298}', (26, 298), id="ollama"),
        pytest.param(b'{"choices":[{"delta":{"content":"usage"}}]}', None, id="word-usage-in-text"),
        pytest.param(b'{"usage":{"prompt_tokens":-1,"completion_tokens":true}}', None, id="nonsense-values"),
        pytest.param(b'{"usage": "lots"}', None, id="usage-not-object"),
        pytest.param(b"[DONE]", None, id="done-marker"),
        pytest.param(b"not json usage", None, id="not-json"),
    ],
)
def test_usage_of(event: bytes, usage: tuple[int | None, int | None] | None) -> None:
    assert usage_of(event) == usage
