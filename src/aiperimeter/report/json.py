"""JSON: one document; JSON Lines: one finding per line, written as each is found."""

from __future__ import annotations

import orjson

from aiperimeter.audit.findings import AuditResult
from aiperimeter.report.common import audit_document, scan_document
from aiperimeter.scan.findings import Finding, ScanResult


def render_json(result: ScanResult) -> bytes:
    return orjson.dumps(scan_document(result), option=orjson.OPT_INDENT_2) + b"\n"


def render_jsonl_line(finding: Finding) -> bytes:
    return orjson.dumps(finding.as_dict()) + b"\n"


def render_audit_json(result: AuditResult) -> bytes:
    return orjson.dumps(audit_document(result), option=orjson.OPT_INDENT_2) + b"\n"
