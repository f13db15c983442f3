"""Cluster-wide limits in Redis: the semantics of `state.limits`, shared by every replica and worker.

Each operation is one Lua script, so concurrent acquires from any number of replicas are atomic: the script reads
every subject's buckets, decides, and takes from all of them or from none, with no other command in between. Time is
the server's (`TIME`), so replicas' clocks do not matter.

Keys, all under the hash tag `{prefix}` (one slot: scripts may touch several subjects at once):

- `{prefix}:r:<subject>` / `{prefix}:t:<subject>`: request and token buckets, hashes {l: level, t: ms}. A missing
  key is a full bucket, so each expires (PEXPIRE) when its refill would have filled it again: idle subjects cost
  nothing.
- `{prefix}:c:<subject>`: concurrency leases, a sorted set of request ids scored by lease end (ms); expired members
  are removed before counting, and the key expires with its last lease.
- `{prefix}:q:<request id>`: the request's ticket, which makes `settle` idempotent (see `state.limits`).

Failure: a refused connection raises `BackendUnavailable("limits_unavailable")` at once, a hung server after
`timeout` (1 s by default); so does any other Redis error (READONLY, OOM...): the gateway fails closed. No call is
retried (a retried script could take twice); a script whose answer timed out may still run when a hung server wakes
up, which can only over-count, never under-count. The pool replaces broken connections on the next call, so the
same limiter works again as soon as Redis is back. Outages are logged once, and the recovery once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aiperimeter.errors import BackendUnavailable
from aiperimeter.state.limits import (
    DEFAULT_LEASE,
    DEFAULT_TICKET_TTL,
    Decision,
    Snapshot,
    Subjects,
    check_subjects,
    decide,
)

log = logging.getLogger("aiperimeter.limits")

# Shared by the scripts: bucket levels are refilled at capacity / 60000 per ms, never above the capacity.
_LEVEL = """
local function level(key, cap, now)
  local state = redis.call('HMGET', key, 'l', 't')
  if not state[1] then return cap end
  local elapsed = now - tonumber(state[2])
  if elapsed < 0 then elapsed = 0 end
  local v = tonumber(state[1]) + elapsed * cap / 60000
  if v > cap then v = cap end
  return v
end
local function store(key, cap, v, now)
  if v >= cap then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'l', string.format('%.17g', v), 't', now)
    redis.call('PEXPIRE', key, math.ceil((cap - v) * 60000 / cap) + 1000)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: per subject (requests bucket, tokens bucket, leases), then the ticket.
# ARGV: n, estimate, request id, lease ms, ticket ms, then per subject rpm, tpm, concurrency (-1: unlimited).
# Returns {allowed, then per subject: requests level, tokens level (strings, '' when unlimited), in flight (-1)}.
ACQUIRE = (
    _LEVEL
    + """
local n = tonumber(ARGV[1])
local estimate = tonumber(ARGV[2])
local id = ARGV[3]
local lease = tonumber(ARGV[4])
local out = {1}
local levels = {}
for i = 1, n do
  local rpm = tonumber(ARGV[3 + 3 * i])
  local tpm = tonumber(ARGV[4 + 3 * i])
  local conc = tonumber(ARGV[5 + 3 * i])
  local r, k, c = '', '', -1
  if rpm > 0 then
    local v = level(KEYS[3 * i - 2], rpm, now)
    levels[3 * i - 2] = v
    r = string.format('%.17g', v)
    if v < 1 then out[1] = 0 end
  end
  if tpm > 0 then
    local v = level(KEYS[3 * i - 1], tpm, now)
    levels[3 * i - 1] = v
    k = string.format('%.17g', v)
    if estimate > tpm or v < estimate then out[1] = 0 end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now)
    c = redis.call('ZCARD', KEYS[3 * i])
    if c >= conc then out[1] = 0 end
  end
  out[#out + 1] = r
  out[#out + 1] = k
  out[#out + 1] = c
end
if out[1] == 1 then
  for i = 1, n do
    local rpm = tonumber(ARGV[3 + 3 * i])
    local tpm = tonumber(ARGV[4 + 3 * i])
    if rpm > 0 then store(KEYS[3 * i - 2], rpm, levels[3 * i - 2] - 1, now) end
    if tpm > 0 then store(KEYS[3 * i - 1], tpm, levels[3 * i - 1] - estimate, now) end
    if tonumber(ARGV[5 + 3 * i]) > 0 then
      redis.call('ZADD', KEYS[3 * i], now + lease, id)
      local last = redis.call('ZRANGE', KEYS[3 * i], -1, -1, 'WITHSCORES')
      redis.call('PEXPIREAT', KEYS[3 * i], math.ceil(tonumber(last[2])) + 1000)
    end
  end
  redis.call('SET', KEYS[3 * n + 1], '1', 'PX', tonumber(ARGV[5]))
end
return out
"""
)

# KEYS: per subject (tokens bucket, leases), then the ticket. ARGV: n, reserved - used, request id, then per
# subject tpm, concurrency. Returns 1 when the ticket was consumed (token buckets corrected), else 0.
SETTLE = (
    _LEVEL
    + """
local n = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
local id = ARGV[3]
for i = 1, n do
  if tonumber(ARGV[3 + 2 * i]) > 0 then redis.call('ZREM', KEYS[2 * i], id) end
end
if redis.call('DEL', KEYS[2 * n + 1]) == 0 then return 0 end
for i = 1, n do
  local tpm = tonumber(ARGV[2 + 2 * i])
  if tpm > 0 then
    local v = level(KEYS[2 * i - 1], tpm, now) + delta
    if v > tpm then v = tpm end
    store(KEYS[2 * i - 1], tpm, v, now)
  end
end
return 1
"""
)

# KEYS: the leases of n subjects, then the tickets of m requests. ARGV: n, m, lease ms, ticket ms, then m ids.
# Extends leases that have not ended yet (an ended one may have been given away) and the tickets that exist.
RENEW = (
    _LEVEL
    + """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local renewed = 0
for i = 1, n do
  for j = 1, m do
    local score = redis.call('ZSCORE', KEYS[i], ARGV[4 + j])
    if score and tonumber(score) > now then
      redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[4 + j])
      renewed = renewed + 1
    end
  end
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[i], math.ceil(tonumber(last[2])) + 1000) end
end
for j = 1, m do
  redis.call('PEXPIRE', KEYS[n + j], tonumber(ARGV[4]))
end
return renewed
"""
)


def connect(url: str, *, timeout: float = 1.0, max_connections: int = 16, pool_timeout: float = 5.0) -> Redis:
    """A client for the gateway's state. Connecting and every read are bounded by `timeout`; there are no automatic
    retries (the caller decides: a retried script could run twice); a broken connection is replaced on the next call.
    Callers beyond `max_connections` queue for a pooled connection for up to `pool_timeout`: that is local
    back-pressure under load, not an outage, so it gets more time than a read."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _level(value: Any) -> float | None:
    text = _text(value)
    return float(text) if text else None


class RedisLimiter:
    """`Limiter` over Redis. Give it a URL (it owns the client) or a client you configured and close yourself."""

    def __init__(
        self,
        target: str | Redis,
        *,
        prefix: str = "aiperimeter",
        lease: float = DEFAULT_LEASE,
        ticket_ttl: float = DEFAULT_TICKET_TTL,
        timeout: float = 1.0,
        max_connections: int = 16,
        pool_timeout: float = 5.0,
    ) -> None:
        if lease <= 0 or ticket_ttl <= 0 or timeout <= 0 or pool_timeout <= 0:
            raise ValueError("lease, ticket_ttl, timeout and pool_timeout must be positive")
        if isinstance(target, str):
            self.redis: Redis = connect(
                target, timeout=timeout, max_connections=max_connections, pool_timeout=pool_timeout
            )
            self._owned = True
        else:
            self.redis = target
            self._owned = False
        self.prefix = prefix
        self._tag = "{" + prefix + "}"
        self.lease_ms = max(1, math.ceil(lease * 1000))
        self.ticket_ms = max(1, math.ceil(ticket_ttl * 1000))
        self.timeout = timeout
        self._deadline = pool_timeout + 2 * timeout
        self.available = True
        self._acquire = self.redis.register_script(ACQUIRE)
        self._settle = self.redis.register_script(SETTLE)
        self._renew = self.redis.register_script(RENEW)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._tag}:{kind}:{name}"

    async def _run(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        try:
            # the pool and socket timeouts bound each wait; this bounds the whole call (pool, EVALSHA, NOSCRIPT reload)
            async with asyncio.timeout(self._deadline):
                result = await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            if self.available:
                log.warning("limits store unavailable (%s)", type(exc).__name__)
            self.available = False
            if isinstance(exc, (RedisConnectionError, OSError)):
                # The idle pooled connections are as dead as this one: dropped, so that once Redis is back each
                # call connects afresh instead of failing once per stale connection (and falling back for it).
                # Best effort and bounded: closing a dead socket can itself time out, and this path must only ever
                # end in BackendUnavailable (the caller's fallback, the lease renewer's retry).
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.redis.connection_pool.disconnect(inuse_connections=False)
            raise BackendUnavailable("limits_unavailable", "The rate limit store is unavailable.") from exc
        if not self.available:
            log.info("limits store available again")
            self.available = True
        return result

    async def acquire(self, subjects: Subjects, request_id: str, estimate: int) -> Decision:
        check_subjects(subjects, estimate)
        keys: list[str] = []
        args: list[str | int] = [len(subjects), estimate, request_id, self.lease_ms, self.ticket_ms]
        for subject, limits in subjects:
            keys += [self._key("r", subject), self._key("t", subject), self._key("c", subject)]
            args += [limits.rpm or -1, limits.tpm or -1, limits.concurrency or -1]
        keys.append(self._key("q", request_id))
        reply = await self._run(self._acquire, keys, args)
        snapshots = [
            Snapshot(_level(reply[i]), _level(reply[i + 1]), None if int(reply[i + 2]) < 0 else int(reply[i + 2]))
            for i in range(1, len(reply), 3)
        ]
        return decide(subjects, snapshots, estimate, int(reply[0]) == 1)

    async def settle(self, subjects: Subjects, request_id: str, reserved: int, used: int) -> None:
        check_subjects(subjects, reserved, used)
        keys: list[str] = []
        args: list[str | int] = [len(subjects), reserved - used, request_id]
        for subject, limits in subjects:
            keys += [self._key("t", subject), self._key("c", subject)]
            args += [limits.tpm or -1, limits.concurrency or -1]
        keys.append(self._key("q", request_id))
        await self._run(self._settle, keys, args)

    async def renew(self, subjects: Subjects, request_ids: Sequence[str]) -> None:
        leases = [self._key("c", subject) for subject, limits in subjects if limits.concurrency is not None]
        if not request_ids:
            return
        keys = leases + [self._key("q", request_id) for request_id in request_ids]
        args: list[str | int] = [len(leases), len(request_ids), self.lease_ms, self.ticket_ms, *request_ids]
        await self._run(self._renew, keys, args)

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()
