"""JWT bearer tokens from an identity provider, verified into the same `KeyRecord` identity as an aiperimeter key.

One key source is configured: an HS256 secret file, a public key file (PEM, JWK or JWK Set), or a JWKS URL. Each
algorithm is bound to one key type (HS256: a secret; RS256: RSA >= 2048 bits; ES256: EC P-256; EdDSA: Ed25519) and
PyJWT is handed exactly the one algorithm the chosen key belongs to, so a token can never pick how its key is read
(no `alg: none`, no HS256 signed with a public key's bytes). Mixing HS256 with a public key source is refused in
the settings.

A JWKS is fetched with aiohttp (3 s timeout, 64 KiB cap, no redirects), cached for `jwks_cache` seconds and
refreshed in the background when stale; a token naming an unknown `kid` causes at most one fetch per
`jwks_min_refresh` seconds however many such tokens arrive. When the endpoint is down the cached set is kept (for at
most `jwks_max_stale` seconds); with no usable set the verifier fails closed with 503.

A verified token is remembered (by its SHA-256, at most 4096 of them) for up to 60 s and never past exp + leeway, so
a client reusing its access token costs a hash and a lookup rather than a signature check; a new key set forgets
them all.

Errors are `Unauthenticated` with low-cardinality codes; no message ever contains the token or any claim value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeAlias
from urllib.parse import urlsplit

import aiohttp
import jwt as pyjwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.types import Options
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiperimeter.errors import BackendUnavailable, ConfigError, Unauthenticated
from aiperimeter.hosts import is_loopback_host
from aiperimeter.keys import ADMIN_SCOPE, KNOWN_SCOPES, POLICY_NAME_RE, KeyRecord

log = logging.getLogger("aiperimeter.gateway")

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("HS256", "RS256", "ES256", "EdDSA")
ASYMMETRIC: Final[frozenset[str]] = frozenset({"RS256", "ES256", "EdDSA"})
REGISTERED_CLAIMS: Final[frozenset[str]] = frozenset({"exp", "iat", "nbf", "iss", "aud", "sub", "jti"})

SETTINGS_KEY: Final = "jwt"  # where JWTSettings sit in the gateway settings; used in ConfigError field names
MAX_TOKEN_BYTES: Final = 8192
MAX_JWKS_BYTES: Final = 64 * 1024
MAX_JWKS_KEYS: Final = 100
MAX_KEY_FILE_BYTES: Final = 256 * 1024
MIN_SECRET_BYTES: Final = 32
MIN_RSA_BITS: Final = 2048
FETCH_TIMEOUT: Final = 3.0
NAME_LEN: Final = 64
VERIFIED_CACHE_SIZE: Final = 4096  # tokens whose verification is remembered
VERIFIED_CACHE_TTL: Final = 60.0  # seconds at most; never past exp + leeway
MAX_LIMIT: Final = 1_000_000_000

_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey
KeyMaterial: TypeAlias = bytes | PublicKey


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer credential has the shape of a compact JWS: base64url header and payload, then a signature.

    The signature segment may be empty so that an unsigned (`alg: none`) token reaches the verifier and is refused
    there with `jwt_algorithm_refused` rather than mistaken for a malformed aiperimeter key. Oversized tokens still
    count as JWTs here; `verify` refuses them before parsing.
    """
    return token.isascii() and _JWT_RE.fullmatch(token) is not None


# ---------------------------------------------------------------------------------------------------------- settings


class JWTClaims(BaseModel):
    """Which claims carry the identity, scopes, models and limits. Every field names a claim; None: not mapped."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    subject: str = Field("sub", min_length=1, description="claim naming the caller (required in every token)")
    scopes: str | None = Field("scope", min_length=1, description="space-separated string or list of strings")
    admin_value: str | None = Field(
        None, min_length=1, description="the scope value that grants `admin`; without it no token is ever admin"
    )
    models: str | None = Field(
        None, min_length=1, description="list of model names; when mapped, a token without it may use no model"
    )
    rpm: str | None = Field(None, min_length=1, description="requests per minute (positive integer)")
    tpm: str | None = Field(None, min_length=1, description="tokens per minute (positive integer)")
    concurrency: str | None = Field(None, min_length=1, description="requests at once (positive integer)")
    tool_policy: str | None = Field(
        None,
        min_length=1,
        description="name of the tool policy the caller is held to (the gateway's default if absent)",
    )

    @model_validator(mode="after")
    def _admin_needs_scopes(self) -> JWTClaims:
        if self.admin_value is not None and self.scopes is None:
            raise ValueError("admin_value needs claims.scopes: name the claim that carries the scopes")
        return self


def _as_tuple(value: object) -> object:
    """YAML gives lists; the strict models keep tuples. Anything else is left for the strict check to refuse."""
    return tuple(value) if isinstance(value, list) else value


def _as_path(value: object) -> object:
    return Path(value).expanduser() if isinstance(value, str) and value else value


class JWTSettings(BaseModel):
    """How the gateway accepts JWT bearer tokens. Give exactly one of secret_file, public_key_file or jwks_url."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    algorithms: tuple[Algorithm, ...] = Field(min_length=1)
    secret_file: Path | None = Field(None, description="file holding the HS256 secret (at least 32 bytes)")
    public_key_file: Path | None = Field(None, description="PEM public key or certificate, JWK or JWK Set")
    jwks_url: str | None = Field(None, description="https URL of the issuer's JWK Set (http only for loopback)")
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    leeway: float = Field(30.0, ge=0, le=300, description="seconds of clock skew allowed for exp, nbf and iat")
    require: tuple[str, ...] = Field(("exp",), min_length=1, description="claims every token must carry")
    jwks_cache: float = Field(300.0, gt=0, le=86400, description="seconds a fetched key set is fresh")
    jwks_min_refresh: float = Field(30.0, ge=1, le=3600, description="at most one JWKS fetch per this many seconds")
    jwks_max_stale: float = Field(
        86400.0, gt=0, le=7 * 86400, description="seconds a key set is still used while its endpoint is down"
    )
    claims: JWTClaims = Field(default_factory=JWTClaims)

    @field_validator("algorithms", "require", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return _as_tuple(value)

    @field_validator("secret_file", "public_key_file", mode="before")
    @classmethod
    def _pathify(cls, value: object) -> object:
        return _as_path(value)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[Algorithm, ...]) -> tuple[Algorithm, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists an algorithm twice")
        return value

    @field_validator("require")
    @classmethod
    def _require(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - REGISTERED_CLAIMS)
        if unknown:
            raise ValueError(f"unknown claim {unknown[0]!r}; choose from {', '.join(sorted(REGISTERED_CLAIMS))}")
        if "exp" not in value:
            raise ValueError("must include 'exp': tokens without an expiry are never accepted")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL with a host, as https://idp.example.com/.well-known/jwks.json")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("must use https; plain http is allowed only for a loopback host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        if parts.fragment:
            raise ValueError("must not have a fragment")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JWTSettings:
        sources = [s for s in (self.secret_file, self.public_key_file, self.jwks_url) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one key source: secret_file, public_key_file or jwks_url")
        if self.secret_file is not None and self.algorithms != ("HS256",):
            raise ValueError("secret_file holds an HS256 secret: set algorithms to [HS256]")
        if self.secret_file is None and "HS256" in self.algorithms:
            raise ValueError(
                "HS256 needs secret_file; a public key or JWKS never verifies HS256 (that is algorithm confusion)"
            )
        if self.jwks_cache < self.jwks_min_refresh:
            raise ValueError("jwks_cache must be at least jwks_min_refresh")
        if self.jwks_max_stale < self.jwks_cache:
            raise ValueError("jwks_max_stale must be at least jwks_cache")
        return self


# -------------------------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key the verifier may use, bound to the single algorithm it verifies."""

    algorithm: Algorithm
    key: KeyMaterial = field(repr=False)
    kid: str | None = None


class JWKSError(ValueError):
    """A key set document that cannot be used (size, syntax, structure). The message names no key material."""


def algorithm_for(key: object) -> Algorithm | None:
    """The one algorithm a public key verifies, or None when the gateway does not accept keys of its kind."""
    bound = _bind(key)
    return bound[1] if bound is not None else None


def _bind(key: object) -> tuple[PublicKey, Algorithm] | None:
    if isinstance(key, RSAPublicKey):
        return (key, "RS256") if key.key_size >= MIN_RSA_BITS else None
    if isinstance(key, EllipticCurvePublicKey):
        return (key, "ES256") if isinstance(key.curve, SECP256R1) else None
    if isinstance(key, Ed25519PublicKey):
        return (key, "EdDSA")
    return None


def _describe_key(key: object) -> str:
    if isinstance(key, RSAPublicKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, EllipticCurvePublicKey):
        return f"an EC key on curve {key.curve.name}"
    return f"a {type(key).__name__.removeprefix('_')}"


def _jwk_to_key(jwk: dict[str, Any], allowed: frozenset[str]) -> VerificationKey | str:
    """A usable verification key from one JWK, or the reason it is skipped."""
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return "kid is not a string"
    if kty == "oct":
        return "symmetric (oct) keys are never taken from a key set"
    if kty not in ("RSA", "EC", "OKP"):
        return "unsupported key type"
    if _PRIVATE_JWK_MEMBERS & jwk.keys():
        return "holds private key material; publish public keys only"
    use = jwk.get("use")
    if use is not None and use != "sig":
        return "not a signing key (use)"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "not a verification key (key_ops)"
    try:
        if kty == "RSA":
            loaded: object = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            loaded = ECAlgorithm.from_jwk(jwk)
        else:
            loaded = OKPAlgorithm.from_jwk(jwk)
        bound = _bind(loaded)
    except (pyjwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError):
        return "malformed key"
    if bound is None:
        return "unsupported curve or key size"
    key, algorithm = bound
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        return "declares an algorithm that does not match its key type"
    if algorithm not in allowed:
        return "its algorithm is not configured"
    return VerificationKey(algorithm=algorithm, key=key, kid=kid)


def parse_jwks(doc: object, allowed: Iterable[str]) -> tuple[tuple[VerificationKey, ...], list[str]]:
    """The usable keys of a JWK Set (or of a single JWK), and a note for each key skipped.

    Raises JWKSError when the document is not a key set at all. A set with no usable key is returned as such: an
    issuer that withdraws its keys has revoked them.
    """
    if isinstance(doc, dict) and "keys" in doc:
        entries = doc["keys"]
        if not isinstance(entries, list):
            raise JWKSError("'keys' is not a list")
    elif isinstance(doc, dict) and "kty" in doc:
        entries = [doc]
    else:
        raise JWKSError("is not a JWK Set (an object with 'keys')")
    if len(entries) > MAX_JWKS_KEYS:
        raise JWKSError(f"has more than {MAX_JWKS_KEYS} keys")
    allowed_set = frozenset(allowed)
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    seen: set[tuple[str | None, str]] = set()
    for index, entry in enumerate(entries):
        label = f"key {index}"
        if not isinstance(entry, dict):
            skipped.append(f"{label}: not an object")
            continue
        if isinstance(entry.get("kid"), str):
            label = f"key {index} (kid {entry['kid'][:40]!r})"
        result = _jwk_to_key(entry, allowed_set)
        if isinstance(result, str):
            skipped.append(f"{label}: {result}")
        elif (result.kid, result.algorithm) in seen:
            skipped.append(f"{label}: repeats a kid already in the set")
        else:
            seen.add((result.kid, result.algorithm))
            keys.append(result)
    return tuple(keys), skipped


def parse_jwks_bytes(data: bytes, allowed: Iterable[str]) -> tuple[tuple[VerificationKey, ...], list[str]]:
    if len(data) > MAX_JWKS_BYTES:
        raise JWKSError(f"is larger than {MAX_JWKS_BYTES // 1024} KiB")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise JWKSError("is not valid JSON") from None
    return parse_jwks(doc, allowed)


Selection: TypeAlias = VerificationKey | Literal["unknown", "mismatch", "ambiguous"]


def select_key(keys: tuple[VerificationKey, ...], algorithm: str, kid: str | None, *, ignore_kid: bool) -> Selection:
    """The key for a token's (alg, kid): a kid picks a key, which must be of the token's algorithm; without a kid,
    the only key of that algorithm. `ignore_kid` is for a single configured key that has no kid of its own."""
    if kid is not None and not ignore_kid:
        named = [k for k in keys if k.kid == kid]
        if not named:
            return "unknown"
        for key in named:
            if key.algorithm == algorithm:
                return key
        return "mismatch"
    candidates = [k for k in keys if k.algorithm == algorithm]
    if len(candidates) == 1:
        return candidates[0]
    return "ambiguous" if candidates else "unknown"


def _config_error(message: str, path: Path, name: str) -> ConfigError:
    return ConfigError(message, source=str(path), field=f"{SETTINGS_KEY}.{name}")


def _read_key_file(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise _config_error(f"cannot read: {exc.strerror}", path, name) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise _config_error(f"is larger than {MAX_KEY_FILE_BYTES // 1024} KiB; is it the right file?", path, name)
    return data


def load_secret(path: Path) -> bytes:
    """The HS256 secret: the file's bytes without a trailing newline, at least 32 bytes, never a key in disguise."""
    secret = _read_key_file(path, "secret_file").rstrip(b"\r\n")
    if b"-----BEGIN" in secret or secret.lstrip().startswith((b"{", b"ssh-", b"ecdsa-")):
        raise _config_error(
            "looks like a public key or JWK, not a shared secret; use public_key_file for keys", path, "secret_file"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise _config_error(
            f"the secret is {len(secret)} bytes; HS256 needs at least {MIN_SECRET_BYTES} random bytes "
            "(for example: openssl rand -base64 48)",
            path,
            "secret_file",
        )
    return secret


def load_public_keys(path: Path, algorithms: Iterable[str]) -> tuple[tuple[VerificationKey, ...], bool]:
    """The keys in a public key file, and whether the token's kid should be ignored (a lone PEM key has no kid)."""
    allowed = frozenset(algorithms)
    data = _read_key_file(path, "public_key_file")
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            keys, skipped = parse_jwks_bytes(stripped, allowed)
        except JWKSError as exc:
            raise _config_error(str(exc), path, "public_key_file") from None
        for note in skipped:
            log.warning("jwt: %s: %s", path, note)
        if not keys:
            raise _config_error(
                f"holds no usable public key for {', '.join(sorted(allowed))}"
                + (f" ({'; '.join(skipped[:3])})" if skipped else ""),
                path,
                "public_key_file",
            )
        missing = sorted(allowed - {k.algorithm for k in keys})
        if missing:
            log.warning("jwt: %s holds no key for %s; such tokens will be refused", path, ", ".join(missing))
        return keys, False
    if b"PRIVATE KEY" in stripped:
        raise _config_error("holds a private key; give the public key only", path, "public_key_file")
    try:
        if b"-----BEGIN CERTIFICATE-----" in stripped:
            key: object = x509.load_pem_x509_certificate(stripped).public_key()
        else:
            key = serialization.load_pem_public_key(stripped)
    except (ValueError, TypeError):
        raise _config_error("is not a PEM public key, certificate, JWK or JWK Set", path, "public_key_file") from None
    bound = _bind(key)
    if bound is None:
        raise _config_error(
            f"holds {_describe_key(key)}; accepted are RSA of at least {MIN_RSA_BITS} bits, EC P-256 and Ed25519",
            path,
            "public_key_file",
        )
    public, algorithm = bound
    if allowed != {algorithm}:
        raise _config_error(
            f"holds {_describe_key(key)}, which verifies {algorithm} only: set algorithms to [{algorithm}]",
            path,
            "public_key_file",
        )
    return (VerificationKey(algorithm=algorithm, key=public, kid=None),), True


# -------------------------------------------------------------------------------------------------------- JWKS cache


class JWKSCache:
    """A JWK Set fetched from a URL: cached, refreshed when stale or on an unknown kid, never more than once per
    `min_refresh` seconds, one fetch at a time. One per worker (event loop); `close()` it on shutdown."""

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        ttl: float,
        min_refresh: float,
        max_stale: float,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.display_url = f"{parts.scheme}://{parts.netloc}{parts.path}"  # no query in logs
        self.algorithms = frozenset(algorithms)
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.max_stale = max_stale
        self.timeout = timeout
        self.clock = clock
        self.keys: tuple[VerificationKey, ...] | None = None
        self.fetched_at: float | None = None
        self.last_attempt: float | None = None
        self.fetches = 0  # attempts, for metrics and tests
        self.generation = 0  # bumped whenever a fetched set replaces the cached one
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def usable(self) -> tuple[VerificationKey, ...] | None:
        """The cached keys, unless there are none or they are older than max_stale."""
        if self.keys is None or self.fetched_at is None:
            return None
        if self.clock() - self.fetched_at >= self.max_stale:
            return None
        return self.keys

    def stale(self) -> bool:
        return self.fetched_at is None or self.clock() - self.fetched_at >= self.ttl

    def refresh(self) -> asyncio.Task[None] | None:
        """Start a fetch unless one is running (then return it) or the last began less than min_refresh ago."""
        if self._task is not None and not self._task.done():
            return self._task
        now = self.clock()
        if self._closed or (self.last_attempt is not None and now - self.last_attempt < self.min_refresh):
            return None
        self.last_attempt = now
        self.fetches += 1
        self._task = asyncio.get_running_loop().create_task(self._fetch_and_store(), name="aiperimeter-jwks")
        return self._task

    async def refreshed(self) -> bool:
        """Fetch now if allowed (or join the running fetch) and wait for it; whether a fetch ran."""
        task = self.refresh()
        if task is None:
            return False
        await asyncio.shield(task)  # a client going away must not cancel the fetch the others wait for
        return True

    async def wait(self) -> None:
        """Wait for the fetch in flight, if any (a background refresh started by a stale cache)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)

    def retry_after(self) -> int:
        if self.last_attempt is None:
            return 1
        return max(1, math.ceil(self.min_refresh - (self.clock() - self.last_attempt)))

    async def _fetch_and_store(self) -> None:
        had = self.keys is not None
        try:
            body = await self._download()
            keys, skipped = parse_jwks_bytes(body, self.algorithms)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, JWKSError) as exc:
            self.failures += 1
            reason = str(exc) if isinstance(exc, JWKSError) else type(exc).__name__
            log.warning(
                "jwt: the key set at %s could not be fetched (%s); %s",
                self.display_url,
                reason,
                "keeping the cached set" if had else "no key set yet, refusing tokens with 503",
            )
            return
        except Exception:  # a bug here must not leave waiting requests hanging or kill the task silently
            self.failures += 1
            log.exception("jwt: unexpected failure fetching the key set at %s", self.display_url)
            return
        for note in skipped:
            log.info("jwt: %s: %s", self.display_url, note)
        if not keys:
            log.warning("jwt: the key set at %s holds no usable key; every token will be refused", self.display_url)
        self.keys = keys
        self.generation += 1
        self.fetched_at = self.clock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "aiperimeter"},
                raise_for_status=False,
            )
        return self._session

    async def _download(self) -> bytes:
        async with self._client().get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise JWKSError(f"answered HTTP {response.status}")
            if response.content_length is not None and response.content_length > MAX_JWKS_BYTES:
                raise JWKSError(f"is larger than {MAX_JWKS_BYTES // 1024} KiB")
            body = bytearray()
            async for chunk in response.content.iter_chunked(16384):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JWKSError(f"is larger than {MAX_JWKS_BYTES // 1024} KiB")
            return bytes(body)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---------------------------------------------------------------------------------------------------------- verifier


_INVALID = "The bearer token is not a valid JWT."
_MISMATCH = "The token's algorithm does not match the type of the key it names."


def _timestamp(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


class JWTVerifier:
    """Verifies JWT bearer tokens into KeyRecords. Create one per worker at start, `close()` it on shutdown."""

    id_prefix: ClassVar[str] = "jwt:"

    def __init__(
        self,
        settings: JWTSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        """Load the key material now, so a bad key file stops the gateway at start (ConfigError)."""
        self.settings = settings
        self._wall = wall_clock
        # SHA-256 of a verified token -> (identity, valid until (wall clock), key set generation). Clients reuse an
        # access token for many requests; this spares each repeat the signature check and PyJWT's parsing.
        self._verified: OrderedDict[bytes, tuple[KeyRecord, float, int]] = OrderedDict()
        self._static: tuple[VerificationKey, ...] = ()
        self._ignore_kid = False
        self.jwks: JWKSCache | None = None
        if settings.secret_file is not None:
            self._static = (VerificationKey(algorithm="HS256", key=load_secret(settings.secret_file)),)
            self._ignore_kid = True
        elif settings.public_key_file is not None:
            self._static, self._ignore_kid = load_public_keys(settings.public_key_file, settings.algorithms)
        else:
            assert settings.jwks_url is not None
            self.jwks = JWKSCache(
                settings.jwks_url,
                settings.algorithms,
                ttl=settings.jwks_cache,
                min_refresh=settings.jwks_min_refresh,
                max_stale=settings.jwks_max_stale,
                timeout=fetch_timeout,
                clock=clock,
            )
        self._options: Options = {
            "require": list(settings.require),
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": True,
            "verify_aud": True,
            "enforce_minimum_key_length": True,
        }

    async def start(self) -> None:
        """Warm the JWKS cache (failures are logged, not raised: the first token retries within the rate limit)."""
        if self.jwks is not None and self.jwks.keys is None:
            await self.jwks.refreshed()

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> KeyRecord:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("jwt_invalid", f"The bearer token is larger than {MAX_TOKEN_BYTES} bytes.")
        if not looks_like_jwt(token):
            raise Unauthenticated("jwt_invalid", _INVALID)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        try:
            header = pyjwt.get_unverified_header(token)
        except (pyjwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise Unauthenticated("jwt_invalid", _INVALID) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.algorithms:
            raise Unauthenticated(
                "jwt_algorithm_refused",
                f"The token's signing algorithm is not accepted; accepted: {', '.join(self.settings.algorithms)}.",
            )
        if "crit" in header or "b64" in header:
            raise Unauthenticated(
                "jwt_invalid", "The token uses critical header extensions the gateway does not support."
            )
        kid = header.get("kid")
        key = await self._key_for(algorithm, kid if isinstance(kid, str) else None)
        generation = self.jwks.generation if self.jwks is not None else 0  # the set `key` was taken from
        record = self._record(self._decode(token, key))
        self._remember(digest, record, generation)
        return record

    def _cached(self, digest: bytes) -> KeyRecord | None:
        hit = self._verified.get(digest)
        if hit is None:
            return None
        record, until, generation = hit
        jwks = self.jwks
        if self._wall() >= until or (jwks is not None and (generation != jwks.generation or jwks.usable() is None)):
            del self._verified[digest]
            return None
        if jwks is not None and jwks.stale():
            jwks.refresh()
        self._verified.move_to_end(digest)
        return record

    def _remember(self, digest: bytes, record: KeyRecord, generation: int) -> None:
        assert record.expires_at is not None
        until = min(record.expires_at + self.settings.leeway, self._wall() + VERIFIED_CACHE_TTL)
        self._verified[digest] = (record, until, generation)
        self._verified.move_to_end(digest)
        while len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)

    async def _key_for(self, algorithm: str, kid: str | None) -> VerificationKey:
        if self.jwks is None:
            found = select_key(self._static, algorithm, kid, ignore_kid=self._ignore_kid)
        else:
            found = await self._jwks_key(self.jwks, algorithm, kid)
        if found == "mismatch":
            raise Unauthenticated("jwt_algorithm_refused", _MISMATCH)
        if found == "ambiguous":
            raise Unauthenticated("jwt_unknown_key", "The token does not name its signing key (kid).")
        if found == "unknown":
            raise Unauthenticated("jwt_unknown_key", "The token's signing key is not known to the gateway.")
        # Belt and braces: the key's own type must give the very algorithm PyJWT will be told to use.
        expected = "HS256" if isinstance(found.key, bytes) else algorithm_for(found.key)
        if expected != algorithm or found.algorithm != algorithm:
            raise Unauthenticated("jwt_algorithm_refused", _MISMATCH)
        return found

    async def _jwks_key(self, jwks: JWKSCache, algorithm: str, kid: str | None) -> Selection:
        keys = jwks.usable()
        if keys is None:
            await jwks.refreshed()
            keys = jwks.usable()
            if keys is None:
                raise BackendUnavailable(
                    "jwks_unavailable",
                    "The gateway cannot fetch its identity provider's signing keys; try again shortly.",
                    headers={"Retry-After": str(jwks.retry_after())},
                )
        elif jwks.stale():
            jwks.refresh()  # in the background; this token is checked against the cached set meanwhile
        found = select_key(keys, algorithm, kid, ignore_kid=False)
        if found == "unknown" and await jwks.refreshed():
            refreshed = jwks.usable()
            if refreshed is not None:
                found = select_key(refreshed, algorithm, kid, ignore_kid=False)
        return found

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        settings = self.settings
        try:
            return pyjwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],  # exactly one: the key's own
                options=self._options,
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
        except pyjwt.ExpiredSignatureError:
            raise Unauthenticated("jwt_expired", "The token has expired.") from None
        except pyjwt.ImmatureSignatureError:
            raise Unauthenticated(
                "jwt_not_yet_valid", "The token is not valid yet (nbf or iat is in the future)."
            ) from None
        except pyjwt.InvalidAudienceError:
            raise Unauthenticated("jwt_wrong_audience", "The token is not meant for this gateway (aud).") from None
        except pyjwt.InvalidIssuerError:
            raise Unauthenticated(
                "jwt_wrong_issuer", "The token was not issued by the configured issuer (iss)."
            ) from None
        except pyjwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in REGISTERED_CLAIMS else "a required claim"
            code = {"iss": "jwt_wrong_issuer", "aud": "jwt_wrong_audience"}.get(exc.claim, "jwt_invalid")
            raise Unauthenticated(code, f"The token lacks the '{claim}' claim.") from None
        except pyjwt.InvalidSignatureError:
            raise Unauthenticated("jwt_invalid", "The token's signature does not verify.") from None
        except pyjwt.InvalidAlgorithmError:
            raise Unauthenticated("jwt_algorithm_refused", "The token's signing algorithm is not accepted.") from None
        except (pyjwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthenticated("jwt_invalid", _INVALID) from None

    def _record(self, payload: dict[str, Any]) -> KeyRecord:
        claims = self.settings.claims
        subject = payload.get(claims.subject)
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("jwt_invalid", f"The token has no '{claims.subject}' claim naming its subject.")
        # iss equals the configured issuer (checked by decode), so the id is stable per issuer and subject.
        digest = hashlib.sha256(f"{self.settings.issuer}|{subject}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        expires_at = _timestamp(payload.get("exp"))
        if expires_at is None:
            raise Unauthenticated("jwt_invalid", "The token's 'exp' claim is not a time.")
        issued_at = _timestamp(payload.get("iat"))
        return KeyRecord(
            id=f"{self.id_prefix}{digest}",
            name="".join(c if c.isprintable() else "?" for c in subject[:NAME_LEN]),
            secret_hash="",
            scopes=self._scopes(payload),
            models=self._models(payload),
            created_at=issued_at if issued_at is not None else time.time(),
            expires_at=expires_at,
            rpm=self._limit(payload, claims.rpm),
            tpm=self._limit(payload, claims.tpm),
            concurrency=self._limit(payload, claims.concurrency),
            tool_policy=self._tool_policy(payload),
        )

    def _scopes(self, payload: dict[str, Any]) -> frozenset[str]:
        claims = self.settings.claims
        if claims.scopes is None:
            return frozenset()
        raw = payload.get(claims.scopes)
        if raw is None:
            values: set[str] = set()
        elif isinstance(raw, str):
            values = set(raw.split())
        elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            values = set(raw)
        else:
            raise Unauthenticated(
                "jwt_invalid", f"The token's '{claims.scopes}' claim is not a string or a list of strings."
            )
        # Only scopes the gateway knows; admin only through the explicit mapping, never by its bare name.
        scopes = {v for v in values if v in KNOWN_SCOPES and v != ADMIN_SCOPE}
        if claims.admin_value is not None and claims.admin_value in values:
            scopes.add(ADMIN_SCOPE)
        return frozenset(scopes)

    def _models(self, payload: dict[str, Any]) -> frozenset[str] | None:
        name = self.settings.claims.models
        if name is None:
            return None
        raw = payload.get(name)
        if raw is None:
            return frozenset()  # mapped but absent: no model, rather than every model
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise Unauthenticated("jwt_invalid", f"The token's '{name}' claim is not a list of model names.")
        return frozenset(raw)

    def _tool_policy(self, payload: dict[str, Any]) -> str | None:
        name = self.settings.claims.tool_policy
        if name is None:
            return None
        raw = payload.get(name)
        if raw is None:
            return None
        if not isinstance(raw, str) or not POLICY_NAME_RE.fullmatch(raw):
            raise Unauthenticated("jwt_invalid", f"The token's '{name}' claim is not a tool policy name.")
        return raw

    @staticmethod
    def _limit(payload: dict[str, Any], name: str | None) -> int | None:
        if name is None:
            return None
        raw = payload.get(name)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_LIMIT:
            raise Unauthenticated("jwt_invalid", f"The token's '{name}' claim is not a positive whole number.")
        return raw
