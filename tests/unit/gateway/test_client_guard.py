"""The client guard's logic: the sliding window, the delay curve, the caps, and blocks followed from a real store
(memory or SQLite; no sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from aiperimeter.config import BruteForceSettings
from aiperimeter.errors import Forbidden
from aiperimeter.gateway.pipeline import Exchange
from aiperimeter.gateway.stages.audit_log import AuditSink
from aiperimeter.gateway.stages.client_guard import (
    ACTOR,
    COUNTED,
    FIRST_DELAY,
    MAX_BLOCKS,
    ClientGuard,
    Exemptions,
    FailureCounts,
    HoldSlots,
    Target,
    block_target,
    canonical,
    delay_for,
    refusal,
    sliding_count,
    spellings,
    subject,
)
from aiperimeter.state.memory import MemoryKeyStore
from aiperimeter.state.sqlite import SQLiteKeyStore

# --- the window -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "into", "expected"),
    [
        pytest.param(0, 1, 0.0, 1, id="first-failure"),
        pytest.param(10, 1, 0.0, 11, id="bucket-just-began-previous-counts-whole"),
        pytest.param(10, 1, 30.0, 6, id="half-way-half-the-previous"),
        pytest.param(10, 1, 59.9, 2, id="previous-almost-gone-rounded-up"),
        pytest.param(10, 3, 60.0, 3, id="previous-gone"),
        pytest.param(3, 2, 20.0, 4, id="two-thirds-of-three"),
    ],
)
def test_sliding_count(previous: int, current: int, into: float, expected: int) -> None:
    assert sliding_count(previous, current, into, 60.0) == expected


def test_failure_counts_slide_over_buckets() -> None:
    counts = FailureCounts(window=60.0)
    start = 6000.0  # a bucket boundary
    assert [counts.add("a", start + n) for n in range(5)] == [1, 2, 3, 4, 5]
    assert counts.add("b", start + 5) == 1  # addresses are counted apart
    # 30 s into the next bucket, half of the previous bucket's five still count (rounded up), plus this one.
    assert counts.add("a", start + 90) == 3 + 1
    # Two windows later nothing of the old failures is left.
    assert counts.add("a", start + 300) == 1


def test_failure_counts_forget_the_least_recently_failed_beyond_the_cap() -> None:
    counts = FailureCounts(window=60.0, limit=3)
    for address in ("a", "b", "c"):
        counts.add(address, 10.0)
    counts.add("a", 11.0)  # now the most recent
    counts.add("d", 12.0)  # pushes out b, the least recent
    assert len(counts) == 3
    assert counts.add("a", 13.0) == 3
    assert counts.add("b", 13.0) == 1  # forgotten: counting again from one


# --- the delay curve --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        pytest.param(1, 0.0, id="first"),
        pytest.param(5, 0.0, id="at-slow-after"),
        pytest.param(6, FIRST_DELAY, id="first-slowed"),
        pytest.param(7, 2 * FIRST_DELAY, id="doubles"),
        pytest.param(9, 8 * FIRST_DELAY, id="doubles-again"),
        pytest.param(11, 2.0, id="capped"),
        pytest.param(10**9, 2.0, id="huge-count-no-overflow"),
    ],
)
def test_delay_curve(failures: int, expected: float) -> None:
    settings = BruteForceSettings(slow_after=5, max_delay=2.0, block_after=30)
    assert delay_for(failures, settings) == pytest.approx(expected)


def test_no_delay_when_max_delay_is_zero() -> None:
    assert delay_for(100, BruteForceSettings(slow_after=1, max_delay=0, block_after=200)) == 0.0


def test_delays_never_decrease() -> None:
    settings = BruteForceSettings(slow_after=3, max_delay=5.0, block_after=100)
    delays = [delay_for(n, settings) for n in range(1, 100)]
    assert delays == sorted(delays) and max(delays) == 5.0


# --- the caps on held refusals ----------------------------------------------------------------------------------


def test_hold_slots_per_address_and_in_all() -> None:
    slots = HoldSlots(per_address=2, in_all=3)
    assert [slots.take("a"), slots.take("a"), slots.take("a")] == [True, True, False]
    assert slots.take("b") is True
    assert slots.take("c") is False  # three held in all
    slots.give_back("a")
    assert slots.take("c") is True and slots.total == 3
    for address in ("a", "b", "c"):
        slots.give_back(address)
    assert slots.total == 0 and slots.take("a") and slots.take("a")


# --- addresses --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "plain", "forms"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", ("203.0.113.7", "::ffff:203.0.113.7"), id="ipv4"),
        pytest.param("::ffff:203.0.113.7", "203.0.113.7", ("203.0.113.7", "::ffff:203.0.113.7"), id="mapped"),
        pytest.param("2001:DB8:0::1", "2001:db8::1", ("2001:db8::1",), id="ipv6-spelled-long"),
        pytest.param("not-an-ip", "not-an-ip", ("not-an-ip",), id="unparsable-unchanged"),
    ],
)
def test_address_spellings(address: str, plain: str, forms: tuple[str, ...]) -> None:
    assert canonical(address) == plain
    assert spellings(address) == forms


@pytest.mark.parametrize(
    ("address", "counted_as"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", id="ipv4-per-address"),
        pytest.param("::ffff:203.0.113.7", "203.0.113.7", id="mapped-is-ipv4"),
        pytest.param("2001:db8:1:2:aaaa:bbbb:cccc:5", "2001:db8:1:2::/64", id="ipv6-per-64"),
        pytest.param("2001:DB8:1:2::1", "2001:db8:1:2::/64", id="ipv6-spelled-long"),
        pytest.param("::1", "::/64", id="ipv6-loopback"),
        pytest.param("fe80::1%eth0", "fe80::/64", id="scoped"),
        pytest.param("not-an-ip", "not-an-ip", id="unparsable-itself"),
    ],
)
def test_failures_are_counted_per_ipv4_address_and_per_ipv6_64(address: str, counted_as: str) -> None:
    assert subject(address) == counted_as


@pytest.mark.parametrize(
    ("entry", "target"),
    [
        pytest.param("203.0.113.7", (("203.0.113.7", "::ffff:203.0.113.7"), None), id="ipv4"),
        pytest.param("2001:db8::5", (("2001:db8::5",), None), id="ipv6"),
        pytest.param("2001:db8:1:2::/64", ((), (6, 64, 0x20010DB800010002)), id="ipv6-64"),
        pytest.param("2001:db8:1:2::9/64", ((), (6, 64, 0x20010DB800010002)), id="host-bits-ignored"),
        pytest.param("2001:db8::/48", ((), (6, 48, 0x20010DB80000)), id="ipv6-48"),
        pytest.param("198.51.100.0/24", ((), (4, 24, 0xC63364)), id="ipv4-24"),
        pytest.param("::ffff:198.51.100.0/120", ((), (4, 24, 0xC63364)), id="mapped-network-is-ipv4"),
        pytest.param("2001:db8::5/128", (("2001:db8::5",), None), id="one-address-network"),
        pytest.param("203.0.113.7/32", (("203.0.113.7", "::ffff:203.0.113.7"), None), id="one-ipv4-network"),
        pytest.param("junk/64", (("junk/64",), None), id="unparsable-itself"),
    ],
)
def test_what_a_stored_block_matches(entry: str, target: Target) -> None:
    assert block_target(entry) == target


@pytest.mark.parametrize(
    ("address", "exempt"),
    [
        pytest.param("127.0.0.1", True, id="loopback"),
        pytest.param("127.8.9.10", True, id="loopback-net"),
        pytest.param("::1", True, id="loopback-v6"),
        pytest.param("::ffff:127.0.0.1", True, id="mapped-loopback"),
        pytest.param("10.1.2.3", False, id="elsewhere"),
        pytest.param("", False, id="empty"),
    ],
)
def test_loopback_is_exempt_by_default(address: str, exempt: bool) -> None:
    assert (address in Exemptions(BruteForceSettings().exempt)) is exempt


def test_configured_exempt_networks() -> None:
    exemptions = Exemptions(["10.0.0.0/8", "2001:db8::/32"])
    assert "10.200.0.1" in exemptions and "2001:db8::5" in exemptions
    assert "127.0.0.1" not in exemptions and "11.0.0.1" not in exemptions
    assert "10.0.0.1" not in Exemptions([])


@pytest.mark.parametrize(
    ("remaining", "text", "retry_after"),
    [
        pytest.param(0.2, "1 seconds", "1", id="under-a-second"),
        pytest.param(45.1, "46 seconds", "46", id="seconds"),
        pytest.param(900.0, "15 minutes", "900", id="minutes"),
        pytest.param(3 * 86400.0, "72 hours", "259200", id="hours"),
    ],
)
def test_the_refusal_says_for_how_long(remaining: float, text: str, retry_after: str) -> None:
    failure = refusal(1000.0 + remaining, 1000.0)
    assert isinstance(failure, Forbidden) and failure.status == 403 and failure.code == "client_blocked"
    assert text in failure.message and failure.headers == {"Retry-After": retry_after}
    assert orjson.loads(failure.body())["error"]["type"] == "permission_error"


# --- the stage over a real store --------------------------------------------------------------------------------


def exchange(client: str, deny: str | None = "invalid_key") -> Exchange:
    """A request from `client`; as the authenticate stage hands it to `failed`, refused with `deny`."""
    ex = Exchange(
        request=make_mocked_request("GET", "/v1/models"),
        request_id="r",
        started=time.perf_counter(),
        client=client,
        method="GET",
    )
    ex.deny_code = deny
    return ex


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[AuditSink]:
    audit = AuditSink(tmp_path / "audit.jsonl")
    yield audit
    audit.close()


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


async def timed(guard: ClientGuard, client: str, deny: str | None = "invalid_key") -> float:
    start = time.monotonic()
    await guard.failed(exchange(client, deny))
    return time.monotonic() - start


async def test_failures_are_slowed_then_the_address_is_blocked(tmp_path: Path, sink: AuditSink) -> None:
    store = MemoryKeyStore()
    settings = BruteForceSettings(window=60, slow_after=2, max_delay=0.4, block_after=6, block_seconds=120, exempt=())
    guard = ClientGuard(store, settings, sink)
    held = [await timed(guard, "203.0.113.7") for _ in range(5)]
    assert max(held[:2]) < FIRST_DELAY / 2  # within slow_after: answered at once
    for took, least in zip(held[2:], (FIRST_DELAY, 2 * FIRST_DELAY, 0.4), strict=True):
        assert least <= took < least + 0.3
    await guard.on_request(exchange("203.0.113.7"))  # not blocked yet
    assert await timed(guard, "203.0.113.7") < FIRST_DELAY / 2  # the sixth blocks, and is answered at once
    with pytest.raises(Forbidden) as refused:
        await guard.on_request(exchange("203.0.113.7"))
    assert refused.value.code == "client_blocked" and 119 <= int(refused.value.headers["Retry-After"]) <= 120
    with pytest.raises(Forbidden):
        await guard.on_request(exchange("::ffff:203.0.113.7"))  # the same address through a dual-stack socket
    await guard.on_request(exchange("203.0.113.8"))  # a neighbour is not
    [(address, until, reason)] = await store.blocks(time.time())
    assert address == "203.0.113.7" and until > time.time() + 100 and "6 failed" in reason
    sink.flush()
    [line] = audit_lines(tmp_path)
    assert line["event"] == "block" and line["actor"] == ACTOR and line["address"] == "203.0.113.7"
    assert line["failures"] == 6 and line["until"] == until


@pytest.mark.parametrize("code", sorted(COUNTED))
async def test_guessing_and_scanning_count(code: str, sink: AuditSink) -> None:
    settings = BruteForceSettings(slow_after=3, max_delay=0, block_after=3, exempt=())
    guard = ClientGuard(MemoryKeyStore(), settings, sink)
    for _ in range(3):
        await guard.failed(exchange("203.0.113.7", code))
    with pytest.raises(Forbidden):
        await guard.on_request(exchange("203.0.113.7"))


@pytest.mark.parametrize(
    "code",
    [
        "key_expired",
        "key_revoked",
        "key_suspended",
        "key_rotated",
        "jwt_expired",
        "jwt_not_yet_valid",
        "jwt_wrong_audience",
        "jwt_wrong_issuer",
        None,  # not an authentication failure at all
    ],
)
async def test_a_stale_real_credential_is_never_slowed_or_blocked(code: str | None, sink: AuditSink) -> None:
    """A client retrying a key (or token) it was really given: not guessing, and counting it would lock out everyone
    behind its address (a NAT, a proxy)."""
    store = MemoryKeyStore()
    settings = BruteForceSettings(slow_after=1, max_delay=1.0, block_after=3, exempt=())
    guard = ClientGuard(store, settings, sink)
    held = [await timed(guard, "203.0.113.7", code) for _ in range(20)]
    assert sum(held) < 0.5, held  # counted, the second alone would be held FIRST_DELAY, the third twice that...
    await guard.on_request(exchange("203.0.113.7"))
    assert await store.blocks(time.time()) == [] and len(guard.counts) == 0


async def test_an_ipv6_guesser_rotating_through_its_64_is_slowed_then_the_64_blocked(
    tmp_path: Path, sink: AuditSink
) -> None:
    store = SQLiteKeyStore(tmp_path / "keys.db")
    settings = BruteForceSettings(window=60, slow_after=2, max_delay=0.2, block_after=5, block_seconds=120, exempt=())
    guard = ClientGuard(store, settings, sink)
    try:
        # A new address of the same /64 for every guess.
        held = [await timed(guard, f"2001:db8:1:2:{n:x}:{n * 7:x}::{n + 1:x}") for n in range(4)]
        assert max(held[:2]) < FIRST_DELAY / 2 and held[2] >= FIRST_DELAY and held[3] >= 2 * FIRST_DELAY
        await guard.failed(exchange("2001:db8:1:2:ffff::9"))  # the fifth: the /64 is blocked
        for neighbour in ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:DB8:1:2::abc"):
            with pytest.raises(Forbidden):
                await guard.on_request(exchange(neighbour))
        await guard.on_request(exchange("2001:db8:1:3::1"))  # the next /64 is someone else
        [(address, until, reason)] = await store.blocks(time.time())
        assert address == "2001:db8:1:2::/64" and until > time.time() + 100 and "5 failed" in reason
        sink.flush()
        [line] = audit_lines(tmp_path)
        assert (line["event"], line["address"], line["failures"]) == ("block", "2001:db8:1:2::/64", 5)
        # Another worker or replica follows the block from the store: every address of the /64, and only those.
        other = ClientGuard(SQLiteKeyStore(tmp_path / "keys.db"), BruteForceSettings(), sink)
        await other.refresh()
        with pytest.raises(Forbidden):
            await other.on_request(exchange("2001:db8:1:2:dead:beef::1"))
        await other.on_request(exchange("2001:db8:1:3::1"))
        await other.on_request(exchange("203.0.113.7"))
        await other.store.close()
    finally:
        await store.close()


async def test_networks_blocked_through_the_store_are_refused_whole(sink: AuditSink) -> None:
    store = MemoryKeyStore()
    now = time.time()
    await store.block("198.51.100.0/24", now + 60, "operator", "cli")
    await store.block("2001:db8:aa::/48", now + 60, "operator", "cli")
    await store.block("198.51.100.7", now - 1, "ended", "cli")  # an address's own block ended: its network's holds
    guard = ClientGuard(store, BruteForceSettings(), sink)
    await guard.refresh()
    for inside in ("198.51.100.7", "::ffff:198.51.100.200", "2001:db8:aa:ffff::1", "2001:db8:aa::"):
        with pytest.raises(Forbidden):
            await guard.on_request(exchange(inside))
    for outside in ("198.51.101.7", "2001:db8:ab::1", "not-an-ip", ""):
        await guard.on_request(exchange(outside))


async def test_a_poll_costs_the_blocks_made_or_lifted_not_the_blocks_in_force(tmp_path: Path, sink: AuditSink) -> None:
    store = SQLiteKeyStore(tmp_path / "keys.db")
    other = SQLiteKeyStore(tmp_path / "keys.db")  # as the CLI, or another replica
    now = time.time()
    many = [(f"2001:db8:0:1::{n:x}", now + 900, "r", "brute-force", now) for n in range(10_000)]
    store._db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", many)  # as if made before this process began
    guard = ClientGuard(store, BruteForceSettings(), sink)

    async def timed_refresh() -> float:
        start = time.perf_counter()
        await guard.refresh()
        return time.perf_counter() - start

    try:
        first = await timed_refresh()
        assert len(guard.blocks.addresses) == 10_000
        parsed = guard._targets["2001:db8:0:1::1"]
        idle = [await timed_refresh() for _ in range(5)]  # nothing made or lifted: a look at the change feed
        await other.block("192.0.2.9", now + 60, "operator", "cli")
        await other.block("2001:db8:7:7::/64", now + 60, "operator", "cli")
        made = await timed_refresh()  # the two named by the change feed are read, by name
        assert "192.0.2.9" in guard.blocks.addresses and "::ffff:192.0.2.9" in guard.blocks.addresses
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("2001:db8:7:7::1"))
        await other.block("192.0.2.9", now + 600, "longer", "cli")  # an extension arrives the same way
        await timed_refresh()
        assert guard.blocks.addresses["192.0.2.9"] == now + 600
        await other.unblock("192.0.2.9", "cli")
        lifted = await timed_refresh()  # a lift: read whole, each block still parsed from before
        assert "192.0.2.9" not in guard.blocks.addresses and len(guard.blocks.addresses) == 10_000
        assert guard._targets["2001:db8:0:1::1"] is parsed
        print(
            f"10000 blocks: first read {first * 1000:.1f} ms, a poll with no change {min(idle) * 1000:.2f}-"
            f"{max(idle) * 1000:.2f} ms, a poll after two blocks {made * 1000:.2f} ms, after a lift "
            f"{lifted * 1000:.1f} ms"
        )
        assert max(*idle, made) < 0.05  # loosely: parsing 10000 blocks each second took 140 ms or more
    finally:
        await store.close()
        await other.close()


async def test_at_most_max_blocks_are_held_the_most_recently_made(sink: AuditSink) -> None:
    assert MAX_BLOCKS == 100_000
    store = MemoryKeyStore()
    for n in range(5):
        await store.block(f"192.0.2.{n}", time.time() + 60, "r", "t")
        await asyncio.sleep(0.002)
    guard = ClientGuard(store, BruteForceSettings(), sink, max_blocks=3)
    await guard.refresh()
    for newest in ("192.0.2.4", "192.0.2.3", "192.0.2.2"):
        with pytest.raises(Forbidden):
            await guard.on_request(exchange(newest))
    await guard.on_request(exchange("192.0.2.0"))
    assert len(guard.blocks.addresses) == 6  # three addresses, each also as ::ffff:
    # Blocks made later are taken by name up to a tenth beyond the cap, then the blocks are read whole again.
    guard = ClientGuard(store, BruteForceSettings(), sink, max_blocks=10)
    await guard.refresh()
    for n in range(5, 11):
        await store.block(f"192.0.2.{n}", time.time() + 60, "r", "t")
        await asyncio.sleep(0.002)
        await guard.refresh()
    assert len(guard._targets) == 11
    await store.block("192.0.2.11", time.time() + 60, "r", "t")
    await guard.refresh()
    assert sorted(guard._targets) == sorted(f"192.0.2.{n}" for n in range(2, 12))


async def test_exempt_addresses_are_never_slowed_or_blocked(sink: AuditSink) -> None:
    store = MemoryKeyStore()
    settings = BruteForceSettings(slow_after=1, max_delay=1.0, block_after=2)  # loopback exempt by default
    guard = ClientGuard(store, settings, sink)
    assert max([await timed(guard, "127.0.0.1") for _ in range(10)]) < 0.05
    await guard.on_request(exchange("127.0.0.1"))
    assert await store.blocks(time.time()) == [] and len(guard.counts) == 0


async def test_disabled_counts_nothing(sink: AuditSink) -> None:
    settings = BruteForceSettings(enabled=False, slow_after=1, block_after=1, exempt=())
    guard = ClientGuard(MemoryKeyStore(), settings, sink)
    for _ in range(5):
        await guard.failed(exchange("203.0.113.7"))
    assert len(guard.counts) == 0 and guard.blocks.addresses == {}


async def test_a_flood_cannot_pile_up_held_refusals(sink: AuditSink) -> None:
    settings = BruteForceSettings(slow_after=1, max_delay=0.5, block_after=10_000, exempt=())
    guard = ClientGuard(MemoryKeyStore(), settings, sink, slots=HoldSlots(per_address=3, in_all=5))
    for _ in range(10):  # well beyond slow_after: every further failure would be held 0.5 s
        guard.counts.add("198.51.100.1", time.time())
    durations = await asyncio.gather(*(timed(guard, "198.51.100.1") for _ in range(20)))
    held = [d for d in durations if d >= 0.4]
    assert len(held) == 3  # the per-address cap; the 17 others answered at once
    assert all(d < 0.1 for d in durations if d < 0.4)
    # The cap in all: two addresses of three held each, five at most.
    for address in ("198.51.100.2", "198.51.100.3"):
        for _ in range(10):
            guard.counts.add(address, time.time())
    both = await asyncio.gather(*(timed(guard, a) for a in ("198.51.100.2", "198.51.100.3") for _ in range(4)))
    assert len([d for d in both if d >= 0.4]) == 5
    assert guard.slots.total == 0  # every slot given back


async def test_blocks_made_elsewhere_are_followed(tmp_path: Path, sink: AuditSink) -> None:
    store = SQLiteKeyStore(tmp_path / "keys.db")
    other = SQLiteKeyStore(tmp_path / "keys.db")  # as the CLI, or another replica's detector
    guard = ClientGuard(store, BruteForceSettings(), sink, poll=0.02)
    await guard.start()
    try:
        await other.block("192.0.2.44", time.time() + 60, "alert 1234", "watch")
        await other.block("127.0.0.1", time.time() + 60, "operator", "cli:alice")  # exempt from brute force only
        deadline = time.monotonic() + 2
        while "192.0.2.44" not in guard.blocks.addresses or "127.0.0.1" not in guard.blocks.addresses:
            assert time.monotonic() < deadline, "the block did not arrive"
            await asyncio.sleep(0.01)
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("192.0.2.44"))
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("127.0.0.1"))
        assert await other.unblock("192.0.2.44", "cli:alice")
        while "192.0.2.44" in guard.blocks.addresses:
            assert time.monotonic() < deadline + 2, "the unblock did not arrive"
            await asyncio.sleep(0.01)
        await guard.on_request(exchange("192.0.2.44"))
    finally:
        await guard.stop()
        await store.close()
        await other.close()


async def test_a_store_outage_lifts_no_block_and_a_block_made_meanwhile_reaches_the_store_later(
    tmp_path: Path, sink: AuditSink, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.db"
    store = SQLiteKeyStore(path)
    await store.block("192.0.2.44", time.time() + 60, "alert", "watch")
    await store.block("192.0.2.45", time.time() + 0.3, "short", "watch")
    settings = BruteForceSettings(slow_after=1, max_delay=0, block_after=2, exempt=())
    guard = ClientGuard(store, settings, sink, poll=0.02)
    await guard.start()
    try:
        await store.close()  # the store is gone: every read and write fails
        await asyncio.sleep(0.1)  # several polls fail meanwhile
        assert "cannot read blocked addresses" in caplog.text
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("192.0.2.44"))  # never fail open
        await asyncio.sleep(0.3)
        await guard.on_request(exchange("192.0.2.45"))  # ...but a block still ends on time
        # Brute force blocks an address while the store is down: refused here at once...
        for _ in range(2):
            await guard.failed(exchange("203.0.113.9"))
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("203.0.113.9"))
        assert "cannot record the block" in caplog.text
        # ...and recorded in the store once it is back.
        guard.store = back = SQLiteKeyStore(path)
        deadline = time.monotonic() + 2
        while "203.0.113.9" not in [a for a, _, _ in await back.blocks(time.time())]:
            assert time.monotonic() < deadline, "the block never reached the store"
            await asyncio.sleep(0.02)
        with pytest.raises(Forbidden):
            await guard.on_request(exchange("203.0.113.9"))
    finally:
        await guard.stop()
        await guard.store.close()


async def test_the_block_check_probes_one_dict_entry_per_prefix_length(sink: AuditSink) -> None:
    """The request path's cost does not grow with the number of blocks: 10,000 blocked addresses and 1,001 blocked
    networks of two prefix lengths leave one probe per prefix length in use (its speed is in the watch benchmark)."""
    store = MemoryKeyStore()
    for n in range(10_000):
        await store.block(f"10.0.{n // 256}.{n % 256}", time.time() + 60, "r", "t")
    for n in range(1_000):
        await store.block(f"2001:db8:{n:x}::/64", time.time() + 60, "r", "brute-force")
    await store.block("198.51.100.0/24", time.time() + 60, "r", "cli")
    guard = ClientGuard(store, BruteForceSettings(), sink)
    await guard.refresh()
    assert guard.blocks.prefixes == {4: (24,), 6: (64,)}
    probes: list[object] = []

    class Counting(dict[object, float]):
        def get(self, key: object, default: object = None) -> object:  # type: ignore[override]
            probes.append(key)
            return super().get(key, default)

    guard.blocks.networks = Counting(guard.blocks.networks)
    for client, blocked in (("203.0.113.7", False), ("198.51.100.9", True), ("2001:db8:5::7", True)):
        probes.clear()
        try:
            await guard.on_request(exchange(client))
            refused = False
        except Forbidden:
            refused = True
        assert (refused, len(probes)) == (blocked, 1), (client, probes)
