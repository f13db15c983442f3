"""What a fault scenario reports, and the ledger that counts a scenario's requests against the audit log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.hardening.faults.client import Reply


@dataclass
class FaultResult:
    name: str
    injected: int = 0  # faults injected
    requests: int = 0  # requests sent by the scenario's clients
    answered: int = 0  # requests whose client got a complete response
    audit_records: int = 0  # of those, how many the audit log holds
    records_lost: int = 0  # answered requests missing from the audit log (target 0)
    gateway_errors: int = 0  # 5xx (or broken answers) that the injected fault does not explain (target 0)
    recovered: bool = False  # after the fault, the gateway served normally again without a restart
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # expectations the gateway failed (target none)
    skipped: str | None = None  # why the scenario could not run here (a missing service)

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.recovered and not self.records_lost and not self.gateway_errors \
            and not self.violations  # fmt: skip


class Ledger:
    """Thread-safe tally of one scenario's requests. `expect` names what the fault explains; anything else that is
    not a complete success counts as a gateway error."""

    def __init__(self, result: FaultResult) -> None:
        self.result = result
        self.answered_ids: set[str] = set()
        self.kinds: dict[str, str] = {}  # request id -> Content-Type of the answer, to say which kind was lost
        self.records: list[dict[str, object]] = []  # the audit log, once counted
        self.lock = threading.Lock()

    def note(self, reply: Reply, explained: bool = False) -> Reply:
        with self.lock:
            self.result.requests += 1
            if reply.complete and reply.request_id is not None:
                self.answered_ids.add(reply.request_id)
                self.kinds[reply.request_id] = reply.headers.get("content-type", "")
            normal = reply.complete and reply.status is not None and reply.status < 500
            if not normal and not explained:
                self.result.gateway_errors += 1
                if len(self.result.notes) < 40:
                    self.result.notes.append(f"unexplained: {reply}")
        return reply

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            with self.lock:
                self.result.violations.append(message)
        return condition

    def audit(self, files: Iterable[Path]) -> list[dict[str, object]]:
        """Count the answered requests the audit files hold; call once every gateway has stopped (flushed)."""
        records: list[dict[str, object]] = []
        for path in files:
            if path.exists():
                records += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        self.records = records
        logged = {r.get("request_id") for r in records}
        self.result.answered = len(self.answered_ids)
        self.result.audit_records = len(self.answered_ids & logged)
        lost = self.answered_ids - logged
        self.result.records_lost = len(lost)
        self.result.notes += [f"no audit record: {rid} ({self.kinds.get(rid)})" for rid in sorted(lost)[:20]]
        return records


def wait_for(condition: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Polls `condition()` until true or `timeout` seconds pass; for state only visible from outside (logs, files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())
