"""The soak's processes: the mock upstream and the real gateway in front of it, their memory and CPU."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.leaks import LEAKS

PATH = "/v1/chat/completions"
START_TIMEOUT = 20.0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_kib(pid: int) -> int:
    """VmRSS summed over a process and its descendants (the gateway's supervisor and workers)."""
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total // 1024


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy, all cores (to tell how much other processes took during a run)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scan_file(path: Path, needle: bytes, block: int = 1 << 20) -> tuple[int, bool]:
    """(complete lines, whether `needle` occurs) of a file read in blocks: a soak's audit log runs to gigabytes."""
    lines, found, tail = 0, False, b""
    if not path.exists():
        return 0, False
    with path.open("rb") as f:
        while data := f.read(block):
            lines += data.count(b"\n")
            found = found or (bool(needle) and needle in tail + data)
            tail = data[-len(needle) :] if needle else b""
    return lines, found


@dataclass
class Stack:
    workdir: Path
    upstream: subprocess.Popen[bytes]
    upstream_url: str
    gateway: GatewayProcess
    secret: str

    @property
    def url(self) -> str:
        return self.gateway.url + PATH

    def rss_kib(self) -> int:
        return tree_rss_kib(self.gateway.process.pid)

    def gateway_cpu(self) -> float:
        return tree_cpu_seconds(self.gateway.process.pid)

    def upstream_cpu(self) -> float:
        return tree_cpu_seconds(self.upstream.pid)

    @property
    def audit_path(self) -> Path:
        return self.gateway.data_dir / "audit.jsonl"

    def audit_records(self) -> int:
        return scan_file(self.audit_path, b"")[0]

    def upstream_fault(self, on: bool) -> None:
        """Make the mock answer 500 / cut streams (on) or behave (off)."""
        self.upstream.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def leak_hits(self, texts: list[bytes]) -> list[str]:
        """Where the key's secret appears: gateway output, audit log, mock log, the response bodies given."""
        secret = self.secret.encode()
        hits = [f"gateway output line {n}" for n, line in enumerate(self.gateway.output) if self.secret in line]
        hits += [str(path) for path in (self.audit_path, self.workdir / "upstream.log") if scan_file(path, secret)[1]]
        hits += [f"response body sample {n}" for n, body in enumerate(texts) if secret in body]
        return hits


def _start_mock(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = workdir / "upstream.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hardening.load.upstream"],
            cwd=Path(__file__).resolve().parents[3],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        for word in log.read_text(errors="replace").split():
            if word.startswith("http://127.0.0.1:"):
                return proc, word
        time.sleep(0.05)
    _stop(proc)
    raise RuntimeError("mock upstream did not start:\n" + log.read_text(errors="replace"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def start_stack(workdir: Path, workers: int = 1, *gateway_args: str) -> Iterator[Stack]:
    """The mock upstream and a gateway in front of it (audit log on, one key without limits); stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "gateway"
    data_dir.mkdir(exist_ok=True)
    _, secret = add_key(data_dir, "soak")
    upstream, upstream_url = _start_mock(workdir)
    try:
        gateway = start_gateway(data_dir, upstream_url, "openai", "--workers", str(workers), *gateway_args)
        try:
            yield Stack(workdir, upstream, upstream_url, gateway, secret)
        finally:
            gateway.stop()
    finally:
        _stop(upstream)
        LEAKS.files.append(workdir / "upstream.log")
