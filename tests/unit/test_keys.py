from __future__ import annotations

from dataclasses import replace

import pytest

from aiperimeter.keys import KEY_RE, KeyRecord, generate_key, hash_key, new_key, parse_key, redact
from aiperimeter.sensitive import Secret


def test_generated_keys_have_the_documented_shape() -> None:
    key_id, secret = generate_key()
    assert KEY_RE.fullmatch(secret)
    assert secret.startswith(f"aip_{key_id}_")
    assert len(secret) == 66
    assert parse_key(secret) == key_id


def test_keys_are_unique() -> None:
    assert len({generate_key()[1] for _ in range(500)}) == 500


@pytest.mark.parametrize("position", [4, 10, 17, 30, 59, 60, 65])
def test_any_changed_character_fails_the_checksum(position: int) -> None:
    _, secret = generate_key()
    replacement = "2" if secret[position] != "2" else "3"
    tampered = secret[:position] + replacement + secret[position + 1 :]
    assert parse_key(tampered) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "aip_",
        "sk-proj-abc",
        "aip_abcdefghijkl_short",
        "AIP_abcdefghijkl_" + "a" * 49,
        "aip_ABCDEFGHIJKL_" + "a" * 49,
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert parse_key(token) is None


def test_hash_and_redaction_never_show_the_secret() -> None:
    key_id, secret = generate_key()
    assert len(hash_key(secret)) == 64 and secret not in hash_key(secret)
    assert redact(secret) == f"aip_{key_id}_…"
    assert redact("sk-whatever") == "*****"


def test_record_status() -> None:
    record, _ = new_key("x", now=100.0, expires_at=200.0)
    assert record.status(150) == "active"
    assert record.status(200) == "expired"
    assert replace(record, revoked_at=120).status(150) == "revoked"
    assert "secret" not in record.public(150) and record.secret_hash not in str(record.public(150))


def test_secret_wrapper_hides_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") and secret != Secret("other")


def test_record_is_immutable() -> None:
    record = KeyRecord("abcdefghijkl", "n", "h")
    with pytest.raises(AttributeError):
        record.name = "other"  # type: ignore[misc]
