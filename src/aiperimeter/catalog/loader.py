"""Loads and validates the catalog; an invalid entry stops startup with its file and field."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from aiperimeter.catalog.misconfig_rules import MisconfigRule
from aiperimeter.catalog.schema import Fingerprint
from aiperimeter.catalog.secret_rules import SecretRule
from aiperimeter.errors import ConfigError

DATA = Path(__file__).parent / "data"
# libyaml's parser where installed: the catalog loads at every start of the CLI.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def describe_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


Entry = TypeVar("Entry", bound=BaseModel)


def load_entry(path: Path, model: type[Entry]) -> Entry:
    """One catalog file, validated; its id must be its file name."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)  # noqa: S506 - the safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the catalog entry: {exc}", source=str(path)) from None
    try:
        entry = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc), source=str(path)) from None
    entry_id = getattr(entry, "id", None)
    if entry_id != path.stem:
        raise ConfigError(f"the id {entry_id!r} must match the file name", source=str(path), field="id")
    return entry


def load_fingerprint(path: Path) -> Fingerprint:
    return load_entry(path, Fingerprint)


def load_fingerprints(folder: Path) -> list[Fingerprint]:
    fingerprints = [load_fingerprint(path) for path in sorted(folder.glob("*.yaml"))]
    known = {fp.id for fp in fingerprints}
    for fp in fingerprints:
        if unknown := set(fp.lookalikes) - known:
            raise ConfigError(
                f"lookalikes name unknown fingerprints: {', '.join(sorted(unknown))}",
                source=str(folder / f"{fp.id}.yaml"),
                field="lookalikes",
            )
    return fingerprints


@cache
def fingerprints() -> tuple[Fingerprint, ...]:
    """The built-in catalog."""
    return tuple(load_fingerprints(DATA / "fingerprints"))


def load_secret_rules(folder: Path) -> list[SecretRule]:
    return [load_entry(path, SecretRule) for path in sorted(folder.glob("*.yaml"))]


@cache
def secret_rules() -> tuple[SecretRule, ...]:
    """The built-in secret rules."""
    return tuple(load_secret_rules(DATA / "secrets"))


def load_misconfig_rules(folder: Path, products: set[str]) -> list[MisconfigRule]:
    rules = [load_entry(path, MisconfigRule) for path in sorted(folder.glob("*.yaml"))]
    for rule in rules:
        if unknown := set(rule.products) - products - {"*"}:
            raise ConfigError(
                f"products names unknown fingerprints: {', '.join(sorted(unknown))}",
                source=str(folder / f"{rule.id}.yaml"),
                field="products",
            )
    return rules


@cache
def misconfig_rules() -> tuple[MisconfigRule, ...]:
    """The built-in misconfiguration rules."""
    return tuple(load_misconfig_rules(DATA / "misconfig", {fp.id for fp in fingerprints()}))
