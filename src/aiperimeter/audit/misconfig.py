"""Misconfiguration rules judged against subjects: each match carries the lines and settings that prove it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from aiperimeter.audit.subjects import Subject
from aiperimeter.catalog.misconfig_rules import ArgTest, Condition, EnvTest, MisconfigRule

Evidence = list[tuple[int, str]]  # (line, what was seen there)
_SECRET_NAME = re.compile(r"key|token|secret|passw|credential|auth_?code", re.IGNORECASE)
_HOST_NETWORK = {
    "compose": "network_mode: host",
    "kubernetes": "hostNetwork: true",
    "shell": "--network host",
    "systemd": "--network host",
}


@dataclass(frozen=True)
class Violation:
    rule: MisconfigRule
    subject: Subject
    line: int
    evidence: tuple[str, ...]


@cache
def _compiled(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _shown(name: str, value: str) -> str:
    if not value:
        return f"{name}=''"
    if _SECRET_NAME.search(name) and not value.startswith(("<", "${")):
        return f"{name}=*****"
    return f"{name}={value[:60]}"


def _env(test: EnvTest, subject: Subject, inherit: bool) -> Evidence | None:
    found = []
    variables = subject.inherited | subject.env if inherit else subject.env
    for name, (value, line) in variables.items():
        if not _compiled(test.name).fullmatch(name):
            continue
        value = value.strip().strip("\"'")
        if (test.value is None and value) or (
            test.value is not None and _compiled(test.value, re.IGNORECASE).fullmatch(value)
        ):
            found.append((line, _shown(name, value)))
    return found or None


def _arg(test: ArgTest, subject: Subject) -> Evidence | None:
    line = subject.argv_line or subject.line
    words = subject.argv
    for i, word in enumerate(words):
        for flag in test.flag:
            if word == flag:
                value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else ""
            elif word.startswith(flag + "="):
                value = word[len(flag) + 1 :]
            else:
                continue
            value = value.strip("\"'")
            if test.value is None or _compiled(test.value, re.IGNORECASE).fullmatch(value):
                shown = "''" if not value else "*****" if _SECRET_NAME.search(flag) else value
                return [(line, f"{flag} {shown}")]
    return None


def evaluate(condition: Condition, subject: Subject, inherit: bool = True) -> Evidence | None:
    """The evidence that the condition holds for the subject, or None when it does not hold.

    Variables a subject inherits from an env_file always count as present (an absence test sees them), but they
    prove a setting only when `inherit` is true: a rule for any subject would otherwise report the same env file
    once for every service that loads it; the env file is audited on its own."""
    if condition.env is not None:
        return _env(condition.env, subject, inherit)
    if condition.arg is not None:
        return _arg(condition.arg, subject)
    if condition.published is not None:
        return [(p.line, p.describe()) for p in subject.ports if p.beyond_loopback] or None
    if condition.host_network is not None:
        shares = subject.host_network is not None
        if shares != condition.host_network:
            return None
        return [(subject.host_network or subject.line, _HOST_NETWORK.get(subject.source, "host network"))]
    if condition.exposed_by is not None:
        return [
            (subject.line, f"exposed by {what} ({how})")
            for how, _, what in subject.exposures
            if how in condition.exposed_by
        ] or None
    if condition.missing is not None:
        return None if _present(subject.document, condition.missing) else [(subject.line, f"{condition.missing} unset")]
    if condition.all is not None:
        evidence: Evidence = []
        for child in condition.all:
            found = evaluate(child, subject, inherit)
            if found is None:
                return None
            evidence += found
        return evidence
    if condition.any is not None:
        for child in condition.any:
            if (found := evaluate(child, subject, inherit)) is not None:
                return found
        return None
    assert condition.not_ is not None
    if evaluate(condition.not_, subject, True) is not None:
        return None
    missing = absent(condition.not_)
    return [(subject.line, f"no {missing}")] if missing else []


def absent(condition: Condition) -> str | None:
    """Names the setting a negated presence test found missing ("no --api-key"); None for other tests."""
    if condition.env is not None and condition.env.value in (None, ".*", ".+"):
        return condition.env.name.replace("\\", "")
    if condition.arg is not None and condition.arg.value is None:
        return "/".join(condition.arg.flag)
    if condition.missing is not None:
        return condition.missing
    if condition.any is not None:
        names = [absent(child) for child in condition.any]
        return " or ".join(n for n in names if n) or None
    return None


def _present(document: Any, dotted: str) -> bool:
    node = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node not in (None, "", [], {})


def applies(rule: MisconfigRule, subject: Subject) -> bool:
    if subject.source not in rule.sources:
        return False
    if not rule.products:
        return True
    if "*" in rule.products:
        return bool(subject.products)
    return bool(subject.products & set(rule.products))


def violations(rules: Iterable[MisconfigRule], subjects: Iterable[Subject]) -> list[Violation]:
    found = []
    for subject in subjects:
        for rule in rules:
            if not applies(rule, subject):
                continue
            evidence = evaluate(rule.when, subject, inherit=bool(rule.products))
            if evidence is None:
                continue
            line = min((line for line, text in evidence if not text.startswith("no ")), default=subject.line)
            found.append(Violation(rule, subject, line, tuple(dict.fromkeys(text for _, text in evidence))))
    return found
