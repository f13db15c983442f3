"""The gateway's API keys: their format, generation, parsing, hashing and stored record.

A key reads `aip_<id>_<secret><check>`:
- `aip_` makes a leaked key recognisable to secret scanners (ours included);
- `<id>` is 12 characters of lowercase base32, the public id shown in listings and audit records;
- `<secret>` is 43 base62 characters carrying 256 random bits;
- `<check>` is 6 base62 characters of CRC-32 over everything before it, so a scanner can tell a real key from a
  look-alike and the gateway can refuse a mistyped one without a store lookup.

Only the SHA-256 of the whole key is stored. Keys are high-entropy random tokens, so a fast hash is the right
choice (a slow password hash would burn CPU on every request and add nothing).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "aip_"
ID_LEN = 12
SECRET_LEN = 43
CHECK_LEN = 6
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
KEY_RE = re.compile(rf"aip_([a-z2-7]{{{ID_LEN}}})_([0-9A-Za-z]{{{SECRET_LEN}}})([0-9A-Za-z]{{{CHECK_LEN}}})")
ID_RE = re.compile(rf"[a-z2-7]{{{ID_LEN}}}")
POLICY_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # a tool policy's name, which is its file's name

KeyStatus = Literal["active", "expired", "revoked", "suspended"]
ADMIN_SCOPE = "admin"
KNOWN_SCOPES = frozenset({ADMIN_SCOPE})


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(_B62[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECK_LEN)


def new_key_id() -> str:
    return "".join(secrets.choice(_B32) for _ in range(ID_LEN))


def format_key(key_id: str, secret_bits: int) -> str:
    body = f"{PREFIX}{key_id}_{_base62(secret_bits, SECRET_LEN)}"
    return body + _checksum(body)


def generate_key(key_id: str | None = None) -> tuple[str, str]:
    """Return (public id, full secret key)."""
    key_id = key_id or new_key_id()
    return key_id, format_key(key_id, secrets.randbits(256))


def parse_key(token: str) -> str | None:
    """Return the public id of a well-formed key with a valid checksum, else None."""
    match = KEY_RE.fullmatch(token)
    if match is None:
        return None
    if not secrets.compare_digest(_checksum(token[:-CHECK_LEN]), match.group(3)):
        return None
    return match.group(1)


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def redact(token: str) -> str:
    """A display form that identifies the key without revealing it."""
    key_id = parse_key(token)
    return f"{PREFIX}{key_id}_…" if key_id else "*****"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store keeps about a key. Never holds the key itself."""

    id: str
    name: str
    secret_hash: str
    scopes: frozenset[str] = frozenset()
    models: frozenset[str] | None = None  # None: every model
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    revoked_at: float | None = None
    suspended_at: float | None = None  # refused until resumed; unlike revocation, reversible
    # A rotation keeps the previous secret valid until `previous_until` (the grace), then never again.
    previous_hash: str | None = None
    previous_until: float | None = None
    # Limits for this key (None: the gateway's defaults): requests and tokens per minute, requests at once.
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    tool_policy: str | None = None  # the name of the tool policy this key's calls are held to (None: no policy)
    canary: bool = False  # a tripwire: never served, any use raises a critical alert

    def status(self, now: float) -> KeyStatus:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.suspended_at is not None:
            return "suspended"
        return "active"

    def accepts(self, secret_hash: str, now: float) -> bool:
        """Whether this hash is the key's current secret, or its previous one within the rotation grace."""
        if secrets.compare_digest(secret_hash, self.secret_hash):
            return True
        return (
            self.previous_hash is not None
            and self.previous_until is not None
            and now < self.previous_until
            and secrets.compare_digest(secret_hash, self.previous_hash)
        )

    def public(self, now: float) -> dict[str, object]:
        """The fields safe to show anyone who may list keys."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": f"{PREFIX}{self.id}_",
            "scopes": sorted(self.scopes),
            "models": sorted(self.models) if self.models is not None else None,
            "status": self.status(now),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "suspended_at": self.suspended_at,
            "rotation_grace_until": self.previous_until if self.previous_until and self.previous_until > now else None,
            "limits": {"rpm": self.rpm, "tpm": self.tpm, "concurrency": self.concurrency},
            "tool_policy": self.tool_policy,
            "canary": self.canary,
        }


def canary_conflicts(options: Mapping[str, object]) -> list[str]:
    """The names of the `options` that are set. A canary key is never served, so none of what a key may do, for how
    long or how fast applies to it (and an admin scope on a key planted in the open would be a hazard, not bait)."""
    return [name for name, value in options.items() if value is not None and value not in ([], (), frozenset())]


def new_key(
    name: str,
    *,
    scopes: frozenset[str] = frozenset(),
    models: frozenset[str] | None = None,
    expires_at: float | None = None,
    now: float | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    tool_policy: str | None = None,
    canary: bool = False,
) -> tuple[KeyRecord, str]:
    """A fresh key: the record to store and the secret to hand over once."""
    key_id, secret = generate_key()
    record = KeyRecord(
        id=key_id,
        name=name,
        secret_hash=hash_key(secret),
        scopes=scopes,
        models=models,
        created_at=time.time() if now is None else now,
        expires_at=expires_at,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        tool_policy=tool_policy,
        canary=canary,
    )
    return record, secret


def new_secret(key_id: str) -> tuple[str, str]:
    """A new secret for an existing key (rotation): (the secret, its hash)."""
    _, secret = generate_key(key_id)
    return secret, hash_key(secret)
