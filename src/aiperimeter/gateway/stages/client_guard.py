"""Refuse blocked client addresses before anything else; slow, then block, addresses that keep failing to authenticate.

Blocks live in the store (`KeyStore.block`), so a block made anywhere (by this guard on any replica, by an alert's
automatic action, by an operator) reaches every worker: each follows the store's change feed about once a second,
reads the blocks it names as made (by name: the cost of a poll does not grow with the blocks in force), and reads the
blocks whole when one is lifted and every FULL_READ seconds, keeping at most MAX_BLOCKS of them, the most recently
made. A block names an address, or a network (`2001:db8:1:2::/64`). The check on
the request path is one dict lookup, plus one per network prefix length in use while networks are blocked. While the
store cannot be read, the blocks already known stay in force (each still ends on time): a store outage never lifts a
block.

Failed authentications that look like guessing or scanning (see COUNTED: missing, malformed or unknown credentials,
canary keys, JWTs that do not verify; not a real key refused for its state) are counted over a sliding window, per
address for IPv4 and per /64 for IPv6 (a host is given a whole /64 and may pick any address in it). Beyond
`slow_after` failures, each further refusal is held back, twice as long each time up to `max_delay`, on the event
loop (a held request costs a timer, not a worker); at `block_after` the address (the /64) is blocked for
`block_seconds` through the store, so every replica follows, and a `{"event": "block"}` line goes to the audit log.
With Redis the count is shared by every worker and replica (one pipelined INCR/EXPIRE/GET per failure, nothing on the
success path); without Redis, or while it is down, each process counts on its own. Successful requests are never held
back. Exempt networks (loopback by default) are never slowed or blocked for failures; a block an alert or an operator
makes applies to any address.

Memory is bounded: the blocks held, the tracked addresses (least recently failed forgotten first), the parsed client
addresses, and the refusals held back at once, per address and in all (beyond either cap a refusal is answered at
once: a flood cannot pile up sleeping requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiperimeter.config import BruteForceSettings
from aiperimeter.errors import Forbidden
from aiperimeter.gateway.pipeline import Exchange, Stage
from aiperimeter.gateway.stages.audit_log import AuditSink
from aiperimeter.state.base import KeyStore
from aiperimeter.state.sqlite import address_subject

log = logging.getLogger("aiperimeter.gateway")

ACTOR = "brute-force"
FIRST_DELAY = 0.1  # seconds the first slowed refusal is held back; each further one twice as long, up to max_delay
MAX_ADDRESSES = 100_000  # addresses whose failures are counted at once (per process)
HELD_PER_ADDRESS = 8  # refusals to one address held back at once; more are answered at once
HELD_IN_ALL = 2_000  # refusals held back at once in this process
POLL = 1.0  # seconds between looks at the store's change feed for blocks made or lifted
FULL_READ = 300.0  # seconds after which the blocks are read whole again, whatever the change feed named
READ_ONE_BY_ONE = 1_000  # blocks made in one poll that are read by name; more, and the blocks are read whole
MAX_BLOCKS = 100_000  # blocks held at once (per process), the most recently made; between two whole reads, blocks
# made since may add up to a tenth more
IPV6_PREFIX = 64  # IPv6 failures are counted, and brute-force blocks made, per network of this size
BUILD_SLICE = 5_000  # blocks taken into the table between two yields to the event loop
PARSED_CLIENTS = 4096  # client addresses whose parsed form is remembered, for the check against blocked networks
REDIS_TIMEOUT = 0.5  # seconds a failure's count may wait for Redis before this process counts on its own
REDIS_RETRY = 5.0  # seconds without trying Redis after it failed
_ADDRESS_CHANGE = address_subject("")  # what the change feed's subjects for blocks and unblocks begin with

# The refusals counted as failures: those that look like guessing or scanning. A credential that is missing, malformed
# or unknown says nothing of who sent it (a canary key is answered as unknown, and counted: `invalid_key`). A real
# credential refused for its state is left out (key_expired, key_revoked, key_suspended, key_rotated): a client still
# retrying a key it was once given is stale, not guessing, and counting it would lock out everyone behind its address
# (a NAT, a proxy). JWTs (gateway/jwt.py): counted when the token cannot be verified as the issuer's: jwt_invalid
# (malformed, a signature that does not verify), jwt_algorithm_refused (an algorithm the gateway does not take,
# `none` among them), jwt_unknown_key (a signing key the issuer does not publish, as a forgery's). Not counted:
# jwt_expired, jwt_not_yet_valid, jwt_wrong_audience, jwt_wrong_issuer, which PyJWT raises only after the signature
# verified, so the token was the issuer's. jwt_invalid also answers a verified token whose claims are unusable (no
# subject, a malformed scope claim); the code cannot tell it from a forgery, and such tokens fail for every client of
# a misconfigured issuer alike, so it is counted, erring toward caution.
COUNTED = frozenset(
    {
        "missing_credentials",
        "malformed_credentials",
        "invalid_key",
        "jwt_invalid",
        "jwt_algorithm_refused",
        "jwt_unknown_key",
    }
)

NetworkKey = tuple[int, int, int]  # (IP version, prefix length, the network's address without its host bits)
Target = tuple[tuple[str, ...], NetworkKey | None]  # a block's address spellings, or its network


# --- pure logic ---------------------------------------------------------------------------------------------------


def sliding_count(previous: int, current: int, into_bucket: float, window: float) -> int:
    """Failures in the last `window` seconds, from fixed buckets of `window` seconds: the current bucket's count
    plus the share of the previous bucket's that still lies inside the window (rounded up: an estimate that errs
    toward caution). `into_bucket`: seconds since the current bucket began."""
    overlap = max(0.0, 1.0 - into_bucket / window)
    return current + math.ceil(previous * overlap - 1e-9)


def delay_for(failures: int, settings: BruteForceSettings) -> float:
    """How long to hold back the refusal of an address's `failures`-th failure in the window: nothing up to
    `slow_after`, then FIRST_DELAY, doubling each time, never more than `max_delay`."""
    beyond = failures - settings.slow_after
    if beyond <= 0 or settings.max_delay <= 0:
        return 0.0
    return min(settings.max_delay, FIRST_DELAY * 2.0 ** min(beyond - 1, 32))


_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4-mapped IPv6 address


def _plain(address: str) -> tuple[str, int] | None:
    """(the spelling the peer address of a socket has, IP version) of an address, an IPv4-mapped IPv6 address as
    IPv4; None when it is not an IP address. The C library's parser: a fraction of `ipaddress`'s cost, which counts
    when a worker reads 100,000 blocks."""
    if ":" not in address:
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, address)), 4
        except OSError:
            return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        try:  # a scoped address (fe80::1%eth0), which inet_pton does not take
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return (str(ip), 6) if ip.version == 6 else None
    if packed.startswith(_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:]), 4
    return socket.inet_ntop(socket.AF_INET6, packed), 6


def canonical(address: str) -> str:
    """One spelling per address: IPv6 compressed, an IPv4-mapped IPv6 address as plain IPv4; others unchanged."""
    plain = _plain(address)
    return plain[0] if plain is not None else address


def spellings(address: str) -> tuple[str, ...]:
    """Every form in which a blocked address may arrive as a peer (a dual-stack listener sees ::ffff:a.b.c.d)."""
    plain = _plain(address)
    if plain is None:
        return (address,)
    return (plain[0], f"::ffff:{plain[0]}") if plain[1] == 4 else (plain[0],)


def subject(address: str) -> str:
    """What an address's failures are counted against and brute force blocks: an IPv4 address itself (a NAT shares
    it), an IPv6 address's /64 (`2001:db8:1:2::/64`: a host may rotate through its /64 at will)."""
    plain = canonical(address)
    try:
        ip = ipaddress.ip_address(plain)
    except ValueError:
        return plain
    if ip.version == 4:
        return plain
    host_bits = 128 - IPV6_PREFIX
    return str(ipaddress.IPv6Network((int(ip) >> host_bits << host_bits, IPV6_PREFIX)))


def block_target(entry: str) -> Target:
    """What a stored block matches: the spellings of an address, or a network's key (`network_key`). A network of
    one address (/32, /128) is that address; anything unparsable matches itself only."""
    if "/" not in entry:
        return spellings(entry), None
    try:
        network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return (entry,), None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.0/120 is a.b.c.0/24: clients are matched as IPv4
            network = ipaddress.IPv4Network((int(mapped), network.prefixlen - 96))
    if network.prefixlen == network.max_prefixlen:
        return spellings(str(network.network_address)), None
    host_bits = network.max_prefixlen - network.prefixlen
    return (), (network.version, network.prefixlen, int(network.network_address) >> host_bits)


@functools.lru_cache(maxsize=PARSED_CLIENTS)
def numeric(client: str) -> tuple[int, int] | None:
    """(IP version, the address as a number) of a client address, an IPv4-mapped one as IPv4; None if unparsable."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4, int(ip.ipv4_mapped)
    return ip.version, int(ip)


class Exemptions:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __contains__(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(canonical(address))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


class FailureCounts:
    """Failures per address in fixed buckets of `window` seconds, for `sliding_count`; at most `limit` addresses,
    the least recently failed forgotten first."""

    def __init__(self, window: float, limit: int = MAX_ADDRESSES) -> None:
        self.window = window
        self.limit = limit
        self._counts: dict[str, tuple[int, int, int]] = {}  # address -> (bucket, previous, current)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, address: str, now: float) -> int:
        """Count one failure at `now`; the failures in the window, this one included."""
        bucket = int(now // self.window)
        state = self._counts.pop(address, None)  # re-inserted last: the dict's order is the order of last failure
        previous, current = 0, 0
        if state is not None:
            if state[0] == bucket:
                previous, current = state[1], state[2]
            elif state[0] == bucket - 1:
                previous = state[2]
        current += 1
        self._counts[address] = (bucket, previous, current)
        while len(self._counts) > self.limit:
            del self._counts[next(iter(self._counts))]
        return sliding_count(previous, current, now - bucket * self.window, self.window)

    def forget(self, address: str) -> None:
        self._counts.pop(address, None)


class HoldSlots:
    """Refusals being held back: at most `per_address` for one address and `in_all` in all."""

    def __init__(self, per_address: int = HELD_PER_ADDRESS, in_all: int = HELD_IN_ALL) -> None:
        self.per_address = per_address
        self.in_all = in_all
        self.total = 0
        self._held: dict[str, int] = {}

    def take(self, address: str) -> bool:
        held = self._held.get(address, 0)
        if held >= self.per_address or self.total >= self.in_all:
            return False
        self._held[address] = held + 1
        self.total += 1
        return True

    def give_back(self, address: str) -> None:
        held = self._held.get(address, 0) - 1
        if held <= 0:
            self._held.pop(address, None)
        else:
            self._held[address] = held
        self.total -= 1


class Blocked:
    """The blocks in force, for the request path: every spelling of each blocked address, and each blocked network
    by its key, with when its block ends; and per IP version the prefix lengths of the blocked networks, to probe."""

    __slots__ = ("addresses", "networks", "prefixes")

    def __init__(self) -> None:
        self.addresses: dict[str, float] = {}
        self.networks: dict[NetworkKey, float] = {}
        self.prefixes: dict[int, tuple[int, ...]] = {}

    def put(self, target: Target, until: float) -> None:
        """Refuse what `target` names until `until` (or later, if it is blocked for longer already)."""
        spelled, network = target
        for spelling in spelled:
            if until > self.addresses.get(spelling, 0.0):
                self.addresses[spelling] = until
        if network is not None:
            if until > self.networks.get(network, 0.0):
                self.networks[network] = until
            version, prefix, _ = network
            known = self.prefixes.get(version, ())
            if prefix not in known:
                self.prefixes = {**self.prefixes, version: tuple(sorted({*known, prefix}))}

    def until_of(self, target: Target) -> float:
        """When the block of exactly what `target` names ends; 0.0 if it is not blocked."""
        spelled, network = target
        until = max((self.addresses.get(s, 0.0) for s in spelled), default=0.0)
        return max(until, self.networks.get(network, 0.0)) if network is not None else until

    def network_until(self, client: str) -> float:
        """When the latest-ending block of a network holding `client` ends; 0.0 if none holds it."""
        parsed = numeric(client)
        if parsed is None:
            return 0.0
        version, value = parsed
        prefixes = self.prefixes.get(version)
        if prefixes is None:
            return 0.0
        bits = 32 if version == 4 else 128
        networks = self.networks
        found = 0.0
        for prefix in prefixes:
            until = networks.get((version, prefix, value >> (bits - prefix)))
            if until is not None and until > found:
                found = until
        return found

    def in_force(self, now: float) -> Blocked:
        kept = Blocked()
        kept.addresses = {a: until for a, until in self.addresses.items() if until > now}
        kept.networks = {n: until for n, until in self.networks.items() if until > now}
        kept.prefixes = self.prefixes
        return kept


def refusal(until: float, now: float) -> Forbidden:
    seconds = max(1, math.ceil(until - now))
    if seconds < 120:
        span = f"{seconds} seconds"
    elif seconds < 7200:
        span = f"{math.ceil(seconds / 60)} minutes"
    else:
        span = f"{math.ceil(seconds / 3600)} hours"
    return Forbidden(
        "client_blocked",
        f"Requests from this address are refused for another {span}.",
        headers={"Retry-After": str(seconds)},
    )


# --- counting in Redis ----------------------------------------------------------------------------------------------


class RedisCounts:
    """The same buckets in Redis, shared by every process: `{prefix}:bf:<bucket>:<address>`, each kept for two
    windows (long enough to be the previous bucket)."""

    def __init__(self, redis: Redis, window: float, prefix: str = "aiperimeter") -> None:
        self.redis = redis
        self.window = window
        self._tag = "{" + prefix + "}"
        self._ttl = math.ceil(2 * window) + 1

    async def add(self, address: str, now: float) -> int:
        bucket = int(now // self.window)
        current_key = f"{self._tag}:bf:{bucket}:{address}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(current_key)
            pipe.expire(current_key, self._ttl)
            pipe.get(f"{self._tag}:bf:{bucket - 1}:{address}")
            current, _, previous = await pipe.execute()
        return sliding_count(int(previous or 0), int(current), now - bucket * self.window, self.window)


# --- the stage ------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    until: float
    reason: str


class ClientGuard(Stage):
    name: ClassVar[str] = "client_guard"

    def __init__(
        self,
        store: KeyStore,
        settings: BruteForceSettings,
        sink: AuditSink,
        redis: Redis | None = None,
        *,
        poll: float = POLL,
        max_addresses: int = MAX_ADDRESSES,
        max_blocks: int = MAX_BLOCKS,
        slots: HoldSlots | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sink = sink
        self.poll = poll
        self.exempt = Exemptions(settings.exempt)
        self.counts = FailureCounts(settings.window, max_addresses)
        self.shared = RedisCounts(redis, settings.window) if redis is not None else None
        self.redis = redis
        self.slots = slots or HoldSlots()
        self.max_blocks = max_blocks
        self.blocks = Blocked()
        self._targets: dict[str, Target] = {}  # each block read from the store, parsed (parsed once while it lasts)
        self._rows: list[tuple[str, float, str]] | None = None  # the blocks last read
        self._cursor = -1  # the store's change feed, read up to here
        self._read_by = 0.0  # monotonic time by which the blocks are read again, whatever the change feed says
        self._unwritten: dict[str, _Pending] = {}  # blocks made here that the store has not taken yet
        self._made: dict[str, tuple[float, float]] = {}  # blocks made here lately: address -> (until, monotonic)
        self._redis_after = 0.0  # monotonic time before which Redis is not tried again
        self._reading_failed = False
        self._task: asyncio.Task[None] | None = None
        self.pid = os.getpid()

    # --- the request path -------------------------------------------------------------------------------------------

    async def on_request(self, ex: Exchange) -> None:
        blocks = self.blocks
        until = blocks.addresses.get(ex.client, 0.0)
        if blocks.prefixes:  # networks are blocked: is the client in one?
            in_network = blocks.network_until(ex.client)
            if in_network > until:
                until = in_network
        if until:
            now = time.time()
            if until > now:
                raise refusal(until, now)

    async def failed(self, ex: Exchange) -> None:
        """An authentication failed (called by the authenticate stage before the 401 goes out): if it looks like
        guessing (COUNTED), count it against the address (an IPv6 address's /64), block that at `block_after`, and
        hold the refusal back when it is beyond `slow_after`."""
        settings = self.settings
        if not settings.enabled or not ex.client or ex.deny_code not in COUNTED:
            return
        if canonical(ex.client) in self.exempt:
            return
        address = subject(ex.client)
        failures = await self._count(address, time.time())
        if failures >= settings.block_after:
            await self._block(address, failures)
            return
        delay = delay_for(failures, settings)
        if delay > 0 and self.slots.take(address):
            try:
                await asyncio.sleep(delay)
            finally:
                self.slots.give_back(address)

    async def _count(self, address: str, now: float) -> int:
        if self.shared is not None and time.monotonic() >= self._redis_after:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    failures = await self.shared.add(address, now)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning(
                    "brute-force counts: Redis unavailable (%s); counting in this process for %.0fs",
                    type(exc).__name__,
                    REDIS_RETRY,
                )
                self._redis_after = time.monotonic() + REDIS_RETRY
            else:
                return max(failures, self.counts.add(address, now))  # never fewer than this process saw itself
        return self.counts.add(address, now)

    async def _block(self, address: str, failures: int) -> None:
        now = time.time()
        target = self._target(address)
        if self.blocks.until_of(target) > now:
            return  # another failure of this burst got here first
        until = now + self.settings.block_seconds
        reason = f"{failures} failed authentications in {self.settings.window:g} s"
        self.blocks.put(target, until)
        self._made[address] = (until, time.monotonic())
        self.counts.forget(address)
        self.sink.write(
            {"time": now, "event": "block", "address": address, "until": until, "reason": reason, "actor": ACTOR,
             "failures": failures, "pid": self.pid}
        )  # fmt: skip
        log.warning("blocked %s until %s: %s", address, time.strftime("%H:%M:%S", time.localtime(until)), reason)
        try:
            await self.store.block(address, until, reason, ACTOR)
        except Exception:
            # This process refuses the address anyway; the store gets the block on the next poll.
            log.warning("cannot record the block of %s in the store; retrying every %.0fs", address, self.poll)
            self._unwritten[address] = _Pending(until, reason)

    # --- following the store ----------------------------------------------------------------------------------------

    def _target(self, entry: str) -> Target:
        target = self._targets.get(entry)
        return target if target is not None else block_target(entry)

    async def refresh(self) -> None:
        """Write the blocks the store has not taken yet, then, when the change feed names a block made or lifted
        (or FULL_READ has passed), read the blocks in force (raises when the store cannot be reached)."""
        now = time.time()
        for address, pending in list(self._unwritten.items()):
            if pending.until <= now:
                del self._unwritten[address]
                continue
            await self.store.block(address, pending.until, pending.reason, ACTOR)
            del self._unwritten[address]
        recent = time.monotonic() - 3 * self.poll
        self._made = {a: made for a, made in self._made.items() if made[1] > recent}
        changed, cursor = await self.store.changes_since(self._cursor)  # read first: a change after it is seen next
        if self._cursor >= 0 and time.monotonic() < self._read_by:
            named = {n[len(_ADDRESS_CHANGE) :] for n in changed if n.startswith(_ADDRESS_CHANGE)}
            if len(named) <= READ_ONE_BY_ONE and await self._read_some(named, now):
                self._cursor = cursor
                return
        rows = await self.store.blocks(now, self.max_blocks)
        self._cursor, self._read_by = cursor, time.monotonic() + FULL_READ
        if rows == self._rows:
            return  # what is in force already
        parsed, targets, fresh = self._targets, {}, Blocked()
        addresses = fresh.addresses
        for n, (address, until, _) in enumerate(rows):
            if n and not n % BUILD_SLICE:
                await asyncio.sleep(0)  # requests go on meanwhile, against the blocks known so far
            target = parsed.get(address)
            if target is None:
                target = block_target(address)
            targets[address] = target
            if target[1] is None:  # an address: the common case, kept short (up to MAX_BLOCKS of them)
                for spelling in target[0]:
                    if until > addresses.get(spelling, 0.0):
                        addresses[spelling] = until
            else:
                fresh.put(target, until)
        # A read that began before a block made here was written may lack it: blocks made here are kept for a few
        # polls, and those the store has not taken until it does.
        for address, (until, _) in self._made.items():
            fresh.put(self._target(address), until)
        for address, pending in self._unwritten.items():
            fresh.put(self._target(address), pending.until)
        self.blocks, self._targets, self._rows = fresh, targets, rows  # only the blocks in force stay parsed

    async def _read_some(self, addresses: set[str], now: float) -> bool:
        """Take the blocks of `addresses` (made or extended since the last read); False when the blocks must be read
        whole: one was lifted (its spellings or network may be another block's too), or there are too many."""
        if not addresses:
            return True
        rows = await self.store.blocks(now, addresses=addresses)
        added = sum(1 for address, _, _ in rows if address not in self._targets)
        if len(rows) < len(addresses) or len(self._targets) + added > self.max_blocks + self.max_blocks // 10:
            return False
        for address, until, _ in rows:
            target = self._target(address)
            self._targets[address] = target
            self.blocks.put(target, until)
        self._rows = None  # what is in force is no longer what was read whole
        return True

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._follow(), name="client-guard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.refresh()
            except Exception:
                # The blocks known stay in force until they end; nothing is lifted for want of an answer.
                if not self._reading_failed:
                    log.warning("cannot read blocked addresses from the store; the known blocks stay in force")
                self._reading_failed = True
                self.blocks = self.blocks.in_force(time.time())
                continue
            if self._reading_failed:
                log.info("blocked addresses readable from the store again")
                self._reading_failed = False
