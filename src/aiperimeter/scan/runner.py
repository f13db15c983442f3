"""The scan: a TCP connect sweep, then the catalog's safe probes on every open port, then identification."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from aiperimeter.catalog.match import Reply, best_match
from aiperimeter.catalog.replay import replies_for
from aiperimeter.catalog.schema import SEVERITIES, Fingerprint, Probe
from aiperimeter.scan.findings import Finding, ScanError, ScanResult, make_finding
from aiperimeter.scan.probe import Limits, Prober, detect_scheme, run_probe, tcp_open
from aiperimeter.scan.targets import Endpoint, Expansion

log = logging.getLogger("aiperimeter.scan")
T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ScanOptions:
    concurrency: int = 100
    rate: float = 300.0  # new connections per second, all hosts together; 0 for unlimited
    timeout: float = 3.0
    retries: int = 1
    per_host: int = 4
    host_rate: float = 20.0  # connections per second to one host
    endpoint_budget: float = 15.0  # seconds of probing for one open port


def usable_concurrency(wanted: int) -> int:
    """Raise the soft open-files limit as far as allowed; keep concurrency well below it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = min(hard if hard != resource.RLIM_INFINITY else 1 << 16, 1 << 16)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
            soft = max(soft, target)
    except (ImportError, ValueError, OSError):
        return min(wanted, 200)
    return max(1, min(wanted, (soft - 64) // 2))


def default_ports(catalog: Iterable[Fingerprint]) -> list[int]:
    return sorted({port for fp in catalog for port in fp.ports} | {80, 443})


async def _pool(items: Sequence[T], work: Callable[[T], Awaitable[R]], concurrency: int) -> AsyncIterator[tuple[T, R]]:
    """Run `work` over items with at most `concurrency` in flight, yielding results as they complete."""
    queue: asyncio.Queue[tuple[T, R]] = asyncio.Queue()
    iterator = iter(items)
    done = 0

    async def worker() -> None:
        for item in iterator:
            result = await work(item)
            await queue.put((item, result))

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(items)) or 1)]
    try:
        while done < len(items):
            yield await queue.get()
            done += 1
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def _order(finding: Finding) -> tuple[int, int, int, int]:
    """Worst first, then by address as a number (127.0.0.9 before 127.0.0.10), then port."""
    address = ipaddress.ip_address(finding.address)
    return (-SEVERITIES.index(finding.severity), address.version, int(address), finding.port)


class Scanner:
    def __init__(self, catalog: Sequence[Fingerprint], options: ScanOptions) -> None:
        self.catalog = list(catalog)
        self.options = replace(options, concurrency=usable_concurrency(options.concurrency))
        self.limits = Limits(self.options.rate, self.options.per_host, self.options.host_rate)
        self.prober = Prober(options.timeout, self.limits, options.retries)
        self._by_id = {fp.id: fp for fp in self.catalog}
        self._by_port: dict[int, list[Fingerprint]] = defaultdict(list)
        for fp in self.catalog:
            for port in fp.ports:
                self._by_port[port].append(fp)

    def candidates(self, port: int) -> list[Fingerprint]:
        """Products that listen on this port by default, their lookalikes, and the generic catch-alls.
        On a port no product claims, every product is a candidate."""
        direct = self._by_port.get(port)
        if not direct:
            return list(self.catalog)
        chosen = {fp.id: fp for fp in direct}
        for fp in direct:
            for other in fp.lookalikes:
                chosen.setdefault(other, self._by_id[other])
        for fp in self.catalog:
            if fp.generic:
                chosen.setdefault(fp.id, fp)
        return list(chosen.values())

    async def identify(self, endpoint: Endpoint) -> Finding | str | None:
        """A finding; None when the port speaks no HTTP; 'unidentified' when nothing in the catalog matches."""
        detected = await detect_scheme(self.prober, endpoint)
        if detected is None:
            return None
        scheme, root = detected
        candidates = self.candidates(endpoint.port)
        probes: dict[tuple[object, ...], Probe] = {}
        for fp in candidates:
            for probe in fp.probes:
                probes.setdefault(probe.key, probe)
        answers: dict[tuple[object, ...], Reply | None] = {("GET", "/", None, ()): root}
        plain = [p for k, p in probes.items() if p.jsonrpc is None and k not in answers]
        rpc = sorted((p for p in probes.values() if p.jsonrpc), key=lambda p: p.jsonrpc != "initialize")

        async def ask(probe: Probe) -> None:
            answers[probe.key] = await run_probe(self.prober, endpoint, scheme, probe, {})

        async def ask_rpc() -> None:
            # JSON-RPC in protocol order, one session per path: initialize before tools/list.
            sessions: dict[str, dict[str, str]] = defaultdict(dict)
            for probe in rpc:
                answers[probe.key] = await run_probe(self.prober, endpoint, scheme, probe, sessions[probe.path])

        # One endpoint gets a bounded time: a host that accepts and stalls cannot hold the scan. What answered by
        # then is judged; what did not counts as no answer.
        tasks = [asyncio.create_task(ask(p)) for p in plain] + [asyncio.create_task(ask_rpc())]
        done, pending = await asyncio.wait(tasks, timeout=self.options.endpoint_budget)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        found = best_match(candidates, replies_for(candidates, lambda probe: answers.get(probe.key)))
        if found is None:
            return "unidentified"
        return make_finding(found, endpoint, scheme)

    async def run(
        self,
        expansion: Expansion,
        progress: Progress | None = None,
        on_finding: Callable[[Finding], None] | None = None,
    ) -> ScanResult:
        started = time.monotonic()
        result = ScanResult(
            hosts=expansion.hosts, errors=[ScanError(t, "cannot resolve") for t in expansion.unresolved]
        )
        # Port-major order: consecutive connections go to different hosts, so no host sees a burst.
        endpoints = sorted(expansion.endpoints, key=lambda e: (e.port, e.address))
        result.ports_checked = len(endpoints)
        open_endpoints: list[Endpoint] = []
        done = 0

        async def check(endpoint: Endpoint) -> bool:
            return await tcp_open(endpoint.address, endpoint.port, self.options.timeout, self.limits)

        async for endpoint, is_open in _pool(endpoints, check, self.options.concurrency):
            done += 1
            if is_open:
                open_endpoints.append(endpoint)
            if progress is not None:
                progress("sweep", done, len(endpoints))
        result.open_ports = len(open_endpoints)
        result.sweep_seconds = time.monotonic() - started

        async def examine(endpoint: Endpoint) -> Finding | str | Exception | None:
            try:
                return await self.identify(endpoint)
            except Exception as exc:  # one broken host must not end the scan
                log.debug("probing %s:%s failed", endpoint.address, endpoint.port, exc_info=True)
                return exc

        done = 0
        async for endpoint, outcome in _pool(open_endpoints, examine, max(1, self.options.concurrency // 2)):
            done += 1
            if isinstance(outcome, Finding):
                result.findings.append(outcome)
                if on_finding is not None:
                    on_finding(outcome)
            elif outcome == "unidentified":
                result.unidentified.append(f"{endpoint.host}:{endpoint.port}")
            elif isinstance(outcome, Exception):
                result.errors.append(ScanError(f"{endpoint.host}:{endpoint.port}", type(outcome).__name__))
            if progress is not None:
                progress("probe", done, len(open_endpoints))
        result.findings.sort(key=_order)
        result.seconds = time.monotonic() - started
        return result
