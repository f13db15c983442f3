"""What the streamed guards share: knowing when a call is complete, holding it, and releasing output in order.

`ObjectEnd` tells, in one linear pass over the fragments, when a streamed JSON object has closed, so a guard parses
the arguments once instead of after every fragment. `Outbox` releases output in arrival order per lane (a chat
choice; Ollama has one): an entry waits only for a held call before it in its lane, and a lane-less entry (usage,
`[DONE]`) waits for every call held before it. `GuardCore` judges, records, caps memory and fails closed.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any, Protocol

from aiperimeter.gateway.tools.base import MAX_CALL_BYTES, MAX_EVENT_BYTES, parse_arguments
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

MAX_HELD_BYTES = 2 * MAX_EVENT_BYTES  # held calls plus what waits behind them; beyond it, held calls are incomplete
MAX_CALLS = 4096  # calls in one response; a stream with more is not judged call by call: it fails closed
SLOT_BYTES = 512  # what one held call costs against MAX_HELD_BYTES before its arguments
UNNAMED = "(unnamed)"  # a call that never said its name; policies cannot list it, so it is denied
UNREADABLE = "(unreadable)"
REWRITABLE = ("tool_calls", "function_call")  # finish reasons that promise calls

_OUTSIDE = re.compile(rb'[{}"]')
_INSIDE = re.compile(rb'["\\]')


class ObjectEnd:
    """Finds where a JSON object streamed in fragments closes: brace depth outside strings, escapes understood."""

    __slots__ = ("_depth", "_escaped", "_in_string", "_started", "closed", "hopeless")

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False
        self.closed = False  # the top-level object closed: the buffer is as complete as it will ever be
        self.hopeless = False  # it does not start with `{`: only the format's end can complete it

    def feed(self, data: bytes) -> bool:
        if self._in_string and not self._escaped and 34 not in data and 92 not in data:
            return False  # more of the same string (no quote, no backslash): the commonest fragment
        if self.closed or self.hopeless or not data:
            return self.closed
        pos = 0
        if not self._started:
            rest = data.lstrip()
            if not rest:
                return False
            self._started = True
            if not rest.startswith(b"{"):
                self.hopeless = True
                return False
        if self._escaped:
            self._escaped, pos = False, 1
        while True:
            if self._in_string:
                match = _INSIDE.search(data, pos)
                if match is None:
                    return False
                if match.group() == b"\\":
                    if match.end() >= len(data):
                        self._escaped = True
                        return False
                    pos = match.end() + 1
                    continue
                self._in_string, pos = False, match.end()
                continue
            match = _OUTSIDE.search(data, pos)
            if match is None:
                return False
            pos, char = match.end(), match.group()
            if char == b'"':
                self._in_string = True
            elif char == b"{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    self.closed = True
                    return True


class Renderable(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def held_size(self) -> int: ...

    def render(self) -> bytes: ...


Payload = bytes | Renderable


@dataclass(eq=False, slots=True)
class HeldCall:
    """A call being held. Guards subclass it for what their format needs to re-send it."""

    lane: Hashable
    render_fn: Callable[[HeldCall], bytes]
    name: str | None = None
    call_id: str | None = None
    kind: str = "function"
    buf: bytearray = field(default_factory=bytearray)  # the arguments (or custom input) as sent, UTF-8
    end: ObjectEnd = field(default_factory=ObjectEnd)
    value: dict[str, Any] | None = None  # arguments that arrived as a whole object (Ollama)
    too_large: bool = False
    size: int = 0  # bytes of arguments seen
    seq: int = 0
    tool: ToolCall | None = None
    verdict: Verdict | None = None

    @property
    def ready(self) -> bool:
        return self.verdict is not None

    @property
    def held_size(self) -> int:
        return SLOT_BYTES + len(self.buf)

    @property
    def delivered(self) -> bool:
        """Allowed, and kept whole: a call whose arguments were too large to keep is never delivered."""
        return self.verdict is not None and self.verdict.delivered and not self.too_large

    def render(self) -> bytes:
        return self.render_fn(self)


@dataclass(slots=True)
class _Global:
    seq: int
    waiting: int  # held calls before it that are not yet decided
    data: list[bytes]


class Outbox:
    """Output in arrival order: per lane behind that lane's held calls; lane-less entries behind every held call."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, deque[tuple[int, Payload]]] = {}
        self._globals: deque[_Global] = deque()
        self._dirty: set[Hashable] = set()
        self._out: list[bytes] = []
        self._seq = 0
        self._last_slot = -1
        self._undecided = 0
        self.held = 0  # bytes waiting, for the cap
        self.changed = False  # something was put or decided since the last take: there may be output

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def put(self, lane: Hashable | None, payload: Payload) -> None:
        self.changed = True
        if lane is None:
            data = payload if isinstance(payload, bytes) else payload.render()
            if not self._globals and not self._undecided:
                self._out.append(data)
            elif self._globals and self._globals[-1].seq > self._last_slot:
                self._globals[-1].data.append(data)  # nothing was held since: one entry waits for both
                self.held += len(data)
            else:
                self._globals.append(_Global(self._next(), self._undecided, [data]))
                self.held += len(data)
            return
        if lane not in self._lanes and (isinstance(payload, bytes) or payload.ready):
            self._out.append(payload if isinstance(payload, bytes) else payload.render())
            return
        self._lanes.setdefault(lane, deque()).append((self._next(), payload))
        self.held += len(payload) if isinstance(payload, bytes) else payload.held_size

    def free(self, lane: Hashable) -> bool:
        """Nothing waits in the lane: what is put there now goes out at once."""
        return lane not in self._lanes

    def hold(self, call: HeldCall) -> None:
        call.seq = self._last_slot = self._next()
        self._undecided += 1
        self._lanes.setdefault(call.lane, deque()).append((call.seq, call))
        self.held += SLOT_BYTES

    def decided(self, call: HeldCall) -> None:
        self.changed = True
        self._undecided -= 1
        self._dirty.add(call.lane)
        for waiting in self._globals:
            if waiting.seq > call.seq:
                waiting.waiting -= 1

    def take(self) -> bytes:
        self.changed = False
        if self._dirty or self._globals:
            self._drain()
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _drain(self) -> None:
        heap: list[tuple[int, Hashable]] = []
        for lane in self._dirty:
            queue = self._lanes.get(lane)
            if queue and _ready(queue[0][1]):
                heappush(heap, (queue[0][0], lane))
        self._dirty.clear()
        while True:
            first = self._globals[0] if self._globals and self._globals[0].waiting <= 0 else None
            if heap and (first is None or heap[0][0] < first.seq):
                _, lane = heappop(heap)
                queue = self._lanes[lane]
                payload = queue.popleft()[1]
                if isinstance(payload, bytes):
                    self.held -= len(payload)
                    self._out.append(payload)
                else:
                    self.held -= payload.held_size
                    self._out.append(payload.render())
                if not queue:
                    del self._lanes[lane]
                elif _ready(queue[0][1]):
                    heappush(heap, (queue[0][0], lane))
            elif first is not None:
                self._globals.popleft()
                self.held -= sum(map(len, first.data))
                self._out.extend(first.data)
            else:
                return


def _ready(payload: Payload) -> bool:
    return isinstance(payload, bytes) or payload.ready


class Blocked(Exception):
    """A call was blocked: the guard writes its error event and nothing more."""


class GuardCore:
    """Judging, holding and failing closed, for the streamed guards. Subclasses frame and render their format."""

    def __init__(self, judge: Judge) -> None:
        self.decisions: list[Decision] = []
        self.blocked: Decision | None = None
        self._judge = judge
        self._outbox = Outbox()
        self._undecided: dict[HeldCall, None] = {}  # insertion order is stream order
        self._calls = 0
        self._stopped = False
        self._out: list[bytes] = []

    # --- what a format provides ---------------------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _error(self, decision: Decision) -> bytes:
        raise NotImplementedError

    def _notice_event(self, call: ToolCall, verdict: Verdict) -> bytes:
        raise NotImplementedError

    # --- the protocol -------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if self._stopped:
            return b""
        out: list[bytes] = []
        self._out = out
        try:
            self._feed(chunk)
        except Blocked:
            self._end_blocked()
        return b"".join(out) if out else b""

    def close(self) -> bytes:
        if self._stopped:
            return b""
        out: list[bytes] = []
        self._out = out
        try:
            self._close()
            self._decide_all(incomplete=True)
            self._flush()
        except Blocked:
            self._end_blocked()
        self._stopped = True
        return b"".join(out)

    def _end_blocked(self) -> None:
        assert self.blocked is not None
        self._out.append(self._outbox.take())  # what came before the blocked call may still go
        self._out.append(self._error(self.blocked))
        self._stopped = True

    # --- helpers for formats ------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """After each event: enforce the memory cap, then send what may go."""
        outbox = self._outbox
        if outbox.held > MAX_HELD_BYTES:
            self._decide_all(incomplete=True)
        if outbox.changed:  # most events only add to a held call: nothing can have become releasable
            self._out.append(outbox.take())

    def _count(self) -> None:
        self._calls += 1
        if self._calls > MAX_CALLS:
            self._unreadable(strippable=False)

    def _hold(self, call: HeldCall) -> None:
        self._count()
        self._outbox.hold(call)
        self._undecided[call] = None

    def _append(self, call: HeldCall, text: str) -> None:
        if call.verdict is not None or not text:
            return  # fragments after a call was decided are never delivered
        data = text.encode()
        size = len(data)
        call.size += size
        if len(call.buf) + size > MAX_CALL_BYTES:
            self._outbox.held -= len(call.buf)
            call.buf, call.too_large = bytearray(), True
            self._decide(call)
            return
        call.buf += data
        self._outbox.held += size
        if call.kind != "custom" and call.value is None and call.end.feed(data):
            self._decide(call)

    def _decide(self, call: HeldCall, *, incomplete: bool = False) -> None:
        """Judge a call once; its arguments are as complete as they will be."""
        if call.verdict is not None:
            return
        name = call.name or UNNAMED
        arguments: dict[str, Any] | None
        error: str | None = None
        if call.too_large:
            arguments, error = None, "too_large"
        elif incomplete:
            arguments, error = None, "incomplete"
        elif call.value is not None:
            arguments = call.value
        elif call.kind == "custom":
            arguments = {"input": call.buf.decode("utf-8", "replace")}
        else:
            arguments, error = parse_arguments(call.buf.decode("utf-8", "replace"))
        tool = ToolCall(name, arguments, call.call_id, call.kind, error, call.size)
        del self._undecided[call]
        call.tool, call.verdict = tool, self._verdict(tool)
        self._outbox.decided(call)

    def _decide_all(self, *, incomplete: bool) -> None:
        for call in list(self._undecided):
            self._decide(call, incomplete=incomplete)

    def _verdict(self, tool: ToolCall) -> Verdict:
        verdict = self._judge(tool)
        decision = Decision(tool, verdict)
        self.decisions.append(decision)
        if verdict.decision not in ("allow", "audit", "strip"):
            self.blocked = decision  # "block", and anything a guard does not know, ends the response
            raise Blocked
        return verdict

    def _unreadable(self, *, strippable: bool = True) -> None:
        """Bytes where a call could hide that cannot be read: judged as a synthetic call, never delivered."""
        tool = ToolCall(UNREADABLE, None, error="unreadable")
        verdict = self._judge(tool)
        if strippable and verdict.decision == "strip":
            self.decisions.append(Decision(tool, verdict))
            self._outbox.put(None, self._notice_event(tool, verdict))
            return
        if verdict.decision != "block":
            verdict = Verdict("block", verdict.rule, verdict.reason)
        self.blocked = Decision(tool, verdict)
        self.decisions.append(self.blocked)
        raise Blocked
