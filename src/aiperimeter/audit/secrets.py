"""Secret detection over raw bytes: keyword prefilter, one regex per rule, then the checks that drop noise.

Files are scanned as bytes, never decoded whole: the rules are ASCII, so UTF-8 and Latin-1 text match alike and
a stray invalid byte cannot stop a scan. Each rule runs only on files containing one of its keywords.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
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
    # the name part is case-insensitive. The match starts at the provider's word (what comes before it in the name
    # does not matter), so the engine never backtracks over a run of name characters at every position.
    return (
        rb"(?i:" + name.encode() + rb")(?i:[A-Za-z0-9_.-]{0,40})[\"'\]]{0,2}[ \t]{0,4}"
        rb"(?:=|:=|:|=>|,|[ \t])[ \t]{0,4}[\"']?(?P<secret>" + value.encode() + rb")" + _RIGHT
    )


def _prefix_length(rule: SecretRule, secret: str) -> int:
    """Characters of a known keyword at the start of the secret; placeholder checks look past them."""
    lowered = secret.lower()
    return max((len(k) for k in rule.keywords if lowered.startswith(k)), default=0)


# A rule's regex runs only on a window around each occurrence of one of its keywords: the keyword is the secret's
# prefix or a word of the name it is assigned to, so the secret lies within these bounds of it.
_BEFORE = 160
_AFTER = 768
_LONGEST = 512  # no secret is longer; a keyword closer than this to a window's end gets its own window


class _Keywords:
    """Which keywords a file holds, in one linear pass (an RE2 set where installed, else one scan each)."""

    def __init__(self, keywords: Iterable[bytes]) -> None:
        self.keywords = sorted(set(keywords))
        self._set: Any = None
        try:
            import re2

            options = re2.Options()
            options.case_sensitive = False
            options.encoding = re2.Options.Encoding.LATIN1  # any byte is a character: no decoding, no errors
            self._set = re2.Set.SearchSet(options)
            for keyword in self.keywords:
                self._set.Add(re.escape(keyword))
            self._set.Compile()
        except ImportError:  # pragma: no cover - the wheel exists for every platform we ship to
            pass

    def present(self, data: bytes, lowered: bytes | None = None) -> list[bytes]:
        if self._set is not None:
            return [self.keywords[i] for i in self._set.Match(data) or ()]  # None when nothing matches
        lowered = data.lower() if lowered is None else lowered
        return [k for k in self.keywords if k in lowered]


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
        present = self._keywords.present(data)
        if not present:
            return []
        lowered = data.lower()
        wanted = sorted({index for keyword in present for index in self._by_keyword[keyword]})
        hits: list[SecretHit] = []
        taken: set[tuple[int, int]] = set()
        for index in wanted:  # rules in priority order
            rule, regex = self._rules[index]
            for keyword in rule.keywords:
                self._near(rule, regex, keyword.encode(), data, lowered, hits, taken)
        hits.sort(key=lambda h: h.start)
        return hits

    def _near(
        self,
        rule: SecretRule,
        regex: re.Pattern[bytes],
        keyword: bytes,
        data: bytes,
        lowered: bytes,
        hits: list[SecretHit],
        taken: set[tuple[int, int]],
    ) -> None:
        """Run the rule's regex on windows around the keyword's occurrences; the search for the next occurrence
        starts past what a window covered, so a keyword on every line costs one window per window length."""
        at = lowered.find(keyword)
        while at != -1:
            start, end = max(0, at - _BEFORE), min(len(data), at + _AFTER)
            for match in regex.finditer(data, start, end):
                span = match.span("secret")
                if span[1] == end < len(data) or any(span[0] < b and a < span[1] for a, b in taken):
                    continue  # cut by the window's end, or already claimed by a higher-priority rule
                secret = match["secret"].decode("ascii", "replace")
                if self._accept(rule, secret):
                    taken.add(span)
                    hits.append(SecretHit(rule, secret, *span))
            at = lowered.find(keyword, max(at + 1, end - _LONGEST))

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
