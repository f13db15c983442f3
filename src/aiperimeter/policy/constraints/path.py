"""File path arguments, judged on the lexically normalised POSIX path against allowed roots and denied globs.

The judgement is lexical: a symbolic link inside a root can still lead outside it, so the tool must resolve the path
itself (or open it with O_NOFOLLOW / openat2 RESOLVE_BENEATH) before use. Percent-encoding is not decoded: `%2e%2e`
is a file name of six characters here, as it is to the file system; a tool that decodes it first must not be given
this constraint. Relative paths are judged as if under the first root, so the tool must resolve them there too.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import re2
from pydantic import Field, PrivateAttr, field_validator

from aiperimeter.policy.constraints.base import Constraint

# Kernel interfaces that are not files in a root: process memory and environment, open descriptors, sockets.
_SPECIAL_PREFIXES = ("/proc", "/dev/fd", "/dev/tcp", "/dev/udp", "/dev/stdin", "/dev/stdout", "/dev/stderr")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shown(text: str) -> str:
    """A name as it may appear in a reason: printable and at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _normalise(path: str) -> str:
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal  # POSIX keeps a leading "//"


def glob_to_regex(pattern: str) -> str:
    """A deny glob as a regular expression over a whole normalised path.

    `**/` is any number of leading directories (none included), a trailing `/**` is the directory and everything
    below it, any other `**` is any text; `*` and `?` stay within one path component; `[...]` is a character class
    (`[!...]` negated). A pattern without `/` matches the last component at any depth (`*.pem`); one starting
    with `/` is anchored at the file system root; any other may start at any depth (`secrets/*`).
    """
    if "/" not in pattern or not pattern.startswith(("/", "**")):
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negated = body.startswith("!")
            body = body[1:] if negated else body
            escaped = "".join("\\" + c if c in "\\^[]" else c for c in body)
            out.append(f"[^/{escaped}]" if negated else f"[{escaped}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class PathConstraint(Constraint):
    """A path equal to or under one of `roots`, with no `..`, no `~`, and matching no `deny` glob."""

    roots: list[str]
    allow_relative: bool = True
    deny: list[str] = Field(default_factory=list)

    _deny: list[Any] = PrivateAttr(default_factory=list)

    @field_validator("roots")
    @classmethod
    def _valid_roots(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one root is required")
        roots = []
        for root in value:
            if not root.startswith("/") or _CONTROL.search(root) or "\\" in root or ".." in root.split("/"):
                raise ValueError(f"root {root[:64]!r} must be an absolute POSIX path without '..'")
            roots.append(_normalise(root))
        return roots

    @field_validator("deny")
    @classmethod
    def _valid_globs(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern:
                raise ValueError("an empty deny pattern matches nothing")
            try:
                re2.compile(glob_to_regex(pattern))
            except Exception as error:
                raise ValueError(f"deny pattern {pattern[:64]!r} is not a valid glob ({error})") from None
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._deny = [re2.compile(glob_to_regex(pattern)) for pattern in self.deny]

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "path must be a string"
        try:
            return self._judge(value)
        except Exception:
            return "unjudgeable path"

    def _judge(self, path: str) -> str | None:
        if not path:
            return "empty path"
        if _CONTROL.search(path):
            return "path contains NUL or control characters"
        if "\\" in path:
            return "path contains a backslash"
        if path.startswith("~"):
            return "path starts with '~'"
        if ".." in path.split("/"):
            return "path has a '..' component"
        if not path.startswith("/"):
            if not self.allow_relative:
                return "relative paths are not allowed"
            path = self.roots[0] + "/" + path
        normal = _normalise(path)
        for special in _SPECIAL_PREFIXES:
            if normal == special or normal.startswith(special + "/"):
                return f"path under {special} is not allowed"
        if not any(normal == root or normal.startswith(root.rstrip("/") + "/") for root in self.roots):
            return "path is outside the allowed roots"
        for pattern, glob in zip(self._deny, self.deny, strict=True):
            if pattern.fullmatch(normal):
                return f"path matches denied pattern '{_shown(glob)}'"
        return None
