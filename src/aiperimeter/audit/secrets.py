"""Secret detection over raw bytes: keyword prefilter, one regex per rule, then the checks that drop noise.

Files are scanned as bytes, never decoded whole: the rules are ASCII, so UTF-8 and Latin-1 text match alike and
a stray invalid byte cannot stop a scan. Each rule runs only on files containing one of its keywords.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiperimeter.catalog.secret_rules import SecretRule
from aiperimeter.keys import parse_key

# Not after a token character (a longer token); "/" is allowed before a key, as in https://TOKEN@host.
_LEFT = rb"(?<![A-Za-z0-9_+-])"
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
    # Too few distinct characters for a random value of this length (a random 32-character body has about 20).
    return len(set(body)) < min(8, len(body) // 4 + 1)


def _assignment_regex(name: str, value: str) -> bytes:
    # NAME = v | NAME: v | "name": "v" | --name v | name => v | environ["NAME"] = "v" | getenv("NAME", "v");
    # the name part is case-insensitive.
    return (
        rb"(?i:[A-Za-z0-9_.-]{0,40}(?:" + name.encode() + rb")[A-Za-z0-9_.-]{0,40})[\"'\]]{0,2}[ \t]{0,4}"
        rb"(?:=|:=|:|=>|,|[ \t])[ \t]{0,4}[\"']?(?P<secret>" + value.encode() + rb")" + _RIGHT
    )


def _prefix_length(rule: SecretRule, secret: str) -> int:
    """Characters of a known keyword at the start of the secret; placeholder checks look past them."""
    lowered = secret.lower()
    return max((len(k) for k in rule.keywords if lowered.startswith(k)), default=0)


# A rule's regex runs only on a window around each occurrence of one of its keywords: the keyword is the secret's
# prefix or a word of the name it is assigned to, so the secret lies within these bounds of it.
_BEFORE = 160
_AFTER = 2048
_LONGEST = 1024  # no secret is longer; a keyword closer than this to a window's end gets its own window


class _Keywords:
    """Every occurrence of any keyword, found in one linear pass (RE2 where installed, else one scan each)."""

    def __init__(self, keywords: Iterable[bytes]) -> None:
        self.keywords = sorted(set(keywords))
        self._re2: Any = None
        try:
            import re2

            options = re2.Options()
            options.case_sensitive = False
            options.encoding = re2.Options.Encoding.LATIN1  # any byte is a character: no decoding, no errors
            self._re2 = re2.compile(b"|".join(re.escape(k) for k in self.keywords), options)
        except ImportError:  # pragma: no cover - the wheel exists for every platform we ship to
            pass

    def find(self, data: bytes) -> Iterator[tuple[int, list[bytes]]]:
        """Positions with the keywords found there. RE2 reports matches that do not overlap, so the keywords
        around each match are listed again by a plain check (`sk_` and `sk_live_` start at the same byte)."""
        if self._re2 is None:
            lowered = data.lower()
            for keyword in self.keywords:
                at = lowered.find(keyword)
                while at != -1:
                    yield at, [keyword]
                    at = lowered.find(keyword, at + 1)
            return
        reach = max(map(len, self.keywords))
        for match in self._re2.finditer(data):
            at = match.start()
            around = data[max(0, at - reach) : at + 2 * reach].lower()
            yield at, [k for k in self.keywords if k in around]


class SecretDetector:
    def __init__(self, rules: Iterable[SecretRule]) -> None:
        self._rules: list[tuple[SecretRule, re.Pattern[bytes]]] = []
        self._by_keyword: dict[bytes, list[int]] = defaultdict(list)
        for index, rule in enumerate(sorted(rules, key=lambda r: -r.priority)):
            if rule.pattern is not None:
                regex = rule.pattern.encode()
                if rule.boundary:
                    regex = _LEFT + rb"(?:" + regex + rb")" + _RIGHT
            else:
                assert rule.assignment is not None
                regex = _assignment_regex(rule.assignment.name, rule.assignment.value)
            self._rules.append((rule, re.compile(regex)))
            for keyword in rule.keywords:
                self._by_keyword[keyword.encode()].append(index)
        self._keywords = _Keywords(self._by_keyword)

    @property
    def rules(self) -> list[SecretRule]:
        return [rule for rule, _ in self._rules]

    def scan(self, data: bytes) -> list[SecretHit]:
        """Every secret in data, one hit per span (the highest-priority rule wins), in file order."""
        near: dict[int, list[int]] = defaultdict(list)  # rule index -> keyword positions
        for at, keywords in self._keywords.find(data):
            for keyword in keywords:
                for index in self._by_keyword[keyword]:
                    near[index].append(at)
        hits: list[SecretHit] = []
        taken: set[tuple[int, int]] = set()
        for index in sorted(near):  # rules in priority order
            rule, regex = self._rules[index]
            covered = -1
            for at in near[index]:
                if at < covered:
                    continue
                start, end = max(0, at - _BEFORE), min(len(data), at + _AFTER)
                covered = end - _LONGEST
                for match in regex.finditer(data, start, end):
                    span = match.span("secret")
                    if span[1] == end < len(data) or any(span[0] < b and a < span[1] for a, b in taken):
                        continue  # cut by the window's end, or already claimed by a higher-priority rule
                    secret = match["secret"].decode("ascii", "replace")
                    if self._accept(rule, secret):
                        taken.add(span)
                        hits.append(SecretHit(rule, secret, *span))
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
