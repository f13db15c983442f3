"""Processes: one worker per core sharing the listening port through SO_REUSEPORT, under a small supervisor.

The kernel spreads new connections over the workers' sockets, so long-lived streams land on all of them. The
supervisor restarts a worker that dies and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from aiperimeter.config import GatewaySettings
from aiperimeter.errors import AiperimeterError, ConfigError
from aiperimeter.gateway.admin import (
    AdminListener,
    admin_address,
    check_admin_listen,
    reserve_admin_port,
    start_admin,
    url_of,
)
from aiperimeter.gateway.app import Gateway, require_credentials
from aiperimeter.state.base import open_store
from aiperimeter.watch.service import build_watcher

log = logging.getLogger("aiperimeter.gateway")
SHUTDOWN_GRACE = 10.0


def _tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate and key: {exc}", field="tls_cert") from None
    return context


def _configure_logging() -> None:
    """Every process logs the same way, with its pid: alerts, admin changes and refusals are operators' business."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency wherever it builds
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    settings: GatewaySettings,
    port: int,
    ready: Connection | None,
    admin_port: int | None = None,
    primary: bool = True,
) -> None:
    """One process's gateway; with `admin_port`, also the admin API; when `primary`, also the watcher (one process
    of a gateway serves each)."""
    loop = asyncio.get_running_loop()
    gateway = Gateway(settings)
    server_factory = await gateway.start()
    tls = _tls_context(settings)
    server = await loop.create_server(
        server_factory,
        settings.listen_host,
        port,
        reuse_port=settings.workers > 1,
        ssl=tls,
        backlog=2048,
    )
    bound = server.sockets[0].getsockname()[1]
    # --- admin API: started after the gateway's listener, announced before it ---
    admin: AdminListener | None = None
    admin_at = admin_address(settings)
    if admin_at is not None and admin_port is not None:
        try:
            admin = await start_admin(gateway, admin_at[0], admin_port, reuse_port=settings.workers > 1, tls=tls)
        except BaseException:
            server.close()
            await gateway.close()
            raise
        if ready is None:
            print(f"aiperimeter admin API listening on {admin.url}", flush=True)
    # --- end admin API ---
    if primary:
        gateway.watcher = build_watcher(gateway, f"{admin.url}/admin/dashboard" if admin is not None else None)
        if gateway.watcher is not None:
            gateway.watcher.start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.send(bound)
        ready.close()
    else:
        scheme = "https" if settings.tls_cert else "http"
        host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
        print(f"aiperimeter gateway listening on {scheme}://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        if admin is not None:  # admin API
            await admin.close(SHUTDOWN_GRACE)
        server.close()
        await server_factory.shutdown(SHUTDOWN_GRACE)
        await server.wait_closed()
        await gateway.close()


def _worker_main(
    settings: GatewaySettings, port: int, ready: Connection, admin_port: int | None = None, primary: bool = False
) -> None:
    _install_loop()
    _configure_logging()
    try:
        asyncio.run(_serve(settings, port, ready, admin_port, primary))
    except KeyboardInterrupt:
        pass
    except AiperimeterError as exc:
        print(f"aiperimeter: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _reserve_port(settings: GatewaySettings) -> tuple[socket.socket, int]:
    """Bind (without listening) so every worker can join the same port, even when port 0 was asked for."""
    info = socket.getaddrinfo(settings.listen_host, settings.listen_port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    return sock, sock.getsockname()[1]


def preflight(settings: GatewaySettings) -> None:
    """Checks that must fail before any process starts: the store opens (and is migrated), a credential exists,
    TLS material loads, JWT key files load, the admin API's address is safe."""
    check_admin_listen(settings)

    async def check() -> None:
        store = await open_store(settings.data_dir, settings.database.reveal() if settings.database else None)
        try:
            await require_credentials(store, settings)
        finally:
            await store.close()

    asyncio.run(check())
    _tls_context(settings)
    if settings.jwt is not None:
        from aiperimeter.gateway.jwt import JWTVerifier

        JWTVerifier(settings.jwt)  # a bad key file stops start-up once, with exit code 2, not once per worker


def run(settings: GatewaySettings) -> None:
    preflight(settings)
    if settings.workers == 1:
        _install_loop()
        _configure_logging()
        with contextlib.suppress(KeyboardInterrupt):
            admin = admin_address(settings)  # admin API
            asyncio.run(_serve(settings, settings.listen_port, None, admin[1] if admin is not None else None))
        return
    Supervisor(settings).run()


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Any] = {}
        self.stopping = False
        self.admin_port: int | None = None  # admin API: served by worker 0 only

    def _start_worker(self, slot: int, port: int) -> int:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(self.settings, port, send, self.admin_port if slot == 0 else None, slot == 0),
            name=f"aiperimeter-worker-{slot}",
            daemon=False,
        )
        process.start()
        send.close()
        if not receive.poll(30):
            process.terminate()
            raise ConfigError(f"worker {slot} did not start within 30 s; see its log above")
        try:
            receive.recv()
        except EOFError:
            raise ConfigError(f"worker {slot} failed to start; see its log above") from None
        self.workers[slot] = process
        return int(process.pid or 0)

    def run(self) -> None:
        reservation, port = _reserve_port(self.settings)
        admin_reservation: socket.socket | None = None  # admin API
        if self.settings.admin_listen is not None:
            try:
                admin_reservation, self.admin_port = reserve_admin_port(self.settings, port)
            except BaseException:
                reservation.close()
                raise

        def request_stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            for slot in range(self.settings.workers):
                self._start_worker(slot, port)
            scheme = "https" if self.settings.tls_cert else "http"
            admin = admin_address(self.settings)  # admin API
            if admin is not None and self.admin_port is not None:
                admin_url = url_of(admin[0], self.admin_port, self.settings.tls_cert is not None)
                print(f"aiperimeter admin API listening on {admin_url} (worker 0)", flush=True)
            host = self.settings.listen_host
            host = f"[{host}]" if ":" in host else host
            print(
                f"aiperimeter gateway listening on {scheme}://{host}:{port} "
                f"({self.settings.workers} workers: {', '.join(str(p.pid) for p in self.workers.values())})",
                flush=True,
            )
            restarts: list[float] = []
            while not self.stopping:
                time.sleep(0.2)
                for slot, process in list(self.workers.items()):
                    if process.is_alive() or self.stopping:
                        continue
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60] + [now]
                    if len(restarts) > 5 * self.settings.workers:
                        raise ConfigError("workers keep dying (more than 5 restarts each in a minute); stopping")
                    log.warning("worker %s (pid %s) exited with %s; restarting", slot, process.pid, process.exitcode)
                    print(
                        f"worker {slot} exited with {process.exitcode}; restarted as pid "
                        f"{self._start_worker(slot, port)}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for process in self.workers.values():
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + SHUTDOWN_GRACE + 2
            for process in self.workers.values():
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.kill()
            reservation.close()
            if admin_reservation is not None:  # admin API
                admin_reservation.close()
