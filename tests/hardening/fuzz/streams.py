"""Target: the sans-IO stream framers (SSE, NDJSON) and the usage reader.

The oracle: the same bytes fed whole, one byte at a time and in random pieces give the same events; NDJSON events
are what a plain line reader finds, SSE events what a reader written from the WHATWG spec dispatches (plus the
unfinished last event, which the framer hands over at close); with a small cap the buffers stay within it; and
`usage_of` never raises on any event.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable

from aiperimeter.gateway.streams import NDJSONFramer, SSEFramer, usage_of
from tests.hardening.fuzz.engine import OracleFailure, Target

Framer = SSEFramer | NDJSONFramer
CAP = 64
BYTEWISE_LIMIT = 2048  # longer inputs are fed in random pieces only, to keep the rate up


def pieces(data: bytes, rng: random.Random) -> list[list[bytes]]:
    out = [[data]]
    if len(data) <= BYTEWISE_LIMIT:
        out.append([data[i : i + 1] for i in range(len(data))])
    for _ in range(2):
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 6)))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    return out


def feed(framer: Framer, chunks: list[bytes]) -> list[bytes]:
    events = [event for chunk in chunks for event in framer.feed(chunk)]
    return events + framer.close()


def reference_ndjson(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete non-blank lines, and the unfinished last one."""
    *lines, rest = data.split(b"\n")
    return [line.rstrip(b"\r") for line in lines if line.strip()], rest


def reference_sse(data: bytes) -> tuple[list[bytes], bytes]:
    """The data of every event the WHATWG algorithm dispatches, and what follows the last dispatch."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    events: list[bytes] = []
    buffer: list[bytes] | None = None
    consumed = 0
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r(?!$)|\n)", data):  # a CR that ends the input may be a CRLF's
        line = match.group(1)
        if not line:
            if buffer is not None:
                events.append(b"\n".join(buffer))
            buffer, consumed = None, match.end()
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            buffer = [*(buffer or []), value]
    return events, data[consumed:]


def _buffered(framer: Framer) -> int:
    if isinstance(framer, NDJSONFramer):
        return len(framer._buffer)
    splitter = framer._splitter
    return splitter._size + splitter._partial_size


def check_one(data: bytes, make: Callable[[], Framer], reference: Callable[[bytes], tuple[list[bytes], bytes]]) -> None:
    rng = random.Random(zlib.crc32(data))
    whole = feed(make(), [data])
    for chunks in pieces(data, rng)[1:]:
        got = feed(make(), chunks)
        if got != whole:
            raise OracleFailure(f"{make.__name__} in {len(chunks)} pieces: {got!r} != whole {whole!r}")
    complete, rest = reference(data)
    # the framer hands over the unfinished last event or line at close: at most one more, and only if one was left
    extra = len(whole) - len(complete)
    if whole[: len(complete)] != complete or extra not in ((0, 1) if rest.strip() else (0,)):
        raise OracleFailure(f"{make.__name__}: {whole!r} but a reference reader finds {complete!r} then {rest!r}")
    for event in whole:
        usage_of(event)


def _sse_capped() -> SSEFramer:
    return SSEFramer(max_event=CAP)


def _ndjson_capped() -> NDJSONFramer:
    return NDJSONFramer(max_line=CAP)


def check(data: bytes) -> None:
    check_one(data, SSEFramer, reference_sse)
    check_one(data, NDJSONFramer, reference_ndjson)
    for capped in (_sse_capped(), _ndjson_capped()):
        for chunk in pieces(data, random.Random(len(data)))[-1]:
            capped.feed(chunk)
            if _buffered(capped) > CAP + 1:
                raise OracleFailure(f"{type(capped).__name__} holds {_buffered(capped)} bytes over a cap of {CAP}")
        capped.close()


# --- inputs -----------------------------------------------------------------------------------------------------------

USAGE = [
    b'{"usage":{"prompt_tokens":3,"completion_tokens":5}}',
    b'{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}',
    b'{"response":{"usage":{"input_tokens":-1,"output_tokens":true}}}',
    b'{"done":true,"prompt_eval_count":4,"eval_count":9}',
    b'{"usage":[1]}',
    b'{"usage":null}',
    b"[DONE]",
]
LINES = [b"data: ", b"data:", b"data", b"event: x", b": comment", b"id: 1", b"retry: 5", b"datax: y", b"\xef\xbb\xbf"]
ENDS = [b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\r\r", b""]


def generate(rng: random.Random) -> bytes:
    out = b"\xef\xbb\xbf" if rng.random() < 0.05 else b""
    for _ in range(rng.randint(0, 12)):
        head = rng.choice(LINES) if rng.random() < 0.4 else b"data: "
        out += head + (rng.choice(USAGE) if rng.random() < 0.7 else b"") + rng.choice(ENDS)
    return out


TARGET = Target(
    name="stream_framers",
    check=check,
    generate=generate,
    seeds=[b"data: " + u + b"\n\n" for u in USAGE] + [u + b"\n" for u in USAGE],
    tokens=LINES + ENDS + USAGE,
    max_len=4096,
)
