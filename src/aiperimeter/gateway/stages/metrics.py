"""Count each finished request into the process's metric book (`watch.metrics`): last, so it sees the final status."""

from __future__ import annotations

import time
from typing import ClassVar

from aiperimeter.gateway.pipeline import Exchange, Outcome, Stage
from aiperimeter.watch.metrics import NO_ROUTE, MetricBook


class Metrics(Stage):
    name: ClassVar[str] = "metrics"

    def __init__(self, book: MetricBook) -> None:
        self.book = book

    async def on_finish(self, ex: Exchange, outcome: Outcome) -> None:
        route = ex.route
        key = ex.key
        tools = ex.tools
        self.book.request(
            route.path if route is not None else NO_ROUTE,
            ex.status or (499 if outcome is Outcome.CLIENT_DISCONNECTED else 500),  # as the audit record has it
            outcome.value,
            ex.deny_code,
            key.id if key is not None else None,
            time.perf_counter() - ex.started,
            ex.upstream_ms,
            ex.prompt_tokens,
            ex.completion_tokens,
            [(d.verdict.decision, d.extra.get("side", "response")) for d in tools.decisions] if tools else (),
        )
