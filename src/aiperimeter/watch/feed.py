"""The audit stream, read: the audit JSON-lines file (one host, any number of workers), or a Redis stream that every
replica's gateway processes append to (a cluster). Each read returns parsed records and a position to resume from.

Both are read as hostile input: a line that is not a JSON object, or longer than MAX_LINE, is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("aiperimeter.watch")

MAX_LINE = 1 << 20  # an audit record is a few hundred bytes; a megabyte-long line is not one
READ_CHUNK = 128 << 10  # per read: about 300 records, parsed in about a millisecond before the loop moves on
WARMUP_BYTES_DEFAULT = 64 << 20  # without a saved position, the tail of the audit file read to warm up
WARMUP_SECONDS = 86400.0  # without a saved position, the last day of the Redis stream read to warm up
STREAM = "aiperimeter:audit"
STREAM_MAXLEN = 1_000_000  # about two weeks of a busy laptop's traffic; approximate trimming is cheap


class Feed(Protocol):
    last_batch: bytes  # the raw lines of the last read, whole lines only (kept as the alerts' evidence)

    async def read(self) -> list[dict[str, Any]]: ...

    def position(self) -> dict[str, Any]: ...

    def seek(self, position: dict[str, Any]) -> bool:
        """Resume from a saved position; False when it no longer applies (the file was replaced)."""
        ...

    async def close(self) -> None: ...


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    records = []
    for line in data.split(b"\n"):
        if not line or len(line) > MAX_LINE:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class FileFeed:
    """Follows the audit file as `tail -F` does: new lines as they are appended; after a rotation (another inode,
    or a file shorter than where we were), the new file from its start."""

    def __init__(self, path: Path, *, start_from_end: int | None = None) -> None:
        self.path = path
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self._start_from_end = start_from_end  # first open: begin this many bytes before the end (warm-up)
        self.last_batch = b""

    def position(self) -> dict[str, Any]:
        return {"file": str(self.path), "inode": self._inode, "offset": self._offset - len(self._partial)}

    def seek(self, position: dict[str, Any]) -> bool:
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        if position.get("file") != str(self.path) or position.get("inode") != stat.st_ino:
            return False
        offset = position.get("offset")
        if not isinstance(offset, int) or not 0 <= offset <= stat.st_size:
            return False
        self._inode, self._offset, self._partial = stat.st_ino, offset, b""
        self._start_from_end = None
        return True

    def exhausted(self) -> bool:
        """Whether every byte the file holds now has been read (a last line without its newline stays pending)."""
        try:
            return os.stat(self.path).st_size <= self._offset
        except OSError:
            return True

    async def read(self) -> list[dict[str, Any]]:
        # Read on the loop, not in a thread: the file was just written by this gateway and is in the page cache,
        # so a 1 MiB read takes a fraction of a millisecond, while handing the GIL to a reader thread and back
        # cost the serving loop a fifth of its throughput (measured: 2,410 against 3,023 requests a second).
        data = self._read()
        self.last_batch = data
        return parse_lines(data) if data else []

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if self._inode != stat.st_ino or stat.st_size < self._offset:
                    if self._inode is not None:
                        log.info("the audit log %s was rotated; reading the new file from its start", self.path)
                    self._inode, self._partial = stat.st_ino, b""
                    self._offset = 0
                    if self._start_from_end is not None:
                        self._offset = max(0, stat.st_size - self._start_from_end)
                        self._start_from_end = None
                        if self._offset:
                            handle.seek(self._offset)
                            handle.readline()  # start at a line boundary
                            self._offset = handle.tell()
                if stat.st_size == self._offset:
                    return b""
                handle.seek(self._offset)
                data = handle.read(READ_CHUNK)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            log.warning("cannot read the audit log %s: %s", self.path, exc.strerror)
            return b""
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if len(self._partial) > MAX_LINE:  # a runaway line: drop it and resynchronise at the next newline
            self._partial = b""
        return data[:cut]

    async def close(self) -> None:
        return None


class RedisFeed:
    """Reads the shared stream from a saved id (or its start); every replica reads all of it."""

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str = STREAM,
        block_ms: int = 500,
        count: int = 5000,
        warmup: float = WARMUP_SECONDS,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.block_ms = block_ms
        self.count = count
        # Without a saved position: the last `warmup` seconds of the stream (its ids are millisecond timestamps).
        self._last = f"{max(0, int((time.time() - warmup) * 1000))}-0"
        self._down = False
        self.last_batch = b""

    def position(self) -> dict[str, Any]:
        return {"stream": self.stream, "id": self._last}

    def seek(self, position: dict[str, Any]) -> bool:
        last = position.get("id")
        if position.get("stream") != self.stream or not isinstance(last, str) or len(last) > 64:
            return False
        self._last = last
        return True

    async def read(self) -> list[dict[str, Any]]:
        try:
            answer: Any = await self.redis.xread({self.stream: self._last}, count=self.count, block=self.block_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._down:
                log.warning("the audit stream in Redis is unavailable (%s); alerts wait for it", type(exc).__name__)
            self._down = True
            self.last_batch = b""
            return []
        if self._down:
            log.info("the audit stream in Redis is back")
            self._down = False
        lines: list[bytes] = []
        for _, entries in answer or ():
            for entry_id, fields in entries:
                self._last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                raw = fields.get(b"r") if isinstance(fields, dict) else None
                if isinstance(raw, bytes):
                    lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
        self.last_batch = b"".join(lines)
        return parse_lines(self.last_batch)

    async def close(self) -> None:
        return None


class StreamPublisher:
    """Appends a gateway process's audit lines to the shared stream: one pipelined round trip per flush of the audit
    sink (many records), never awaited by a request. The audit file stays the record of truth: when Redis is down
    the lines are dropped from the stream only, counted, and logged once per outage."""

    def __init__(self, redis: Redis, *, stream: str = STREAM, maxlen: int = STREAM_MAXLEN) -> None:
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen
        self.dropped = 0
        self._busy = False
        self._queue: list[bytes] = []
        self._down = False

    def __call__(self, lines: list[bytes]) -> None:
        if len(self._queue) > 100_000:
            self.dropped += len(lines)
            return
        self._queue.extend(lines)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:2000], self._queue[2000:]
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    for line in batch:
                        pipe.xadd(self.stream, {"r": line}, maxlen=self.maxlen, approximate=True)
                    await pipe.execute()
                    if self._down:
                        log.info("the audit stream in Redis is back")
                        self._down = False
                except (RedisError, OSError, TimeoutError) as exc:
                    self.dropped += len(batch)
                    if not self._down:
                        log.warning(
                            "cannot append to the audit stream in Redis (%s): anomaly detection misses these "
                            "requests; the audit file keeps them",
                            type(exc).__name__,
                        )
                        self._down = True
        finally:
            self._busy = False
