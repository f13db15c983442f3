"""The pipeline's contract with its stages, on aiohttp's own test requests (no sockets)."""

from __future__ import annotations

from typing import ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiperimeter.errors import Forbidden
from aiperimeter.gateway.pipeline import Exchange, Outcome, Pipeline, Stage


class Recorder(Stage):
    name: ClassVar[str] = "recorder"

    def __init__(self) -> None:
        self.finished: list[tuple[str, Outcome, int]] = []

    async def on_finish(self, ex: Exchange, outcome: Outcome) -> None:
        self.finished.append((ex.request_id, outcome, ex.status))


class Raises(Stage):
    name: ClassVar[str] = "raises"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def on_request(self, ex: Exchange) -> None:
        raise self.error


class Forward(Stage):
    name: ClassVar[str] = "forward"

    def __init__(self) -> None:
        self.calls = 0

    async def on_request(self, ex: Exchange) -> None:
        self.calls += 1
        ex.status = 200
        ex.response = web.Response(text="ok")


@pytest.mark.parametrize(
    ("error", "status", "outcome", "code"),
    [
        pytest.param(Forbidden("route_not_allowed", "no"), 403, Outcome.DENIED, "route_not_allowed", id="deny"),
        pytest.param(RuntimeError("secret detail"), 500, Outcome.ERROR, "internal_error", id="bug"),
    ],
)
async def test_a_stopping_stage_skips_forwarding_and_still_finishes(
    error: Exception, status: int, outcome: Outcome, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, forward = Recorder(), Forward()
    pipeline = Pipeline([Raises(error), forward, recorder])
    response = await pipeline.handle(make_mocked_request("GET", "/x"))
    assert response.status == status
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert f'"code":"{code}"'.encode() in response.body
    assert b"secret detail" not in response.body and b"Traceback" not in response.body
    assert forward.calls == 0
    assert [(o, s) for _, o, s in recorder.finished] == [(outcome, status)]


async def test_success_finishes_once() -> None:
    recorder, forward = Recorder(), Forward()
    pipeline = Pipeline([forward, recorder])
    response = await pipeline.handle(make_mocked_request("GET", "/x"))
    assert response.status == 200 and forward.calls == 1
    assert [(o, s) for _, o, s in recorder.finished] == [(Outcome.OK, 200)]


def test_hooks_are_called_only_where_overridden() -> None:
    recorder, forward = Recorder(), Forward()
    pipeline = Pipeline([forward, recorder])
    assert pipeline.request_hooks == (forward,)
    assert pipeline.event_hooks == ()
    assert pipeline.finish_hooks == (recorder,)


def test_a_pipeline_needs_one_forward_stage() -> None:
    with pytest.raises(ValueError, match="forward"):
        Pipeline([Recorder()])
