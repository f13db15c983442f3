"""Every request carries a valid key, or stops here with 401 and the upstream never hears of it.

Accepted: `Authorization: Bearer <key>` or `x-api-key: <key>` (Anthropic clients). Never from a query string.
Duplicated or conflicting credentials are refused rather than guessed at.
"""

from __future__ import annotations

import hmac
import time
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


def usable(record: KeyRecord | None, secret_hash: str, now: float) -> KeyRecord:
    """The key this hash opens, if it may be used now; else Unauthenticated saying why. Shared with the admin API."""
    if record is None:
        raise Unauthenticated("invalid_key", "The API key is not valid.")
    if not record.accepts(secret_hash, now):
        if record.previous_hash is not None and hmac.compare_digest(record.previous_hash, secret_hash):
            raise Unauthenticated("key_rotated", "This API key was rotated and its grace period is over.")
        raise Unauthenticated("invalid_key", "The API key is not valid.")
    status = record.status(now)
    if status == "revoked":
        raise Unauthenticated("key_revoked", "The API key has been revoked.")
    if status == "expired":
        raise Unauthenticated("key_expired", "The API key has expired.")
    if status == "suspended":
        raise Unauthenticated("key_suspended", "The API key is suspended.")
    return record


class Authenticate(Stage):
    name: ClassVar[str] = "authenticate"

    def __init__(self, keys: KeyCache, jwt: JWTVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt

    async def on_request(self, ex: Exchange) -> None:
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
        try:
            ex.key = usable(record, secret_hash, time.time())
        except Unauthenticated as refusal:
            if refusal.code in _STATUS_CODES:
                ex.key = record  # refused for its status: the audit record still names the key (its public id)
            raise
