"""Start the real gateway as a process on loopback, with its own data dir and keys, and talk to it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from aiperimeter.keys import KeyRecord, new_key
from aiperimeter.state.sqlite import SQLiteKeyStore
from tests.support.leaks import LEAKS

DB = "aiperimeter.db"


def add_key(data_dir: Path, name: str = "test", **kwargs: object) -> tuple[KeyRecord, str]:
    record, secret = new_key(name, **kwargs)  # type: ignore[arg-type]
    LEAKS.secrets.add(secret)

    async def add() -> None:
        store = SQLiteKeyStore(data_dir / DB)
        try:
            await store.add(record, "test")
        finally:
            await store.close()

    asyncio.run(add())
    return record, secret


def revoke_key(data_dir: Path, key_id: str) -> None:
    async def revoke() -> None:
        store = SQLiteKeyStore(data_dir / DB)
        try:
            await store.revoke(key_id, time.time(), "test")
        finally:
            await store.close()

    asyncio.run(revoke())


@dataclass
class GatewayProcess:
    data_dir: Path
    process: subprocess.Popen[bytes]
    url: str
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def audit(self) -> list[dict[str, object]]:
        path = self.data_dir / "audit.jsonl"
        if not path.exists():
            return []
        data = path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a line still being written is read once it is whole
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]

    def wait_audit(self, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.audit()
            if len(records) >= count:
                return records
            time.sleep(0.02)
        return self.audit()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.reader is not None:
            self.reader.join(5)
        LEAKS.texts.extend(self.output)
        LEAKS.files.append(self.data_dir / "audit.jsonl")
        return int(self.process.returncode)


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiperimeter", "gateway", *args]


def start_gateway(
    data_dir: Path, upstream: str, kind: str = "openai", *extra: str, timeout: float = 20.0
) -> GatewayProcess:
    command = gateway_command(
        "--upstream", upstream, "--kind", kind, "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                line = raw.decode(errors="replace")
                output.append(line)
                if "aiperimeter gateway listening on" in line and not url:
                    url.append(next(w for w in line.split() if w.startswith("http")))
                    ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    ready.wait(timeout)
    gateway = GatewayProcess(data_dir, process, url[0] if url else "", output, reader)
    if not url:
        gateway.stop()
        raise RuntimeError("gateway did not start:\n" + "".join(output))
    return gateway


def run_gateway_expecting_exit(data_dir: Path, *args: str, timeout: float = 20.0) -> tuple[int, str]:
    result = subprocess.run(
        gateway_command(*args, "--data-dir", str(data_dir)), capture_output=True, timeout=timeout, check=False
    )
    text = (result.stdout + result.stderr).decode(errors="replace")
    LEAKS.texts.append(text)
    return result.returncode, text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
