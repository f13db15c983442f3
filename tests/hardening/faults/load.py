"""Steady background traffic during a fault: a few client threads, bounded in count and time, every reply noted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tests.hardening.faults.client import Reply
from tests.hardening.faults.result import Ledger

MAX_SECONDS = 600.0  # no scenario's load outlives this, whatever happens
MAX_REQUESTS = 200_000


class Load:
    """`clients` threads each calling `call(n)` until `stop()`; a reply is judged by `explained(reply)`, which
    says whether the fault in progress accounts for a reply that is not a whole success."""

    def __init__(
        self,
        ledger: Ledger,
        call: Callable[[int], Reply],
        clients: int = 2,
        explained: Callable[[Reply], bool] = lambda reply: False,
    ) -> None:
        self.ledger = ledger
        self.call = call
        self.explained = explained
        self.sent = 0
        self.slowest = 0.0  # seconds, of the slowest reply since the last `reset_slowest`
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._progress:
                if self.sent >= MAX_REQUESTS:
                    return
                n = self.sent
                self.sent += 1
            reply = self.call(n)
            self.ledger.note(reply, explained=self.explained(reply))
            with self._progress:
                self.slowest = max(self.slowest, reply.seconds)
                self._progress.notify_all()

    def wait_more(self, count: int, timeout: float = 20.0) -> bool:
        """Until `count` more requests have been sent (the load is flowing)."""
        with self._progress:
            target = self.sent + count
            return self._progress.wait_for(lambda: self.sent >= target, timeout)

    def reset_slowest(self) -> float:
        with self._progress:
            slowest, self.slowest = self.slowest, 0.0
            return slowest

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
