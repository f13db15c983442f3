"""What the tests of the streamed tool-call guards share, whatever the wire format: fake judges, the ways a stream is
split into pieces, running pieces through a guard, and proving a guard's fast path does what its general path does.

Two families of guard are covered: the line/chunk guards (OpenAI Chat, Ollama) built on `hold.GuardCore`, and the
typed-event guards (Anthropic, OpenAI Responses) built on `event_guard.EventGuard`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from aiperimeter.gateway.tools.base import BodyResult, RawEvent
from aiperimeter.gateway.tools.event_guard import EventGuard
from aiperimeter.policy.calls import ALLOW, Decision, ToolCall, Verdict
from aiperimeter.policy.calls import Judge as JudgeFn


class Guard(Protocol):
    """What the tests read of any streamed guard."""

    decisions: list[Decision]
    blocked: Decision | None

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


G = TypeVar("G", bound=Guard)
E = TypeVar("E", bound=EventGuard)


# --- judges -----------------------------------------------------------------------------------------------------------

Key = tuple[str, Any, str | None, str, str | None]  # name, arguments, call id, kind, error


def key(call: ToolCall) -> Key:
    return (call.name, call.arguments, call.call_id, call.kind, call.error)


@dataclass
class Judge:
    """Decisions by tool name (default allow). `complete` lists every call the stream makes, whole: a call judged
    with anything else (partial arguments, a split name) raises at once, inside the guard."""

    table: dict[str, str]
    complete: list[Key] | None = None
    seen: list[Key] = field(default_factory=list)

    def __call__(self, call: ToolCall) -> Verdict:
        if self.complete is not None and key(call) not in self.complete:
            raise AssertionError(f"judged an incomplete or unexpected call: {key(call)}")
        self.seen.append(key(call))
        decision = self.table.get(call.name, "allow")
        return ALLOW if decision == "allow" else Verdict(decision, f"tools.{call.name}", "test rule")


@dataclass
class FakeJudge:
    """Decides by tool name (default block); a call with an error gets `on_error`. Raises when a call's arguments are
    not the whole arguments the scenario sent (`whole`, by call id): the guard must never judge a partial buffer."""

    table: dict[str, str]
    whole: dict[str, Any] = field(default_factory=dict)
    on_error: str = "strip"
    calls: list[ToolCall] = field(default_factory=list)

    def __call__(self, call: ToolCall) -> Verdict:
        if call.error is None and call.call_id in self.whole and call.arguments != self.whole[call.call_id]:
            raise AssertionError(f"judged on partial arguments: {call.arguments!r}")
        self.calls.append(call)
        decision = self.on_error if call.error else self.table.get(call.name, "block")
        return Verdict(decision, None if decision == "allow" else f"tools.{call.name}", "not allowed")


def by_decision(decision: str) -> JudgeFn:
    """A judge that gives every call the same decision."""
    return lambda call: Verdict(decision, "rule", "not allowed")


def notice_text(name: str) -> str:
    """The text that takes the place of a stripped call."""
    return f"[aiperimeter] The tool call {name!r} was removed by the gateway's tool policy (rule tools.{name})."


def notice_of(name: str) -> tuple[str, str]:
    """The notice as the Anthropic and Responses client views summarise it: a text block or item."""
    return ("text", notice_text(name))


# --- pieces -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    data: bytes
    complete: list[Key]


def splits(data: bytes, *, samples: int = 40, distinct_cuts: bool = True) -> list[list[bytes]]:
    """Whole, byte by byte, at every offset, and `samples` three-way splits drawn from a seed that is the length (the
    two cuts of a three-way split may fall together unless `distinct_cuts`)."""
    rng = random.Random(len(data))
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    out += [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]
    for _ in range(samples):
        if distinct_cuts:
            a, b = sorted(rng.sample(range(len(data) + 1), 2))
        else:
            a, b = sorted(rng.randrange(len(data) + 1) for _ in range(2))
        out.append([data[:a], data[a:b], data[b:]])
    return out


def chunks(raw: str) -> list[str]:
    """Pieces of three characters, each `}` and `]` ending one, so an inner object ends a piece mid-call."""
    parts = re.split(r"(?<=[}\]])", raw)
    return [part[i : i + 3] for part in parts for i in range(0, len(part), 3)]


def cuts(data: bytes, at: Iterable[int]) -> list[list[bytes]]:
    """Two-way splits at each offset of `at` that falls within the data."""
    return [[data[:cut], data[cut:]] for cut in at if 0 <= cut <= len(data)]


def per_event(data: bytes) -> list[bytes]:
    """An SSE stream one event a piece (events ended by a bare blank line)."""
    return [piece + b"\n\n" for piece in data.split(b"\n\n") if piece]


def mutate(rng: random.Random, bases: Sequence[bytes], alphabet: bytes = b'{}[]":,\\\n0a ') -> bytes:
    """One of `bases` with one to six of its bytes replaced by bytes of `alphabet`."""
    data = bytearray(rng.choice(bases))
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(len(data))] = rng.choice(alphabet)
    return bytes(data)


ODD_VALUES: list[Any] = [None, [], {}, "", "x", -1, 0, 7, True, 1.5, [1]]  # a format adds values of its own


def mangle(rng: random.Random, value: Any, odd: Sequence[Any]) -> Any:
    """The value with some fields dropped, replaced by one of `odd` (values of other types), or mangled further down."""
    if isinstance(value, dict):
        out = {}
        for name, inner in value.items():
            roll = rng.random()
            if roll >= 0.3:
                out[name] = mangle(rng, inner, odd)
            elif roll >= 0.05:
                out[name] = rng.choice(odd)
        return out
    if isinstance(value, list):
        return [mangle(rng, inner, odd) for inner in value if rng.random() > 0.05]
    return value


def mangled_streams(
    rng: random.Random, builds: Sequence[Callable[[], bytes]], docs: Callable[[bytes], list[Any]], odd: Sequence[Any]
) -> list[bytes]:
    """Five of the streams `builds` make, their event objects (`docs` reads them) mangled, some shuffled, some without
    an `event:` line."""
    streams = []
    for build in rng.sample(list(builds), 5):
        mangled = [mangle(rng, doc, odd) for doc in docs(build())]
        if rng.random() < 0.5:
            rng.shuffle(mangled)
        named = [(f"event: {doc.get('type')}\n" if rng.random() < 0.7 else "").encode() for doc in mangled]
        joined = zip(named, mangled, strict=True)
        streams.append(b"".join(name + b"data: " + orjson.dumps(doc) + b"\n\n" for name, doc in joined))
    return streams


# --- running a guard --------------------------------------------------------------------------------------------------


def feed_all(guard: Guard, pieces: Iterable[bytes]) -> bytes:
    """What the client gets when the pieces arrive one after another and the stream then ends."""
    return b"".join(guard.feed(piece) for piece in pieces) + guard.close()


def run(
    kind: Callable[[JudgeFn], G], data: bytes, judge: JudgeFn, pieces: list[bytes] | None = None
) -> tuple[bytes, G]:
    """The output and the guard after the pieces (the data in one piece if there are none) go through a new guard."""
    guard = kind(judge)
    return feed_all(guard, pieces if pieces is not None else [data]), guard


def run_judged(
    kind: Callable[[JudgeFn], Guard], judge: FakeJudge, pieces: list[bytes]
) -> tuple[bytes, list[tuple[str, str | None, str]]]:
    """The output and the (name, error, decision) of every call; the judge saw exactly the calls the guard decided,
    and the guard is blocked exactly when a call was."""
    guard = kind(judge)
    out = feed_all(guard, pieces)
    assert judge.calls == [decision.call for decision in guard.decisions]
    decisions = [(d.call.name, d.call.error, d.verdict.decision) for d in guard.decisions]
    assert (guard.blocked is not None) == any(decision == "block" for *_, decision in decisions)
    return out, decisions


def same_in_every_split(
    kind: Callable[[JudgeFn], G],
    scenario: Scenario,
    table: dict[str, str],
    decisions: list[str],
    events: Callable[[bytes], list[Any]],
    check_first: Callable[[bytes, G], None],
) -> None:
    """In every split of `splits`, with a new `Judge` given `table` that takes only the scenario's complete calls: the
    same events (as `events` reads the output) as the first run, which `check_first` checks; the given decisions; and
    each call judged exactly once, whole, in stream order."""
    first: list[Any] | None = None
    for pieces in splits(scenario.data):
        judge = Judge(table, scenario.complete)
        out, guard = run(kind, scenario.data, judge, pieces)
        if first is None:
            first = events(out)
            check_first(out, guard)
        assert events(out) == first, pieces
        assert [d.verdict.decision for d in guard.decisions] == decisions
        assert judge.seen == scenario.complete[: len(decisions)]


def judged_body(
    judge_body: Callable[[bytes, JudgeFn], BodyResult],
    raw: bytes,
    judge: FakeJudge,
    decisions: list[tuple[str, str | None, str]],
    unchanged: bool,
) -> Any:
    """The body as judged, parsed, after checking its (name, error, decision) list, that nothing was blocked, and
    whether the body came back unchanged."""
    result = judge_body(raw, judge)
    assert [(d.call.name, d.call.error, d.verdict.decision) for d in result.decisions] == decisions
    assert result.blocked is None
    assert (result.body == raw) == unchanged
    return orjson.loads(result.body)


def assert_unreadable_event_withheld(
    kind: Callable[[JudgeFn], Guard], opening: bytes, event: bytes, errors: Callable[[bytes], list[Any]]
) -> None:
    """After `opening`, `event` is judged once, as unreadable, and never reaches the client; the client reads an
    error (`errors`) exactly when that judgement is a block."""
    for decision in ("block", "strip"):
        judge = FakeJudge({}, on_error=decision)
        guard = kind(judge)
        out = guard.feed(opening + event) + guard.close()
        assert [(call.name, call.error) for call in judge.calls] == [("(unreadable)", "unreadable")]
        assert event.split(b"data: ")[1].strip() not in out
        assert bool(errors(out)) == (decision == "block")


def assert_event_passes(kind: Callable[[JudgeFn], Guard], opening: bytes, event: bytes) -> None:
    """After `opening`, `event` passes as it is and nothing is judged."""
    judge = FakeJudge({}, on_error="block")
    guard = kind(judge)
    out = guard.feed(opening + event) + guard.close()
    assert judge.calls == []
    assert out == opening + event


def judged_in_every_split(
    kind: Callable[[JudgeFn], Guard],
    data: bytes,
    judge: Callable[[], FakeJudge],
    decisions: list[tuple[str, str | None, str]],
) -> bytes:
    """The output of the data in one piece, after checking every split of `splits` (60 samples, cuts may fall
    together) gives the same bytes and the expected decisions, each run with a new judge."""
    expected, _ = run_judged(kind, judge(), [data])
    for pieces in splits(data, samples=60, distinct_cuts=False):
        out, taken = run_judged(kind, judge(), pieces)
        assert out == expected, [len(piece) for piece in pieces]
        assert taken == decisions, [len(piece) for piece in pieces]
    return expected


# --- the fast path does what the general path does: line/chunk guards -------------------------------------------------

TABLES: tuple[dict[str, str], ...] = ({}, {"run_sql": "strip"}, {"run_sql": "block", "(unreadable)": "strip"})


def outcome(kind: Callable[[Judge], Guard], table: dict[str, str], pieces: list[bytes]) -> tuple[Any, ...]:
    """The output, every decision with the call's raw size, and the block, of a new guard given `table`."""
    guard = kind(Judge(table))
    out = feed_all(guard, pieces)
    decisions = [(key(d.call), d.call.raw_size, d.verdict.decision) for d in guard.decisions]
    return out, decisions, guard.blocked


def assert_paths_agree(
    general: Callable[[Judge], Guard], others: Iterable[Callable[[Judge], Guard]], pieces_list: list[list[bytes]]
) -> None:
    """The same bytes in the same pieces: the same output, decisions and block, whichever paths the guard took;
    `general` is the guard with every fast path off, `others` the guards to compare with it, for each of `TABLES`."""
    for table in TABLES:
        for pieces in pieces_list:
            expected = outcome(general, table, pieces)
            for kind in others:
                assert outcome(kind, table, pieces) == expected, (getattr(kind, "__name__", kind), table, pieces)


# --- the fast path does what the general path does: typed-event guards ------------------------------------------------


def general_only(kind: type[E]) -> type[E]:
    """The guard with its fast path off: every event goes the general way."""

    class GeneralOnly(kind):  # type: ignore[valid-type, misc]
        def _fragment(self, event: RawEvent, doc: Any) -> bool:
            return False

    return GeneralOnly


def counted(kind: type[E]) -> type[E]:
    """The guard as it ships, counting in `taken` the events its fast path takes."""

    class Counted(kind):  # type: ignore[valid-type, misc]
        taken = 0

        def _fragment(self, event: RawEvent, doc: Any) -> bool:
            took = bool(super()._fragment(event, doc))
            self.taken += took
            return took

    return Counted


class EventPaths:
    """One typed-event guard, run with its fast path and without. `check` runs on the guard after every piece: the
    format's bookkeeping that must hold whichever path an event took."""

    def __init__(self, kind: type[EventGuard], check: Callable[[Any], None]) -> None:
        self.kind = kind
        self.check = check
        self.general = general_only(kind)
        self.counted = counted(kind)

    def outcome(self, guard: EventGuard, pieces: list[bytes]) -> tuple[bytes, list[Decision], bool]:
        """What the client gets, every decision in full, and whether it was blocked."""
        out = b""
        for piece in pieces:
            out += guard.feed(piece)
            self.check(guard)
        out += guard.close()
        return out, guard.decisions, guard.blocked is not None

    def agree(self, pieces: list[bytes], decide: JudgeFn) -> int:
        """Runs the pieces through the guard and through its general path alone: they must give the same bytes and
        the same decisions. Returns how many events the fast path took."""
        fast = self.counted(decide)
        general = self.general(decide)
        assert self.outcome(fast, pieces) == self.outcome(general, pieces), [len(piece) for piece in pieces]
        return int(fast.taken)  # type: ignore[attr-defined]

    def agree_in_many_ways(self, data: bytes, decide: JudgeFn) -> None:
        """Whole, one event a piece, byte by byte, and the last three-way split of `splits`."""
        last = splits(data, samples=60, distinct_cuts=False)[-1]
        for pieces in ([data], per_event(data), [data[i : i + 1] for i in range(len(data))], last):
            self.agree(pieces, decide)

    def agree_with_an_event_replaced(self, data: bytes, marker: bytes, event: bytes, fragments: int) -> None:
        """The stream with its first event holding `marker` replaced by `event` (given `data: ` if it has no field
        name): fed one event a piece and whole, the fast path takes `fragments` events whatever the decision."""
        events = per_event(data)
        at = next(i for i, piece in enumerate(events) if marker in piece)
        event = event if event.startswith((b"data:", b"event:")) else b"data: " + event
        events[at] = event + b"\n\n"
        for decision in ("allow", "strip", "audit"):  # a block would end the stream before the later fragments
            assert self.agree(events, by_decision(decision)) == fragments
            assert self.agree([b"".join(events)], by_decision(decision)) == fragments
        self.agree(events, by_decision("block"))
        self.agree([b"".join(events)], by_decision("block"))

    def agree_on_mangled(self, rng: random.Random, streams: list[bytes]) -> None:
        """Each stream cut once at random, and one event a piece, under every decision and an unknown one."""
        for data in streams:
            cut = rng.randrange(len(data) + 1)
            for decision in ("allow", "strip", "block", "unknown"):
                self.agree([data[:cut], data[cut:]], by_decision(decision))
                self.agree(per_event(data), by_decision(decision))

    def assert_mangled_streams_fail_safe(
        self, rng: random.Random, streams: list[bytes], leaked: Callable[[bytes], list[Any]]
    ) -> None:
        """Mangled streams, cut once at random, never raise; a guard is blocked exactly when it blocked a call; when
        every call is stripped, `leaked` finds no event through which a client would get one."""
        for data in streams:
            cut = rng.randrange(len(data) + 1)
            for decision in ("allow", "audit", "strip", "block", "unknown"):
                guard = self.kind(lambda call, decision=decision: Verdict(decision, "rule"))
                out = guard.feed(data[:cut]) + guard.feed(data[cut:]) + guard.close()
                assert (guard.blocked is None) == (decision not in ("block", "unknown") or not guard.decisions)
                if decision == "strip":
                    assert leaked(out) == []
