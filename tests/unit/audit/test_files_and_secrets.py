"""Reading files for an audit, and the secret engine's own rules: placeholders, boundaries, redaction, ignores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiperimeter.audit.files import WalkStats, decode_for_scan, walk
from aiperimeter.audit.runner import ignored
from aiperimeter.audit.secrets import SecretDetector, is_placeholder
from aiperimeter.catalog.fake import expand, expand_with_values
from aiperimeter.catalog.loader import secret_rules

DETECTOR = SecretDetector(secret_rules())
OPENAI = "{{fake sk-proj- +b64url74 T3BlbkFJ +b64url74}}"


def test_walk_skips_dependencies_binaries_large_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("x = 1\n")
    for folder in (".git", "node_modules", ".venv", "__pycache__"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "leak.txt").write_text("x\n")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "blob.dat").write_bytes(b"\x00\x01" * 10)
    (tmp_path / "huge.txt").write_bytes(b"a" * 2048)
    (tmp_path / "skipme.log").write_text("x\n")
    os.symlink("/etc/hostname", tmp_path / "link.txt")
    stats = WalkStats()
    files = list(walk([tmp_path], stats, max_bytes=1024, exclude=("*.log",)))
    assert [Path(f.path).name for f in files] == ["app.py"]
    assert stats.skipped == {"binary": 2, "too large": 1, "not a regular file": 1, "excluded": 1}


@pytest.mark.parametrize(
    ("raw", "scanned"),
    [
        pytest.param("key = 1\n".encode("utf-16"), b"key = 1\n", id="utf-16-with-bom"),
        pytest.param(b"\xef\xbb\xbfkey = 1\n", b"key = 1\n", id="utf-8-bom-dropped"),
        pytest.param(b"caf\xe9 = 1\n", b"caf\xe9 = 1\n", id="latin-1-kept-as-bytes"),
        pytest.param(b"\x00\x00\x00binary", None, id="nul-is-binary"),
    ],
)
def test_decoding(raw: bytes, scanned: bytes | None) -> None:
    assert decode_for_scan(raw) == scanned


def test_secrets_are_found_in_utf16_and_latin1_files(tmp_path: Path) -> None:
    key = expand(OPENAI, "enc")
    (tmp_path / "a.ps1").write_bytes(f"$env:OPENAI_API_KEY = '{key}'\n".encode("utf-16"))
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 \xff\xfe\n" + f"k={key}\n".encode())
    found = [(f.path, [h.secret for h in DETECTOR.scan(f.data)]) for f in walk([tmp_path], WalkStats())]
    assert [hits for _, hits in found] == [[key], [key]]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" + OPENAI, id="continues-a-longer-token-on-the-left"),
        pytest.param("{{fake hf_ +alpha34}}abc", id="continues-on-the-right"),
        pytest.param("data:image/png;base64,AAAA+" + OPENAI, id="inside-base64"),
    ],
)
def test_a_key_shape_inside_a_longer_token_is_not_a_key(text: str) -> None:
    assert DETECTOR.scan(expand(text, "boundary").encode()) == []


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        pytest.param("sk-proj-your-key-here", True, id="your"),
        pytest.param("sk-ant-api03-" + "X" * 30, True, id="x-run"),
        pytest.param("sk-proj-<key>", True, id="angle"),
        pytest.param("sk-proj-${OPENAI_KEY}", True, id="variable"),
        pytest.param("hf_" + "a" * 34, True, id="one-character"),
        pytest.param("gsk_" + "abcdefghijklmnopqrstuvwxyz", True, id="alphabet-run"),
        pytest.param(expand("{{fake hf_ +alpha34}}", "real"), False, id="random"),
        pytest.param("hf_QmFkZmFrZWtleWxvb2tzcmFuZG9tYWJj", False, id="fake-inside-random-text-is-not-a-word"),
    ],
)
def test_placeholders(value: str, placeholder: bool) -> None:
    assert is_placeholder(value, 3) is placeholder


@pytest.mark.parametrize(
    ("line", "rule", "silenced"),
    [
        pytest.param(b"k = 'v'  # aiperimeter:ignore", "openai", True, id="all-rules"),
        pytest.param(b"k = 'v'  # AIPERIMETER: ignore", "openai", True, id="any-case-one-space"),
        pytest.param(b"k = 'v'  // aiperimeter:ignore[openai, groq]", "openai", True, id="named-rule"),
        pytest.param(b"k = 'v'  // aiperimeter:ignore[groq]", "openai", False, id="other-rule"),
        pytest.param(b"k = 'v'  # ignore", "openai", False, id="no-marker"),
    ],
)
def test_inline_ignores(line: bytes, rule: str, silenced: bool) -> None:
    assert ignored(line, rule) is silenced


SPECS = [
    "sk-proj- +b64url74 T3BlbkFJ +b64url74",
    "sk-ant-api03- +b64url93 AA",
    "hf_ +alpha34",
    "gsk_ +alnum20 WGdyb3FY +alnum24",
    "sk_live_ +alnum30",
    "pplx- +alnum48",
    "+aipkey",
]


@pytest.mark.parametrize("engine", ["re2", "plain"])
def test_every_key_in_a_long_noisy_file_is_found(engine: str) -> None:
    """Keys at every distance from each other and from the keyword windows' edges, among keyword decoys."""
    import random

    from aiperimeter.catalog.fake import fake

    rng = random.Random(7)
    detector = SecretDetector(secret_rules())
    if engine == "plain":
        detector._keywords._set = None  # the fallback used where the RE2 wheel is missing
    parts, planted = [], []
    for i in range(400):
        noise = "".join(rng.choice("abc sk_ hf_ aws x\n=") for _ in range(rng.choice([0, 1, 50, 900, 1100, 2100])))
        key = fake(SPECS[i % len(SPECS)], rng)
        parts += [noise, " ", key, "\n"]
        planted.append(key)
    assert [h.secret for h in detector.scan("".join(parts).encode())] == planted


def test_a_key_after_a_slash_is_found() -> None:
    text, (token,) = expand_with_values("git clone https://{{fake ghp_ +alnum36}}@github.com/org/repo", "slash")
    assert [h.secret for h in DETECTOR.scan(text.encode())] == [token]


def test_long_random_values_are_not_placeholders() -> None:
    import secrets

    assert not is_placeholder(secrets.token_urlsafe(450))
    assert not is_placeholder(secrets.token_hex(70))


@pytest.mark.parametrize(
    "template",
    [
        pytest.param('MISTRAL_API_KEY = "{{fake +alnum32}}"', id="assignment"),
        pytest.param('os.environ["MISTRAL_API_KEY"] = "{{fake +alnum32}}"', id="environ-item"),
        pytest.param('key = os.getenv("MISTRAL_API_KEY", "{{fake +alnum32}}")', id="getenv-default"),
        pytest.param('{"mistral_api_key": "{{fake +alnum32}}"}', id="json"),
        pytest.param("mistral-key: {{fake +alnum32}}", id="yaml"),
        pytest.param("run --mistral-api-key {{fake +alnum32}}", id="flag"),
    ],
)
def test_assignment_shapes_of_a_key_without_prefix(template: str) -> None:
    text, (key,) = expand_with_values(template, "assign")
    assert [(h.rule.id, h.secret) for h in DETECTOR.scan(text.encode())] == [("mistral", key)]
