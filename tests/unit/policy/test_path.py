from __future__ import annotations

import posixpath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aiperimeter.policy.constraints.path import PathConstraint, glob_to_regex

DATA = PathConstraint(
    roots=["/srv/data", "/tmp/work/"],
    deny=["**/.env", "**/.ssh/**", "*.pem", "/srv/data/private/**", "secrets/*", "**/id_[!.]*"],
)
ABSOLUTE_ONLY = PathConstraint(roots=["/srv/data"], allow_relative=False)
EVERYWHERE = PathConstraint(roots=["/"])


@pytest.mark.parametrize(
    ("constraint", "path"),
    [
        pytest.param(DATA, "/srv/data", id="root-itself"),
        pytest.param(DATA, "/srv/data/", id="root-trailing-slash"),
        pytest.param(DATA, "/srv/data/reports/q1.csv", id="under-root"),
        pytest.param(DATA, "/tmp/work/out.txt", id="second-root-normalised"),
        pytest.param(DATA, "reports/q1.csv", id="relative-under-first-root"),
        pytest.param(DATA, ".", id="dot"),
        pytest.param(DATA, "/srv//data/./reports", id="redundant-separators"),
        pytest.param(DATA, "//srv/data/x", id="double-leading-slash"),
        pytest.param(DATA, "/srv/data/a/.env.example", id="near-miss-env"),
        pytest.param(DATA, "/srv/data/secrets/a/b", id="star-stays-in-one-component"),
        pytest.param(DATA, "/srv/data/id_.pub", id="negated-class-miss"),
        pytest.param(DATA, "/srv/data/%2e%2e/etc/passwd", id="percent-encoding-is-a-name"),
        pytest.param(DATA, "/srv/data/..foo", id="dots-in-a-name"),
        pytest.param(EVERYWHERE, "/etc/hosts", id="root-slash"),
    ],
)
def test_allowed(constraint: PathConstraint, path: str) -> None:
    assert constraint.check(path) is None


@pytest.mark.parametrize(
    ("constraint", "path", "reason"),
    [
        pytest.param(DATA, "/srv/database", "path is outside the allowed roots", id="sibling-prefix"),
        pytest.param(DATA, "/srv", "path is outside the allowed roots", id="parent-of-root"),
        pytest.param(DATA, "/etc/passwd", "path is outside the allowed roots", id="elsewhere"),
        pytest.param(DATA, "/tmp/workers/x", "path is outside the allowed roots", id="second-root-prefix"),
        pytest.param(DATA, "/srv/data/../../etc/passwd", "path has a '..' component", id="dotdot-escape"),
        pytest.param(DATA, "/srv/data/a/../b", "path has a '..' component", id="dotdot-inside"),
        pytest.param(DATA, "../etc/passwd", "path has a '..' component", id="relative-dotdot"),
        pytest.param(DATA, "reports/..", "path has a '..' component", id="trailing-dotdot"),
        pytest.param(DATA, "~/.ssh/id_rsa", "path starts with '~'", id="tilde"),
        pytest.param(DATA, "~root/x", "path starts with '~'", id="tilde-user"),
        pytest.param(DATA, "/srv/data/x\x00.txt", "NUL or control characters", id="nul"),
        pytest.param(DATA, "/srv/data/x\n", "NUL or control characters", id="newline"),
        pytest.param(DATA, "/srv/data/x\x85", "NUL or control characters", id="c1-control"),
        pytest.param(DATA, "/srv/data\\..\\..\\etc", "path contains a backslash", id="backslash"),
        pytest.param(EVERYWHERE, "/proc/self/environ", "path under /proc is not allowed", id="proc"),
        pytest.param(EVERYWHERE, "/proc", "path under /proc is not allowed", id="proc-itself"),
        pytest.param(EVERYWHERE, "/dev/fd/3", "path under /dev/fd is not allowed", id="dev-fd"),
        pytest.param(EVERYWHERE, "/dev/tcp/203.0.113.1/80", "path under /dev/tcp", id="dev-tcp"),
        pytest.param(EVERYWHERE, "//proc/1/mem", "path under /proc", id="proc-double-slash"),
        pytest.param(DATA, "/srv/data/.env", "path matches denied pattern '**/.env'", id="env"),
        pytest.param(DATA, "/srv/data/app/.env", "denied pattern '**/.env'", id="env-deep"),
        pytest.param(DATA, ".env", "denied pattern '**/.env'", id="env-relative"),
        pytest.param(DATA, "/srv/data/u/.ssh", "denied pattern '**/.ssh/**'", id="ssh-dir"),
        pytest.param(DATA, "/srv/data/u/.ssh/id_rsa", "denied pattern '**/.ssh/**'", id="ssh-key"),
        pytest.param(DATA, "/srv/data/tls/server.pem", "denied pattern '*.pem'", id="pem"),
        pytest.param(DATA, "/srv/data/private", "denied pattern '/srv/data/private/**'", id="anchored-dir"),
        pytest.param(DATA, "/srv/data/private/a/b", "denied pattern '/srv/data/private/**'", id="anchored-deep"),
        pytest.param(DATA, "/srv/data/x/secrets/token", "denied pattern 'secrets/*'", id="relative-pattern"),
        pytest.param(DATA, "/srv/data/id_ed25519", "denied pattern '**/id_[!.]*'", id="negated-class"),
        pytest.param(ABSOLUTE_ONLY, "reports/q1.csv", "relative paths are not allowed", id="relative-refused"),
        pytest.param(DATA, "", "empty path", id="empty"),
        pytest.param(DATA, 5, "path must be a string", id="int"),
        pytest.param(DATA, ["/srv/data"], "path must be a string", id="list"),
    ],
)
def test_denied(constraint: PathConstraint, path: Any, reason: str) -> None:
    got = constraint.check(path)
    assert got is not None and reason in got


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"roots": []}, "at least one root is required", id="no-roots"),
        pytest.param({"roots": ["srv/data"]}, "must be an absolute POSIX path", id="relative-root"),
        pytest.param({"roots": ["/srv/../etc"]}, "without '..'", id="dotdot-root"),
        pytest.param({"roots": ["C:\\data"]}, "must be an absolute POSIX path", id="windows-root"),
        pytest.param({"roots": ["/srv/data"], "deny": [""]}, "an empty deny pattern", id="empty-glob"),
        pytest.param({"deny": ["*.pem"]}, "roots", id="roots-required"),
        pytest.param({"roots": ["/a"], "allow_symlinks": True}, "Extra inputs are not permitted", id="unknown"),
    ],
)
def test_load_time_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        PathConstraint(**fields)
    assert message in str(error.value)


def test_roots_are_normalised_at_load() -> None:
    assert PathConstraint(roots=["/srv/./data/", "//tmp//work"]).roots == ["/srv/data", "/tmp/work"]


@pytest.mark.parametrize(
    ("pattern", "regex"),
    [
        pytest.param("**/.ssh/**", r"(?:.*/)?\.ssh(?:/.*)?", id="dir-anywhere"),
        pytest.param("*.pem", r"(?:.*/)?[^/]*\.pem", id="basename"),
        pytest.param("/etc/**", r"/etc(?:/.*)?", id="anchored"),
        pytest.param("a?[!x]", r"(?:.*/)?a[^/][^/x]", id="single-and-class"),
    ],
)
def test_glob_translation(pattern: str, regex: str) -> None:
    assert glob_to_regex(pattern) == regex


def test_reasons_never_hold_the_path() -> None:
    secret = "tok-4f9a8b7c6d5e4f3a"
    for path in (f"/etc/{secret}", f"/srv/data/../{secret}", f"~/{secret}", f"/srv/data/{secret}/.env"):
        reason = DATA.check(path)
        assert reason is not None and secret not in reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="/.~\\\x00\nsrvdat%2e*?[]!", max_size=40))
def test_check_never_raises_and_never_escapes(path: str) -> None:
    if DATA.check(path) is None:
        resolved = "/" + posixpath.normpath(posixpath.join("/srv/data", path)).lstrip("/")
        assert resolved == "/srv/data" or resolved.startswith(("/srv/data/", "/tmp/work/")) or resolved == "/tmp/work"
