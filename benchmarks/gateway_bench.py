"""Gateway speed benchmark: what the aiperimeter gateway adds on top of a model server, next to other proxies.

Run: `make bench` (or `.venv/bin/python benchmarks/gateway_bench.py`), 8 to 11 minutes; `--quick` is a one-minute
smoke run; `--help` lists the knobs. The markdown table is printed and written to benchmarks/results/gateway.md.
`--strict` exits 1 when a target is missed.

Method (that of the anchors in shared/reference/anchors.md, every contestant measured in the same run):
- Upstream: mock_upstream.py, a mock OpenAI-compatible server on raw asyncio Protocols and uvloop, in its own
  process: `POST /v1/chat/completions` gets a fixed 610-byte completion, or with `"stream": true` an SSE stream of
  20 chat.completion.chunk events 5 ms apart.
- Contestants, each on 127.0.0.1 with an ephemeral port: the mock itself (direct); nginx with a bearer check (if
  `nginx` is on PATH); bare_proxy.py, a bare aiohttp proxy; the aiperimeter gateway as a real process (a key
  without limits is created in a temporary data dir, so the limits stage is skipped: the baseline); the same
  gateway with a key whose limits are too high ever to refuse (the in-process limiter works on every request);
  the same in cluster mode, its `--database` a PostgreSQL schema made for this run in the database this script's
  `--postgres` names (dropped afterwards), its `--redis` this script's (never flushed: the limiter's keys expire by
  themselves), and the key with those limits created in that schema; the baseline gateway with --workers 2;
  LiteLLM only if importable (else listed as skipped). Each is first checked to relay the mock's exact body and
  stream with its key, and to answer 401 without it. Without PostgreSQL or Redis the cluster-mode gateway is
  listed as skipped.
- Pinning: the proxy under test on CPU 0; the load generator, this script and the mock on CPU 1. The gateway with
  two workers gets both CPUs, so its load generator and mock share a CPU with one worker. PostgreSQL and Redis are
  services of the machine, not started here: they are not pinned and run on either CPU, so their work competes
  with the gateway's and the load generator's. Their CPU (the Redis server and the gateway's PostgreSQL backends,
  found by application_name) is counted apart, per request, and not as other processes' use.
- Load: wrk (one thread; a Lua script POSTs the chat request with the key) or, without wrk, a Python client;
  `--warmup` seconds, then `--duration` seconds measured, at 1 and at 32 connections. CPU per request: user + system
  time of the contestant's process tree during the 32-connection run, divided by the requests served.
- Streaming: 16 keep-alive connections (starts spread over one stream's length) on raw sockets; time from sending
  the request to the arrival of the first event's chunk; median over all requests but each connection's first.
- Rounds: `--rounds` interleave the contestants; the table shows medians, and "added" figures and ratios are
  medians of the differences within each round (the gateway's modes are also compared with the baseline gateway
  in a table of their own). Other processes' CPU use (from /proc/stat, minus this run's own
  processes) is watched: a measurement they disturbed is taken again while `--patience` seconds last, and the report
  says how disturbed the figures are.
- Memory: the 1-worker gateway's VmRSS (/proc/PID/status) after a warm-up, and again after `--rss-requests` more
  requests at 32 connections (bounded by `--rss-time-limit`).
- Answers: each gateway's audit log is tallied by status at the end; anything but 200, the checks' 401s and 499s
  (requests in flight when a load stopped) is reported, as is any error or non-2xx answer the load generator saw.

Reading the figures on a virtual machine: at 1 connection and for stream first bytes, CPUs sit idle between hops,
and waking an idle vCPU costs tens to hundreds of microseconds; that cost lands in every proxy's "added" figures.
nginx's row shows that floor.

Every load is bounded in time; all traffic stays on 127.0.0.1. Only processes this script started are stopped (by
pid, newest first), also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import importlib.metadata
import importlib.util
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import sub, truediv
from pathlib import Path
from typing import Any

import orjson
import psycopg
import uvloop
from psycopg import sql
from redis import Redis, RedisError

from mock_upstream import BODY as MOCK_BODY
from mock_upstream import STREAM_EVENTS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PATH = "/v1/chat/completions"
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 32}
REQUEST_BODY = orjson.dumps(CHAT)
STREAM_BODY = orjson.dumps({**CHAT, "stream": True})
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)(?: \(\d+ workers: ([\d, ]+)\))?")
STREAM_CONNECTIONS = 16
STREAM_SPREAD = 0.1  # seconds: one stream's length; stream starts are spread over it
BUSY_CONNECTIONS = 32
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # the gateway drains for up to 10 s on SIGTERM
CLK_TCK = os.sysconf("SC_CLK_TCK")
FOREIGN_CPU_LIMIT = 0.05  # other processes using more CPU than this while measuring: the figures are disturbed
POSTGRES = os.environ.get("AIPERIMETER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("AIPERIMETER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The keys of the gateways that run their limits: limits no load here can reach, so the stage works and never refuses.
HIGH_LIMITS = ["--rpm", "100000000", "--tpm", "1000000000", "--concurrency", "10000"]
EXPECTED_STATUSES = {200, 401, 499}  # relayed; the checks' requests without a key; in flight when a load stopped

TARGETS = {
    "throughput": 0.50,  # gateway req/s at 32 conns, as a share of the bare proxy's
    "added_p50_ms": 0.35,
    "added_ttfb_ms": 1.0,
    "rss_growth_pct": 10.0,
    "scaling": 1.7,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    warmup: int
    duration: int
    rounds: int
    stream_requests: int
    rss_requests: int
    rss_time_limit: float
    patience: float
    loadgen: str
    output: Path
    strict: bool
    postgres: str
    redis: str


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short loads, few requests")
    parser.add_argument("--warmup", type=int, help="seconds of load before each measurement (default 2)")
    parser.add_argument("--duration", type=int, help="seconds of each measured load (default 5)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds; medians are reported (default 3)")
    parser.add_argument("--stream-requests", type=int, help="sequential requests per stream connection (default 30)")
    parser.add_argument("--rss-requests", type=int, help="requests driven for the memory check (default 300000)")
    parser.add_argument("--rss-time-limit", type=float, help="seconds the memory check may take (default 240)")
    parser.add_argument(
        "--patience", type=float, help="seconds to spend waiting out other processes' CPU use (default 300)"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if on PATH")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "gateway.md", help="markdown report path")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--postgres",
        default=POSTGRES,
        help="PostgreSQL for the cluster-mode gateway's keys (a schema is made for the run and dropped after it; "
        "default $AIPERIMETER_TEST_POSTGRES_URL, else %(default)s); '' leaves that gateway out",
    )
    parser.add_argument(
        "--redis",
        default=REDIS,
        help="Redis for the cluster-mode gateway's limits (never flushed; default $AIPERIMETER_TEST_REDIS_URL, "
        "else %(default)s); '' leaves that gateway out",
    )
    args = parser.parse_args(argv)
    quick = {"warmup": 1, "duration": 2, "rounds": 1, "stream_requests": 6, "rss_requests": 20_000, "patience": 0.0}
    full = {"warmup": 2, "duration": 5, "rounds": 3, "stream_requests": 30, "rss_requests": 300_000, "patience": 300.0}
    defaults = quick if args.quick else full
    pick: dict[str, Any] = {
        name: getattr(args, name) if getattr(args, name) is not None else value for name, value in defaults.items()
    }
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    elif loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("--loadgen wrk: wrk is not on PATH")
    rss_limit = args.rss_time_limit if args.rss_time_limit is not None else (30.0 if args.quick else 240.0)
    settings = Settings(
        **pick,
        rss_time_limit=rss_limit,
        loadgen=loadgen,
        output=args.output,
        strict=args.strict,
        postgres=args.postgres,
        redis=args.redis,
    )
    if min(settings.warmup, settings.duration, settings.rounds, settings.stream_requests) < 1:
        parser.error("--warmup, --duration, --rounds and --stream-requests must be at least 1")
    if settings.stream_requests < 2:
        parser.error("--stream-requests must be at least 2 (the first request of each stream is not counted)")
    return settings


# --------------------------------------------------------------------------------------------------- processes


def cpu_plan() -> tuple[set[int], set[int], set[int]]:
    """(CPUs for the proxy under test, for the load generator and mock, for the 2-worker gateway)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        log(f"WARNING: only {len(allowed)} CPU available; nothing is pinned and the figures mean little")
        return set(allowed), set(allowed), set(allowed)
    return {allowed[0]}, {allowed[1]}, {allowed[0], allowed[1]}


def pin(cpus: set[int]) -> Callable[[], None]:
    return functools.partial(os.sched_setaffinity, 0, cpus)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state, 1 the parent pid)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process, its live descendants and the children they have reaped."""
    total = 0
    for pid in process_tree(root):
        fields = proc_stat(pid)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])
    return total / CLK_TCK


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (steal included: a neighbour's time is not ours either)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


Services = Callable[[], list[int]]  # the pids of the service processes (Redis, PostgreSQL backends) a contestant uses


def services_cpu(services: Services | None) -> dict[int, float]:
    """CPU seconds of each service process, by pid."""
    return {pid: cpu_seconds(pid) for pid in services()} if services is not None else {}


def services_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the service processes used between two readings (a process new in `after` counts whole)."""
    return sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())


class CpuWatch:
    """How much CPU processes other than this run's have used since the watch was made: they disturb every figure.
    The services a contestant uses (Redis, its PostgreSQL backends) count as this run's while it is measured."""

    def __init__(self, services: Services | None = None) -> None:
        self.services = services
        self.began, self.busy, self.own = time.monotonic(), busy_cpu_seconds(), cpu_seconds(os.getpid())
        self.services_before = services_cpu(services)

    def foreign_share(self) -> float:
        """Other processes' CPU use, in CPUs (0.25 = a quarter of one CPU on average)."""
        busy, own = busy_cpu_seconds() - self.busy, cpu_seconds(os.getpid()) - self.own
        own += services_cpu_delta(self.services_before, services_cpu(self.services))
        return max(0.0, busy - own) / max(time.monotonic() - self.began, 1e-9)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """The child processes this run started. stop_all() ends exactly those, by pid, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.extra_pids: list[int] = []  # workers a gateway supervisor started for us

    def start(self, name: str, argv: list[str], cpus: set[int], env: dict[str, str] | None = None) -> int:
        logfile = self.workdir / f"{name}.log"
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
                preexec_fn=pin(cpus),
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the children in order
            )
        self.started.append((name, proc))
        return proc.pid

    def wait_listening(self, name: str, timeout: float = START_TIMEOUT) -> int:
        """The port in the `listening on http://127.0.0.1:PORT` line of a child's log (worker pids are noted)."""
        proc = dict(self.started)[name]
        logfile = self.workdir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(logfile.read_text(errors="replace"))
            if found:
                self.extra_pids += [int(pid) for pid in found.group(2).split(",")] if found.group(2) else []
                return int(found.group(1))
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"{name} did not start; its log:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        text = (self.workdir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it")
                    proc.kill()
                    proc.wait()
        for pid in self.extra_pids:
            with contextlib.suppress(OSError):
                if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.extra_pids.clear()  # stopped: a second call must not signal pids since reused


def wait_port(port: int, proc_alive: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc_alive():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------------- contestants


@dataclass
class Sample:
    """One round's figures for one contestant; the 1-connection and stream figures only for full contestants."""

    rps_32: float
    cpu_us: float
    errors: int
    foreign_cpus: float = 0.0  # other processes' CPU use while measuring: above FOREIGN_CPU_LIMIT it is disturbed
    rps_1: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttfb_ms: float | None = None
    services_cpu_us: float | None = None  # CPU per request of the services it uses (Redis, PostgreSQL), if any


@dataclass
class Contestant:
    key: str
    label: str
    port: int
    pid: int  # root of the process tree whose CPU is counted
    full: bool = True  # False: only the 32-connection throughput is measured
    samples: list[Sample] = field(default_factory=list)  # one per round
    token: str = ""  # the key its load sends (the run's common key when empty)
    services: Services | None = None  # the service processes it uses, whose CPU is counted apart
    data_dir: Path | None = None  # a gateway's data dir, whose audit log is tallied by status

    def values(self, figure: str) -> list[float]:
        return [value for sample in self.samples if (value := getattr(sample, figure)) is not None]

    def median(self, figure: str) -> float | None:
        values = self.values(figure)
        return statistics.median(values) if values else None

    @property
    def errors(self) -> int:
        return sum(sample.errors for sample in self.samples)


@dataclass
class Skipped:
    label: str
    reason: str


BASELINE_LABEL = "aiperimeter gateway, 1 worker (key without limits: limits stage skipped)"
LIMITS_LABEL = "aiperimeter gateway, 1 worker, limits in process (SQLite keys)"
CLUSTER_LABEL = "aiperimeter gateway, 1 worker, PostgreSQL keys + Redis limits"


def start_mock(procs: Processes, cpus: set[int]) -> Contestant:
    pid = procs.start("mock", [sys.executable, str(HERE / "mock_upstream.py")], cpus)
    port = procs.wait_listening("mock")
    return Contestant("direct", "direct to the mock (no gateway)", port, pid)


def start_bare(procs: Processes, cpus: set[int], upstream: int, token: str) -> Contestant:
    argv = [sys.executable, str(HERE / "bare_proxy.py"), f"http://127.0.0.1:{upstream}"]
    pid = procs.start("bare", argv, cpus, env={"BARE_PROXY_TOKEN": token})
    port = procs.wait_listening("bare")
    return Contestant("bare", "bare aiohttp reverse proxy (bearer check only)", port, pid)


def aiperimeter_cli() -> str:
    beside = Path(sys.executable).parent / "aiperimeter"
    found = str(beside) if beside.exists() else shutil.which("aiperimeter")
    if found is None:
        raise BenchError("the aiperimeter command is not installed; run `make bench` (it installs the project)")
    return found


def create_key(data_dir: Path, options: list[str] | None = None) -> str:
    argv = [aiperimeter_cli(), "keys", "create", "--name", "bench", "--json", "--data-dir", str(data_dir)]
    done = subprocess.run([*argv, *(options or [])], capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        raise BenchError(f"aiperimeter keys create failed:\n{done.stderr.decode(errors='replace')}")
    return str(orjson.loads(done.stdout.strip().splitlines()[-1])["secret"])


def start_gateway(
    procs: Processes,
    cpus: set[int],
    upstream: int,
    data_dir: Path,
    key: str,
    label: str,
    *,
    workers: int = 1,
    options: list[str] | None = None,
    token: str = "",
    services: Services | None = None,
) -> Contestant:
    argv = [aiperimeter_cli(), "gateway", "--upstream", f"http://127.0.0.1:{upstream}", "--kind", "openai"]
    argv += ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--workers", str(workers), *(options or [])]
    pid = procs.start(key, argv, cpus)
    port = procs.wait_listening(key)
    full = workers == 1  # the 2-worker gateway: only the 32-connection throughput
    return Contestant(key, label, port, pid, full, token=token, services=services, data_dir=data_dir)


def start_limits_gateway(procs: Processes, cpus: set[int], upstream: int, workdir: Path) -> Contestant:
    """The 1-worker gateway whose key has limits (never reached): the in-process limiter works on every request."""
    data_dir = workdir / "data-limits"
    data_dir.mkdir()
    token = create_key(data_dir, HIGH_LIMITS)
    return start_gateway(procs, cpus, upstream, data_dir, "limits", LIMITS_LABEL, token=token)


def redis_server_pid(url: str) -> int | None:
    """The Redis server's pid, when it runs on this machine (its CPU is then counted); None when it cannot be seen."""
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/comm").read_text().startswith("redis"):
            return pid
    return None


class Cluster:
    """What the cluster-mode gateway uses: a PostgreSQL schema made for this run (close() drops it) and Redis, which
    is never flushed (the limiter's buckets expire by themselves, and a request's ticket is deleted when it ends).
    Both are the machine's services, shared with others: they are not pinned."""

    def __init__(self, postgres: str, redis_url: str) -> None:
        self.schema = f"aip_bench_{secrets.token_hex(6)}"
        self.redis_url = redis_url
        # The gateway's PostgreSQL connections carry the schema's name as application_name: how its backends are
        # told from other clients' (their CPU is the gateway's doing).
        query = f"options=-csearch_path%3D{self.schema}&application_name={self.schema}"
        self.url = f"{postgres}{'&' if '?' in postgres else '?'}{query}"
        self.admin = psycopg.connect(postgres, autocommit=True, connect_timeout=5, application_name="aip_bench_admin")
        try:
            self.admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            self.redis_pid = redis_server_pid(redis_url)
            client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
            try:
                redis_version = client.info("server")["redis_version"]
            finally:
                client.close()
        except BaseException:
            self.close()
            raise
        pg_version = self.admin.execute("SHOW server_version").fetchone()
        self.versions = f"PostgreSQL {pg_version[0].split()[0] if pg_version else '?'}, Redis {redis_version}"

    def services(self) -> list[int]:
        """The Redis server and the gateway's PostgreSQL backends, those running on this machine."""
        found = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.schema,)
        ).fetchall()
        pids = [self.redis_pid] if self.redis_pid is not None else []
        for (pid,) in found:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                    pids.append(int(pid))
        return pids

    def close(self) -> None:
        """Drops the schema (after the gateway using it has stopped)."""
        try:
            self.admin.execute("SET lock_timeout = '10s'")
            self.admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
        except psycopg.Error as exc:
            log(f"WARNING: could not drop the PostgreSQL schema {self.schema}: {exc}")
        finally:
            self.admin.close()


def open_cluster(s: Settings) -> Cluster | Skipped:
    if not s.postgres or not s.redis:
        return Skipped(CLUSTER_LABEL, "not measured: --postgres or --redis was empty")
    try:
        return Cluster(s.postgres, s.redis)
    except (psycopg.Error, RedisError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200]
        return Skipped(CLUSTER_LABEL, f"not measured: PostgreSQL or Redis unavailable ({type(exc).__name__}: {reason})")


def start_cluster_gateway(
    procs: Processes, cpus: set[int], upstream: int, workdir: Path, cluster: Cluster
) -> Contestant:
    """The 1-worker gateway in cluster mode: keys in PostgreSQL, limits in Redis; its key has the same limits."""
    data_dir = workdir / "data-cluster"  # its audit log only
    data_dir.mkdir()
    token = create_key(data_dir, [*HIGH_LIMITS, "--database", cluster.url])
    options = ["--database", cluster.url, "--redis", cluster.redis_url]
    return start_gateway(
        procs,
        cpus,
        upstream,
        data_dir,
        "cluster",
        CLUSTER_LABEL,
        options=options,
        token=token,
        services=cluster.services,
    )


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    map_hash_bucket_size 256;
    map $http_authorization $bench_authorized {{
        default 0;
        "Bearer {token}" 1;
    }}
    upstream mock {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($bench_authorized = 0) {{ return 401; }}
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, cpus: set[int], upstream: int, token: str) -> Contestant | Skipped:
    label = "nginx reverse proxy with a bearer check"
    nginx = shutil.which("nginx")
    if nginx is None:
        return Skipped(label, "nginx is not on PATH")
    tmp = procs.workdir / "nginx"
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, token=token, upstream=upstream, port=port))
    argv = [nginx, "-p", f"{tmp}/", "-c", str(conf), "-e", str(tmp / "nginx-error.log"), "-g", "daemon off;"]
    pid = procs.start("nginx", argv, cpus)
    proc = dict(procs.started)["nginx"]
    try:
        wait_port(port, lambda: proc.poll() is None)
    except BenchError:
        detail = " ".join((procs.tail("nginx", 3) + " " + (tmp / "nginx-error.log").read_text()).split())
        return Skipped(label, f"nginx did not start: {detail[:300]}")
    version = subprocess.run([nginx, "-v"], capture_output=True, check=False, text=True).stderr.strip()
    return Contestant("nginx", f"{label} ({version.rpartition('/')[2]})", port, pid)


def litellm() -> Skipped:
    if importlib.util.find_spec("litellm") is None:
        return Skipped("LiteLLM proxy", "not measured: litellm is not importable here")
    return Skipped("LiteLLM proxy", "not measured: installed, but this benchmark does not start it yet")


# --------------------------------------------------------------------------------------------------- HTTP clients


def raw_request(port: int, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, float]:
    """(status, body, perf_counter when the first body bytes arrived) of a Content-Length or chunked response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        pieces: list[bytes] = []
        first = 0.0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            first = first or time.perf_counter()
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, b"".join(pieces), first
            pieces.append((await reader.readexactly(size + 2))[:-2])
    if b"content-length" not in headers:
        raise BenchError("a response with neither Content-Length nor chunked encoding")
    first = time.perf_counter()
    return status, await reader.readexactly(int(headers[b"content-length"])), first


def check_contestant(c: Contestant) -> None:
    """The contestant relays the mock's exact answer with its key, and refuses a request without it."""

    def post(body: bytes, auth: bool) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = f"Bearer {c.token}"
            conn.request("POST", PATH, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    status, body = post(REQUEST_BODY, True)
    if status != 200 or body != MOCK_BODY:
        raise BenchError(f"{c.label}: a request with the key got {status} {body[:200]!r}, not the mock's body")
    status, body = post(STREAM_BODY, True)
    if status != 200 or body.count(b"chat.completion.chunk") != STREAM_EVENTS or b"data: [DONE]" not in body:
        raise BenchError(f"{c.label}: a stream request got {status} {body[:200]!r}, not the mock's stream")
    if c.key != "direct" and (status := post(REQUEST_BODY, False)[0]) != 401:
        raise BenchError(f"{c.label}: a request without the key got {status}, not 401")


# --------------------------------------------------------------------------------------------------- load


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d bytes=%d errors=%d p50_us=%d p99_us=%d\\n",
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class LoadGenerator:
    """wrk when available, else a Python keep-alive client; both POST the same chat request with the given key."""

    def __init__(self, kind: str, workdir: Path, cpus: set[int]) -> None:
        self.kind = kind
        self.workdir = workdir
        self.cpus = cpus
        self.scripts: dict[str, Path] = {}  # a wrk script per key

    def run(self, port: int, token: str, connections: int, seconds: int) -> Load:
        if self.kind == "wrk":
            return self._wrk(port, token, connections, seconds)
        return uvloop.run(python_load(port, raw_request(port, REQUEST_BODY, token), connections, seconds))

    def _script(self, token: str) -> Path:
        if token not in self.scripts:
            script = self.workdir / f"bench-{len(self.scripts)}.lua"
            script.write_text(WRK_SCRIPT.format(body=REQUEST_BODY.decode(), token=token))
            self.scripts[token] = script
        return self.scripts[token]

    def _wrk(self, port: int, token: str, connections: int, seconds: int) -> Load:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
        argv += ["-s", str(self._script(token)), f"http://127.0.0.1:{port}{PATH}"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pin(self.cpus), check=False
        )
        found = re.search(r"BENCH (.*)", done.stdout)
        if done.returncode != 0 or found is None:
            raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        values = {k: int(v) for k, v in (item.split("=") for item in found.group(1).split())}
        errors = values["errors"]
        if values["requests"] and values["bytes"] / values["requests"] < len(MOCK_BODY):
            errors = max(errors, 1)  # answers shorter than the completion: not what we meant to measure
        return Load(
            values["requests"], values["duration_us"] / 1e6, errors, values["p50_us"] / 1e3, values["p99_us"] / 1e3
        )


async def python_load(port: int, request: bytes, connections: int, seconds: float) -> Load:
    """Closed-loop keep-alive load on `connections` sockets for `seconds` (bounded in time and count)."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    limit = 2_000_000
    started = loop.time()
    deadline = started + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline and len(latencies) < limit:
                sent = time.perf_counter()
                writer.write(request)
                status, body, _ = await read_response(reader)
                latencies.append(time.perf_counter() - sent)
                errors += status != 200 or len(body) != len(MOCK_BODY)
        finally:
            writer.close()

    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = loop.time() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else math.nan
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else math.nan
    return Load(len(latencies), elapsed, errors, p50 * 1e3, p99 * 1e3)


async def stream_ttfb(port: int, token: str, per_stream: int) -> list[float]:
    """Seconds from sending a stream request to its first event, 16 connections, each stream's first dropped."""
    request = raw_request(port, STREAM_BODY, token)
    samples: list[float] = []

    async def connection(index: int) -> None:
        await asyncio.sleep(index * STREAM_SPREAD / STREAM_CONNECTIONS)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in range(per_stream):
                sent = time.perf_counter()
                writer.write(request)
                status, body, first = await read_response(reader)
                if status != 200 or body.count(b"chat.completion.chunk") != STREAM_EVENTS:
                    raise BenchError(f"a stream through port {port} got {status} {body[:200]!r}")
                if n:
                    samples.append(first - sent)
        finally:
            writer.close()

    async with asyncio.timeout(30 + per_stream * STREAM_SPREAD * 5):
        await asyncio.gather(*(connection(i) for i in range(STREAM_CONNECTIONS)))
    return samples


# --------------------------------------------------------------------------------------------------- measuring


class Quiet:
    """Waits for other processes on the machine to go quiet, within a total budget of seconds for the whole run."""

    def __init__(self, budget: float) -> None:
        self.left = budget

    def wait(self) -> None:
        while self.left > 0:
            watch = CpuWatch()
            time.sleep(1)
            self.left -= 1
            if watch.foreign_share() <= FOREIGN_CPU_LIMIT:
                return


def measure(c: Contestant, load: LoadGenerator, s: Settings) -> Sample:
    watch = CpuWatch(c.services)
    one = None
    if c.full:
        load.run(c.port, c.token, 1, s.warmup)
        one = load.run(c.port, c.token, 1, s.duration)
    load.run(c.port, c.token, BUSY_CONNECTIONS, s.warmup)
    cpu_before, services_before = cpu_seconds(c.pid), services_cpu(c.services)
    busy = load.run(c.port, c.token, BUSY_CONNECTIONS, s.duration)
    requests = max(busy.requests, 1)
    sample = Sample(busy.rps, (cpu_seconds(c.pid) - cpu_before) / requests * 1e6, busy.errors)
    if c.services is not None:
        sample.services_cpu_us = services_cpu_delta(services_before, services_cpu(c.services)) / requests * 1e6
    if one is not None:
        sample.rps_1, sample.p50_ms, sample.p99_ms = one.rps, one.p50_ms, one.p99_ms
        sample.errors += one.errors
        sample.ttfb_ms = statistics.median(uvloop.run(stream_ttfb(c.port, c.token, s.stream_requests))) * 1e3
    sample.foreign_cpus = watch.foreign_share()
    return sample


def measure_round(contestants: list[Contestant], load: LoadGenerator, s: Settings, quiet: Quiet) -> None:
    """Each contestant in turn; a measurement that other processes disturbed is taken again while the budget lasts."""
    for c in contestants:
        best: Sample | None = None
        while True:
            quiet.wait()
            began = time.monotonic()
            sample = measure(c, load, s)
            if best is None or sample.foreign_cpus < best.foreign_cpus:
                best = sample
            log(f"  {c.label}: {sample.rps_32:,.0f} req/s at 32 conns; others used {sample.foreign_cpus:.2f} CPUs")
            if best.foreign_cpus <= FOREIGN_CPU_LIMIT or quiet.left <= 0:
                break
            quiet.left -= time.monotonic() - began
            log("  disturbed by other processes: measuring again")
        c.samples.append(best)


@dataclass
class Memory:
    start_kib: int
    end_kib: int
    peak_kib: int
    requests: int
    seconds: float
    errors: int
    foreign_cpus: float

    @property
    def growth_pct(self) -> float:
        return (self.end_kib - self.start_kib) / self.start_kib * 100


def measure_memory(gateway: Contestant, load: LoadGenerator, s: Settings) -> Memory:
    """Gateway RSS after warm-up, then after `rss_requests` more requests at 32 connections (time-bounded)."""
    load.run(gateway.port, gateway.token, BUSY_CONNECTIONS, s.warmup)
    watch = CpuWatch()
    start = peak = rss_kib(gateway.pid)
    requests = errors = 0
    began = time.monotonic()
    rate = 0.0
    while requests < s.rss_requests and time.monotonic() - began < s.rss_time_limit:
        remaining = s.rss_requests - requests
        budget = s.rss_time_limit - (time.monotonic() - began)
        wanted = math.ceil(remaining / rate) if rate else 2
        seconds = max(1, min(10, wanted, math.floor(budget)))
        slice_ = load.run(gateway.port, gateway.token, BUSY_CONNECTIONS, seconds)
        requests += slice_.requests
        errors += slice_.errors
        rate = slice_.rps
        peak = max(peak, rss_kib(gateway.pid))
    end = rss_kib(gateway.pid)
    return Memory(start, end, peak, requests, time.monotonic() - began, errors, watch.foreign_share())


# --------------------------------------------------------------------------------------------------- report


def fmt(value: float | None, pattern: str, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    text = pattern.format(value)
    return f"+{text}" if sign and value >= 0 else text


def paired(a: Contestant, b: Contestant, figure: str, op: Callable[[float, float], float]) -> float | None:
    """Median over rounds of op(a's figure, b's figure in the same round), so drifts between rounds cancel."""
    pairs = [(getattr(x, figure), getattr(y, figure)) for x, y in zip(a.samples, b.samples, strict=True)]
    values = [op(x, y) for x, y in pairs if x is not None and y is not None]
    return statistics.median(values) if values else None


def cpu_cell(c: Contestant) -> str:
    cell = fmt(c.median("cpu_us"), "{:,.0f} µs")
    services = c.median("services_cpu_us")
    return cell if services is None else f"{cell} + {services:,.0f} µs in Redis and PostgreSQL"


def contestant_row(c: Contestant, direct: Contestant) -> str:
    is_direct = c is direct
    p50, p99, ttfb = c.median("p50_ms"), c.median("p99_ms"), c.median("ttfb_ms")
    added = added_ttfb = "-"
    if not is_direct and c.full:
        added_p50, added_p99 = paired(c, direct, "p50_ms", sub), paired(c, direct, "p99_ms", sub)
        added = f"{fmt(added_p50, '{:.3f}', True)} / {fmt(added_p99, '{:.3f}', True)} ms"
        added_ttfb = f"{fmt(paired(c, direct, 'ttfb_ms', sub), '{:.2f}', True)} ms"
    cells = [
        c.label,
        fmt(c.median("rps_1"), "{:,.0f}"),
        f"{p50:.3f} / {p99:.3f} ms" if p50 is not None and p99 is not None else "-",
        added,
        fmt(c.median("rps_32"), "{:,.0f}"),
        "-" if is_direct else cpu_cell(c),
        fmt(ttfb, "{:.2f} ms"),
        added_ttfb,
    ]
    return "| " + " | ".join(cells) + " |"


def total_cpu(sample: Sample) -> float:
    return sample.cpu_us + (sample.services_cpu_us or 0.0)


def modes_table(by_key: dict[str, Contestant], r: Results) -> list[str]:
    """What limits and cluster mode add to the baseline gateway, each figure paired within rounds."""
    base = by_key["gateway"]
    modes = [c for key in ("limits", "cluster") if (c := by_key.get(key)) is not None]
    if not modes:
        return []
    lines = [
        "",
        "What the gateway's modes add to the baseline gateway (same run; medians of the differences within each "
        "round):",
        "",
        "| mode | req/s at 32 conns, share of baseline | added p50 at 1 conn | added CPU per request: gateway "
        "| CPU per request: Redis and PostgreSQL | added CPU per request, all | added stream first byte |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in modes:
        totals = [total_cpu(x) - y.cpu_us for x, y in zip(c.samples, base.samples, strict=True)]
        cells = [
            c.label,
            fmt(paired(c, base, "rps_32", truediv), "{:.1%}"),
            fmt(paired(c, base, "p50_ms", sub), "{:.3f} ms", True),
            fmt(paired(c, base, "cpu_us", sub), "{:,.0f} µs", True),
            fmt(c.median("services_cpu_us"), "{:,.0f} µs"),
            fmt(statistics.median(totals) if totals else None, "{:,.0f} µs", True),
            fmt(paired(c, base, "ttfb_ms", sub), "{:.2f} ms", True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if "cluster" in by_key:
        lines += [
            "",
            f"Redis and PostgreSQL ({r.services or 'versions unknown'}) are the machine's own services, shared with "
            "other work: this benchmark gives them no CPU of their own and does not pin them, so they run on either "
            "of the two CPUs, wherever the scheduler puts them, and their CPU competes with the gateway's and the "
            "load generator's. Their CPU per request is the Redis server's and that of the gateway's PostgreSQL "
            "backends during the 32-connection run; it is not in the gateway's own CPU figure.",
        ]
    return lines


def target_rows(by_key: dict[str, Contestant], memory: Memory | None) -> list[tuple[str, str, bool]]:
    """(target, measured, passed) for each target that could be measured in this run."""
    t = TARGETS
    direct, gateway, bare, two = by_key["direct"], by_key["gateway"], by_key.get("bare"), by_key.get("gateway2")
    g32 = gateway.median("rps_32") or 0.0
    rows: list[tuple[str, str, bool]] = []
    if bare is not None and (share := paired(gateway, bare, "rps_32", truediv)) is not None:
        name = f"gateway req/s at 32 conns >= {t['throughput']:.0%} of the bare proxy's"
        rows.append((name, f"{share:.1%} ({g32:,.0f} vs {bare.median('rps_32') or 0:,.0f})", share >= t["throughput"]))
    added = paired(gateway, direct, "p50_ms", sub) or 0.0
    name = f"gateway added p50 at 1 conn <= {t['added_p50_ms']} ms"
    rows.append((name, f"{added:+.3f} ms", added <= t["added_p50_ms"]))
    ttfb = paired(gateway, direct, "ttfb_ms", sub) or 0.0
    name = f"gateway added stream time to first byte <= {t['added_ttfb_ms']} ms"
    rows.append((name, f"{ttfb:+.2f} ms", ttfb <= t["added_ttfb_ms"]))
    if memory is not None:
        name = f"gateway RSS growth <= {t['rss_growth_pct']:.0f}% over {memory.requests:,} requests"
        mib = [f"{kib / 1024:.1f}" for kib in (memory.start_kib, memory.end_kib, memory.peak_kib)]
        measured = f"{mib[0]} -> {mib[1]} MiB ({memory.growth_pct:+.1f}%), peak {mib[2]} MiB"
        rows.append((name, measured, memory.growth_pct <= t["rss_growth_pct"]))
    if two is not None and (scaling := paired(two, gateway, "rps_32", truediv)) is not None:
        name = f"2 workers >= {t['scaling']}x 1 worker at 32 conns"
        measured = f"{scaling:.2f}x ({two.median('rps_32') or 0:,.0f} vs {g32:,.0f})"
        rows.append((name, measured, scaling >= t["scaling"]))
    return rows


def source_state() -> str:
    """The gateway code under test: the commit, and whether src/ differs from it (read-only git commands)."""

    def git(*args: str) -> str:
        argv = ["git", "--no-optional-locks", "-C", str(REPO), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return f"commit {commit}" + (
        " with uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    )


def newest_source_change() -> float:
    return max((path.stat().st_mtime for path in (REPO / "src").rglob("*.py")), default=0.0)


def environment(s: Settings, r: Results) -> list[str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    loadgen = "wrk, 1 thread" if s.loadgen == "wrk" else "a Python asyncio client (slower and noisier than wrk)"
    return [
        f"- Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} x {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {version('aiohttp')}, uvloop {version('uvloop')}; "
        f"gateway at {r.source} when the run started"
        + (
            " (src/ changed during the run; the running gateways kept the code they had loaded)."
            if r.source_changed
            else "."
        ),
        f"- Load: {loadgen}; {s.warmup} s warm-up then {s.duration} s measured per figure; {s.rounds} round(s), "
        "medians reported (added figures and ratios: medians of the differences within each round). "
        f"Streams: {STREAM_CONNECTIONS} connections x {s.stream_requests - 1} counted requests each.",
    ]


def statuses_lines(statuses: list[tuple[str, dict[int, int] | None]]) -> list[str]:
    """The gateways' answers by status, from their audit logs: a warning for any status not expected."""
    out = []
    for labels, counts in statuses:
        if counts is None:
            out.append(f"- WARNING: no audit log for {labels}: its answers could not be tallied.")
            continue
        tally = ", ".join(f"{status}: {count:,}" for status, count in sorted(counts.items()))
        odd = sorted(set(counts) - EXPECTED_STATUSES)
        if odd:
            out.append(f"- WARNING: {labels} answered {', '.join(map(str, odd))} (audit log: {tally}).")
        else:
            out.append(f"- Answers of {labels} (audit log): {tally}.")
    if statuses:
        out.append("- 401: the checks' requests without a key; 499: requests in flight when a load stopped.")
    return out


def warnings(contestants: list[Contestant], memory: Memory | None) -> list[str]:
    out = [f"- WARNING: {c.label} saw {c.errors:,} errors or non-2xx answers under load." for c in contestants]
    out = [line for line, c in zip(out, contestants, strict=True) if c.errors]
    if memory is not None and memory.errors:
        out.append(f"- WARNING: the memory run saw {memory.errors:,} errors or non-2xx answers.")
    if not out:
        out.append("- The load generator saw no errors and no non-2xx answers in any run.")
    worst = max((share for c in contestants for share in c.values("foreign_cpus")), default=0.0)
    if worst > FOREIGN_CPU_LIMIT:
        out.append(
            f"- WARNING: other processes on this machine used up to {worst:.2f} CPUs during a measurement (steal "
            "included): the figures are disturbed. Rerun on a quiet machine, or with more --rounds or --patience."
        )
    else:
        out.append(f"- Other processes used at most {worst:.2f} CPUs during any measurement kept (steal included).")
    return out


@dataclass
class Results:
    contestants: list[Contestant]
    skipped: list[Skipped]
    memory: Memory | None
    waited: float  # seconds spent waiting out or re-measuring other processes' CPU use
    elapsed: float
    source: str  # the gateway code measured, as source_state() saw it at the start
    source_changed: bool
    statuses: list[tuple[str, dict[int, int] | None]]  # (gateways, their audit log's count by status)
    services: str | None  # PostgreSQL and Redis versions, when the cluster-mode gateway ran


def render(r: Results, s: Settings) -> tuple[str, bool]:
    contestants, memory = r.contestants, r.memory
    by_key = {c.key: c for c in contestants}
    direct = by_key["direct"]
    lines = [
        "# Gateway speed",
        "",
        "Proxy under test pinned to one CPU, load generator and mock upstream (610-byte completion; SSE stream of "
        "20 events 5 ms apart) on the other. Latency is at 1 connection; CPU per request is the proxy's, at 32. "
        "The cluster-mode gateway's Redis and PostgreSQL are not pinned (see below).",
        "",
        "| contestant | req/s, 1 conn | p50 / p99 at 1 conn | added p50 / p99 | req/s, 32 conns "
        "| CPU per request | stream: first byte, 16 conns | stream: added first byte |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [contestant_row(c, direct) for c in contestants]
    lines += [f"| {sk.label} | {sk.reason} | | | | | | |" for sk in r.skipped]
    lines += modes_table(by_key, r)
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    rows = target_rows(by_key, memory)
    lines += [f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |" for name, measured, ok in rows]
    lines += ["", *environment(s, r)]
    if r.waited:
        lines.append(f"- Spent {r.waited:.0f} s waiting out or re-measuring other processes' CPU use.")
    if memory is not None:
        lines.append(
            f"- Memory: {memory.requests:,} requests in {memory.seconds:.0f} s at 32 conns after warm-up "
            f"(limit {s.rss_requests:,} requests or {s.rss_time_limit:.0f} s); other processes used "
            f"{memory.foreign_cpus:.2f} CPUs meanwhile."
        )
    lines += warnings(contestants, memory)
    lines += statuses_lines(r.statuses)
    lines.append(f"- Whole run: {r.elapsed / 60:.1f} min.")
    return "\n".join(lines) + "\n", all(ok for _, _, ok in rows)


# --------------------------------------------------------------------------------------------------- main


def start_all(
    procs: Processes, workdir: Path, cpus: tuple[set[int], set[int], set[int]], cluster: Cluster | Skipped
) -> tuple[list[Contestant], list[Skipped]]:
    proxy_cpus, load_cpus, both = cpus
    os.sched_setaffinity(0, load_cpus)  # this script's stream client and Python load generator
    data_dir = workdir / "data"
    data_dir.mkdir()
    token = create_key(data_dir)
    direct = start_mock(procs, load_cpus)
    upstream = direct.port
    nginx = start_nginx(procs, proxy_cpus, upstream, token)
    candidates: list[Contestant | Skipped] = [
        direct,
        nginx,
        start_bare(procs, proxy_cpus, upstream, token),
        start_gateway(procs, proxy_cpus, upstream, data_dir, "gateway", BASELINE_LABEL),
        start_limits_gateway(procs, proxy_cpus, upstream, workdir),
        start_cluster_gateway(procs, proxy_cpus, upstream, workdir, cluster)
        if isinstance(cluster, Cluster)
        else cluster,
        start_gateway(
            procs,
            both,
            upstream,
            data_dir,
            "gateway2",
            "aiperimeter gateway, 2 workers (both CPUs; key without limits)",
            workers=2,
        ),
        litellm(),
    ]
    contestants = [c for c in candidates if isinstance(c, Contestant)]
    skipped = [c for c in candidates if isinstance(c, Skipped)]
    for c in contestants:
        c.token = c.token or token
        check_contestant(c)
    return contestants, skipped


def tally_statuses(contestants: list[Contestant]) -> list[tuple[str, dict[int, int] | None]]:
    """Each data dir's audit log (the gateways using it, stopped), counted by the status of each request."""
    by_dir: dict[Path, list[str]] = {}
    for c in contestants:
        if c.data_dir is not None:
            by_dir.setdefault(c.data_dir, []).append(c.label)
    out: list[tuple[str, dict[int, int] | None]] = []
    for data_dir, labels in by_dir.items():
        counts: dict[int, int] | None = None
        with contextlib.suppress(FileNotFoundError), (data_dir / "audit.jsonl").open("rb") as lines:
            counts = {}
            for line in lines:
                record = orjson.loads(line)
                if "request_id" in record:
                    counts[record["status"]] = counts.get(record["status"], 0) + 1
        out.append((" and ".join(f'"{label}"' for label in labels), counts))
    return out


def run(s: Settings) -> bool:
    began = time.monotonic()
    source, source_time = source_state(), newest_source_change()
    workdir = Path(tempfile.mkdtemp(prefix="aiperimeter-bench-"))
    procs = Processes(workdir)
    cluster: Cluster | Skipped | None = None
    try:
        cpus = cpu_plan()
        cluster = open_cluster(s)
        if isinstance(cluster, Skipped):
            log(f"{cluster.label}: {cluster.reason}")
        contestants, skipped = start_all(procs, workdir, cpus, cluster)
        log(f"started {', '.join(c.key for c in contestants)}; load generator: {s.loadgen}")
        load = LoadGenerator(s.loadgen, workdir, cpus[1])
        quiet = Quiet(s.patience)
        for number in range(1, s.rounds + 1):
            log(f"round {number} of {s.rounds}")
            measure_round(contestants, load, s, quiet)
        gateway = next(c for c in contestants if c.key == "gateway")
        log(f"memory: driving {s.rss_requests:,} requests through the 1-worker gateway")
        memory = measure_memory(gateway, load, s)
        procs.stop_all()
        statuses = tally_statuses(contestants)
    finally:
        procs.stop_all()
        if isinstance(cluster, Cluster):
            cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
    waited, elapsed = s.patience - max(quiet.left, 0), time.monotonic() - began
    services = cluster.versions if isinstance(cluster, Cluster) else None
    changed = newest_source_change() > source_time
    results = Results(contestants, skipped, memory, waited, elapsed, source, changed, statuses, services)
    report, passed = render(results, s)
    print(report)
    s.output.parent.mkdir(parents=True, exist_ok=True)
    s.output.write_text(report)
    log(f"wrote {s.output}")
    return passed


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        passed = run(settings)
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; the processes this run started are stopped")
        return 130
    return 1 if settings.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
