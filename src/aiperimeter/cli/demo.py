"""`aiperimeter demo`: a demo model server, the gateway in front of it, a key, and proof that the door is shut."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from aiperimeter.cli.common import console, fail
from aiperimeter.keys import KeyRecord
from aiperimeter.state.base import KeyStore

DEMO_PORT = 8787


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """Linux: a child of the demo gets SIGTERM if the demo dies, even by SIGKILL."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(args: list[str], ready_marker: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a child process and return it with the URL it prints once ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if ready_marker in line:
            return process, next(word for word in line.split() if word.startswith("http"))
    process.kill()
    fail(f"{' '.join(args[:2])} did not start; its log is {log}")


def _request(
    url: str, method: str, path: str, key: str | None = None, body: dict[str, object] | None = None
) -> tuple[int, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    return response.status, response


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


async def _add(store: KeyStore, record: KeyRecord) -> None:
    try:
        await store.add(record, "demo")
    finally:
        await store.close()


def demo(
    serve: Annotated[
        bool | None,
        typer.Option("--serve/--no-serve", help="Keep serving until Ctrl-C. Default: when run from a terminal."),
    ] = None,
) -> None:
    """Start a demo model server and the gateway in front of it, create a key, and show what gets through."""
    from aiperimeter.keys import new_key
    from aiperimeter.state.base import open_key_store

    serve = sys.stdin.isatty() if serve is None else serve

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # a closed terminal or a kill stops the demo's children too

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    data_dir = Path(tempfile.mkdtemp(prefix="aiperimeter-demo-"))
    log = data_dir / "processes.log"
    try:
        with _processes() as started:
            upstream, upstream_url = _start(["aiperimeter.demo.model_server", "--port", "0"], "listening on", log)
            started.append(upstream)
            console.print(f"[bold]1.[/] Demo model server (Ollama-compatible, no authentication): {upstream_url}")

            record, secret = new_key("demo")
            asyncio.run(_add(open_key_store(data_dir), record))
            console.print(f"[bold]2.[/] Created key [bold]{record.id}[/] in {data_dir}. Its secret, shown once:")
            console.print(f"       [bold green]{secret}[/]", soft_wrap=True)

            listen = f"127.0.0.1:{DEMO_PORT if _free(DEMO_PORT) else 0}"
            gateway, url = _start(
                [
                    "aiperimeter",
                    "gateway",
                    "--upstream",
                    upstream_url,
                    "--kind",
                    "ollama",
                    "--listen",
                    listen,
                    "--data-dir",
                    str(data_dir),
                ],
                "listening on",
                log,
            )
            started.append(gateway)
            console.print(f"[bold]3.[/] Gateway in front of it: {url}\n")

            status, response = _request(url, "GET", "/api/tags")
            console.print(f"   GET /api/tags without a key      -> [bold red]{status}[/] {response.read().decode()}")
            status, response = _request(url, "POST", "/api/pull", secret, {"model": "llama3"})
            console.print(f"   POST /api/pull with a normal key -> [bold red]{status}[/] {response.read().decode()}")
            status, response = _request(url, "GET", "/api/tags", secret)
            names = [m["name"] for m in json.loads(response.read())["models"]]
            console.print(f"   GET /api/tags with the key       -> [bold green]{status}[/] models: {', '.join(names)}")
            console.print("   POST /api/chat with the key, streamed:")
            status, response = _request(
                url,
                "POST",
                "/api/chat",
                secret,
                {"model": names[0], "messages": [{"role": "user", "content": "Is my model server safe?"}]},
            )
            console.print(f"       [bold green]{status}[/] ", end="")
            for line in response:
                console.print(json.loads(line).get("message", {}).get("content", ""), end="")
            console.print("\n")

            audit = (data_dir / "audit.jsonl").read_text().splitlines()
            console.print(f"[bold]4.[/] The audit log ({data_dir / 'audit.jsonl'}) has {len(audit)} records; the last:")
            console.print(f"   {audit[-1]}\n", soft_wrap=True)
            console.print("Try it yourself:")
            console.print(f"   curl -s {url}/api/tags -H 'Authorization: Bearer {secret}'", soft_wrap=True)
            console.print(f"   curl -s {url}/api/tags      [dim]# no key: 401[/]\n")
            console.print(
                "In front of a real Ollama:\n"
                "   aiperimeter keys create --name my-app\n"
                "   aiperimeter gateway --upstream http://127.0.0.1:11434 --kind ollama\n"
                "then point clients at http://127.0.0.1:8787 with the key, and keep Ollama itself on 127.0.0.1.\n"
            )
            if serve:
                console.print("[bold]Serving until Ctrl-C.[/]")
                with contextlib.suppress(KeyboardInterrupt):
                    while all(p.poll() is None for p in started):
                        time.sleep(0.5)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
