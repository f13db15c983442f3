"""An audit finding: what is wrong, where, how bad, why it matters and the fix; never the secret itself."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiperimeter.catalog.schema import SEVERITIES, Severity

Kind = Literal["secret", "misconfig", "listener"]


@dataclass(frozen=True)
class AuditFinding:
    kind: Kind
    rule: str
    title: str
    severity: Severity
    why: str
    fix: str
    fingerprint: str  # stable across runs and line moves: what the baseline keys on
    file: str | None = None
    line: int | None = None
    column: int | None = None
    provider: str | None = None  # secrets
    redacted: str | None = None  # secrets: at most the first and last four characters
    evidence: str | None = None  # misconfig and listeners: the setting or socket, never a secret value
    socket: str | None = None  # listeners: address:port as bound
    process: str | None = None  # listeners: name and pid, where permitted
    product: str | None = None
    verdict: str | None = None
    references: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["references"] = list(self.references)
        return out


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass
class AuditResult:
    findings: list[AuditFinding] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ignored_inline: int = 0
    ignored_baseline: int = 0
    listeners_fine: list[dict[str, Any]] = field(default_factory=list)  # AI services bound to loopback
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITIES.index)

    def sort(self) -> None:
        self.findings.sort(
            key=lambda f: (-SEVERITIES.index(f.severity), f.kind, f.file or "", f.line or 0, f.socket or "", f.rule)
        )
