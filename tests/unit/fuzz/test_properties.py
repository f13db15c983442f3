"""Property tests (hypothesis, derandomised) of every fuzz target: arbitrary bytes and structured inputs pass the
target's oracle; the engine's generators feed the longer runs."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.fuzz import TARGETS, bodies, paths, policy, streams, tool_guards
from tests.support import toolwire

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATH_ALPHABET = st.sampled_from(["/", ".", "..", "%2e", "%2f", "%25", "\\", ";", "//", "?", "#", "a", "v1", "%"])


@SETTINGS
@given(st.lists(st.one_of(PATH_ALPHABET, st.sampled_from(paths.ROUTE_PATHS + paths.ADMIN_PATHS)), max_size=8))
def test_paths_built_from_route_pieces(pieces: list[str]) -> None:
    paths.check("".join(pieces).encode("latin-1"))


@SETTINGS
@given(st.binary(max_size=200))
def test_paths_of_any_bytes(data: bytes) -> None:
    paths.check(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(bodies.KEYS), st.sampled_from(bodies.VALUES)), max_size=5))
def test_bodies_with_model_keys_in_every_spelling(members: list[tuple[str, str]]) -> None:
    bodies.check(("{" + ",".join(f"{k}:{v}" for k, v in members) + "}").encode())


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5), st.binary(max_size=4))
def test_bodies_of_any_json_object_and_trailing_bytes(doc: dict[str, object], tail: bytes) -> None:
    bodies.check(orjson.dumps(doc) + tail)


@SETTINGS
@given(st.lists(st.sampled_from(streams.LINES + streams.ENDS + streams.USAGE) | st.binary(max_size=6), max_size=12))
def test_stream_framers_on_sse_and_ndjson_pieces(parts: list[bytes]) -> None:
    streams.check(b"".join(parts))


CALLS = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.sampled_from(tool_guards.NAMES),
        st.sampled_from(tool_guards.ARGS) | JSON_VALUES.map(lambda v: orjson.dumps({"v": v}).decode()),
    ),
    max_size=3,
)


@SETTINGS
@given(st.sampled_from(sorted(tool_guards.FORMATS)), st.text(max_size=12), CALLS)
def test_tool_guards_deliver_only_judged_and_allowed_calls(fmt: str, text: str, calls: list[toolwire.Call]) -> None:
    make, read, build = tool_guards.FORMATS[fmt]
    tool_guards.check_guard(b"".join(build(text, calls)), make, read)


@SETTINGS
@given(st.binary(max_size=64))
def test_tool_guards_on_any_bytes(data: bytes) -> None:
    for fmt in tool_guards.FORMATS:
        TARGETS[f"tool_guard_{fmt}"].check(data)


@SETTINGS
@given(st.sampled_from([b"\x00", b"\x01"]), st.lists(st.sampled_from(policy.PATHS + policy.URLS) | st.text(max_size=6)))
def test_policy_paths_and_urls(kind: bytes, parts: list[str]) -> None:
    policy.check(kind + "".join(parts).encode("utf-8", "surrogateescape"))


@SETTINGS
@given(st.text(max_size=12), st.dictionaries(st.sampled_from(["path", "url", "tz", "x"]), JSON_VALUES, max_size=3))
def test_policy_calls_of_any_name_and_arguments(name: str, arguments: dict[str, object]) -> None:
    policy.check(orjson.dumps({"name": name, "arguments": arguments}))
