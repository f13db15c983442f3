"""The real scanner, as a process, against real products installed from the package registries, open and protected.

Each product runs as its own process on 127.0.0.1 at an ephemeral port, with all of its state in a temp dir, in its
own process group (stopped at the end of the module, also on failure). The products are never imported here: some
emit warnings at import, and pytest turns warnings into errors.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.gateway import free_port
from tests.support.leaks import LEAKS

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
PRODUCTS = Path(__file__).resolve().parent.parent / "data" / "products"
READY_WITHIN = 60.0
MCP_SERVER_VERSION = "0.1.0"  # VERSION in tests/data/products/mcp_server.py


@dataclass
class Product:
    """One running product process; its output goes to a log file that failures show."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    ready_path: str
    secret: str = ""  # the credential of a protected instance

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def answers(self) -> bool:
        try:
            self.request("GET", self.ready_path)
        except OSError:
            return False
        return True

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            if self.answers():
                return
            time.sleep(0.2)
        pytest.fail(f"{self.name} did not answer on {self.target} within {READY_WITHIN:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        """Stop the whole process group (the product and anything it spawned, such as kernels)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # stragglers left in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def product_env(home: Path) -> dict[str, str]:
    """The products' environment: every home, cache and config dir inside the temp dir; no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GRADIO_", "HF_", "MCP_"))}
    for sub in ("cache", "config", "data", "runtime"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_RUNTIME_DIR": str(home / "runtime"),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
        }
    )
    return env


def launch(
    name: str, command: list[str], env: dict[str, str], home: Path, port: int, ready_path: str, secret: str = ""
) -> Product:
    log = home / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,  # its own process group, so stop() reaches everything it starts
        )
    return Product(name, port, process, log, ready_path, secret)


@contextlib.contextmanager
def running(starters: list[Callable[[], Product]]) -> Iterator[list[Product]]:
    """Start the products side by side, wait (bounded) until each answers HTTP, and always stop them."""
    started: list[Product] = []
    try:
        for start in starters:
            started.append(start())
        deadline = time.monotonic() + READY_WITHIN
        for product in started:
            product.wait_ready(deadline)
        yield started
    finally:
        for product in started:
            product.stop()


def require(*distributions: str) -> None:
    for dist in distributions:
        if importlib.util.find_spec(dist) is None:
            pytest.fail(f"{dist} is not installed: pip install -e '.[test]'")


def installed(dist: str) -> str:
    return importlib.metadata.version(dist)


@dataclass
class Scan:
    """One run of the real CLI over several HOST:PORT targets, with --json."""

    document: dict[str, Any]

    def finding(self, product: Product) -> dict[str, Any]:
        findings = [f for f in self.document["findings"] if f["port"] == product.port]
        assert len(findings) == 1, f"{product.name}: expected one finding on {product.target}, got {self.document}"
        return dict(findings[0])


def scan(products: dict[str, Product]) -> Scan:
    targets = [product.target for product in products.values()]
    result = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "scan", *targets, "--json", "--fail-on", "never"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    LEAKS.texts.append((result.stdout + result.stderr).decode(errors="replace"))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return Scan(orjson.loads(result.stdout))


def check(finding: dict[str, Any], product: str, verdict: str, version: str | None, reported: bool) -> None:
    """Product and verdict must match; the version must be the installed one where the product reports it."""
    evidence = orjson.dumps(finding.get("evidence"), option=orjson.OPT_INDENT_2).decode()
    assert (finding["product"], finding["verdict"]) == (product, verdict), evidence
    if reported:
        assert finding["version"] == version, evidence
    else:
        assert finding["version"] in (None, version), evidence


# Jupyter Server


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Product]]:
    require("jupyter_server")

    def start(name: str, token: str, *options: str) -> Callable[[], Product]:
        def go() -> Product:
            home = tmp_path_factory.mktemp(name)
            (home / "notebooks").mkdir()
            env = product_env(home)
            env.update(
                {
                    "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                    "JUPYTER_CONFIG_DIR": str(home / "config"),
                    "JUPYTER_DATA_DIR": str(home / "data"),
                    "JUPYTER_PLATFORM_DIRS": "1",
                    "JUPYTER_NO_CONFIG": "1",
                    "IPYTHONDIR": str(home / "ipython"),
                }
            )
            if token:
                env["JUPYTER_TOKEN"] = token  # read by IdentityProvider.token (an empty one would mean "generate one")
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "jupyter_server",
                f"--ServerApp.ip={HOST}",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                "--ServerApp.open_browser=False",
                f"--ServerApp.root_dir={home / 'notebooks'}",
                "--allow-root",  # CI runs as root, and Jupyter refuses to start as root without it
                *options,
            ]
            return launch(name, command, env, home, port, "/api", token)

        return go

    token = secrets.token_urlsafe(24)
    LEAKS.secrets.add(token)
    open_config = (
        "--IdentityProvider.token=",
        "--PasswordIdentityProvider.hashed_password=",
        "--ServerApp.disable_check_xsrf=True",
    )
    with running([start("jupyter-open", "", *open_config), start("jupyter-protected", token)]) as (open_, protected):
        yield {"open": open_, "protected": protected}


@pytest.fixture(scope="module")
def jupyter_scan(jupyter: dict[str, Product]) -> Scan:
    return scan(jupyter)


@pytest.mark.parametrize("config", ["open", "protected"])
def test_jupyter_server(jupyter: dict[str, Product], jupyter_scan: Scan, config: str) -> None:
    finding = jupyter_scan.finding(jupyter[config])
    # Jupyter Server answers GET /api with {"version": ...} with or without a token.
    check(finding, "jupyter", config, installed("jupyter_server"), reported=True)


# An MCP server built with the official SDK, streamable HTTP


@pytest.fixture(scope="module")
def mcp_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Product]]:
    require("mcp")

    def start(name: str, token: str) -> Callable[[], Product]:
        def go() -> Product:
            home = tmp_path_factory.mktemp(name)
            env = {**product_env(home), "AIPERIMETER_TEST_MCP_TOKEN": token}
            port = free_port()
            command = [sys.executable, str(PRODUCTS / "mcp_server.py"), "--port", str(port)]
            return launch(name, [*command, "--protected"] if token else command, env, home, port, "/mcp", token)

        return go

    token = secrets.token_urlsafe(24)
    LEAKS.secrets.add(token)
    with running([start("mcp-open", ""), start("mcp-protected", token)]) as (open_, protected):
        yield {"open": open_, "protected": protected}


@pytest.fixture(scope="module")
def mcp_scan(mcp_servers: dict[str, Product]) -> Scan:
    return scan(mcp_servers)


@pytest.mark.parametrize("config", ["open", "protected"])
def test_mcp_streamable_http(mcp_servers: dict[str, Product], mcp_scan: Scan, config: str) -> None:
    finding = mcp_scan.finding(mcp_servers[config])
    # The SDK does not announce its own version: initialize's serverInfo.version is the server's (mcp_server.py's),
    # and a protected server tells nothing before the token.
    check(finding, "mcp-streamable-http", config, MCP_SERVER_VERSION, reported=config == "open")
    if config == "open":  # the scanner's MCP session (initialize, notifications/initialized, tools/list) worked
        assert {"request": "POST /mcp (JSON-RPC tools/list)", "status": 200} in [
            {"request": e["request"], "status": e["status"]} for e in finding["evidence"]
        ], finding["evidence"]


# Gradio


@pytest.fixture(scope="module")
def gradio_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Product]]:
    require("gradio")

    def start(name: str, password: str) -> Callable[[], Product]:
        def go() -> Product:
            home = tmp_path_factory.mktemp(name)
            env = product_env(home)
            env.update(
                {
                    "AIPERIMETER_TEST_GRADIO_PASSWORD": password,
                    "GRADIO_ANALYTICS_ENABLED": "False",
                    "GRADIO_TEMP_DIR": str(home / "gradio-tmp"),
                    "HF_HOME": str(home / "hf"),
                    "HF_HUB_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "MPLCONFIGDIR": str(home / "mpl"),
                }
            )
            port = free_port()
            command = [sys.executable, str(PRODUCTS / "gradio_app.py"), "--port", str(port)]
            return launch(name, [*command, "--protected"] if password else command, env, home, port, "/", password)

        return go

    password = secrets.token_urlsafe(24)
    LEAKS.secrets.add(password)
    with running([start("gradio-open", ""), start("gradio-protected", password)]) as (open_, protected):
        yield {"open": open_, "protected": protected}


@pytest.fixture(scope="module")
def gradio_scan(gradio_apps: dict[str, Product]) -> Scan:
    return scan(gradio_apps)


@pytest.mark.parametrize("config", ["open", "protected"])
def test_gradio(gradio_apps: dict[str, Product], gradio_scan: Scan, config: str) -> None:
    finding = gradio_scan.finding(gradio_apps[config])
    # An open app tells its Gradio version in GET /config; a protected one answers 401 there.
    check(finding, "gradio", config, installed("gradio"), reported=config == "open")


# The protected instances are protected, not broken: their own credentials open them.


def test_protected_jupyter_accepts_its_token(jupyter: dict[str, Product]) -> None:
    product = jupyter["protected"]
    assert product.request("GET", "/api/status") == 403
    assert product.request("GET", "/api/status", headers={"Authorization": f"token {product.secret}"}) == 200


def test_protected_mcp_server_accepts_its_token(mcp_servers: dict[str, Product]) -> None:
    product = mcp_servers["protected"]
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
    )
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    assert product.request("POST", "/mcp", body, headers) == 401
    assert product.request("POST", "/mcp", body, {**headers, "Authorization": f"Bearer {product.secret}"}) == 200


def test_protected_gradio_accepts_its_password(gradio_apps: dict[str, Product]) -> None:
    product = gradio_apps["protected"]
    form = urllib.parse.urlencode({"username": "tester", "password": product.secret}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert product.request("GET", "/config") == 401
    assert product.request("POST", "/login", form, headers) == 200
