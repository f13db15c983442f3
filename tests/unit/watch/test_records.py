"""The watcher's recent audit lines: bounded by bytes, searched by request id, and the evidence an alert names
outlives them."""

from __future__ import annotations

import orjson

from aiperimeter.watch.watcher import Records


def batch(first: int, count: int) -> bytes:
    return b"".join(
        orjson.dumps({"time": 1.0, "request_id": f"{n:024x}", "path": '/v1/"x"', "status": 200},
                     option=orjson.OPT_APPEND_NEWLINE)
        for n in range(first, first + count)
    )  # fmt: skip


def test_lines_are_found_kept_within_their_bytes_and_pinned_evidence_outlives_them() -> None:
    size = len(batch(0, 100))
    records = Records(keep_bytes=3 * size, pinned=3)
    for n in range(5):
        records.add_batch(batch(n * 100, 100))
    assert records.get(f"{499:024x}") == {"time": 1.0, "request_id": f"{499:024x}", "path": '/v1/"x"', "status": 200}
    assert records.get(f"{200:024x}") is not None and records.get(f"{199:024x}") is None  # beyond the bytes kept
    records.pin([f"{250:024x}", f"{251:024x}", "not-held"])
    for n in range(5, 10):
        records.add_batch(batch(n * 100, 100))
    assert records.get(f"{250:024x}") is not None and records.get(f"{300:024x}") is None
    records.pin([f"{997:024x}", f"{998:024x}"])  # beyond the pin limit the oldest pin goes
    assert records.get(f"{250:024x}") is None and records.get(f"{251:024x}") is not None
    assert records.get('x", "status": 500, "request_id": "y') is None  # ids are matched as JSON strings


def test_the_first_and_last_lines_of_a_batch() -> None:
    records = Records()
    records.add_batch(batch(0, 3))
    assert [records.get(f"{n:024x}") is not None for n in range(3)] == [True, True, True]
