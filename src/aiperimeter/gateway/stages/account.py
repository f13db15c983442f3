"""Read token usage from the response events the upstream reports it in, streamed or not."""

from __future__ import annotations

from typing import ClassVar

from aiperimeter.gateway.pipeline import Exchange, Stage, StreamEvent
from aiperimeter.gateway.streams import usage_of


class Account(Stage):
    name: ClassVar[str] = "account"

    async def on_event(self, ex: Exchange, ev: StreamEvent) -> None:
        found = usage_of(ev.data)
        if found is None:
            return
        prompt, completion = found
        # Streams report cumulative figures (Anthropic's message_delta): the latest value of each field wins.
        if prompt is not None:
            ex.prompt_tokens = prompt
        if completion is not None:
            ex.completion_tokens = completion
