"""Secret detection over raw bytes: keyword prefilter, one regex per rule, then the checks that drop noise.

Files are scanned as bytes, never decoded whole: the rules are ASCII, so UTF-8 and Latin-1 text match alike and
a stray invalid byte cannot stop a scan. Each rule runs only on files containing one of its keywords.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from aiperimeter.catalog.secret_rules import SecretRule
from aiperimeter.keys import parse_key

_LEFT = rb"(?<![A-Za-z0-9_+/-])"
_RIGHT = rb"(?![A-Za-z0-9_+/=-])"
# Shapes and words of documentation values, never of issued keys. Words count only at the start of the value or
# after a separator, so a random key that happens to contain "fake" is still found.
_PLACEHOLDER_SHAPE = re.compile(r"xxxx|XXXX|\*{3}|\.{3}|…|[<>]|\$\{|\{\{|%\(|abcdefgh|01234567|12345678")
_PLACEHOLDER_WORD = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:your|example|placeholder|changeme|change_me|dummy|redacted|sample|insert|replace|fake"
    r"|test|todo|secret|token|apikey|api_key|key_here|here)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SecretHit:
    rule: SecretRule
    secret: str
    start: int  # byte offsets of the secret in the file
    end: int


def entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def is_placeholder(secret: str, prefix_len: int = 0) -> bool:
    """Documentation values: `sk-...`, `YOUR_KEY`, `xxxx`, `<key>`, one repeated character, a counting run."""
    body = secret[prefix_len:]
    if _PLACEHOLDER_SHAPE.search(body) or _PLACEHOLDER_WORD.search(body):
        return True
    return len(set(body)) <= max(2, len(body) // 8)


def _assignment_regex(name: str, value: str) -> bytes:
    # NAME = v | NAME: v | "name": "v" | --name v | name => v ; the name part is case-insensitive.
    return (
        rb"(?i:[A-Za-z0-9_.-]{0,40}(?:" + name.encode() + rb")[A-Za-z0-9_.-]{0,40})[\"']?[ \t]{0,4}"
        rb"(?:=|:=|:|=>|[ \t])[ \t]{0,4}[\"']?(?P<secret>" + value.encode() + rb")" + _RIGHT
    )


def _prefix_length(rule: SecretRule, secret: str) -> int:
    """Characters of a known keyword at the start of the secret; placeholder checks look past them."""
    lowered = secret.lower()
    return max((len(k) for k in rule.keywords if lowered.startswith(k)), default=0)


class SecretDetector:
    def __init__(self, rules: Iterable[SecretRule]) -> None:
        self._rules: list[tuple[SecretRule, tuple[bytes, ...], re.Pattern[bytes]]] = []
        for rule in sorted(rules, key=lambda r: -r.priority):
            if rule.pattern is not None:
                regex = rule.pattern.encode()
                if rule.boundary:
                    regex = _LEFT + rb"(?:" + regex + rb")" + _RIGHT
            else:
                assert rule.assignment is not None
                regex = _assignment_regex(rule.assignment.name, rule.assignment.value)
            self._rules.append((rule, tuple(k.encode() for k in rule.keywords), re.compile(regex)))

    @property
    def rules(self) -> list[SecretRule]:
        return [rule for rule, _, _ in self._rules]

    def scan(self, data: bytes) -> list[SecretHit]:
        """Every secret in data, one hit per span (the highest-priority rule wins), in file order."""
        lowered = data.lower()
        hits: list[SecretHit] = []
        taken: list[tuple[int, int]] = []
        for rule, keywords, regex in self._rules:
            if not any(k in lowered for k in keywords):
                continue
            for match in regex.finditer(data):
                start, end = match.span("secret")
                if any(start < b and a < end for a, b in taken):
                    continue
                secret = match["secret"].decode("ascii", "replace")
                if not self._accept(rule, secret):
                    continue
                taken.append((start, end))
                hits.append(SecretHit(rule, secret, start, end))
        hits.sort(key=lambda h: h.start)
        return hits

    @staticmethod
    def _accept(rule: SecretRule, secret: str) -> bool:
        if rule.check == "aiperimeter-key":
            return parse_key(secret) is not None
        if is_placeholder(secret, _prefix_length(rule, secret)):
            return False
        return entropy(secret) >= rule.min_entropy


def redact(secret: str) -> str:
    """At most the first and last four characters, fewer for short values; never enough to use."""
    if len(secret) >= 24:
        return f"{secret[:4]}...{secret[-4:]}"
    if len(secret) >= 12:
        return f"{secret[:2]}...{secret[-2:]}"
    return "..."
