"""Every request carries a valid key, or stops here with 401 and the upstream never hears of it.

Accepted: `Authorization: Bearer <key>` or `x-api-key: <key>` (Anthropic clients). Never from a query string.
Duplicated or conflicting credentials are refused rather than guessed at.

A canary key (a tripwire planted where a leak would be found) is answered exactly as a key that does not exist, in
whatever state it is; its audit record names it (`"canary": true`, the key id) with the caller's user agent. Every
refusal here is reported to the client guard (`on_failure`) before it goes out, which may hold it back.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from multidict import CIMultiDictProxy

from aiperimeter.errors import Unauthenticated
from aiperimeter.gateway.jwt import JWTVerifier, looks_like_jwt
from aiperimeter.gateway.keycache import KeyCache
from aiperimeter.gateway.pipeline import Exchange, Stage
from aiperimeter.keys import KEY_RE, KeyRecord, hash_key, parse_key

HOW = "Send your aiperimeter key (or a JWT from the configured identity provider) as 'Authorization: Bearer ...'."


def presented_key(headers: CIMultiDictProxy[str]) -> str:
    """The one credential the request presents; raises Unauthenticated when there is none or it is ambiguous."""
    authorization = headers.getall("Authorization", ())
    api_key = headers.getall("x-api-key", ())
    if len(authorization) + len(api_key) == 0:
        raise Unauthenticated("missing_credentials", f"No API key was sent. {HOW}")
    if len(authorization) > 1 or len(api_key) > 1:
        raise Unauthenticated("malformed_credentials", f"Send exactly one credential. {HOW}")
    candidates = []
    if authorization:
        scheme, _, token = authorization[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed_credentials", f"The Authorization header is not a Bearer key. {HOW}")
        candidates.append(token.strip())
    if api_key:
        candidates.append(api_key[0].strip())
    if len(candidates) == 2 and not hmac.compare_digest(candidates[0], candidates[1]):
        raise Unauthenticated("malformed_credentials", "Authorization and x-api-key name different keys.")
    return candidates[0]


_STATUS_CODES = frozenset({"key_revoked", "key_expired", "key_suspended"})
USER_AGENT_MAX = 256


def invalid_key() -> Unauthenticated:
    """The answer to a key that does not exist, and to every canary key: the two must not be told apart."""
    return Unauthenticated("invalid_key", "The API key is not valid.")


class CanaryRefused(Unauthenticated):
    """The refusal of a canary key: to the client exactly `invalid_key()`; to the server, the key it names, so that
    whoever catches it (the admin API) can write the audit record that raises the alert."""

    def __init__(self, record: KeyRecord) -> None:
        refusal = invalid_key()
        super().__init__(refusal.code, refusal.message)
        self.record = record


def usable(record: KeyRecord | None, secret_hash: str, now: float) -> KeyRecord:
    """The key this hash opens, if it may be used now; else Unauthenticated saying why (CanaryRefused for a canary
    key). Shared with the admin API."""
    if record is not None and record.canary:
        raise CanaryRefused(record)
    if record is None:
        raise invalid_key()
    if not record.accepts(secret_hash, now):
        if record.previous_hash is not None and hmac.compare_digest(record.previous_hash, secret_hash):
            raise Unauthenticated("key_rotated", "This API key was rotated and its grace period is over.")
        raise invalid_key()
    status = record.status(now)
    if status == "revoked":
        raise Unauthenticated("key_revoked", "The API key has been revoked.")
    if status == "expired":
        raise Unauthenticated("key_expired", "The API key has expired.")
    if status == "suspended":
        raise Unauthenticated("key_suspended", "The API key is suspended.")
    return record


def canary_fields(ex: Exchange) -> dict[str, object]:
    """What the audit record of a canary key's use adds to the usual caller details (client, method, path): the flag
    and the caller's user agent, printable and at most USER_AGENT_MAX characters."""
    return canary_details(ex.request.headers)


def canary_details(headers: CIMultiDictProxy[str]) -> dict[str, object]:
    agent = ", ".join(headers.getall("User-Agent", ()))[:USER_AGENT_MAX]
    return {"canary": True, "user_agent": "".join(c if c.isprintable() else "?" for c in agent) or None}


class Authenticate(Stage):
    name: ClassVar[str] = "authenticate"

    def __init__(
        self,
        keys: KeyCache,
        jwt: JWTVerifier | None = None,
        on_failure: Callable[[Exchange], Awaitable[None]] | None = None,
    ) -> None:
        self.keys = keys
        self.jwt = jwt
        self.on_failure = on_failure

    async def on_request(self, ex: Exchange) -> None:
        try:
            token = presented_key(ex.request.headers)
            if self.jwt is not None and looks_like_jwt(token):
                # Signature, issuer, audience, expiry and claims are the verifier's; the identity it returns carries
                # the scopes, models and limits the configured claims map to.
                ex.key = await self.jwt.verify(token)
                return
            if not token.isascii() or KEY_RE.fullmatch(token) is None:
                raise Unauthenticated("malformed_credentials", f"The API key is not an aiperimeter key. {HOW}")
            secret_hash = hash_key(token)
            record = self.keys.cached(secret_hash)
            if record is None:
                # The checksum spares the store a lookup for mistyped or invented keys.
                if parse_key(token) is None:
                    raise Unauthenticated("malformed_credentials", f"The API key is not an aiperimeter key. {HOW}")
                record = await self.keys.lookup(secret_hash)
            if record is not None and record.canary:
                ex.key = record  # the audit record names the canary, and carries the caller's details
                raise invalid_key()
            try:
                ex.key = usable(record, secret_hash, time.time())
            except Unauthenticated as refusal:
                if refusal.code in _STATUS_CODES:
                    ex.key = record  # refused for its status: the audit record still names the key (its public id)
                raise
        except Unauthenticated as refusal:
            if self.on_failure is not None:
                # Kept should the client leave while the refusal is held back.
                ex.status, ex.deny_code = refusal.status, refusal.code
                await self.on_failure(ex)
            raise
