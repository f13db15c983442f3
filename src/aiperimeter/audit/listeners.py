"""Local listening sockets, their processes, and what answers on them.

Each TCP listener bound beyond loopback is probed with the scanner's catalog, over loopback for a wildcard bind,
so the product and its auth verdict are named without leaving the host. A process's command line is read only to
recognise the product; it is never reported, because command lines carry secrets (`--api-key ...`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from aiperimeter.audit.findings import AuditFinding, fingerprint
from aiperimeter.audit.subjects import ProductIndex
from aiperimeter.catalog.schema import SEVERITIES, Fingerprint, Severity
from aiperimeter.scan.findings import Finding
from aiperimeter.scan.runner import Scanner, ScanOptions
from aiperimeter.scan.targets import Endpoint

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int | None
    process: str | None
    argv: tuple[str, ...] = ()  # for product recognition only; never reported

    @property
    def socket(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address.split("%", 1)[0]).is_loopback

    @property
    def owner(self) -> str | None:
        if self.process is None:
            return None
        return f"{self.process} (pid {self.pid})" if self.pid else self.process


def listening(ports: set[int] | None = None) -> tuple[list[Listener], list[str]]:
    """Listening TCP sockets (one per address and port) and notes on what could not be read."""
    notes = []
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return [], ["listing sockets needs more privileges on this system: run as an administrator"]
    seen: dict[tuple[str, int], Listener] = {}
    hidden = 0
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        address, port = conn.laddr.ip, conn.laddr.port
        if (ports is not None and port not in ports) or (address, port) in seen:
            continue
        name: str | None = None
        argv: tuple[str, ...] = ()
        if conn.pid:
            try:
                process = psutil.Process(conn.pid)
                name, argv = process.name(), tuple(process.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        else:
            hidden += 1
        seen[(address, port)] = Listener(address, port, conn.pid, name, argv)
    if hidden:
        notes.append(f"{hidden} listening sockets belong to processes this user cannot see; run as root to name them")
    return sorted(seen.values(), key=lambda item: (item.port, item.address)), notes


def _probe_address(listener: Listener) -> str | None:
    if listener.address in WILDCARDS:
        return WILDCARDS[listener.address]
    if listener.address.startswith("fe80") or "%" in listener.address:
        return None  # link-local needs a scope; not worth guessing
    return listener.address  # an address of this host


class ListenerAudit:
    def __init__(self, catalog: Sequence[Fingerprint], timeout: float = 2.0) -> None:
        self.catalog = list(catalog)
        self.products = ProductIndex(self.catalog)
        self.by_port = {port: fp.id for fp in self.catalog if not fp.generic for port in fp.ports}
        self.names = {fp.id: fp.name for fp in self.catalog}
        self.scanner = Scanner(self.catalog, ScanOptions(timeout=timeout, rate=0, host_rate=0, endpoint_budget=10))

    def suspected(self, listener: Listener) -> set[str]:
        """Products the port or the process suggest, before any probe."""
        found = self.products.of_process(listener.process or "", list(listener.argv))
        if listener.port in self.by_port:
            found.add(self.by_port[listener.port])
        return found

    async def _identify(self, listener: Listener) -> Finding | None:
        address = _probe_address(listener)
        if address is None:
            return None
        try:
            outcome = await self.scanner.identify(Endpoint(address, address, listener.port, None))
        except Exception:  # a hostile or broken local service must not end the audit
            return None
        return outcome if isinstance(outcome, Finding) else None

    async def run(
        self, listeners: list[Listener], named_ports: bool = False
    ) -> tuple[list[AuditFinding], list[dict[str, object]]]:
        """Findings for listeners beyond loopback; the AI services on loopback, said to be fine. On loopback only
        suspected services are probed, or every listener when the user named the ports."""
        exposed = [item for item in listeners if not item.loopback]
        local = [item for item in listeners if item.loopback and (named_ports or self.suspected(item))]
        probes = await asyncio.gather(*(self._identify(item) for item in [*exposed, *local]))
        found = dict(zip([*exposed, *local], probes, strict=True))
        findings = []
        for item in exposed:
            if (finding := self._finding(item, found[item])) is not None:
                findings.append(finding)
        fine: list[dict[str, object]] = []
        for item in local:
            probe = found[item]
            if probe is None and not self.products.of_process(item.process or "", list(item.argv)):
                continue  # a port number alone says nothing
            product = probe.product_name if probe else self.names[sorted(self.suspected(item))[0]]
            fine.append(
                {
                    "socket": item.socket,
                    "process": item.owner,
                    "product": product,
                    "verdict": probe.verdict if probe else None,
                }
            )
        return findings, fine

    def _finding(self, item: Listener, probe: Finding | None) -> AuditFinding | None:
        suspected = self.suspected(item)
        if probe is None and not suspected:
            return None
        if probe is not None:
            product, name, verdict = probe.product, probe.product_name, probe.verdict
            severity: Severity = max(probe.severity, "low", key=SEVERITIES.index)
            if product == "aiperimeter-gateway":
                severity = "info"
            why = f"{name} answers on {item.socket}, reachable from other hosts; verdict: {verdict}."
            if probe.dangerous and verdict != "protected":
                why += " Reachable without credentials: " + ", ".join(d["endpoint"] for d in probe.dangerous) + "."
        else:
            product = sorted(suspected)[0]
            name, verdict, severity = self.names[product], None, "medium"
            why = (
                f"By its port or process this looks like {name}, listening beyond loopback; the probe did not confirm."
            )
        scope = "all interfaces" if item.address in WILDCARDS else f"the address {item.address}"
        return AuditFinding(
            kind="listener",
            rule="listener-beyond-loopback",
            title=f"{name} listens on {scope}",
            severity=severity,
            why=why,
            fix=(
                f"Bind {name} to 127.0.0.1 (see its bind setting), and if other hosts need it, put the aiperimeter "
                f"gateway in front: aiperimeter gateway --upstream http://127.0.0.1:{item.port} --listen 0.0.0.0:8787 "
                "--expose --tls-cert cert.pem --tls-key key.pem"
            ),
            fingerprint=fingerprint("listener", item.address, str(item.port), product),
            evidence=f"LISTEN {item.socket}",
            socket=item.socket,
            process=item.owner,
            product=product,
            verdict=verdict,
        )
