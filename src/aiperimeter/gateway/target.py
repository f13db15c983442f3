"""The request target: split, validated, never normalised.

The gateway authorises the raw path and forwards exactly that path. Anything a server could read two ways is
refused with 400 instead of being "cleaned up": encoded slashes, dots and backslashes, dot segments, empty
segments, control and non-ASCII characters, fragments, and absolute-form targets whose authority is not the Host.
"""

from __future__ import annotations

from aiperimeter.errors import BadRequest

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Literal characters a path may hold (RFC 3986 pchar and "/", minus ";" which some servers treat as a
# parameter separator).
_PATH_CHARS = _UNRESERVED | frozenset("/:@!$&'()*+,=%")
_QUERY_CHARS = _PATH_CHARS | frozenset('?;/[]|{}^`"<>\\')
# Bytes that must never appear percent-encoded in a path: their encoded and decoded forms would route differently.
_FORBIDDEN_ENCODED = frozenset(ord(c) for c in _UNRESERVED | set("/\\%;")) | set(range(0x20)) | {0x7F}


def _ambiguous(message: str) -> BadRequest:
    return BadRequest("ambiguous_path", f"The request path is ambiguous: {message}. Send a plain path.")


def check_path(path: str) -> None:
    if not path.startswith("/"):
        raise _ambiguous("it must start with '/'")
    if not set(path) <= _PATH_CHARS:
        raise _ambiguous("it holds a character that must not appear there (control, space, '\\', ';' or non-ASCII)")
    if "%" in path:
        parts = path.split("%")
        for part in parts[1:]:
            if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
                raise _ambiguous("it holds a '%' that is not a percent-encoded byte")
            if int(part[:2], 16) in _FORBIDDEN_ENCODED or int(part[:2], 16) >= 0x80:
                raise _ambiguous("it percent-encodes a character that must be sent as itself")
    if "//" in path:
        raise _ambiguous("it has an empty segment ('//')")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise _ambiguous("it has a '.' or '..' segment")


def split_target(target: str, host: str | None) -> tuple[str, str]:
    """Return (path, query) of an origin-form or absolute-form target, or raise BadRequest."""
    if not target.startswith("/"):
        lowered = target[:8].lower()
        scheme_len = 7 if lowered.startswith("http://") else 8 if lowered.startswith("https://") else 0
        if not scheme_len:
            raise BadRequest("bad_target", "The request target must be a path (origin-form).")
        authority, slash, rest = target[scheme_len:].partition("/")
        if host is None or authority.lower() != host.lower() or "@" in authority:
            raise _ambiguous("an absolute-form target names a different host than the Host header")
        target = slash + rest if slash else "/"
    if "#" in target:
        raise _ambiguous("it holds a fragment ('#')")
    path, _, query = target.partition("?")
    check_path(path)
    if query and not set(query) <= _QUERY_CHARS:
        raise BadRequest("bad_query", "The query string holds control, space or non-ASCII characters.")
    return path, query
