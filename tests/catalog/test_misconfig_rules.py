"""Every misconfiguration rule's own examples, read from a real file through the whole audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiperimeter.audit.runner import AuditOptions, run_audit
from aiperimeter.catalog.loader import misconfig_rules
from aiperimeter.catalog.misconfig_rules import ConfigExample, MisconfigRule

RULES = misconfig_rules()


def _cases(kind: str) -> list[object]:
    return [
        pytest.param(rule, example, id=f"{rule.id}-{kind}-{i}")
        for rule in RULES
        for i, example in enumerate(getattr(rule.examples, kind))
    ]


def _audit(tmp_path: Path, example: ConfigExample) -> list[tuple[str, int | None]]:
    path = tmp_path / example.file
    path.write_text(example.text, encoding="utf-8")
    result = run_audit(AuditOptions(paths=[path], secrets=False))
    assert not result.errors, result.errors
    return [(f.rule, f.line) for f in result.findings]


@pytest.mark.parametrize(("rule", "example"), _cases("match"))
def test_match_example_is_found(rule: MisconfigRule, example: ConfigExample, tmp_path: Path) -> None:
    found = _audit(tmp_path, example)
    lines = [line for rule_id, line in found if rule_id == rule.id]
    assert lines, f"{rule.id} missed {example.file}:\n{example.text}"
    if example.line is not None:
        assert example.line in lines, f"{rule.id} pointed at {lines}, expected line {example.line}"


@pytest.mark.parametrize(("rule", "example"), _cases("no_match"))
def test_no_match_example_is_clean(rule: MisconfigRule, example: ConfigExample, tmp_path: Path) -> None:
    assert rule.id not in {rule_id for rule_id, _ in _audit(tmp_path, example)}, example.text
