"""Every renderer, fed a finding whose values a hostile scanned host chose."""

from __future__ import annotations

import io
import re

import orjson
import pytest
from rich.console import Console

from aiperimeter.report.html import render_html
from aiperimeter.report.json import render_json, render_jsonl_line
from aiperimeter.report.sarif import render_sarif
from aiperimeter.report.table import render_table
from aiperimeter.scan.findings import Finding, ScanError, ScanResult

HOSTILE = '<script>alert("x")</script>[bold red]owned[/] \x1b[31m'


def finding(severity: str = "critical", verdict: str = "open") -> Finding:
    return Finding(
        host="127.0.0.5",
        address="127.0.0.5",
        port=11434,
        scheme="http",
        product="ollama",
        product_name="Ollama",
        category="model-server",
        version=HOSTILE,
        verdict=verdict,
        verdict_note="no authentication",
        severity=severity,  # type: ignore[arg-type]
        models=[HOSTILE, "llama3"],
        dangerous=[{"endpoint": "POST /api/pull", "capability": "model-management", "severity": "high", "why": "w"}],
        evidence=[{"request": "GET /api/tags", "status": 200, "excerpt": HOSTILE}],
        fix={"steps": ["bind to loopback"], "gateway": "aiperimeter gateway --upstream http://127.0.0.1:11434"},
        references=["https://github.com/ollama/ollama"],
    )


@pytest.fixture
def result() -> ScanResult:
    return ScanResult(
        findings=[finding(), finding("info", "protected")],
        errors=[ScanError(HOSTILE, "cannot resolve")],
        hosts=2,
        ports_checked=50,
        open_ports=2,
        unidentified=["127.0.0.9:8080"],
        seconds=1.5,
        sweep_seconds=1.0,
    )


def test_html_escapes_everything_and_loads_nothing(result: ScanResult) -> None:
    page = render_html(result).decode()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "default-src 'none'" in page  # a CSP that forbids any external load
    assert "Ollama" in page and "bind to loopback" in page and "POST /api/pull" in page


def test_table_prints_hostile_values_as_text(result: ScanResult) -> None:
    out = io.StringIO()
    render_table(result, Console(file=out, width=200, force_terminal=False, color_system=None))
    text = out.getvalue()
    assert "[bold red]owned[/]" in text  # shown literally, not interpreted as markup
    assert "\x1b" not in text
    assert "bind to loopback" in text and "127.0.0.9:8080" in text


def test_json_and_jsonl(result: ScanResult) -> None:
    document = orjson.loads(render_json(result))
    assert document["summary"]["findings"] == 2
    first = document["findings"][0]
    for field in ("host", "port", "product", "version", "verdict", "severity", "dangerous", "fix", "url"):
        assert field in first
    line = render_jsonl_line(result.findings[0])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line)["product"] == "ollama"


def test_sarif_shape(result: ScanResult) -> None:
    document = orjson.loads(render_sarif(result))
    assert document["version"] == "2.1.0"
    run = document["runs"][0]
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert rule_ids == {"ollama/open", "ollama/protected"}
    levels = [r["level"] for r in run["results"]]
    assert levels == ["error", "note"]
    for item in run["results"]:
        assert item["ruleId"] in rule_ids
        assert item["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("http://")
        assert float(item["properties"]["security-severity"]) >= 0
        assert item["partialFingerprints"]
