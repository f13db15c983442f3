"""Loads and validates the catalog; an invalid entry stops startup with its file and field."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from aiperimeter.catalog.schema import Fingerprint
from aiperimeter.errors import ConfigError

DATA = Path(__file__).parent / "data"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def load_fingerprint(path: Path) -> Fingerprint:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the fingerprint: {exc}", source=str(path)) from None
    try:
        fingerprint = Fingerprint.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), source=str(path)) from None
    if fingerprint.id != path.stem:
        raise ConfigError(f"the id {fingerprint.id!r} must match the file name", source=str(path), field="id")
    return fingerprint


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
