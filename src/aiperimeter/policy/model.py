"""The policy file, validated: which tools a key may declare and call, and what each argument may hold.

```yaml
description: read-only analytics agent
action: block                  # what happens to a call that breaks a rule: block | strip | audit
tools:
  run_sql:
    args:
      query:
        required: true
        sql: {dialect: postgres, tables: [orders, customers]}
  send_payment:
    action: strip              # this tool's calls are removed rather than failing the response
    schema: {type: object, required: [recipient, amount]}
    args:
      recipient: {in: [alice@example.com]}
      amount: {type: number, min: 0, max: 100}
  get_time: {}                 # listed: callable with any arguments
```

Deny by default: a tool that is not listed may not be declared or called. When a tool lists `args`, arguments it
does not list are refused too (`allow_other_args: true` lifts that).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiperimeter.policy.calls import Action
from aiperimeter.policy.constraints.path import PathConstraint
from aiperimeter.policy.constraints.shell import ShellConstraint
from aiperimeter.policy.constraints.sql import SQLConstraint
from aiperimeter.policy.constraints.url import URLConstraint
from aiperimeter.policy.constraints.values import SchemaConstraint, ValueConstraint

TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class ArgRule(ValueConstraint):
    """What one argument may hold: value checks (type, in, pattern, min, max, ...) and at most one typed parser."""

    required: bool = False
    sql: SQLConstraint | None = None
    shell: ShellConstraint | None = None
    url: URLConstraint | None = None
    path: PathConstraint | None = None

    def typed(self) -> list[tuple[str, SQLConstraint | ShellConstraint | URLConstraint | PathConstraint]]:
        found = (("sql", self.sql), ("shell", self.shell), ("url", self.url), ("path", self.path))
        return [(kind, c) for kind, c in found if c is not None]


class ToolRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    action: Action | None = None  # overrides the policy's action for this tool's violations
    schema_: SchemaConstraint | None = Field(None, alias="schema")
    args: dict[str, ArgRule] | None = None
    allow_other_args: bool = False

    @field_validator("schema_", mode="before")
    @classmethod
    def _wrap_schema(cls, value: Any) -> Any:
        return {"schema": value} if isinstance(value, dict) and "schema" not in value else value

    @field_validator("args")
    @classmethod
    def _one_parser(cls, value: dict[str, ArgRule] | None) -> dict[str, ArgRule] | None:
        for name, rule in (value or {}).items():
            if len(rule.typed()) > 1:
                kinds = ", ".join(kind for kind, _ in rule.typed())
                raise ValueError(f"argument {name!r} has several parsers ({kinds}); one value is one language")
        return value


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    action: Action = Action.BLOCK
    tools: dict[str, ToolRule] = Field(default_factory=dict)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, rule in value.items():
                if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
                    raise ValueError(f"tool name {name!r} must be 1-128 letters, digits or _ . : -")
                if rule is None:
                    value = {**value, name: {}}  # `get_time:` with nothing after it: listed, any arguments
        return value
