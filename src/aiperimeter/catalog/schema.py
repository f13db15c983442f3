"""The catalog's data model: fingerprints of AI services, validated at load with file and field in every error.

A fingerprint says which safe requests to send (probes), how to recognise the product from the answers
(`identify`), what to read out of them (`extract`), how to judge its authentication (`verdicts`, first match wins),
what an attacker could reach (`dangerous`), how to fix it, and carries its own examples that the tests replay.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
Verdict = Literal["open", "protected", "partial", "unclaimed", "unknown"]
Capability = Literal[
    "compute",
    "model-management",
    "code-execution",
    "tool-calls",
    "file-access",
    "data-access",
    "admin",
    "information",
]
GatewayKind = Literal["ollama", "openai", "vllm", "llamacpp", "anthropic"]
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Probe(Strict):
    """One safe request. POST is allowed only for the read-only JSON-RPC calls an MCP server answers."""

    id: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    jsonrpc: Literal["initialize", "tools/list"] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " \r\n\t#"):
            raise ValueError("must be an absolute path without spaces or fragments")
        return value

    @model_validator(mode="after")
    def _safe(self) -> Probe:
        if self.method == "POST" and self.jsonrpc is None:
            raise ValueError("POST probes are allowed only for read-only JSON-RPC (jsonrpc: initialize|tools/list)")
        if self.jsonrpc is not None and self.method != "POST":
            raise ValueError("jsonrpc probes are POST requests")
        return self

    @property
    def key(self) -> tuple[str, str, str | None, tuple[tuple[str, str], ...]]:
        """Identical requests from different fingerprints are sent once."""
        return (self.method, self.path, self.jsonrpc, tuple(sorted(self.headers.items())))

    def describe(self) -> str:
        return f"{self.method} {self.path}" + (f" (JSON-RPC {self.jsonrpc})" if self.jsonrpc else "")


class JsonCheck(Strict):
    """A test on a value inside a JSON answer. Paths: `a.b`, `items[]` (any element), `items[0]`."""

    path: str
    exists: bool | None = None
    equals: Any = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> JsonCheck:
        tests = [self.exists is not None, self.equals is not None, self.regex is not None]
        if sum(tests) != 1:
            raise ValueError("give exactly one of exists, equals, regex")
        if self.regex is not None:
            re.compile(self.regex)
        return self


class Condition(Strict):
    """A leaf tests one probe's answer (all given tests must hold); `all`, `any`, `not` combine conditions."""

    probe: str | None = None
    status: list[int] | None = None
    headers: dict[str, str] | None = None  # header name -> regex (case-insensitive names)
    body_contains: list[str] | None = None
    body_regex: str | None = None
    json_: list[JsonCheck] | None = Field(None, alias="json")
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(None, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        combinators = [c for c in (self.all, self.any, self.not_) if c is not None]
        leaf = any(x is not None for x in (self.status, self.headers, self.body_contains, self.body_regex, self.json_))
        if combinators and (leaf or self.probe is not None):
            raise ValueError("a condition is either a test of one probe or a combination (all/any/not), not both")
        if len(combinators) > 1:
            raise ValueError("use one of all, any, not per condition; nest them to combine")
        if not combinators and self.probe is None:
            raise ValueError("a test needs the probe it looks at")
        for pattern in [self.body_regex, *(self.headers or {}).values()]:
            if pattern is not None:
                re.compile(pattern)
        return self

    def probes(self) -> set[str]:
        found = {self.probe} if self.probe else set()
        for child in [*(self.all or []), *(self.any or []), *([self.not_] if self.not_ else [])]:
            found |= child.probes()
        return found


class Extractor(Strict):
    """Reads one value: from a JSON path, from a regex's group `v` over the body, or from a header."""

    probe: str
    json_: str | None = Field(None, alias="json")
    regex: str | None = None
    header: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> Extractor:
        if sum(x is not None for x in (self.json_, self.regex, self.header)) != 1:
            raise ValueError("give exactly one of json, regex, header")
        if self.regex is not None and "(?P<v>" not in self.regex:
            raise ValueError("the regex must capture the value as (?P<v>...)")
        return self


class Extract(Strict):
    version: list[Extractor] = Field(default_factory=list)  # first that yields wins
    models: list[Extractor] = Field(default_factory=list)  # all values, deduplicated


class VerdictRule(Strict):
    verdict: Verdict
    when: Condition
    note: str = ""


class Dangerous(Strict):
    endpoint: str  # "METHOD /path" as an attacker would call it
    capability: Capability
    severity: Severity
    why: str
    # When this endpoint is reachable; default: whenever the verdict is open or unclaimed.
    reachable_when: Condition | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        method, _, path = value.partition(" ")
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "WS") or not path.startswith("/"):
            raise ValueError("write it as 'METHOD /path', e.g. 'POST /api/pull'")
        return value


class ExampleReply(Strict):
    status: int = 200
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_: Any = Field(None, alias="json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_body(self) -> ExampleReply:
        if self.body is not None and self.json_ is not None:
            raise ValueError("give body or json, not both")
        return self


class Example(Strict):
    """A captured exchange. Probes it does not list answer 404 (a real server's answer to an unknown path)."""

    name: str
    responses: dict[str, ExampleReply]
    verdict: Verdict | None = None
    version: str | None = None
    models: list[str] | None = None


class Examples(Strict):
    match: list[Example] = Field(min_length=1)
    no_match: list[Example] = Field(default_factory=list)


class Runs(Strict):
    """How the product shows up where it is started: container images, command lines, process names."""

    images: list[str] = Field(default_factory=list)  # regexes searched in the image reference
    commands: list[str] = Field(default_factory=list)  # regexes searched in the command line, words joined by spaces
    processes: list[str] = Field(default_factory=list)  # process names, as the process table shows them

    @field_validator("images", "commands")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            re.compile(pattern)
        return value


class Fingerprint(Strict):
    id: Annotated[str, Field(pattern=_ID.pattern)]
    name: str
    category: Literal[
        "model-server",
        "llm-platform",
        "chat-ui",
        "agent-platform",
        "vector-db",
        "notebook",
        "ml-ops",
        "mcp",
        "generic",
    ]
    ports: list[int] = Field(min_length=1)
    priority: int = Field(50, ge=0, le=100)  # more specific products are judged first; generics last
    generic: bool = False
    specific_because: str = Field(min_length=10)
    lookalikes: list[str] = Field(default_factory=list)
    probes: list[Probe] = Field(min_length=1)
    identify: Condition
    extract: Extract = Field(default_factory=Extract)
    verdicts: list[VerdictRule] = Field(min_length=1)
    exposure: Severity = "high"  # severity of an open instance before dangerous endpoints are counted
    dangerous: list[Dangerous] = Field(default_factory=list)
    remediation: list[str] = Field(min_length=1)
    gateway_kind: GatewayKind | None = None
    references: list[str] = Field(min_length=1)
    runs: Runs = Field(default_factory=Runs)
    examples: Examples

    @model_validator(mode="after")
    def _consistent(self) -> Fingerprint:
        ids = [p.id for p in self.probes]
        if len(ids) != len(set(ids)):
            raise ValueError("probe ids must be unique")
        known = set(ids)
        used = self.identify.probes()
        for rule in self.verdicts:
            used |= rule.when.probes()
        for item in self.dangerous:
            if item.reachable_when is not None:
                used |= item.reachable_when.probes()
        for extractor in [*self.extract.version, *self.extract.models]:
            used.add(extractor.probe)
        for example in [*self.examples.match, *self.examples.no_match]:
            used |= set(example.responses)
        if unknown := used - known:
            raise ValueError(f"refers to probes that are not declared: {', '.join(sorted(unknown))}")
        for example in self.examples.match:
            if example.verdict is None:
                raise ValueError(f"match example {example.name!r} must state its expected verdict")
        return self
