"""JWT verification against a JWK Set served over HTTP on 127.0.0.1: rotation, refresh limits, outages, bad answers.

The verifier runs on a fake monotonic clock, so cache lifetimes and refresh intervals are crossed without sleeping;
the fetches themselves are real HTTP requests, counted at the server.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from aiperimeter.errors import BackendUnavailable, Unauthenticated
from aiperimeter.gateway.jwt import MAX_JWKS_BYTES, JWTSettings, JWTVerifier

ISS = "https://idp.example.test/"
AUD = "aiperimeter-gateway"
MIN_REFRESH = 30.0
CACHE = 300.0
MAX_STALE = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Signer:
    alg: str
    private: Any
    kid: str

    def jwk(self) -> dict[str, Any]:
        algorithm: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        doc: dict[str, Any] = dict(algorithm.to_jwk(self.private.public_key(), as_dict=True))
        return {**doc, "kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, kid: str | None = None, **extra: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISS, "aud": AUD, "sub": "svc-" + self.kid, "iat": now, "exp": now + 600, **extra}
        return pyjwt.encode(payload, self.private, self.alg, {"kid": kid or self.kid})


def rsa_signer(kid: str) -> Signer:
    return Signer("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)


@pytest.fixture(scope="module")
def key_a() -> Signer:
    return rsa_signer("key-a")


@pytest.fixture(scope="module")
def key_b() -> Signer:
    return Signer("ES256", ec.generate_private_key(ec.SECP256R1()), "key-b")


@pytest.fixture(scope="module")
def stranger() -> Signer:
    return Signer("EdDSA", ed25519.Ed25519PrivateKey.generate(), "stranger")


@dataclass
class JWKSServer:
    """Serves `doc` at /jwks.json; `mode` switches to a failure. Counts every request."""

    doc: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    mode: str = "ok"
    requests: int = 0
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        mode = self.mode
        if mode == "ok":
            return web.Response(body=orjson.dumps(self.doc), content_type="application/json")
        if mode == "error":
            return web.Response(status=500, text="upstream exploded")
        if mode == "not-found":
            return web.Response(status=404)
        if mode == "redirect":
            raise web.HTTPFound(location="http://127.0.0.1:1/elsewhere")
        if mode == "malformed":
            return web.Response(body=b'{"keys": [', content_type="application/json")
        if mode == "not-a-set":
            return web.Response(body=b'["keys"]', content_type="application/json")
        if mode == "keys-not-list":
            return web.Response(body=b'{"keys": {"kty": "RSA"}}', content_type="application/json")
        if mode == "html":
            return web.Response(body=b"<html>login</html>", content_type="text/html")
        padded = orjson.dumps({**self.doc, "padding": "x" * MAX_JWKS_BYTES})
        if mode == "oversized":
            return web.Response(body=padded, content_type="application/json")
        if mode == "oversized-chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(padded), 8192):
                await response.write(padded[start : start + 8192])
            await response.write_eof()
            return response
        if mode == "gzip-bomb":
            body = gzip.compress(padded + b" " * (4 * 1024 * 1024))
            return web.Response(body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        if mode == "slow":
            await asyncio.sleep(2)
            return web.Response(body=orjson.dumps(self.doc), content_type="application/json")
        raise AssertionError(mode)

    async def start(self) -> JWKSServer:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def server(key_a: Signer) -> AsyncIterator[JWKSServer]:
    jwks = await JWKSServer(doc={"keys": [key_a.jwk()]}).start()
    yield jwks
    await jwks.stop()


@pytest.fixture
async def make_verifier() -> AsyncIterator[Callable[..., JWTVerifier]]:
    made: list[JWTVerifier] = []

    def make(url: str, clock: Clock, *, fetch_timeout: float = 3.0, **values: Any) -> JWTVerifier:
        settings = JWTSettings.model_validate(
            {
                "algorithms": ["RS256", "ES256", "EdDSA"],
                "jwks_url": url,
                "issuer": ISS,
                "audience": AUD,
                "jwks_cache": CACHE,
                "jwks_min_refresh": MIN_REFRESH,
                "jwks_max_stale": MAX_STALE,
                **values,
            }
        )
        verifier = JWTVerifier(settings, clock=clock, fetch_timeout=fetch_timeout)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


async def refused(verifier: JWTVerifier, token: str, code: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.code == code, info.value.message


async def unavailable(verifier: JWTVerifier, token: str) -> BackendUnavailable:
    with pytest.raises(BackendUnavailable) as info:
        await verifier.verify(token)
    assert info.value.status == 503 and info.value.code == "jwks_unavailable"
    assert int(info.value.headers["Retry-After"]) >= 1
    return info.value


# ------------------------------------------------------------------------------------------------------ rotation


async def test_signing_key_rotation(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer, key_b: Signer
) -> None:
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    assert server.requests == 0  # nothing is fetched before it is needed (or start() is called)
    assert (await verifier.verify(key_a.token())).name == "svc-key-a"
    assert server.requests == 1
    # The issuer publishes a new key and starts signing with it: one refresh, and the new token is accepted.
    server.doc = {"keys": [key_a.jwk(), key_b.jwk()]}
    clock.advance(MIN_REFRESH)
    assert (await verifier.verify(key_b.token())).name == "svc-key-b"
    assert server.requests == 2
    # Both keys now come from the cache.
    for _ in range(20):
        await verifier.verify(key_a.token())
        await verifier.verify(key_b.token())
    assert server.requests == 2
    # The old key is withdrawn; once the cache is stale, a background refresh picks that up, and even a token
    # verified (and remembered) a moment ago is refused from then on.
    token_a = key_a.token()
    server.doc = {"keys": [key_b.jwk()]}
    clock.advance(CACHE)
    assert (await verifier.verify(token_a)).name == "svc-key-a"  # served from the stale set meanwhile
    assert verifier.jwks is not None
    await verifier.jwks.wait()
    assert server.requests == 3
    await refused(verifier, token_a, "jwt_unknown_key")  # refresh just ran: no new fetch for it
    assert server.requests == 3
    assert (await verifier.verify(key_b.token())).name == "svc-key-b"


async def test_new_kid_right_after_a_fetch_waits_for_the_interval(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer, key_b: Signer
) -> None:
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    await verifier.start()
    assert server.requests == 1
    server.doc = {"keys": [key_a.jwk(), key_b.jwk()]}
    clock.advance(MIN_REFRESH - 1)
    await refused(verifier, key_b.token(), "jwt_unknown_key")
    assert server.requests == 1
    clock.advance(1)
    assert (await verifier.verify(key_b.token())).name == "svc-key-b"
    assert server.requests == 2


# -------------------------------------------------------------------------------------------- refresh rate limit


async def test_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer, stranger: Signer
) -> None:
    clock = Clock()
    verifier = make_verifier(server.url, clock)

    async def flood(count: int) -> None:
        tokens = [stranger.token(kid=secrets.token_hex(8)) for _ in range(count)]
        results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) and r.code == "jwt_unknown_key" for r in results), results

    # Cold: a concurrent flood shares one fetch.
    await flood(200)
    assert server.requests == 1
    await flood(100)
    assert server.requests == 1
    assert (await verifier.verify(key_a.token())).name == "svc-key-a"
    for step in range(29):
        clock.advance(1)
        await flood(20)
        assert server.requests == 1, step
    clock.advance(1)  # MIN_REFRESH since the first fetch
    await flood(200)
    assert server.requests == 2
    for _ in range(10):
        await flood(20)
    assert server.requests == 2
    clock.advance(MIN_REFRESH * 10)  # a long quiet spell still allows only one more
    await flood(200)
    assert server.requests == 3
    assert (await verifier.verify(key_a.token())).name == "svc-key-a"


# ---------------------------------------------------------------------------------------------------- outages


async def test_warm_cache_survives_an_outage_and_recovers(
    server: JWKSServer,
    make_verifier: Callable[..., JWTVerifier],
    key_a: Signer,
    key_b: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiperimeter.gateway")
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    await verifier.verify(key_a.token())
    assert verifier.jwks is not None
    server.mode = "error"
    clock.advance(CACHE)
    for _ in range(5):
        assert (await verifier.verify(key_a.token())).name == "svc-key-a"
        await verifier.jwks.wait()
    assert server.requests == 2 and verifier.jwks.failures == 1
    assert "keeping the cached set" in caplog.text and "HTTP 500" in caplog.text
    assert "upstream exploded" not in caplog.text
    # Unknown kids during the outage: refused as unknown (401), not as an outage (503).
    clock.advance(MIN_REFRESH)
    await refused(verifier, key_b.token(), "jwt_unknown_key")
    assert server.requests == 3
    # The endpoint comes back with the new key: the next allowed refresh takes it.
    server.mode = "ok"
    server.doc = {"keys": [key_a.jwk(), key_b.jwk()]}
    clock.advance(MIN_REFRESH)
    assert (await verifier.verify(key_b.token())).name == "svc-key-b"
    assert server.requests == 4


async def test_warm_cache_survives_the_server_going_away(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer
) -> None:
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    token = key_a.token()
    await verifier.verify(token)
    await server.stop()  # connection refused from now on
    assert verifier.jwks is not None
    for _ in range(3):
        clock.advance(CACHE)
        assert (await verifier.verify(token)).name == "svc-key-a"
        await verifier.jwks.wait()
    assert verifier.jwks.failures == 3
    # A cached set is trusted for at most jwks_max_stale: then the gateway fails closed, remembered tokens too.
    clock.advance(MAX_STALE)
    await unavailable(verifier, token)
    await unavailable(verifier, key_a.token(jti="fresh"))


async def test_cold_cache_with_the_server_down_fails_closed(
    make_verifier: Callable[..., JWTVerifier], key_a: Signer
) -> None:
    gone = await JWKSServer().start()
    await gone.stop()
    clock = Clock()
    verifier = make_verifier(gone.url, clock)
    await verifier.start()  # logs, does not raise
    error = await unavailable(verifier, key_a.token())
    assert key_a.token().split(".")[1] not in error.message


async def test_cold_cache_failures_are_rate_limited_too(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer
) -> None:
    server.mode = "error"
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    results = await asyncio.gather(*(verifier.verify(key_a.token()) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results)
    assert server.requests == 1
    error = await unavailable(verifier, key_a.token())
    assert error.headers["Retry-After"] == str(int(MIN_REFRESH))
    assert server.requests == 1
    server.mode = "ok"
    clock.advance(MIN_REFRESH)
    assert (await verifier.verify(key_a.token())).name == "svc-key-a"
    assert server.requests == 2


# --------------------------------------------------------------------------------------------------- bad answers

BAD_MODES = [
    "error",
    "not-found",
    "redirect",
    "malformed",
    "not-a-set",
    "keys-not-list",
    "html",
    "oversized",
    "oversized-chunked",
    "gzip-bomb",
    "slow",
]


@pytest.mark.parametrize("mode", BAD_MODES)
async def test_bad_answers_are_refused_cleanly(
    mode: str, server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer, key_b: Signer
) -> None:
    # Cold: nothing usable, so 503.
    server.mode = mode
    cold = make_verifier(server.url, Clock(), fetch_timeout=0.3)
    started = time.monotonic()
    await unavailable(cold, key_a.token())
    assert time.monotonic() - started < 2  # the fetch timeout bounds the wait
    assert cold.jwks is not None and cold.jwks.failures == 1 and cold.jwks.keys is None
    # Warm: the bad answer does not replace the good set.
    server.mode = "ok"
    clock = Clock()
    warm = make_verifier(server.url, clock, fetch_timeout=0.3)
    await warm.verify(key_a.token())
    server.mode = mode
    server.doc = {"keys": [key_a.jwk(), key_b.jwk()]}
    clock.advance(MIN_REFRESH)
    await refused(warm, key_b.token(), "jwt_unknown_key")
    assert warm.jwks is not None and warm.jwks.failures == 1
    assert (await warm.verify(key_a.token())).name == "svc-key-a"


async def test_served_set_with_unusable_keys(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer, stranger: Signer
) -> None:
    secret = secrets.token_bytes(32)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    server.doc = {
        "keys": [
            {"kty": "oct", "k": pyjwt.utils.base64url_encode(secret).decode(), "kid": "sym"},
            {**RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak"},
            {**OKPAlgorithm.to_jwk(stranger.private, as_dict=True), "kid": "stranger"},  # private: skipped
            key_a.jwk(),
        ]
    }
    clock = Clock()
    verifier = make_verifier(server.url, clock)
    assert (await verifier.verify(key_a.token())).name == "svc-key-a"
    assert verifier.jwks is not None and [k.kid for k in verifier.jwks.keys or ()] == ["key-a"]
    await refused(verifier, stranger.token(), "jwt_unknown_key")
    hs = pyjwt.encode(
        {"iss": ISS, "aud": AUD, "sub": "x", "exp": int(time.time()) + 60}, secret, "HS256", {"kid": "sym"}
    )
    await refused(verifier, hs, "jwt_algorithm_refused")
    with pytest.warns(pyjwt.InsecureKeyLengthWarning):
        weak_token = pyjwt.encode(
            {"iss": ISS, "aud": AUD, "sub": "x", "exp": int(time.time()) + 60}, weak, "RS256", {"kid": "weak"}
        )
    await refused(verifier, weak_token, "jwt_unknown_key")
    # An issuer that empties its set has withdrawn its keys: honoured at the next refresh.
    server.doc = {"keys": []}
    clock.advance(CACHE)
    await verifier.verify(key_a.token())
    await verifier.jwks.wait()
    await refused(verifier, key_a.token(), "jwt_unknown_key")


async def test_close_cancels_a_fetch_in_flight(
    server: JWKSServer, make_verifier: Callable[..., JWTVerifier], key_a: Signer
) -> None:
    server.mode = "slow"
    verifier = make_verifier(server.url, Clock())
    pending = asyncio.ensure_future(verifier.verify(key_a.token()))
    for _ in range(100):
        if server.requests:
            break
        await asyncio.sleep(0.01)
    await verifier.close()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await unavailable(verifier, key_a.token())  # closed: no more fetches
    assert server.requests == 1
