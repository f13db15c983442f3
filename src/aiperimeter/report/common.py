"""What every scan renderer shares."""

from __future__ import annotations

from typing import Any

from aiperimeter import __version__
from aiperimeter.audit.findings import AuditResult
from aiperimeter.catalog.schema import SEVERITIES
from aiperimeter.scan.findings import ScanResult

SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}


def scan_document(result: ScanResult) -> dict[str, Any]:
    return {
        "tool": "aiperimeter",
        "version": __version__,
        "summary": {
            "hosts": result.hosts,
            "ports_checked": result.ports_checked,
            "open_ports": result.open_ports,
            "findings": len(result.findings),
            "seconds": round(result.seconds, 3),
            "sweep_seconds": round(result.sweep_seconds, 3),
        },
        "findings": [f.as_dict() for f in result.findings],
        "unidentified": result.unidentified,
        "errors": [{"target": e.target, "error": e.error} for e in result.errors],
    }


def audit_document(result: AuditResult) -> dict[str, Any]:
    return {
        "tool": "aiperimeter",
        "version": __version__,
        "summary": {
            "files": result.files,
            "bytes": result.bytes,
            "seconds": round(result.seconds, 3),
            "findings": len(result.findings),
            "by_severity": {s: sum(f.severity == s for f in result.findings) for s in reversed(SEVERITIES)},
            "ignored_inline": result.ignored_inline,
            "ignored_baseline": result.ignored_baseline,
            "skipped": dict(sorted(result.skipped.items())),
        },
        "findings": [f.as_dict() for f in result.findings],
        "listeners_fine": result.listeners_fine,
        "errors": result.errors,
    }
