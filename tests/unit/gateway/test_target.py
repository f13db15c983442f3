from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.target import split_target

OK = [
    pytest.param("/api/tags", None, ("/api/tags", ""), id="plain"),
    pytest.param("/v1/models/org/model:8b", None, ("/v1/models/org/model:8b", ""), id="model-path"),
    pytest.param("/v1/models?limit=5&after=x%2Fy", None, ("/v1/models", "limit=5&after=x%2Fy"), id="query-kept"),
    pytest.param("/v1/models/a%20b", None, ("/v1/models/a%20b", ""), id="encoded-space"),
    pytest.param("/", None, ("/", ""), id="root"),
    pytest.param("http://localhost:8787/api/tags", "localhost:8787", ("/api/tags", ""), id="absolute-same-host"),
    pytest.param("HTTP://LOCALHOST:8787/x?y", "localhost:8787", ("/x", "y"), id="absolute-case"),
]

BAD = [
    pytest.param("/a//b", id="double-slash"),
    pytest.param("/a/./b", id="dot"),
    pytest.param("/a/../b", id="dotdot"),
    pytest.param("/..", id="dotdot-end"),
    pytest.param("/a/%2e%2e/b", id="encoded-dotdot"),
    pytest.param("/a%2Fb", id="encoded-slash"),
    pytest.param("/a%5Cb", id="encoded-backslash"),
    pytest.param("/a%25b", id="encoded-percent"),
    pytest.param("/%41", id="encoded-unreserved"),
    pytest.param("/a%00", id="encoded-nul"),
    pytest.param("/a%0a", id="encoded-lf"),
    pytest.param("/a%c3%bc", id="encoded-non-ascii"),
    pytest.param("/a%", id="bare-percent"),
    pytest.param("/a%g1", id="bad-hex"),
    pytest.param("/a\\b", id="backslash"),
    pytest.param("/a;b", id="semicolon"),
    pytest.param("/a b", id="space"),
    pytest.param("/a\tb", id="tab"),
    pytest.param("/aü", id="non-ascii"),
    pytest.param("/a#b", id="fragment"),
    pytest.param("/a?b#c", id="fragment-after-query"),
    pytest.param("/a?b\x00", id="nul-in-query"),
    pytest.param("*", id="asterisk"),
    pytest.param("a/b", id="relative"),
    pytest.param("http://other/a", id="absolute-other-host"),
    pytest.param("http://localhost:8787@evil/a", id="absolute-userinfo"),
    pytest.param("ftp://localhost:8787/a", id="absolute-other-scheme"),
]


@pytest.mark.parametrize(("target", "host", "expected"), OK)
def test_accepted_targets(target: str, host: str | None, expected: tuple[str, str]) -> None:
    assert split_target(target, host or "localhost:8787") == expected


@pytest.mark.parametrize("target", BAD)
def test_ambiguous_targets_are_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        split_target(target, "localhost:8787")


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40))
def test_an_accepted_path_has_one_reading(suffix: str) -> None:
    """Whatever is accepted decodes to the same segments a server would route on: no dot segments, no hidden
    separators, nothing a second decoding could change."""
    try:
        path, _ = split_target("/" + suffix, "localhost")
    except BadRequest:
        return
    from urllib.parse import unquote

    decoded = unquote(path)
    assert decoded.count("/") == path.count("/")
    assert all(segment not in (".", "..") for segment in decoded.split("/"))
    assert "\\" not in decoded and "%" not in decoded and "//" not in decoded
    assert decoded.isascii() and decoded.isprintable()
