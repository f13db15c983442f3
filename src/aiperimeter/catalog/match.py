"""The pure engine: answers in, identification and verdict out. No I/O, so every example runs without sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from aiperimeter.catalog.schema import (
    SEVERITIES,
    Condition,
    Dangerous,
    ExampleReply,
    Extractor,
    Fingerprint,
    JsonCheck,
    Severity,
    Verdict,
)

_MISSING = object()


@dataclass(frozen=True)
class Reply:
    """One probe's answer, as much of it as the scanner keeps (the body is capped by the prober)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercase names
    body: bytes = b""

    @cached_property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @cached_property
    def json(self) -> Any:
        """The body as JSON; for an SSE answer (MCP streamable HTTP), the first `data:` event's JSON."""
        body = self.body
        if self.headers.get("content-type", "").startswith("text/event-stream") or body.startswith(
            (b"event:", b"data:")
        ):
            lines = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
            body = lines[0] if lines else b""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return _MISSING

    @classmethod
    def from_example(cls, example: ExampleReply) -> Reply:
        headers = {k.lower(): v for k, v in example.headers.items()}
        if example.json_ is not None:
            headers.setdefault("content-type", "application/json")
            return cls(example.status, headers, orjson.dumps(example.json_))
        return cls(example.status, headers, (example.body or "").encode())


Replies = Mapping[str, Reply]  # by probe id
NOT_FOUND = Reply(404, {"content-type": "text/plain"}, b"404: Not Found")


def json_values(doc: Any, path: str) -> Iterator[Any]:
    """Every value at `path` (`a.b`, `list[]` for any element, `list[0]`, `[]` at the root)."""
    values = [doc]
    for token in path.split("."):
        name, _, index = token.partition("[")
        next_values = []
        for value in values:
            if name:
                value = value.get(name, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                continue
            if not index:
                next_values.append(value)
            elif not isinstance(value, list):
                continue
            elif index == "]":
                next_values.extend(value)
            elif index[:-1].isdigit() and int(index[:-1]) < len(value):
                next_values.append(value[int(index[:-1])])
        values = next_values
    return iter(values)


def _json_check(doc: Any, check: JsonCheck) -> bool:
    if doc is _MISSING:
        return False
    values = list(json_values(doc, check.path))
    if check.exists is not None:
        return bool(values) == check.exists
    if check.equals is not None:
        return any(v == check.equals and type(v) is type(check.equals) for v in values)
    assert check.regex is not None
    return any(isinstance(v, str | int | float) and re.search(check.regex, str(v)) for v in values)


def holds(condition: Condition, replies: Replies) -> bool:
    if condition.all is not None:
        return all(holds(c, replies) for c in condition.all)
    if condition.any is not None:
        return any(holds(c, replies) for c in condition.any)
    if condition.not_ is not None:
        return not holds(condition.not_, replies)
    assert condition.probe is not None
    reply = replies.get(condition.probe)
    if reply is None:
        return False
    if condition.status is not None and reply.status not in condition.status:
        return False
    if condition.headers is not None:
        for name, pattern in condition.headers.items():
            value = reply.headers.get(name.lower())
            if value is None or not re.search(pattern, value):
                return False
    if condition.body_contains is not None and not all(s in reply.text for s in condition.body_contains):
        return False
    if condition.body_regex is not None and not re.search(condition.body_regex, reply.text):
        return False
    return condition.json_ is None or all(_json_check(reply.json, check) for check in condition.json_)


def _extract(extractor: Extractor, replies: Replies) -> list[str]:
    reply = replies.get(extractor.probe)
    if reply is None or not 200 <= reply.status < 300:
        return []
    if extractor.header is not None:
        value = reply.headers.get(extractor.header.lower())
        return [value] if value else []
    if extractor.regex is not None:
        return [m.group("v") for m in re.finditer(extractor.regex, reply.text)]
    assert extractor.json_ is not None
    return [str(v) for v in json_values(reply.json, extractor.json_) if isinstance(v, str | int | float)]


# Scanned services hand out secrets (Langflow's auto-login token, settings dumps): evidence never repeats them.
_SECRET_FIELD = re.compile(
    r'("[^"]*(?:token|secret|password|passwd|api[_-]?key|apikey|authorization|credential|session)[^"]*"\s*:\s*)'
    r'("(?:[^"\\]|\\.)*"|[^,}\]\s]+)',
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWT
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"  # OpenAI-style and similar keys
    r"|\baip_[a-z2-7]{12}_[0-9A-Za-z]{20,}"  # ours
    r"|\b[A-Za-z0-9_-]{40,}\b"  # any long opaque token
)


def redact(text: str) -> str:
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + '"[redacted]"', text)
    return _SECRET_VALUE.sub("[redacted]", text)


def _clean(value: str, limit: int = 120) -> str:
    """Values from scanned hosts are hostile: printable, one line, bounded."""
    return "".join(c for c in value if c.isprintable())[:limit]


@dataclass(frozen=True)
class Evidence:
    request: str
    status: int
    excerpt: str


@dataclass(frozen=True)
class Identification:
    fingerprint: Fingerprint
    verdict: Verdict
    verdict_note: str
    severity: Severity
    version: str | None
    models: tuple[str, ...]
    dangerous: tuple[Dangerous, ...]
    evidence: tuple[Evidence, ...]


def severity_of(fp: Fingerprint, verdict: Verdict, reachable: tuple[Dangerous, ...]) -> Severity:
    if verdict == "protected":
        return "info"
    if verdict == "unknown":
        return "low"
    if verdict == "unclaimed":
        return "critical"
    base: Severity = fp.exposure if verdict == "open" else "medium"
    return max([base, *(d.severity for d in reachable)], key=SEVERITIES.index)


def _evidence(fp: Fingerprint, probe_ids: set[str], replies: Replies) -> tuple[Evidence, ...]:
    out = []
    for probe in fp.probes:
        reply = replies.get(probe.id)
        if probe.id in probe_ids and reply is not None:
            excerpt = _clean(redact(" ".join(reply.text[:4096].split())), 200)
            out.append(Evidence(probe.describe(), reply.status, excerpt))
    return tuple(out)


def identify(fp: Fingerprint, replies: Replies) -> Identification | None:
    """Judge one fingerprint against the answers; None when it does not match."""
    if not holds(fp.identify, replies):
        return None
    verdict: Verdict = "unknown"
    note = "the answers fit no known authentication state"
    used = fp.identify.probes()
    for rule in fp.verdicts:
        if holds(rule.when, replies):
            verdict, note = rule.verdict, rule.note
            used |= rule.when.probes()
            break
    reachable = tuple(
        d
        for d in fp.dangerous
        if (holds(d.reachable_when, replies) if d.reachable_when is not None else verdict in ("open", "unclaimed"))
    )
    version = next((_clean(v, 64) for e in fp.extract.version for v in _extract(e, replies) if v), None)
    models = tuple(dict.fromkeys(_clean(m) for e in fp.extract.models for m in _extract(e, replies) if m))[:50]
    return Identification(
        fingerprint=fp,
        verdict=verdict,
        verdict_note=note,
        severity=severity_of(fp, verdict, reachable),
        version=version,
        models=models,
        dangerous=reachable,
        evidence=_evidence(fp, used, replies),
    )


def best_match(candidates: list[Fingerprint], replies_for: Mapping[str, Replies]) -> Identification | None:
    """The most specific matching fingerprint (priority, then specific over generic)."""
    for fp in sorted(candidates, key=lambda f: (f.generic, -f.priority, f.id)):
        found = identify(fp, replies_for[fp.id])
        if found is not None:
            return found
    return None
