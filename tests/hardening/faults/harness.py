"""A gateway process for one scenario: its own data dir, a key, settings from a dict; stopped whatever happens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from tests.hardening.faults.result import Ledger, wait_for
from tests.support.gateway import GatewayProcess, add_key, start_gateway


@contextlib.contextmanager
def local_gateway(
    workdir: Path, upstream: str, ledger: Ledger, settings: dict[str, object] | None = None, *extra: str
) -> Iterator[tuple[GatewayProcess, str]]:
    """A gateway with a SQLite key store in `workdir`; on exit it is stopped (flushing its audit log) and the
    ledger's answered requests are counted against that log."""
    workdir.mkdir(parents=True, exist_ok=True)
    _, key = add_key(workdir, "faults")
    args = list(extra)
    if settings:
        config = workdir / "gateway.yaml"
        config.write_text(orjson.dumps(settings).decode())
        args += ["--config", str(config)]
    gateway = start_gateway(workdir, upstream, "openai", *args)
    try:
        yield gateway, key
    finally:
        gateway.stop()
        ledger.audit([workdir / "audit.jsonl"])


def logs(gateway: GatewayProcess) -> str:
    return "".join(list(gateway.output))


def logged_again(gateway: GatewayProcess, text: str, before: int, timeout: float) -> bool:
    """Whether the gateway logs `text` more than the `before` times it had, within `timeout` seconds."""
    return wait_for(lambda: logs(gateway).count(text) > before, timeout)
