"""Fake secrets for examples, fixtures and benchmarks, generated from a template with a fixed seed.

Catalog examples never hold a realistic key: they hold a template such as `{{fake sk-ant-api03- +b64url93 AA}}`,
which this module expands the same way on every run. A piece starting with `+` is a character class and a length
(`+hex32`), `+uuid` is a random UUID, `+aipkey` a well-formed aiperimeter gateway key; anything else is literal.
"""

from __future__ import annotations

import random
import re
import string
import uuid

from aiperimeter.keys import format_key

CLASSES = {
    "alnum": string.ascii_letters + string.digits,
    "alpha": string.ascii_letters,
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digit": string.digits,
    "hex": "0123456789abcdef",
    "HEX": "0123456789ABCDEF",
    "lowalnum": string.ascii_lowercase + string.digits,
    "b64url": string.ascii_letters + string.digits + "_-",
    "b64": string.ascii_letters + string.digits + "+/",
}
TEMPLATE = re.compile(r"\{\{fake ([^}]+)\}\}")
_PIECE = re.compile(r"\+(?P<cls>" + "|".join(sorted(CLASSES, key=len, reverse=True)) + r")(?P<n>\d+)$")


def fake(spec: str, rng: random.Random) -> str:
    """One fake value from a space-separated spec."""
    out = []
    for piece in spec.split():
        if piece == "+uuid":
            out.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        elif piece == "+aipkey":
            key_id = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(12))
            out.append(format_key(key_id, rng.getrandbits(256)))
        elif piece.startswith("+"):
            match = _PIECE.match(piece)
            if match is None:
                raise ValueError(f"unknown piece {piece!r}: use +CLASS<length> with CLASS in {', '.join(CLASSES)}")
            alphabet = CLASSES[match["cls"]]
            out.append("".join(rng.choice(alphabet) for _ in range(int(match["n"]))))
        else:
            out.append(piece)
    return "".join(out)


def expand_with_values(text: str, seed: str) -> tuple[str, list[str]]:
    """Replace every `{{fake ...}}` in text and return the values made; same text and seed, same result."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fakes are the point
    values: list[str] = []

    def one(match: re.Match[str]) -> str:
        values.append(fake(match[1], rng))
        return values[-1]

    return TEMPLATE.sub(one, text), values


def expand(text: str, seed: str) -> str:
    return expand_with_values(text, seed)[0]
