"""Every secret rule's own examples: each match example yields exactly its fake key, each no_match nothing."""

from __future__ import annotations

import pytest

from aiperimeter.audit.secrets import SecretDetector, redact
from aiperimeter.catalog.fake import expand_with_values
from aiperimeter.catalog.loader import secret_rules
from aiperimeter.catalog.secret_rules import SecretRule

RULES = secret_rules()
ALL = SecretDetector(RULES)


def _cases(kind: str) -> list[object]:
    return [
        pytest.param(rule, i, id=f"{rule.id}-{kind}-{i}")
        for rule in RULES
        for i in range(len(getattr(rule.examples, kind)))
    ]


@pytest.mark.parametrize(("rule", "index"), _cases("match"))
def test_match_example_finds_its_key(rule: SecretRule, index: int) -> None:
    example = rule.examples.match[index]
    text, values = expand_with_values(example.text, f"{rule.id}:match:{index}")
    hits = SecretDetector([rule]).scan(text.encode())
    assert [h.secret for h in hits] == values[-1:], f"{rule.id}: {example.text}"
    # With every rule loaded, this rule still owns the key (no other rule claims it first).
    assert [(h.rule.id, h.secret) for h in ALL.scan(text.encode())] == [(rule.id, values[-1])]
    assert hits[0].secret not in redact(hits[0].secret)


@pytest.mark.parametrize(("rule", "index"), _cases("no_match"))
def test_no_match_example_finds_nothing(rule: SecretRule, index: int) -> None:
    example = rule.examples.no_match[index]
    text, _ = expand_with_values(example.text, f"{rule.id}:no_match:{index}")
    assert SecretDetector([rule]).scan(text.encode()) == [], f"{rule.id}: {example.text}"


def test_rule_ids_are_unique_and_providers_named() -> None:
    assert len({r.id for r in RULES}) == len(RULES)
    assert all(r.provider.strip() for r in RULES)


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        pytest.param("sk-ant-api03-" + "0123456789abcdefghijklmnop", "sk-a...mnop", id="long"),
        pytest.param("abcdefghijklmn", "ab...mn", id="medium"),
        pytest.param("short", "...", id="short"),
    ],
)
def test_redaction_shows_at_most_four_and_four(secret: str, shown: str) -> None:
    assert redact(secret) == shown
