"""JWTs for the attack catalog: one honest RS256 identity provider, and the forgeries an attacker would try on it.

Tokens are built by hand (base64url of the JSON parts, signature computed here) so a forgery can carry any header,
including ones a JWT library would refuse to produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.leaks import LEAKS

ISSUER, AUDIENCE = "https://idp.test/", "aiperimeter"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(number: int) -> str:
    return b64(number.to_bytes((number.bit_length() + 7) // 8, "big"))


class JWTForge:
    def __init__(self) -> None:
        self.signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.attacker_ec = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = self.signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.issued: set[str] = set()
        self._cache: dict[str, str] = {}

    def settings_yaml(self, data_dir: Path) -> str:
        public = data_dir / "idp.pem"
        public.write_bytes(self.public_pem)
        settings = {
            "jwt": {
                "algorithms": ["RS256"],
                "public_key_file": str(public),
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "claims": {"models": "models"},
            }
        }
        return orjson.dumps(settings).decode()  # JSON is YAML

    # ---- signing ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _parts(header: dict[str, Any], claims: dict[str, Any]) -> str:
        return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"

    def _rs256(self, header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
        signing_input = self._parts(header, claims)
        signature = (key or self.signing).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def _hs(self, header: dict[str, Any], claims: dict[str, Any], secret: bytes, digest: Any = hashlib.sha256) -> str:
        signing_input = self._parts(header, claims)
        return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"

    def _jwk(self, key: rsa.RSAPrivateKey) -> dict[str, str]:
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}

    @staticmethod
    def claims(**overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "attack-catalog",
            "iat": now,
            "exp": now + 3600,
            "models": ["llama3", "mixtral"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    # ---- variants ---------------------------------------------------------------------------------------------------

    def token(self, variant: str) -> str:
        if variant not in self._cache:
            if variant not in JWTS:
                raise KeyError(f"unknown JWT variant {variant!r}; known: {', '.join(sorted(JWTS))}")
            value = JWTS[variant](self)
            self._cache[variant] = value
            self.issued.add(value)
            LEAKS.secrets.add(value)
        return self._cache[variant]


RS = {"alg": "RS256", "typ": "JWT"}
NOW = int(time.time())


def _none(alg: str) -> Callable[[JWTForge], str]:
    return lambda f: f._parts({"alg": alg, "typ": "JWT"}, f.claims()) + "."


def _valid_prefix(f: JWTForge) -> str:
    return f.token("valid").rsplit(".", 1)[0]


JWTS: dict[str, Callable[[JWTForge], str]] = {
    "valid": lambda f: f._rs256(RS, f.claims()),
    "valid_admin_claims": lambda f: f._rs256(
        RS, f.claims(scope="admin", scopes=["admin"], roles=["admin"], admin=True, is_admin=True)
    ),
    "valid_scoped": lambda f: f._rs256(RS, f.claims(models=["llama3"])),
    "alg_none": _none("none"),
    "alg_none_upper": _none("NONE"),
    "alg_none_mixed": _none("nOnE"),
    "alg_none_with_signature": lambda f: f._parts({"alg": "none"}, f.claims()) + "." + f.token("valid").split(".")[2],
    "alg_empty": _none(""),
    "hs256_public_pem": lambda f: f._hs({"alg": "HS256", "typ": "JWT"}, f.claims(), f.public_pem),
    "hs256_public_pem_stripped": lambda f: f._hs({"alg": "HS256"}, f.claims(), f.public_pem.strip()),
    "hs256_public_der": lambda f: f._hs(
        {"alg": "HS256"},
        f.claims(),
        f.signing.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ),
    "hs512_public_pem": lambda f: f._hs({"alg": "HS512"}, f.claims(), f.public_pem, hashlib.sha512),
    "kid_traversal_dev_null": lambda f: f._hs({"alg": "HS256", "kid": "../../../../../../dev/null"}, f.claims(), b""),
    "kid_sql_injection": lambda f: f._hs(
        {"alg": "HS256", "kid": "x' UNION SELECT 'attacker' -- "}, f.claims(), b"attacker"
    ),
    "kid_command_injection": lambda f: f._hs({"alg": "HS256", "kid": "key|/usr/bin/id"}, f.claims(), b"attacker"),
    "kid_traversal_rs256": lambda f: f._rs256({**RS, "kid": "../../../../etc/passwd"}, f.claims(), f.attacker),
    "jku_elsewhere": lambda f: f._rs256(
        {**RS, "jku": "http://127.0.0.1:9/jwks.json", "kid": "a"}, f.claims(), f.attacker
    ),
    "x5u_elsewhere": lambda f: f._rs256({**RS, "x5u": "http://127.0.0.1:9/cert.pem"}, f.claims(), f.attacker),
    "jwk_embedded": lambda f: f._rs256({**RS, "jwk": f._jwk(f.attacker)}, f.claims(), f.attacker),
    "attacker_key": lambda f: f._rs256(RS, f.claims(), f.attacker),
    "es256_attacker": lambda f: (
        f._parts({"alg": "ES256"}, f.claims())
        + "."
        + b64(f.attacker_ec.sign(f._parts({"alg": "ES256"}, f.claims()).encode(), ec.ECDSA(hashes.SHA256())))
    ),
    "es256_psychic_signature": lambda f: f._parts({"alg": "ES256"}, f.claims()) + "." + b64(b"\x00" * 64),
    "unsigned_rs256": lambda f: f._parts(RS, f.claims()) + ".",
    "signature_stripped": lambda f: _valid_prefix(f) + ".",
    "signature_dropped": _valid_prefix,
    "signature_truncated": lambda f: f.token("valid")[:-8],
    "payload_forged": lambda f: (
        f._parts(RS, f.claims(sub="someone-else", models=["*"])) + "." + f.token("valid").split(".")[2]
    ),
    "header_swapped_to_hs256": lambda f: b64(orjson.dumps({"alg": "HS256"})) + "." + f.token("valid").split(".", 1)[1],
    "expired": lambda f: f._rs256(RS, f.claims(iat=NOW - 7200, exp=NOW - 3600)),
    "exp_as_string": lambda f: f._rs256(RS, f.claims(exp=str(NOW + 3600))),
    "exp_missing": lambda f: f._rs256(RS, {k: v for k, v in f.claims().items() if k != "exp"}),
    "nbf_future": lambda f: f._rs256(RS, f.claims(nbf=NOW + 3600)),
    "wrong_audience": lambda f: f._rs256(RS, f.claims(aud="someone-else")),
    "audience_list_other": lambda f: f._rs256(RS, f.claims(aud=["someone-else", "aiperimeter-x"])),
    "audience_missing": lambda f: f._rs256(RS, f.claims(aud=None)),
    "wrong_issuer": lambda f: f._rs256(RS, f.claims(iss="https://evil.example/")),
    "issuer_prefix": lambda f: f._rs256(RS, f.claims(iss="https://idp.test/.evil.example/")),
    "issuer_missing": lambda f: f._rs256(RS, f.claims(iss=None)),
    "subject_missing": lambda f: f._rs256(RS, f.claims(sub=None)),
    "crit_header": lambda f: f._rs256({**RS, "crit": ["exp"]}, f.claims()),
    "b64_false": lambda f: f._rs256({**RS, "b64": False, "crit": ["b64"]}, f.claims()),
    "oversized": lambda f: f._rs256(RS, f.claims(pad="a" * 9000)),
    "padded": lambda f: f.token("valid") + "==",
    "two_tokens_dotted": lambda f: f.token("valid") + "." + f.token("valid"),
}
