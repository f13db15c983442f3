"""Metric snapshots: how several worker processes add up to one scrape.

Every gateway process writes its metric book to `<data_dir>/metrics/<host>/<pid>-<start>.json` each second while it
changes, and when it stops: a temporary file renamed over the last one (never half written), 0600 in a 0700 folder.
The process that serves the admin API reads the other processes' files when it is scraped and adds them to its own
book. The file of a process that no longer runs is folded into `retired.json` and removed, so a counter never goes
backwards when a worker dies or the gateway restarts; counts carry over across restarts on the same host. What a
killed (not stopped) process counted in its last second is lost.

`<host>` tells pid namespaces apart (a data dir shared by containers); `<start>` tells a reused pid from the process
that had it. Each file is read as hostile input: its size is bounded, its schema checked, and a file that fails is
skipped with a log line (once per version of the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil

from aiperimeter.watch.metrics import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    MAX_COUNT,
    MAX_KEYS,
    MAX_LABEL,
    MAX_SERIES,
    Histogram,
    MetricBook,
    Totals,
    admit_keys,
    render,
)

log = logging.getLogger("aiperimeter.watch")

VERSION = 1
INTERVAL = 1.0  # seconds between snapshots
MAX_FILE = 4 * 1024 * 1024
MAX_FILES = 1024  # snapshot files read per scrape
MAX_FOLDED = 4096  # identities of folded processes remembered (a file that could not be removed is not re-added)
RETIRED = "retired.json"
_SNAPSHOT = re.compile(r"([0-9]{1,10})-([0-9]{1,16})\.json")


def host_id() -> str:
    """Pids mean something within one host and pid namespace only."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:16]


def stamp(started: float) -> int:
    return round(started * 100)


def running(pid: int, started: int) -> bool:
    """Whether the process that wrote a snapshot still runs: its pid exists with the same start time."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(stamp(process.create_time()) - started) <= 1
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: never fold what may still be written


# --- the file format --------------------------------------------------------------------------------------------


def encode(totals: Totals, **meta: object) -> bytes:
    doc: dict[str, object] = {
        "v": VERSION,
        **meta,
        "counters": {name: list(series.items()) for name, series in totals.counters.items() if series},
        "histograms": {
            name: {"bounds": h.bounds, "counts": h.counts, "sum": h.sum} for name, h in totals.histograms.items()
        },
    }
    if totals.processes:
        doc["gauges"] = totals.gauges
    return orjson.dumps(doc)


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError("a count is not a non-negative integer")
    return value


def _number(value: object, limit: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 <= value <= limit)
    ):
        raise ValueError("a value is not a finite non-negative number")
    return float(value)


def _labels(value: object, arity: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) != arity:
        raise ValueError("a series has the wrong labels")
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_LABEL:
            raise ValueError("a label value is not a short string")
    return tuple(value)


def decode(data: bytes) -> tuple[Totals, dict[str, Any]]:
    """The counts in a snapshot or retired file, and its other top-level fields; ValueError says what is wrong."""
    if len(data) > MAX_FILE:
        raise ValueError("too large")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError("not a version 1 metrics file")
    totals = Totals()
    counters = doc.get("counters", {})
    if not isinstance(counters, dict) or not set(counters) <= set(COUNTERS):
        raise ValueError("unknown counters")
    for name, series in counters.items():
        if not isinstance(series, list) or len(series) > MAX_SERIES + 1:
            raise ValueError(f"counter {name} is not a bounded list")
        own = totals.counters[name]
        arity = len(COUNTERS[name].labels)
        for item in series:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError(f"counter {name} has a malformed series")
            labels = _labels(item[0], arity)
            if labels in own:
                raise ValueError(f"counter {name} repeats a series")
            own[labels] = _count(item[1])
    histograms = doc.get("histograms", {})
    if not isinstance(histograms, dict) or not set(histograms) <= set(HISTOGRAMS):
        raise ValueError("unknown histograms")
    for name, h in histograms.items():
        bounds = HISTOGRAMS[name].bounds
        if not isinstance(h, dict) or h.get("bounds") != list(bounds):
            raise ValueError(f"histogram {name} has other buckets")
        counts = h.get("counts")
        if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
            raise ValueError(f"histogram {name} has the wrong number of counts")
        totals.histograms[name] = Histogram(bounds, [_count(c) for c in counts], _number(h.get("sum"), 1e15))
    gauges = doc.get("gauges")
    if gauges is not None:
        if not isinstance(gauges, dict) or set(gauges) != set(GAUGES):
            raise ValueError("malformed gauges")
        totals.gauges = {name: _number(gauges[name], 1e9) for name in GAUGES}
        totals.processes = 1
    return totals, doc


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a mix; 0600 whatever the umask."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_bounded(path: Path) -> bytes:
    """A regular file's bytes, up to MAX_FILE (a larger one is refused); symbolic links are not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_FILE:
            raise ValueError("too large")
        chunks, size = [], 0
        while size <= MAX_FILE:
            chunk = os.read(fd, MAX_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE:
            raise ValueError("too large")
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- the files of one gateway's processes -----------------------------------------------------------------------


class MetricFiles:
    """This process's snapshot, and (in the process that serves the admin API) the sum of every process's."""

    def __init__(self, data_dir: Path, book: MetricBook) -> None:
        self.folder = data_dir / "metrics" / host_id()
        self.book = book
        self.pid = os.getpid()
        self.started = stamp(psutil.Process(self.pid).create_time())
        self.name = f"{self.pid}-{self.started}.json"
        self._written: bytes | None = None
        self._reported: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._scraping = asyncio.Lock()

    def prepare(self) -> Path:
        """The folder of this host's files, made private (0700) when it is created."""
        self.folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        return self.folder

    def snapshot(self) -> bytes | None:
        """This process's snapshot, or None when it has not changed since the last one written."""
        data = encode(self.book.totals(), pid=self.pid, started=self.started)
        return None if data == self._written else data

    def store(self, data: bytes) -> None:
        write_atomic(self.prepare() / self.name, data)
        self._written = data

    def write(self) -> None:
        data = self.snapshot()
        if data is not None:
            self.store(data)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metric-snapshots")

    async def stop(self) -> None:
        """Write the last snapshot (which the retired total keeps once this process is gone), then stop."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        # Serialised here, written by a thread: the event loop never waits for the file system.
        while True:
            data = self.snapshot()
            if data is not None:
                try:
                    await asyncio.to_thread(self.store, data)
                except OSError as exc:
                    self._report("(this process's snapshot)", exc.errno, f"cannot write: {exc.strerror}")
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), INTERVAL)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and Content-Type. This process's book is copied here; reading the other processes'
        files, merging and rendering happen in a thread, one scrape at a time."""
        async with self._scraping:
            own = self.book.totals()
            return await asyncio.to_thread(lambda: render(self.scrape(own), accept))

    def _report(self, name: str, version: object, problem: str) -> None:
        """A log line per file and version: a bad file is named once, not at every scrape."""
        if name not in self._reported or self._reported[name] != version:
            if len(self._reported) > MAX_FILES:
                self._reported.clear()
            self._reported[name] = version
            log.warning("metrics file %s skipped: %s", name, problem)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        """Whether this process may fold files now. Another process folding (a second gateway on the same data
        dir) never makes a scrape wait: it then merely reads."""
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _retired(self, may_repair: bool) -> tuple[Totals, list[list[int]], list[str]]:
        path = self.folder / RETIRED
        try:
            totals, doc = decode(read_bounded(path))
            folded, keys = doc.get("folded", []), doc.get("keys", [])
            if not (isinstance(folded, list) and len(folded) <= MAX_FOLDED and isinstance(keys, list)):
                raise ValueError("malformed folded processes or keys")
            if not all(isinstance(f, list) and len(f) == 2 and all(type(n) is int for n in f) for f in folded):
                raise ValueError("malformed folded processes")
            if len(keys) > MAX_KEYS or not all(isinstance(k, str) and len(k) <= MAX_LABEL for k in keys):
                raise ValueError("malformed keys")
            return totals, folded, keys
        except FileNotFoundError:
            return Totals(), [], []
        except (OSError, ValueError) as exc:
            self._report(RETIRED, _version(path), f"{exc}; counters restart from the live processes")
            if may_repair:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(f"{RETIRED}.bad-{int(time.time())}"))  # kept for a person
            return Totals(), [], []

    def _others(self, folder: Path) -> Iterator[tuple[Path, tuple[int, int], bool, Totals | None]]:
        """The other processes' snapshots: path, (pid, start), whether that process runs, and its counts (None when
        the file cannot be trusted; said once in the log)."""
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_FILES:
                    self._report("(the rest)", None, f"more than {MAX_FILES} files in {folder}")
                    return
                match = _SNAPSHOT.fullmatch(entry.name)
                if match is None or entry.name == self.name:
                    continue
                pid, started = int(match[1]), int(match[2])
                path = Path(entry.path)
                # Asked before reading: a process found stopped wrote its last snapshot before this read.
                alive = running(pid, started)
                totals: Totals | None
                try:
                    totals, doc = decode(read_bounded(path))
                    if doc.get("pid") != pid or doc.get("started") != started or totals.processes != 1:
                        raise ValueError("its contents do not match its name")
                except FileNotFoundError:
                    continue  # its process stopped and another scrape folded it
                except (OSError, ValueError) as exc:
                    self._report(entry.name, _version(entry), str(exc))
                    totals = None
                yield path, (pid, started), alive, totals

    def scrape(self, own: Totals | None = None) -> Totals:
        """Every process's counts: this one's (`own`, or its book now), the other running processes' snapshots,
        and the retired processes'."""
        merged = Totals()
        merged.add(own if own is not None else self.book.totals(), live=True)
        folder = self.prepare()
        with self._lock() as locked:
            retired, folded, admitted = self._retired(locked)
            merged.add(retired, live=False)
            done = {(pid, started) for pid, started in folded}
            gone: list[Path] = []
            for path, identity, alive, totals in self._others(folder):
                if not alive and identity in done:
                    gone.append(path)  # folded before, but its removal failed
                elif totals is None:
                    if not alive and locked:
                        gone.append(path)  # unreadable, and no process will ever rewrite it
                else:
                    merged.add(totals, live=alive)
                    if not alive and locked:
                        retired.add(totals, live=False)
                        folded.append(list(identity))
                        gone.append(path)
            grew = admit_keys(merged, admitted)
            if locked and (gone or grew):
                # The retired counts are safe on disk before the files they came from are removed.
                write_atomic(
                    folder / RETIRED, encode(retired, folded=folded[-MAX_FOLDED:], keys=admitted, time=time.time())
                )
                for path in gone:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        return merged


def _version(entry: os.DirEntry[str] | Path) -> object:
    """Which version of a file was seen: a changed file is reported again."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)
