"""JWT bearer verification: settings, key loading, every algorithm, every refusal, the claims mapping. No sockets."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from aiperimeter.errors import ConfigError, Unauthenticated
from aiperimeter.gateway.jwt import (
    MAX_TOKEN_BYTES,
    JWTSettings,
    JWTVerifier,
    looks_like_jwt,
    parse_jwks,
)
from aiperimeter.keys import ADMIN_SCOPE, KeyRecord
from tests.support.leaks import LEAKS

ISS = "https://idp.example.test/"
AUD = "aiperimeter-gateway"
SUB = "alice@example.test"
SECRET = secrets.token_urlsafe(48).encode()
LEAKS.secrets.add(SECRET.decode())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_pem(private: Any) -> bytes:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def claims(**overrides: Any) -> dict[str, Any]:
    # Valid for a day: parametrized tokens are built when the suite is collected, minutes before they are used.
    now = int(time.time())
    payload: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": SUB, "iat": now, "exp": now + 86400}
    for name, value in overrides.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def hand_token(header: dict[str, Any], payload: dict[str, Any] | str, sign: Callable[[bytes], bytes] | None) -> str:
    """A token built by hand, for what PyJWT refuses to produce (alg none, HMAC over a public key, bad JSON)."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body.encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


def hmac_signer(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


@dataclass(frozen=True)
class Signer:
    """A private key (or the HS256 secret), the algorithm it signs with, and its public half for the gateway."""

    alg: str
    private: Any
    public: Any

    def token(self, payload: dict[str, Any] | None = None, **headers: Any) -> str:
        return pyjwt.encode(payload if payload is not None else claims(), self.private, self.alg, headers or None)

    def jwk(self, kid: str | None, **extra: Any) -> dict[str, Any]:
        algorithm: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        doc: dict[str, Any] = dict(algorithm.to_jwk(self.public, as_dict=True))
        if kid is not None:
            doc["kid"] = kid
        doc.update(extra)
        return doc


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Signer("RS256", key, key.public_key())


@pytest.fixture(scope="module")
def ec_signer() -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Signer("ES256", key, key.public_key())


@pytest.fixture(scope="module")
def ed_signer() -> Signer:
    key = ed25519.Ed25519PrivateKey.generate()
    return Signer("EdDSA", key, key.public_key())


@pytest.fixture(scope="module")
def hs_signer() -> Signer:
    return Signer("HS256", SECRET, SECRET)


@pytest.fixture(scope="module")
def signers(rsa_signer: Signer, ec_signer: Signer, ed_signer: Signer, hs_signer: Signer) -> dict[str, Signer]:
    return {s.alg: s for s in (rsa_signer, ec_signer, ed_signer, hs_signer)}


def settings(**values: Any) -> JWTSettings:
    return JWTSettings.model_validate({"issuer": ISS, "audience": AUD, **values})


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def verifier_for(signer: Signer, tmp_path: Path, **values: Any) -> JWTVerifier:
    if signer.alg == "HS256":
        source: dict[str, Any] = {"secret_file": str(write(tmp_path, "secret", signer.private + b"\n"))}
    else:
        source = {"public_key_file": str(write(tmp_path, "key.pem", public_pem(signer.private)))}
    return JWTVerifier(settings(algorithms=[signer.alg], **source, **values))


async def refused(verifier: JWTVerifier, token: str, code: str | None = None) -> Unauthenticated:
    """The token is refused with 401 (and the given code); the message never repeats the token or a part of it."""
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    error = info.value
    if code is not None:
        assert error.code == code, error.message
    assert error.status == 401 and error.headers.get("WWW-Authenticate")
    LEAKS.texts.append(error.message)
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in error.message and part not in str(error)
    return error


# ------------------------------------------------------------------------------------------------------ looks_like_jwt


def test_looks_like_jwt(hs_signer: Signer) -> None:
    assert looks_like_jwt(hs_signer.token())
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # unsigned: reaches the verifier to be refused
    for not_jwt in [
        "aip_abcdefghijkl_" + "A" * 49,
        "",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b.c=",
        "a b.c.d",
        "a+b.c.d",
        "é.b.c",
        "a.b.c\n",
    ]:
        assert not looks_like_jwt(not_jwt), not_jwt


# --------------------------------------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
async def test_every_algorithm_accepts_a_good_token(alg: str, signers: dict[str, Signer], tmp_path: Path) -> None:
    signer = signers[alg]
    verifier = verifier_for(signer, tmp_path)
    payload = claims()
    record = await verifier.verify(signer.token(payload))
    expected_id = "jwt:" + hashlib.sha256(f"{ISS}|{SUB}".encode()).hexdigest()[:16]
    assert isinstance(record, KeyRecord)
    assert record.id == expected_id
    assert record.name == SUB
    assert record.secret_hash == ""
    assert record.expires_at == payload["exp"]
    assert record.created_at == payload["iat"]
    assert record.scopes == frozenset() and record.models is None
    assert (record.rpm, record.tpm, record.concurrency) == (None, None, None)
    assert record.status(time.time()) == "active"
    # The id is stable for the subject and differs between subjects.
    assert (await verifier.verify(signer.token(claims(jti="other")))).id == expected_id
    assert (await verifier.verify(signer.token(claims(sub="bob")))).id != expected_id


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_token_signed_by_another_key_is_refused(alg: str, signers: dict[str, Signer], tmp_path: Path) -> None:
    verifier = verifier_for(signers[alg], tmp_path)
    other: Any = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[alg]()
    forged = pyjwt.encode(claims(), other, alg)
    error = await refused(verifier, forged, "jwt_invalid")
    assert "signature" in error.message


async def test_other_hs256_secret_and_tampered_payload_are_refused(hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    await refused(verifier, pyjwt.encode(claims(), secrets.token_bytes(32), "HS256"), "jwt_invalid")
    header, _, signature = hs_signer.token().split(".")
    tampered = f"{header}.{b64(json.dumps(claims(sub='mallory')).encode())}.{signature}"
    await refused(verifier, tampered, "jwt_invalid")


async def test_public_key_file_forms(rsa_signer: Signer, ec_signer: Signer, tmp_path: Path) -> None:
    # A certificate's public key.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = time.time()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_signer.public)
        .serial_number(1)
        .not_valid_before(datetime.datetime.fromtimestamp(now - 60))
        .not_valid_after(datetime.datetime.fromtimestamp(now + 3600))
        .sign(rsa_signer.private, hashes.SHA256())
    )
    path = write(tmp_path, "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    verifier = JWTVerifier(settings(algorithms=["RS256"], public_key_file=str(path)))
    assert (await verifier.verify(rsa_signer.token(kid="anything"))).name == SUB  # a lone key ignores kid
    # A single JWK.
    path = write(tmp_path, "key.jwk", json.dumps(ec_signer.jwk("e1")))
    verifier = JWTVerifier(settings(algorithms=["ES256"], public_key_file=str(path)))
    assert (await verifier.verify(ec_signer.token(kid="e1"))).name == SUB
    assert (await verifier.verify(ec_signer.token())).name == SUB  # no kid: the only ES256 key
    await refused(verifier, ec_signer.token(kid="e2"), "jwt_unknown_key")


# ------------------------------------------------------------------------------------------------ time, iss and aud


async def test_expired_not_yet_valid_wrong_issuer_and_audience(hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    now = int(time.time())
    await refused(verifier, hs_signer.token(claims(exp=now - 3600)), "jwt_expired")
    await refused(verifier, hs_signer.token(claims(nbf=now + 3600)), "jwt_not_yet_valid")
    await refused(verifier, hs_signer.token(claims(iat=now + 3600)), "jwt_not_yet_valid")
    await refused(verifier, hs_signer.token(claims(iss="https://evil.example.test/")), "jwt_wrong_issuer")
    await refused(verifier, hs_signer.token(claims(iss=None)), "jwt_wrong_issuer")
    await refused(verifier, hs_signer.token(claims(aud="another-service")), "jwt_wrong_audience")
    await refused(verifier, hs_signer.token(claims(aud=["a", "b"])), "jwt_wrong_audience")
    await refused(verifier, hs_signer.token(claims(aud=None)), "jwt_wrong_audience")
    assert (await verifier.verify(hs_signer.token(claims(aud=["other", AUD])))).name == SUB
    assert (await verifier.verify(hs_signer.token(claims(nbf=now - 10)))).name == SUB


async def test_exp_is_required(hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    error = await refused(verifier, hs_signer.token(claims(exp=None)), "jwt_invalid")
    assert "'exp'" in error.message
    # Further required claims are honoured; iat is checked only when present unless required.
    assert (await verifier.verify(hs_signer.token(claims(iat=None)))).name == SUB
    strict = verifier_for(hs_signer, tmp_path, require=["exp", "iat", "jti"])
    await refused(strict, hs_signer.token(claims(iat=None, jti="j")), "jwt_invalid")
    await refused(strict, hs_signer.token(claims()), "jwt_invalid")
    assert (await strict.verify(hs_signer.token(claims(jti="j")))).name == SUB


@pytest.mark.parametrize(
    ("leeway", "shift", "accepted"),
    [
        (30, {"exp": -20}, True),
        (30, {"exp": -40}, False),
        (30, {"nbf": 20}, True),
        (30, {"nbf": 40}, False),
        (30, {"iat": 20}, True),
        (30, {"iat": 40}, False),
        (0, {"exp": 10}, True),
        (0, {"exp": -3}, False),
        (0, {"nbf": 10}, False),
        (300, {"exp": -290}, True),
        (300, {"exp": -310}, False),
    ],
)
async def test_leeway_edges(
    leeway: int, shift: dict[str, int], accepted: bool, hs_signer: Signer, tmp_path: Path
) -> None:
    verifier = verifier_for(hs_signer, tmp_path, leeway=leeway)
    now = int(time.time())
    payload = claims(**{name: now + delta for name, delta in shift.items()})
    if "exp" not in shift:
        payload["exp"] = now + 600
    if "iat" not in shift:
        payload["iat"] = now - 600 if shift.get("exp", 0) < 0 else now
    token = hs_signer.token(payload)
    if accepted:
        assert (await verifier.verify(token)).name == SUB
    else:
        expected = "jwt_expired" if "exp" in shift else "jwt_not_yet_valid"
        await refused(verifier, token, expected)


async def test_expired_within_leeway_keeps_exp_as_expiry(hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    exp = int(time.time()) - 10
    record = await verifier.verify(hs_signer.token(claims(exp=exp, iat=exp - 60)))
    assert record.expires_at == exp  # the authenticate stage must not re-check expiry without the leeway


# ------------------------------------------------------------------------------------------ algorithm confusion


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "nOnE", "", None], ids=["none", "None", "NONE", "nOnE", "empty", "missing"]
)
@pytest.mark.parametrize("with_signature", [False, True])
async def test_unsigned_tokens_are_refused(
    alg: str | None, with_signature: bool, signers: dict[str, Signer], tmp_path: Path
) -> None:
    header: dict[str, Any] = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    token = hand_token(header, claims(), (lambda _: b"x" * 32) if with_signature else None)
    for signer_alg in ("HS256", "RS256"):
        verifier = verifier_for(signers[signer_alg], tmp_path)
        await refused(verifier, token, "jwt_algorithm_refused")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_hs256_signed_with_the_public_key_is_refused(
    alg: str, signers: dict[str, Signer], tmp_path: Path
) -> None:
    """The classic confusion: the attacker signs HS256 using the gateway's public key bytes as the HMAC secret."""
    signer = signers[alg]
    pem = public_pem(signer.private)
    verifier = verifier_for(signer, tmp_path)
    for secret in (pem, pem.strip(), pem.replace(b"\n", b"\r\n")):
        token = hand_token({"alg": "HS256", "typ": "JWT"}, claims(), hmac_signer(secret))
        await refused(verifier, token, "jwt_algorithm_refused")
    # Same with a JWK Set file: the JWK's own JSON as the secret, and a kid naming the public key.
    path = write(tmp_path, "set.json", json.dumps({"keys": [signer.jwk("k1")]}))
    verifier = JWTVerifier(settings(algorithms=[alg], public_key_file=str(path)))
    for secret in (path.read_bytes(), json.dumps(signer.jwk("k1")).encode()):
        token = hand_token({"alg": "HS256", "kid": "k1"}, claims(), hmac_signer(secret))
        await refused(verifier, token, "jwt_algorithm_refused")


async def test_a_key_serves_only_its_own_algorithm(rsa_signer: Signer, ec_signer: Signer, tmp_path: Path) -> None:
    path = write(tmp_path, "set.json", json.dumps({"keys": [rsa_signer.jwk("r1"), ec_signer.jwk("e1")]}))
    verifier = JWTVerifier(settings(algorithms=["RS256", "ES256"], public_key_file=str(path)))
    assert (await verifier.verify(rsa_signer.token(kid="r1"))).name == SUB
    assert (await verifier.verify(ec_signer.token(kid="e1"))).name == SUB
    assert (await verifier.verify(ec_signer.token())).name == SUB  # no kid, one ES256 key
    # A kid naming a key of the other type: refused before any signature check.
    await refused(verifier, ec_signer.token(kid="r1"), "jwt_algorithm_refused")
    await refused(verifier, rsa_signer.token(kid="e1"), "jwt_algorithm_refused")
    await refused(verifier, ec_signer.token(kid="nope"), "jwt_unknown_key")
    # A token whose alg header lies about its signature: the named key's algorithm is used, the signature fails.
    _, payload, signature = ec_signer.token(kid="e1").split(".")
    relabelled = f"{b64(json.dumps({'alg': 'RS256', 'kid': 'r1'}).encode())}.{payload}.{signature}"
    await refused(verifier, relabelled, "jwt_invalid")
    # Only RS256 configured: an ES256 token is refused even with a valid signature.
    rsa_only = JWTVerifier(settings(algorithms=["RS256"], public_key_file=str(path)))
    await refused(rsa_only, ec_signer.token(kid="e1"), "jwt_algorithm_refused")
    # PS256, HS512 and friends are never accepted.
    for alg in ("PS256", "HS512", "RS512", "ES384"):
        await refused(
            verifier, hand_token({"alg": alg, "kid": "r1"}, claims(), lambda _: b"s"), "jwt_algorithm_refused"
        )


async def test_keys_named_in_the_token_are_never_used(rsa_signer: Signer, tmp_path: Path) -> None:
    """jwk, jku, x5u and x5c headers point at keys the attacker controls: they are ignored."""
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker = Signer("RS256", attacker_key, attacker_key.public_key())
    path = write(tmp_path, "set.json", json.dumps({"keys": [rsa_signer.jwk("k1")]}))
    verifier = JWTVerifier(settings(algorithms=["RS256"], public_key_file=str(path)))
    embedded: dict[str, Any] = {
        "jwk": attacker.jwk("k1"),
        "jku": "http://127.0.0.1:1/jwks",
        "x5u": "http://127.0.0.1:1/cert",
    }
    await refused(verifier, attacker.token(kid="k1", **embedded), "jwt_invalid")
    await refused(verifier, attacker.token(**embedded), "jwt_invalid")
    await refused(verifier, attacker.token(kid="attacker", **embedded), "jwt_unknown_key")


async def test_several_keys_of_one_type_need_a_kid(rsa_signer: Signer, tmp_path: Path) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = Signer("RS256", other, other.public_key())
    path = write(tmp_path, "set.json", json.dumps({"keys": [rsa_signer.jwk("a"), second.jwk("b")]}))
    verifier = JWTVerifier(settings(algorithms=["RS256"], public_key_file=str(path)))
    assert (await verifier.verify(second.token(kid="b"))).name == SUB
    await refused(verifier, second.token(), "jwt_unknown_key")
    await refused(verifier, second.token(kid="a"), "jwt_invalid")


def test_key_sets_skip_unusable_keys(rsa_signer: Signer, ec_signer: Signer, ed_signer: Signer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    p384 = ec.generate_private_key(ec.SECP384R1())
    private_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_signer.private))
    entries: list[Any] = [
        {"kty": "oct", "k": b64(SECRET), "kid": "sym"},
        {**private_jwk, "kid": "private"},
        {**json.loads(RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak"},
        {**json.loads(ECAlgorithm.to_jwk(p384.public_key())), "kid": "p384"},
        rsa_signer.jwk("enc", use="enc"),
        rsa_signer.jwk("ops", key_ops=["encrypt"]),
        rsa_signer.jwk("ps", alg="PS256"),
        rsa_signer.jwk("lies", alg="ES256"),
        {"kty": "RSA", "kid": "broken", "n": "AAAA", "e": 3},
        {"kty": "XYZ", "kid": "odd"},
        {"kty": "RSA", "kid": 7},
        "not an object",
        rsa_signer.jwk("good-rsa", alg="RS256", use="sig", key_ops=["verify"]),
        ec_signer.jwk("good-ec"),
        ed_signer.jwk("good-ed"),
        ed_signer.jwk("good-ed"),
    ]
    keys, skipped = parse_jwks({"keys": entries}, ["RS256", "ES256", "EdDSA"])
    assert [(k.kid, k.algorithm) for k in keys] == [("good-rsa", "RS256"), ("good-ec", "ES256"), ("good-ed", "EdDSA")]
    assert len(skipped) == len(entries) - 3
    assert not any(SECRET.decode() in note for note in skipped)
    keys, _ = parse_jwks({"keys": entries}, ["EdDSA"])
    assert [k.kid for k in keys] == ["good-ed"]


# ----------------------------------------------------------------------------------------------- hostile tokens


async def test_oversized_token_is_refused_before_parsing(hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    big = hs_signer.token(claims(pad="x" * MAX_TOKEN_BYTES))
    error = await refused(verifier, big, "jwt_invalid")
    assert "larger" in error.message
    error = await refused(verifier, "a" * (MAX_TOKEN_BYTES + 1) + ".b.c", "jwt_invalid")
    assert "larger" in error.message
    # Just under the limit is fine.
    small = hs_signer.token(claims(pad=""))
    fitting = hs_signer.token(claims(pad="x" * ((MAX_TOKEN_BYTES - len(small)) * 3 // 4 - 8)))
    assert len(fitting) <= MAX_TOKEN_BYTES
    assert (await verifier.verify(fitting)).name == SUB


def _garbage(secret: bytes) -> list[Any]:
    sign = hmac_signer(secret)
    hs = {"alg": "HS256", "typ": "JWT"}
    # Built at collection time: a long expiry keeps them unexpired however long the suite runs.
    base = claims(exp=int(time.time()) + 86400)
    exp_text = f'"exp": {base["exp"]}'
    return [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="word"),
        pytest.param("a.b", id="two-segments"),
        pytest.param("a.b.c", id="short-segments"),
        pytest.param("....", id="dots"),
        pytest.param("a.b.c.d.e", id="five-segments"),
        pytest.param("eyJ.eyJ.eyJ", id="truncated-json"),
        pytest.param("tøken.b.c", id="non-ascii"),
        pytest.param(f"{b64(b'not json')}.{b64(b'{}')}.", id="header-not-json"),
        pytest.param(f"{b64(b'[1,2]')}.{b64(b'{}')}.{b64(b'sig')}", id="header-array"),
        pytest.param(f"{b64(b'{')}.{b64(b'{}')}.{b64(b'sig')}", id="header-broken"),
        pytest.param(f"{b64(b'[' * 3000)}.{b64(b'{}')}.{b64(b'sig')}", id="header-deep"),
        pytest.param(hand_token({"alg": "HS256", "kid": 5}, claims(), sign), id="kid-not-string"),
        pytest.param(hand_token({"alg": ["HS256"]}, claims(), sign), id="alg-list"),
        pytest.param(hand_token(hs, "not json", sign), id="payload-not-json"),
        pytest.param(hand_token(hs, "[1]", sign), id="payload-array"),
        pytest.param(hand_token(hs, "[" * 3000, sign), id="payload-deep"),
        pytest.param(hand_token(hs, claims(exp="soon"), sign), id="exp-string"),
        pytest.param(hand_token(hs, json.dumps(base).replace(exp_text, '"exp": 1e999'), sign), id="exp-infinite"),
        pytest.param(hand_token(hs, json.dumps(base).replace(exp_text, '"exp": NaN'), sign), id="exp-nan"),
        pytest.param(hand_token(hs, json.dumps(claims(exp=10**400)), sign), id="exp-huge"),
        pytest.param(hand_token(hs, claims(exp=[1]), sign), id="exp-list"),
        pytest.param(hand_token(hs, claims(nbf="later"), sign), id="nbf-string"),
        pytest.param(hand_token(hs, claims(iat={"a": 1}), sign), id="iat-object"),
        pytest.param(hand_token(hs, claims(iss=["x"]), sign), id="iss-list"),
        pytest.param(hand_token(hs, claims(aud=5), sign), id="aud-number"),
        pytest.param(hand_token(hs, claims(sub=5), sign), id="sub-number"),
        pytest.param(hand_token(hs, claims(sub=""), sign), id="sub-empty"),
        pytest.param(hand_token(hs, claims(sub=None), sign), id="sub-missing"),
        pytest.param(hand_token({**hs, "crit": ["exp"]}, claims(), sign), id="crit-unknown"),
        pytest.param(hand_token({**hs, "crit": ["b64"], "b64": False}, claims(), sign), id="crit-b64"),
        pytest.param(hand_token({**hs, "crit": []}, claims(), sign), id="crit-empty"),
        pytest.param(hand_token(hs, claims(), lambda _: b""), id="empty-signature"),
        pytest.param(hand_token(hs, claims(), lambda _: b"x" * 31), id="short-signature"),
    ]


@pytest.mark.parametrize("token", _garbage(SECRET))
async def test_garbage_is_refused_with_401(token: str, hs_signer: Signer, tmp_path: Path) -> None:
    verifier = verifier_for(hs_signer, tmp_path)
    error = await refused(verifier, token)
    assert error.code in {
        "jwt_invalid",
        "jwt_algorithm_refused",
        "jwt_not_yet_valid",
        "jwt_wrong_issuer",
        "jwt_wrong_audience",
    }


async def test_refusals_log_nothing_of_the_token(
    hs_signer: Signer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = verifier_for(hs_signer, tmp_path)
    tokens = [hs_signer.token(claims(exp=1)), hs_signer.token(claims(aud="x")), hs_signer.token(claims())]
    for token in tokens[:2]:
        await refused(verifier, token)
    await verifier.verify(tokens[2])
    for token in tokens:
        assert not any(part in caplog.text for part in token.split("."))
    assert SECRET.decode() not in caplog.text


# ------------------------------------------------------------------------------------------- verified-token cache


class WallClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_verified_tokens_are_remembered_briefly(
    hs_signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = WallClock()
    path = write(tmp_path, "secret", SECRET)
    verifier = JWTVerifier(settings(algorithms=["HS256"], secret_file=str(path)), wall_clock=wall)
    now = int(time.time())
    token = hs_signer.token(claims(exp=now + 3600))
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # remembered
    assert await verifier.verify(hs_signer.token(claims(exp=now + 3601))) is not first
    wall.offset = 59
    assert await verifier.verify(token) is first
    wall.offset = 61  # remembered for a minute at most, then verified again
    second = await verifier.verify(token)
    assert second is not first and second == first
    # Never past exp + leeway (30 s), even within the minute.
    wall.offset = 0
    short = hs_signer.token(claims(exp=now + 5))
    remembered = await verifier.verify(short)
    wall.offset = 5 + 30 - 2
    assert await verifier.verify(short) is remembered
    wall.offset = 5 + 30 + 2
    assert await verifier.verify(short) is not remembered  # re-verified (real time: still valid)
    # Refusals are never remembered.
    expired = hs_signer.token(claims(exp=now - 3600))
    for _ in range(3):
        await refused(verifier, expired, "jwt_expired")
    # Bounded: the least recently used entry goes first.
    monkeypatch.setattr("aiperimeter.gateway.jwt.VERIFIED_CACHE_SIZE", 2)
    wall.offset = 0
    tokens = [hs_signer.token(claims(exp=now + 3600, jti=str(i))) for i in range(3)]
    records = [await verifier.verify(t) for t in tokens]
    assert len(verifier._verified) == 2
    assert await verifier.verify(tokens[2]) is records[2]
    assert await verifier.verify(tokens[0]) is not records[0]


# --------------------------------------------------------------------------------------------------- claims mapping


async def test_scopes_string_list_unknown_and_admin(hs_signer: Signer, tmp_path: Path) -> None:
    plain = verifier_for(hs_signer, tmp_path)
    # `admin` is never granted by its bare name, nor by anything unless admin_value maps it.
    for scope in ("admin", "openid admin profile", ["admin"], "aip:admin"):
        assert (await plain.verify(hs_signer.token(claims(scope=scope)))).scopes == frozenset()
    mapped = verifier_for(hs_signer, tmp_path, claims={"admin_value": "aip:admin"})
    assert (await mapped.verify(hs_signer.token(claims(scope="openid aip:admin")))).scopes == {ADMIN_SCOPE}
    assert (await mapped.verify(hs_signer.token(claims(scope=["email", "aip:admin"])))).scopes == {ADMIN_SCOPE}
    assert (await mapped.verify(hs_signer.token(claims(scope="admin unknown")))).scopes == frozenset()
    assert (await mapped.verify(hs_signer.token(claims(scope="AIP:ADMIN")))).scopes == frozenset()
    assert (await mapped.verify(hs_signer.token(claims(scope="")))).scopes == frozenset()
    assert (await mapped.verify(hs_signer.token(claims()))).scopes == frozenset()
    await refused(mapped, hs_signer.token(claims(scope=5)), "jwt_invalid")
    await refused(mapped, hs_signer.token(claims(scope=["ok", 5])), "jwt_invalid")
    # Another claim name (Azure's scp, a list), and the mapping switched off.
    scp = verifier_for(hs_signer, tmp_path, claims={"scopes": "scp", "admin_value": "Gateway.Admin"})
    assert (await scp.verify(hs_signer.token(claims(scp=["Gateway.Admin"])))).scopes == {ADMIN_SCOPE}
    assert (await scp.verify(hs_signer.token(claims(scope="Gateway.Admin")))).scopes == frozenset()
    off = verifier_for(hs_signer, tmp_path, claims={"scopes": None})
    assert (await off.verify(hs_signer.token(claims(scope=5)))).scopes == frozenset()


async def test_models_and_limits(hs_signer: Signer, tmp_path: Path) -> None:
    unmapped = verifier_for(hs_signer, tmp_path)
    record = await unmapped.verify(hs_signer.token(claims(models=["a"], rpm=5)))
    assert record.models is None and record.rpm is None
    mapping = {"models": "aip_models", "rpm": "aip_rpm", "tpm": "aip_tpm", "concurrency": "aip_conc"}
    verifier = verifier_for(hs_signer, tmp_path, claims=mapping)
    record = await verifier.verify(
        hs_signer.token(claims(aip_models=["llama3", "qwen"], aip_rpm=60, aip_tpm=100000, aip_conc=2))
    )
    assert record.models == frozenset({"llama3", "qwen"})
    assert (record.rpm, record.tpm, record.concurrency) == (60, 100000, 2)
    record = await verifier.verify(hs_signer.token(claims()))
    assert record.models == frozenset()  # mapped but absent: no model, not every model
    assert (record.rpm, record.tpm, record.concurrency) == (None, None, None)
    assert (await verifier.verify(hs_signer.token(claims(aip_models=[])))).models == frozenset()
    for bad in ({"aip_models": "llama3"}, {"aip_models": [1]}, {"aip_models": [""]}):
        await refused(verifier, hs_signer.token(claims(**bad)), "jwt_invalid")
    for bad_limit in (0, -1, True, "60", 1.5, 10**12, [60]):
        await refused(verifier, hs_signer.token(claims(aip_rpm=bad_limit)), "jwt_invalid")


async def test_tool_policy_claim(hs_signer: Signer, tmp_path: Path) -> None:
    unmapped = verifier_for(hs_signer, tmp_path)
    assert (await unmapped.verify(hs_signer.token(claims(tool_policy="agent")))).tool_policy is None
    verifier = verifier_for(hs_signer, tmp_path, claims={"tool_policy": "aip_tools"})
    assert (await verifier.verify(hs_signer.token(claims(aip_tools="analytics")))).tool_policy == "analytics"
    assert (await verifier.verify(hs_signer.token(claims()))).tool_policy is None  # the gateway's default applies
    for bad in ("../etc/passwd", "Agent", "", 5, ["a"], "a" * 65):
        await refused(verifier, hs_signer.token(claims(aip_tools=bad)), "jwt_invalid")


async def test_subject_claim_and_name(hs_signer: Signer, tmp_path: Path) -> None:
    by_email = verifier_for(hs_signer, tmp_path, claims={"subject": "email"})
    record = await by_email.verify(hs_signer.token(claims(email="carol@example.test")))
    assert record.name == "carol@example.test"
    assert record.id == "jwt:" + hashlib.sha256(f"{ISS}|carol@example.test".encode()).hexdigest()[:16]
    await refused(by_email, hs_signer.token(claims()), "jwt_invalid")
    verifier = verifier_for(hs_signer, tmp_path)
    record = await verifier.verify(hs_signer.token(claims(sub="x\ny\x1b" + "z" * 200)))
    assert record.name == "x?y?" + "z" * 60
    record = await verifier.verify(hs_signer.token(claims(sub="\ud800")))
    assert record.name == "?"


# ---------------------------------------------------------------------------------------------------------- settings


def test_settings_from_yaml(tmp_path: Path) -> None:
    doc = yaml.safe_load(
        """
        algorithms: [RS256, ES256]
        jwks_url: https://idp.example.test/.well-known/jwks.json
        issuer: https://idp.example.test/
        audience: gw
        leeway: 10
        require: [exp, iat]
        claims: {scopes: scp, admin_value: Gateway.Admin, models: models, rpm: rpm}
        """
    )
    parsed = JWTSettings.model_validate(doc)
    assert parsed.algorithms == ("RS256", "ES256") and parsed.require == ("exp", "iat")
    assert parsed.claims.scopes == "scp" and parsed.claims.subject == "sub"
    assert (parsed.jwks_cache, parsed.jwks_min_refresh, parsed.leeway) == (300, 30, 10)
    defaults = settings(algorithms=["HS256"], secret_file=str(tmp_path / "s"))
    assert defaults.secret_file == tmp_path / "s"
    assert defaults.leeway == 30 and defaults.require == ("exp",) and defaults.claims.admin_value is None
    assert settings(algorithms=["RS256"], jwks_url="http://127.0.0.1:9/jwks").jwks_url
    assert settings(algorithms=["RS256"], jwks_url="http://localhost/jwks").jwks_url
    assert settings(algorithms=["RS256"], jwks_url="http://[::1]:8/jwks").jwks_url


KEY = {"public_key_file": "/k.pem"}
BAD_SETTINGS = [
    pytest.param({"algorithms": ["RS256"]}, "exactly one key source", id="no-source"),
    pytest.param({"algorithms": ["RS256"], **KEY, "jwks_url": "https://i/j"}, "exactly one", id="two-sources"),
    pytest.param({"algorithms": ["HS256"], "secret_file": "/s", **KEY}, "exactly one", id="secret-and-key"),
    pytest.param({**KEY}, "algorithms", id="no-algorithms"),
    pytest.param({"algorithms": [], **KEY}, "algorithms", id="empty-algorithms"),
    pytest.param({"algorithms": ["none"], **KEY}, "algorithms.0", id="alg-none"),
    pytest.param({"algorithms": ["HS512"], **KEY}, "algorithms.0", id="alg-hs512"),
    pytest.param({"algorithms": ["rs256"], **KEY}, "algorithms.0", id="alg-lowercase"),
    pytest.param({"algorithms": "RS256", **KEY}, "algorithms", id="alg-not-list"),
    pytest.param({"algorithms": ["RS256", "RS256"], **KEY}, "twice", id="alg-twice"),
    pytest.param({"algorithms": ["HS256"], **KEY}, "algorithm confusion", id="hs256-with-public-key"),
    pytest.param({"algorithms": ["RS256", "HS256"], "jwks_url": "https://i/j"}, "confusion", id="hs256-with-jwks"),
    pytest.param({"algorithms": ["RS256"], "secret_file": "/s"}, "HS256", id="rs256-with-secret"),
    pytest.param({"algorithms": ["HS256", "RS256"], "secret_file": "/s"}, "HS256", id="mixed-with-secret"),
    pytest.param({"algorithms": ["HS256"], "secret": "inline-secret-value"}, "secret", id="inline-secret"),
    pytest.param({"algorithms": ["RS256"], "jwks_url": "http://idp.example.test/j"}, "https", id="jwks-http"),
    pytest.param({"algorithms": ["RS256"], "jwks_url": "ftp://idp.example.test/j"}, "https", id="jwks-ftp"),
    pytest.param({"algorithms": ["RS256"], "jwks_url": "https:///j"}, "https", id="jwks-no-host"),
    pytest.param({"algorithms": ["RS256"], "jwks_url": "https://u:p@idp/j"}, "credentials", id="jwks-creds"),
    pytest.param({"algorithms": ["RS256"], "jwks_url": "https://idp/j#x"}, "fragment", id="jwks-fragment"),
    pytest.param({"algorithms": ["RS256"], **KEY, "issuer": ""}, "issuer", id="empty-issuer"),
    pytest.param({"algorithms": ["RS256"], **KEY, "audience": None}, "audience", id="no-audience"),
    pytest.param({"algorithms": ["RS256"], **KEY, "leeway": 301}, "leeway", id="leeway-too-big"),
    pytest.param({"algorithms": ["RS256"], **KEY, "leeway": -1}, "leeway", id="leeway-negative"),
    pytest.param({"algorithms": ["RS256"], **KEY, "leeway": "30"}, "leeway", id="leeway-string"),
    pytest.param({"algorithms": ["RS256"], **KEY, "leeway": True}, "leeway", id="leeway-bool"),
    pytest.param({"algorithms": ["RS256"], **KEY, "require": ["iat"]}, "exp", id="require-without-exp"),
    pytest.param({"algorithms": ["RS256"], **KEY, "require": []}, "require", id="require-empty"),
    pytest.param({"algorithms": ["RS256"], **KEY, "require": ["exp", "email"]}, "unknown claim", id="require-odd"),
    pytest.param({"algorithms": ["RS256"], **KEY, "jwks_min_refresh": 0}, "jwks_min_refresh", id="refresh-zero"),
    pytest.param({"algorithms": ["RS256"], **KEY, "jwks_cache": 10}, "jwks_cache", id="cache-below-refresh"),
    pytest.param({"algorithms": ["RS256"], **KEY, "jwks_max_stale": 60}, "jwks_max_stale", id="stale-below-cache"),
    pytest.param({"algorithms": ["RS256"], **KEY, "claims": {"admin": "x"}}, "claims.admin", id="claims-extra"),
    pytest.param({"algorithms": ["RS256"], **KEY, "claims": {"subject": ""}}, "subject", id="claims-empty-sub"),
    pytest.param({"algorithms": ["RS256"], **KEY, "claims": {"rpm": 5}}, "claims.rpm", id="claims-not-name"),
    pytest.param(
        {"algorithms": ["RS256"], **KEY, "claims": {"scopes": None, "admin_value": "a"}}, "admin_value", id="admin-only"
    ),
    pytest.param({"algorithms": ["RS256"], "public_key_file": 5}, "public_key_file", id="path-number"),
]


@pytest.mark.parametrize(("values", "message"), BAD_SETTINGS)
def test_settings_refusals(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        JWTSettings.model_validate({"issuer": ISS, "audience": AUD, **values})
    text = str(info.value)
    assert message in text, text


def test_settings_are_frozen(tmp_path: Path) -> None:
    parsed = settings(algorithms=["HS256"], secret_file=str(tmp_path / "s"))
    with pytest.raises(ValidationError):
        parsed.leeway = 0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------------ key loading


def test_secret_file_loading(tmp_path: Path) -> None:
    def load(data: bytes) -> JWTVerifier:
        return JWTVerifier(settings(algorithms=["HS256"], secret_file=str(write(tmp_path, "secret", data))))

    short = secrets.token_hex(16)[:31].encode()
    LEAKS.secrets.add(short.decode())
    with pytest.raises(ConfigError) as info:
        load(short + b"\n")
    assert "31 bytes" in str(info.value) and "32" in str(info.value) and info.value.field == "jwt.secret_file"
    assert short.decode() not in str(info.value)
    LEAKS.texts.append(str(info.value))
    assert load(b"k" * 32 + b"\r\n")
    with pytest.raises(ConfigError, match="cannot read"):
        JWTVerifier(settings(algorithms=["HS256"], secret_file=str(tmp_path / "missing")))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ConfigError, match="public key"):
        load(public_pem(rsa_key))
    with pytest.raises(ConfigError, match="public key"):
        load(json.dumps({"kty": "oct", "k": b64(secrets.token_bytes(32))}).encode())
    with pytest.raises(ConfigError, match="larger"):
        load(b"x" * (300 * 1024))


def test_public_key_file_loading(tmp_path: Path, rsa_signer: Signer, ec_signer: Signer) -> None:
    def load(data: bytes | str, algorithms: list[str]) -> JWTVerifier:
        path = write(tmp_path, "key", data)
        return JWTVerifier(settings(algorithms=algorithms, public_key_file=str(path)))

    def refuses(data: bytes | str, algorithms: list[str], message: str) -> None:
        with pytest.raises(ConfigError) as info:
            load(data, algorithms)
        assert message in str(info.value), str(info.value)
        assert info.value.field == "jwt.public_key_file" and info.value.source == str(tmp_path / "key")

    rsa_pem = public_pem(rsa_signer.private)
    assert load(rsa_pem, ["RS256"])
    refuses(rsa_pem, ["ES256"], "set algorithms to [RS256]")
    refuses(rsa_pem, ["RS256", "ES256"], "set algorithms to [RS256]")
    refuses(public_pem(ec_signer.private), ["RS256"], "set algorithms to [ES256]")
    refuses(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), ["RS256"], "1024 bits")  # noqa: S505
    refuses(public_pem(ec.generate_private_key(ec.SECP384R1())), ["ES256"], "secp384r1")
    private = rsa_signer.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    refuses(private, ["RS256"], "private key")
    refuses(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", ["RS256"], "is not a PEM public key")
    refuses(b"hello", ["RS256"], "is not a PEM public key")
    refuses("{not json", ["RS256"], "not valid JSON")
    refuses(json.dumps({"keys": "x"}), ["RS256"], "'keys' is not a list")
    refuses(json.dumps({"keys": []}), ["RS256"], "no usable public key")
    refuses(json.dumps({"keys": [{"kty": "oct", "k": b64(SECRET)}]}), ["RS256"], "symmetric")
    refuses(json.dumps({"keys": [ec_signer.jwk("e")]}), ["RS256"], "not configured")
    refuses(json.dumps({"keys": [rsa_signer.jwk("k")] * 101}), ["RS256"], "more than 100 keys")
    with pytest.raises(ConfigError, match="cannot read"):
        JWTVerifier(settings(algorithms=["RS256"], public_key_file=str(tmp_path / "absent.pem")))
