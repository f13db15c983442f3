from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        fake: FakeUpstream = request.getfixturevalue("upstream")
        fake.clear()
        fake.unscript()
