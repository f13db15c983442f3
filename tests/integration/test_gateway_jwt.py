"""JWT bearer tokens through the real gateway: verified, mapped to scopes and limits, and refused when forged."""

from __future__ import annotations

import time
from pathlib import Path

import jwt as pyjwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.gateway import start_gateway
from tests.support.http import request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

ISSUER, AUDIENCE = "https://idp.test/", "aiperimeter"


def test_jwt_identities_are_verified_limited_and_audited(upstream: FakeUpstream, tmp_path: Path) -> None:
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "idp.pem"
    public.write_bytes(
        signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        orjson.dumps(
            {
                "jwt": {
                    "algorithms": ["RS256"],
                    "public_key_file": str(public),
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "claims": {"rpm": "rpm", "models": "models"},
                }
            }
        ).decode()
    )

    def token(**claims: object) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-42", "iat": now, "exp": now + 300, **claims}
        value = pyjwt.encode(body, signing, algorithm="RS256")
        LEAKS.secrets.add(value)
        return value

    # No aiperimeter key exists at all: a configured issuer is a credential, so the gateway starts.
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", str(config))
    try:
        good = token(rpm=3, models=["m1"])
        chat = {"model": "m1", "messages": []}
        assert request(gateway.port, "POST", "/v1/chat/completions", key=good, body=chat).status == 200
        other_model = request(gateway.port, "POST", "/v1/chat/completions", key=good, body={**chat, "model": "m2"})
        assert other_model.status == 403  # the models claim scopes the identity
        statuses = [request(gateway.port, "POST", "/v1/chat/completions", key=good, body=chat).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]  # rpm 3 from the claim; the refused model did not count
        wrong_audience = request(gateway.port, "GET", "/v1/models", key=token(aud="someone-else"))
        assert (wrong_audience.status, wrong_audience.code) == (401, "jwt_wrong_audience")
        expired = request(gateway.port, "GET", "/v1/models", key=token(exp=int(time.time()) - 3600))
        assert (expired.status, expired.code) == (401, "jwt_expired")
        header, _, signature = good.split(".")
        forged_payload = pyjwt.utils.base64url_encode(
            orjson.dumps({**pyjwt.decode(good, options={"verify_signature": False}), "rpm": 10**6})
        )
        forged = request(gateway.port, "GET", "/v1/models", key=f"{header}.{forged_payload.decode()}.{signature}")
        assert (forged.status, forged.code) == (401, "jwt_invalid")
        unsigned = pyjwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"
        )
        refused = request(gateway.port, "GET", "/v1/models", key=unsigned)
        assert (refused.status, refused.code) == (401, "jwt_algorithm_refused")
    finally:
        gateway.stop()
    records = [r for r in gateway.audit() if "request_id" in r]
    identities = {r["key_id"] for r in records if r["status"] in (200, 429)}
    assert len(identities) == 1 and next(iter(identities)).startswith("jwt:")
    assert "svc-42" not in (tmp_path / "audit.jsonl").read_text()  # the subject is hashed, never logged
