"""Alerts: what is unusual about a key or an address, measured against what is usual, with the records that show it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from aiperimeter.config import SEVERITIES, Severity

# The kinds of alert the detector raises; each names one departure from a learned baseline (or one tripwire).
KINDS = (
    "canary",  # a canary key was used: someone holds a key that no one should
    "volume_spike",  # requests far above the key's usual rate for this hour of the week
    "token_spike",  # tokens far above the key's usual rate for this hour of the week
    "idle_hour",  # activity at an hour when the key is normally idle
    "new_network",  # a client network the key has never been used from
    "new_model",  # a model the key has never asked for
    "new_tool",  # a tool the key has never declared or called
    "new_route",  # an API route the key has never used
    "shape_change",  # request sizes unlike the key's usual ones
    "denial_burst",  # many refused requests from one address: credential stuffing or scanning
)


def rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    time: float  # when it was detected, in the traffic's time (the observation that tipped it)
    kind: str
    severity: Severity
    key: str | None  # the key's public id or JWT subject id; None for address-level alerts
    client: str | None  # the address involved, when one is
    summary: str  # one line a person reads first
    baseline: str  # what is usual, in words and numbers
    observed: str  # what was seen
    evidence: tuple[str, ...] = ()  # request ids of the audit records that show it
    details: dict[str, Any] = field(default_factory=dict)  # numbers behind baseline/observed, for machines
    actions: tuple[str, ...] = ()  # what was done automatically

    @staticmethod
    def make_id(kind: str, subject: str, window: float) -> str:
        """Deterministic: replicas that see the same traffic raise the same alert, and the store keeps one."""
        return hashlib.sha256(f"{kind}|{subject}|{int(window)}".encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["evidence"] = list(self.evidence)
        doc["actions"] = list(self.actions)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Alert:
        return cls(
            id=str(doc["id"]),
            time=float(doc["time"]),
            kind=str(doc["kind"]),
            severity=doc["severity"],
            key=doc.get("key"),
            client=doc.get("client"),
            summary=str(doc.get("summary", "")),
            baseline=str(doc.get("baseline", "")),
            observed=str(doc.get("observed", "")),
            evidence=tuple(doc.get("evidence") or ()),
            details=dict(doc.get("details") or {}),
            actions=tuple(doc.get("actions") or ()),
        )
