"""A finding: one identified service, its verdict, what an attacker reaches, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aiperimeter.catalog.match import Identification
from aiperimeter.catalog.schema import SEVERITIES, Severity
from aiperimeter.scan.targets import Endpoint, Scheme


@dataclass(frozen=True)
class Finding:
    host: str
    address: str
    port: int
    scheme: Scheme
    product: str
    product_name: str
    category: str
    version: str | None
    verdict: str
    verdict_note: str
    severity: Severity
    models: list[str]
    dangerous: list[dict[str, str]]
    evidence: list[dict[str, Any]]
    fix: dict[str, Any]
    references: list[str]
    generic: bool = False
    base: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["url"] = self.url
        return out


@dataclass
class ScanError:
    target: str
    error: str


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    hosts: int = 0
    ports_checked: int = 0
    open_ports: int = 0
    unidentified: list[str] = field(default_factory=list)  # open ports answering HTTP that matched nothing
    seconds: float = 0.0
    sweep_seconds: float = 0.0

    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITIES.index)


def gateway_command(found: Identification, endpoint: Endpoint, scheme: Scheme) -> str | None:
    kind = found.fingerprint.gateway_kind
    if kind is None:
        return None
    upstream = f"{scheme}://127.0.0.1:{endpoint.port}"
    return (
        f"aiperimeter keys create --name {found.fingerprint.id}-clients && "
        f"aiperimeter gateway --upstream {upstream} --kind {kind} --listen 0.0.0.0:8787 --expose "
        "--tls-cert cert.pem --tls-key key.pem"
    )


def make_finding(found: Identification, endpoint: Endpoint, scheme: Scheme) -> Finding:
    fp = found.fingerprint
    steps = list(fp.remediation)
    command = gateway_command(found, endpoint, scheme)
    if command is not None and found.verdict != "protected":
        steps.append(
            f"On {endpoint.host}, with {fp.name} bound to 127.0.0.1:{endpoint.port}, put the aiperimeter gateway "
            f"in front of it: {command}"
        )
    return Finding(
        host=endpoint.host,
        address=endpoint.address,
        port=endpoint.port,
        scheme=scheme,
        product=fp.id,
        product_name=fp.name,
        category=fp.category,
        version=found.version,
        verdict=found.verdict,
        verdict_note=found.verdict_note,
        severity=found.severity,
        models=list(found.models),
        dangerous=[
            {"endpoint": d.endpoint, "capability": d.capability, "severity": d.severity, "why": d.why}
            for d in found.dangerous
        ],
        evidence=[{"request": e.request, "status": e.status, "excerpt": e.excerpt} for e in found.evidence],
        fix={"steps": steps if found.verdict != "protected" else [], "gateway": command},
        references=list(fp.references),
        generic=fp.generic,
        base=endpoint.base,
    )
