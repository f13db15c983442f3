"""Hand-made per-key traffic for the watch tests: as Observations, or as the audit records the gateway writes."""

from __future__ import annotations

import random
from collections.abc import Iterator

from aiperimeter.watch.observation import Observation

DAY = 86400.0
MONDAY = 1_700_438_400.0  # 2023-11-20 00:00 UTC, a Monday


def office(
    key: str = "office",
    *,
    days: int = 21,
    start: float = MONDAY,
    client: str = "10.1.2.3",
    seed: int = 1,
    per_hour: tuple[int, int] = (20, 40),
    model: str = "llama3",
    tools: tuple[str, ...] = (),
    every_day: bool = False,
) -> Iterator[Observation]:
    """Office hours (08:00-18:00 UTC, weekdays unless `every_day`), normal sizes, one network and one model."""
    rng = random.Random(seed)
    events = []
    for day in range(days):
        if not every_day and (start + day * DAY - MONDAY) // DAY % 7 >= 5:
            continue  # weekend
        for hour in range(8, 18):
            for _ in range(rng.randint(*per_hour)):
                events.append(start + day * DAY + hour * 3600 + rng.random() * 3600)
    for n, at in enumerate(sorted(events)):
        yield Observation(
            time=at, request_id=f"{key}-{n}", key=key, client=client, route="chat", model=model, status=200,
            tokens_in=rng.randint(100, 600), tokens_out=rng.randint(50, 400), bytes_in=rng.randint(400, 2500),
            tools=tools,
        )  # fmt: skip


def burst(
    start: float, count: int, spacing: float, *, key: str | None = "office", client: str = "10.1.2.3", **fields: object
) -> list[Observation]:
    base: dict[str, object] = {"route": "chat", "model": "llama3", "status": 200, "tokens_in": 300,
                               "tokens_out": 200, "bytes_in": 1200}  # fmt: skip
    base.update(fields)
    return [
        Observation(time=start + i * spacing, request_id=f"b{start:.0f}-{i}", key=key, client=client, **base)  # type: ignore[arg-type]
        for i in range(count)
    ]


def record(obs: Observation) -> dict[str, object]:
    """The audit record the gateway would have written for this request."""
    return {
        "time": obs.time, "request_id": obs.request_id, "key_id": obs.key, "client": obs.client,
        "method": obs.method or "POST", "path": obs.path or "/v1/chat/completions", "route": obs.route,
        "model": obs.model, "status": obs.status, "outcome": "ok" if obs.status < 400 else "denied",
        "deny": obs.deny, "stream": obs.stream, "upstream_ms": 5.0, "total_ms": 6.0, "bytes_in": obs.bytes_in,
        "bytes_out": 500, "usage": {"prompt_tokens": obs.tokens_in, "completion_tokens": obs.tokens_out},
        "tools": None, "tools_declared": list(obs.tools) or None, "pid": 1,
    }  # fmt: skip
