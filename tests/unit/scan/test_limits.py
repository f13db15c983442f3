from __future__ import annotations

import pytest

from aiperimeter.scan.probe import Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_global_rate_spaces_connections() -> None:
    clock = Clock()
    limits = Limits(rate=10, per_host=4, clock=clock)
    assert [round(limits.delay(f"10.0.0.{i}"), 3) for i in range(4)] == [0.0, 0.1, 0.2, 0.3]


def test_host_rate_spaces_one_host_but_not_others() -> None:
    clock = Clock()
    limits = Limits(rate=0, per_host=4, host_rate=4, clock=clock)
    assert [round(limits.delay("10.0.0.1"), 3) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert limits.delay("10.0.0.2") == 0.0
    clock.now += 1.0  # time passes: the host's budget is back
    assert limits.delay("10.0.0.1") == 0.0


@pytest.mark.parametrize(("rate", "host_rate"), [(0, 0), (0.0, 0.0)])
def test_unlimited(rate: float, host_rate: float) -> None:
    limits = Limits(rate=rate, per_host=1, host_rate=host_rate, clock=Clock())
    assert all(limits.delay("10.0.0.1") == 0.0 for _ in range(100))
