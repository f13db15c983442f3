"""Loads tool policies from a folder: one YAML file per policy, named after the policy.

A policy that does not validate stops the gateway at start-up with its file and field; a gateway never runs with
part of its policies.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from aiperimeter.catalog.loader import describe_error
from aiperimeter.config import read_yaml
from aiperimeter.errors import ConfigError
from aiperimeter.keys import POLICY_NAME_RE as NAME_RE
from aiperimeter.policy.engine import Policy, PolicySet
from aiperimeter.policy.model import PolicyFile

SUFFIXES = (".yaml", ".yml")


def load_policy(path: Path) -> Policy:
    name = path.stem
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            "a policy's file name is its name: lowercase letters, digits and _ . - (up to 64), then .yaml",
            source=str(path),
        )
    data = read_yaml(path)
    try:
        spec = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc), source=str(path)) from None
    return Policy(name, spec, str(path))


def load_policies(folder: Path) -> PolicySet:
    if not folder.is_dir():
        raise ConfigError("is not a folder of tool policies (one NAME.yaml per policy)", source=str(folder))
    policies: dict[str, Policy] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in SUFFIXES or path.name.startswith("."):
            continue
        policy = load_policy(path)
        if policy.name in policies:
            raise ConfigError(f"policy {policy.name!r} is defined twice", source=str(path))
        policies[policy.name] = policy
    return PolicySet(policies)


def check_policy_name(name: str) -> str:
    """A policy name given on the command line or in a key: the same rule as the file names."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            "a tool policy name is lowercase letters, digits and _ . - (up to 64), starting with a letter or digit",
            field="tool_policy",
        )
    return name
