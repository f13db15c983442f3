"""SARIF 2.1.0, as code-scanning dashboards import it: one rule per product and verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from aiperimeter import __version__
from aiperimeter.audit.findings import AuditResult
from aiperimeter.report.common import SECURITY_SEVERITY
from aiperimeter.scan.findings import ScanResult

LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _document(rules: list[dict[str, Any]], results: list[dict[str, Any]], run: dict[str, Any] | None = None) -> bytes:
    driver = {
        "name": "aiperimeter",
        "version": __version__,
        "informationUri": "https://github.com/aiperimeter/aiperimeter",
        "rules": rules,
    }
    document = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, **(run or {}), "results": results}],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def render_sarif(result: ScanResult) -> bytes:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for finding in result.findings:
        rule_id = f"{finding.product}/{finding.verdict}"
        rules.setdefault(
            rule_id,
            {
                "id": rule_id,
                "name": f"{finding.product_name} {finding.verdict}".title().replace(" ", ""),
                "shortDescription": {"text": f"{finding.product_name}: {finding.verdict}"},
                "fullDescription": {"text": finding.verdict_note or finding.product_name},
                "help": {"text": "\n".join(finding.fix["steps"]) or "No action needed."},
                "helpUri": finding.references[0] if finding.references else None,
                "properties": {"security-severity": SECURITY_SEVERITY[finding.severity], "tags": ["security"]},
            },
        )
        dangerous = ", ".join(d["endpoint"] for d in finding.dangerous)
        message = f"{finding.product_name} {finding.version or ''} at {finding.url} is {finding.verdict}"
        if dangerous:
            message += f"; reachable: {dangerous}"
        results.append(
            {
                "ruleId": rule_id,
                "level": LEVEL[finding.severity],
                "message": {"text": message},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": finding.url}}}],
                "partialFingerprints": {"aiperimeter/service": f"{finding.address}:{finding.port}/{finding.product}"},
                "properties": {"security-severity": SECURITY_SEVERITY[finding.severity], "verdict": finding.verdict},
            }
        )
    return _document(list(rules.values()), results)


def _artifact(path: str) -> dict[str, str]:
    """Relative to the source root where possible: code-scanning UIs resolve only relative paths."""
    if path.startswith("/"):
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(path), "uriBaseId": "%SRCROOT%"}


def render_audit_sarif(result: AuditResult) -> bytes:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for f in result.findings:
        rules.setdefault(
            f.rule,
            {
                "id": f.rule,
                "name": "".join(part.title() for part in f.rule.split("-")),
                "shortDescription": {"text": f.title if f.kind == "secret" else f.rule},
                "fullDescription": {"text": f.why},
                "help": {"text": f.fix},
                "helpUri": f.references[0] if f.references else None,
                "properties": {"security-severity": SECURITY_SEVERITY[f.severity], "tags": ["security", f.kind]},
            },
        )
        shown = f.redacted or f.evidence
        entry: dict[str, Any] = {
            "ruleId": f.rule,
            "level": LEVEL[f.severity],
            "message": {"text": f"{f.title}" + (f": {shown}" if shown else "")},
            "partialFingerprints": {"aiperimeter/v1": f.fingerprint},
            "properties": {"security-severity": SECURITY_SEVERITY[f.severity], "kind": f.kind},
        }
        if f.file is not None:
            region = {"startLine": f.line or 1} | ({"startColumn": f.column} if f.column else {})
            entry["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(f.file), "region": region}}]
        else:
            entry["locations"] = [{"logicalLocations": [{"name": f.socket, "kind": "socket"}]}]
        results.append(entry)
    return _document(
        list(rules.values()), results, {"originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().as_uri() + "/"}}}
    )
