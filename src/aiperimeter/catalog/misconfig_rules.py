"""The data model of misconfiguration rules: a condition over what a configuration starts, with its examples.

Configuration files are read into subjects (a compose service, a Kubernetes container, a systemd unit, a command in
a script or Dockerfile, an env file, a LiteLLM config): the image, command line, environment, published ports and
exposure of one thing that runs. A rule names the sources and products it applies to and a condition on a subject.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from aiperimeter.catalog.schema import Severity, Strict

Source = Literal["compose", "kubernetes", "env", "systemd", "shell", "dockerfile", "litellm-config"]
SOURCES: tuple[Source, ...] = ("compose", "kubernetes", "env", "systemd", "shell", "dockerfile", "litellm-config")
Exposure = Literal["LoadBalancer", "NodePort", "externalIPs"]


def _regex(value: str | None) -> str | None:
    if value is not None:
        re.compile(value)
    return value


class EnvTest(Strict):
    """A variable whose name matches `name` (whole name) and, if given, whose value matches `value` (whole value,
    any case). Without `value`, any non-empty value counts."""

    name: str
    value: str | None = None

    _check = field_validator("name", "value")(_regex)


class ArgTest(Strict):
    """A flag on the command line (`--host 0.0.0.0` or `--host=0.0.0.0`); with `value`, its value must match."""

    flag: list[str] = Field(min_length=1)
    value: str | None = None

    _check = field_validator("value")(_regex)


class Condition(Strict):
    env: EnvTest | None = None
    arg: ArgTest | None = None
    published: Literal["beyond-loopback"] | None = None  # a port published on an address other than loopback
    host_network: bool | None = None  # shares the host's network namespace
    exposed_by: list[Exposure] | None = None  # a Kubernetes Service exposes it this way
    missing: str | None = None  # a dotted key absent or empty in the subject's own document (LiteLLM config)
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(None, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> Condition:
        given = [
            name
            for name in ("env", "arg", "published", "host_network", "exposed_by", "missing", "all", "any", "not_")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("a condition is exactly one of env, arg, published, host_network, exposed_by, missing, "
                             "all, any, not; nest all/any to combine")  # fmt: skip
        return self


class ConfigExample(Strict):
    file: str  # the file name decides how it is read: docker-compose.yml, deploy.yaml, .env, x.service, run.sh ...
    text: str
    line: int | None = None  # for match examples: the line the finding must point at
    note: str = ""


class ConfigExamples(Strict):
    match: list[ConfigExample] = Field(min_length=1)
    no_match: list[ConfigExample] = Field(min_length=1)


class MisconfigRule(Strict):
    id: Annotated[str, Field(pattern=r"[a-z0-9][a-z0-9-]*")]
    title: str
    severity: Severity
    sources: list[Source] = Field(min_length=1)
    # Fingerprint ids the subject must be one of; ["*"]: any recognised AI product; empty: any subject at all.
    products: list[str] = Field(default_factory=list)
    when: Condition
    why: str = Field(min_length=10)
    fix: str = Field(min_length=10)
    references: list[str] = Field(min_length=1)
    examples: ConfigExamples
