"""Target: the request-body check (parse_json_object and the model a body names), differential against other readers.

An upstream reads the model with its own JSON decoder: Python's json (last duplicate wins), orjson (last wins), a
first-wins reader, Go's encoding/json (keys matched without case, last wins). The oracle: for a body the gateway
accepts, every reader that can parse it finds, in each model field, nothing but the model the gateway checked.
Only the gateway's Deny types may escape.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import orjson

from aiperimeter.errors import Deny
from aiperimeter.gateway.stages.request_body import RequestBody, parse_json_object
from tests.hardening.fuzz.engine import OracleFailure, Target

FIELDS: tuple[tuple[str, ...], ...] = (("model",), ("model", "name"))
Parse = Callable[[bytes, tuple[str, ...]], dict[str, Any]]


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs


def readings(body: bytes, field: str) -> dict[str, Any]:
    """What each reader finds in `field` of the top-level object (readers that cannot parse the body are left out;
    `None` when a reader finds no such field)."""
    found: dict[str, Any] = {}
    try:
        doc = orjson.loads(body)
        found["orjson"] = doc.get(field) if isinstance(doc, dict) else None
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "surrogatepass") if _utf8(body) else None
    if text is None:
        return found
    for name, hook in (("json-last", dict), ("json-first", _first_wins)):
        try:
            doc = json.loads(text, object_pairs_hook=hook)
        except (ValueError, RecursionError):
            continue
        found[name] = doc.get(field) if isinstance(doc, dict) else None
    try:
        pairs = json.loads(text, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return found
    if isinstance(pairs, list) and all(isinstance(p, tuple) for p in pairs):  # Go: case-insensitive, last wins
        values = [value for key, value in pairs if key.lower() == field]
        found["go"] = values[-1] if values else None
    return found


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check(data: bytes, parse: Parse = parse_json_object) -> None:
    for fields in FIELDS:
        try:
            doc = parse(data, fields)
            model = RequestBody._model_of(doc, fields)
        except Deny:
            continue
        for field in fields:
            for reader, value in readings(data, field).items():
                if value is not None and value != model:
                    raise OracleFailure(f"fields {fields}: the gateway checked {model!r}, {reader} reads {value!r}")


# --- inputs -----------------------------------------------------------------------------------------------------------

KEYS = [
    '"model"', '"Model"', '"MODEL"', '"\\u006dodel"', '"mod\\u0065l"', '"model "', '"model\\u0000"', '"name"',
    '"Name"', '"\\u006eame"', '"mode\\u006c"', '"\\u004dodel"', '"ｍodel"', '"model\\ud800"', '"stream"', '"messages"',
]  # fmt: skip
VALUES = ['"llama3"', '"evil"', '"llama3 "', '"LLAMA3"', '"ll\\u0061ma3"', "null", "1", "[]", "{}", "true", '""']


def _object(rng: random.Random, depth: int) -> str:
    members = []
    for _ in range(rng.randint(0, 4)):
        value = rng.choice(VALUES) if depth > 2 or rng.random() < 0.8 else _object(rng, depth + 1)
        members.append(f"{rng.choice(KEYS)}{rng.choice([':', ' : '])}{value}")
    return "{" + ",".join(members) + "}"


def generate(rng: random.Random) -> bytes:
    body = _object(rng, 0)
    roll = rng.random()
    if roll < 0.1:
        body = "[" * rng.randint(1, 3000) + "]" * rng.randint(0, 3000)  # deep nesting
    elif roll < 0.2:
        body = '{"a":' * rng.randint(1, 1200) + '"x"' + "}" * rng.randint(0, 1200)
    elif roll < 0.3:
        body = "\ufeff" + body if rng.random() < 0.5 else body + rng.choice(["", " ", "x", "{}", "\x00"])
    raw = body.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:  # invalid UTF-8 inside a string
        at = raw.find(b'"llama3"')
        if at >= 0:
            raw = raw[: at + 1] + rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]) + raw[at + 1 :]
    return raw


SEEDS = [
    b'{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}',
    b'{"model":"llama3","name":"llama3"}',
    b'{"model":"llama3","model":"evil"}',
    b'{"model":"llama3","\\u006dodel":"evil"}',
    b'{"model":"llama3","Model":"evil"}',
    b'{"messages":[],"model":"llama3","options":{"model":"x"}}',
]
TARGET = Target(
    name="request_body",
    check=check,
    generate=generate,
    seeds=SEEDS,
    tokens=[k.encode() for k in KEYS] + [v.encode() for v in VALUES] + [b",", b":", b"{", b"}", b"\\u", b"\\"],
    max_len=16384,
)
