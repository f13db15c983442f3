"""The data model of secret rules: what a credential looks like, how to find it fast, and its own examples.

A rule finds its secret either by `pattern` (a regex with a group named `secret`, for keys with a recognisable
prefix) or by `assignment` (a value assigned to a name that mentions the provider, for keys without a prefix).
`keywords` are lowercase literals of which at least one must occur in a file before the rule's regex runs.
Examples hold fake keys as `{{fake ...}}` templates (see `catalog.fake`), never realistic keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from aiperimeter.catalog.schema import Severity, Strict

_ID = r"[a-z0-9][a-z0-9-]*"


class Assignment(Strict):
    """`NAME = value`, `NAME: value`, `"name": "value"` or `--name value`, where NAME matches `name`."""

    name: str  # regex, case-insensitive, found inside the assigned name
    value: str  # regex for the secret itself, case-sensitive

    @field_validator("name", "value")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


class SecretExample(Strict):
    text: str
    note: str = ""


class SecretExamples(Strict):
    match: list[SecretExample] = Field(min_length=1)
    no_match: list[SecretExample] = Field(min_length=1)


class SecretRule(Strict):
    id: Annotated[str, Field(pattern=_ID)]
    provider: str
    name: str
    severity: Severity
    keywords: list[str] = Field(min_length=1)
    pattern: str | None = None
    assignment: Assignment | None = None
    boundary: bool = True  # the secret may not continue a longer token on either side
    min_entropy: float = Field(0.0, ge=0, le=7)  # Shannon bits per character of the secret
    check: Literal["aiperimeter-key"] | None = None  # a format check beyond the regex
    priority: int = Field(50, ge=0, le=100)  # where two rules find the same text, the higher wins
    why: str = Field(min_length=10)
    fix: str = Field(min_length=10)
    references: list[str] = Field(min_length=1)
    examples: SecretExamples

    @field_validator("keywords")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        for keyword in value:
            if keyword != keyword.lower() or not keyword.strip():
                raise ValueError(f"keywords are matched in lowercased text, so write them in lowercase: {keyword!r}")
        return value

    @model_validator(mode="after")
    def _one_finder(self) -> SecretRule:
        if (self.pattern is None) == (self.assignment is None):
            raise ValueError("give exactly one of pattern, assignment")
        if self.pattern is not None:
            if "(?P<secret>" not in self.pattern:
                raise ValueError("the pattern must capture the secret as (?P<secret>...)")
            re.compile(self.pattern)
        return self
