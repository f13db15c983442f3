"""The attack catalog (tests/data/attacks/*.yaml): its format, schema and loader. The runner is
tests/hardening/attacks.py.

Catalog format, one file per category (the file's stem is the category), a list of cases:

    - id: ollama-pull-dot-segment          # unique across the catalog
      reference: https://...               # CVE, advisory, RFC or issue (optional)
      deployment: ollama                   # one of DEPLOYMENTS
      raw: |                               # the request head, or the whole request with `raw_body: true`
        POST /api/./pull HTTP/1.1
        Host: 127.0.0.1
        Authorization: Bearer {key}
      body: '{"model":"llama3"}'           # optional; Content-Type and Content-Length are added
      must_not: {reach_upstream: any, status: [2xx], leak_key: true, forward_header: [authorization]}
      expect_status: [400, 403]            # optional: the first status must be one of these (0: no response)

Bytes, in this order:
1. placeholders: {key} {admin_key} {scoped_key} {revoked_key} {expired_key} {unknown_key} (well formed, never
   issued), near misses of {key} ({key_truncated} {key_upper} {key_flipped} {key_cyrillic} {key_id_only}
   {basic_user} {basic_pass}: `spellings` in attacks.py), {jwt:VARIANT} (tests/hardening/jwts.py), {gateway_port},
   {upstream_port}, {repeat:N:TEXT} (TEXT N times; TEXT holds no braces, write them as \\x7b and \\x7d).
   Only these names are placeholders, so JSON braces stay as written.
2. line ends: each newline of `raw` becomes CRLF, unless `crlf: literal` keeps bare LF.
3. escapes in `raw` and `slow` pieces: \\r \\n \\t \\\\ and \\xHH (one raw byte); in `body` only \\xHH, so JSON
   escapes such as \\u0041 and \\\\ pass through as written.
4. framing: unless `raw_body: true`, the runner ends the head with `Connection: close`, and with Content-Type and
   Content-Length when there is a body; with `raw_body: true` the bytes are sent exactly (smuggling).

`slow:` replaces `raw` with pieces [text, pause_seconds] sent one after another (at most SLOW_BUDGET seconds of
pauses), each built like `raw` (steps 1-3; in a YAML double-quoted piece YAML's own escapes apply first, so "\n" is
a line end and becomes CRLF); `probe_between: true` sends a normal request on another connection during every
pause, and it must be served; `closed_within: S` requires the gateway to close the connection within S seconds of
the last piece (the deployments run with 2-second client timeouts), so a slow client is bounded in time.

A case that breaks the schema is refused at load with its file and id (CatalogError).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tests.support.upstream import Seen

CATALOG = Path(__file__).resolve().parents[1] / "data" / "attacks"
CATEGORIES = (
    "auth_bypass",
    "jwt",
    "route_bypass",
    "smuggling",
    "upgrade",
    "host_origin",
    "oversized",
    "slow_clients",
    "json_evasion",
)
DEPLOYMENTS = ("ollama", "vllm", "llamacpp", "vllm-jwt", "ollama-tools")
GATEWAY_OF = {"ollama": "ollama", "ollama-tools": "ollama", "vllm": "vllm", "vllm-jwt": "vllm", "llamacpp": "llamacpp"}
SLOW_BUDGET = 6.0


class UpstreamRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path_regex: str | None = None
    body_regex: str | None = None  # searched in the forwarded body, read as latin-1
    method: str | None = None

    @field_validator("path_regex", "body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    def matches(self, call: Seen) -> bool:
        if self.method is not None and call.method != self.method:
            return False
        if self.body_regex is not None and re.search(self.body_regex, call.body.decode("latin-1")) is None:
            return False
        return self.path_regex is None or re.search(self.path_regex, call.raw_path) is not None


class MustNot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reach_upstream: Literal["any"] | UpstreamRule | tuple[UpstreamRule, ...] | None = None
    status: tuple[str, ...] = ()
    leak_key: bool = True
    forward_header: tuple[str, ...] = ()
    response_header: tuple[str, ...] = ()  # headers no response to the case may carry (as a CORS grant)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        items = [str(v).lower() for v in (value if isinstance(value, list | tuple) else [value])]
        for item in items:
            if not re.fullmatch(r"[1-5](\d\d|xx)", item):
                raise ValueError(f"{item!r} is not a status (as 200) or a class (as 2xx)")
        return tuple(items)

    def rules(self) -> tuple[UpstreamRule, ...]:
        if self.reach_upstream is None:
            return ()
        if self.reach_upstream == "any":
            return (UpstreamRule(),)
        if isinstance(self.reach_upstream, UpstreamRule):
            return (self.reach_upstream,)
        return tuple(self.reach_upstream)  # type: ignore[arg-type]

    def forbids(self, status: int) -> bool:
        text = str(status)
        return any(rule == text or (rule.endswith("xx") and rule[0] == text[0]) for rule in self.status)


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    category: str = ""
    reference: str | None = None
    note: str | None = None
    deployment: Literal["ollama", "vllm", "llamacpp", "vllm-jwt", "ollama-tools"]
    raw: str | None = None
    body: str | None = None
    raw_body: bool = False
    crlf: Literal["crlf", "literal"] = "crlf"
    slow: tuple[tuple[str, float], ...] = ()
    probe_between: bool = False
    closed_within: float | None = Field(None, gt=0, le=10)  # after the last slow piece, the gateway must hang up
    must_not: MustNot
    expect_status: tuple[int, ...] = ()
    expect_statuses: tuple[int, ...] | None = None

    @field_validator("slow")
    @classmethod
    def _slow(cls, value: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
        total = sum(pause for _, pause in value)
        if total > SLOW_BUDGET or any(pause < 0 for _, pause in value):
            raise ValueError(f"pauses must be >= 0 and add up to at most {SLOW_BUDGET} s (got {total:.1f})")
        return value

    def model_post_init(self, context: Any) -> None:
        if (self.raw is None) == (not self.slow):
            raise ValueError("give exactly one of `raw` and `slow`")
        if self.raw_body and self.body is not None:
            raise ValueError("`raw_body: true` carries its body in `raw`; drop `body`")


class CatalogError(ValueError):
    pass


def load_catalog(directory: Path = CATALOG) -> list[Case]:
    cases: list[Case] = []
    seen: dict[str, str] = {}
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogError(f"{directory}: no *.yaml attack files")
    for path in files:
        try:
            items = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path.name}: not YAML: {exc}") from None
        if not isinstance(items, list):
            raise CatalogError(f"{path.name}: must be a list of cases")
        for index, item in enumerate(items):
            case_id = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
            if not isinstance(item, dict):
                raise CatalogError(f"{path.name}: case {case_id}: must be a mapping")
            try:
                case = Case.model_validate({**item, "category": path.stem})
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'case'}: {e['msg']}" for e in exc.errors())
                raise CatalogError(f"{path.name}: case {case_id}: {problems}") from None
            if case.id in seen:
                raise CatalogError(f"{path.name}: case {case.id}: id already used in {seen[case.id]}")
            seen[case.id] = path.name
            cases.append(case)
    return cases
