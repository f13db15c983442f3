"""`aiperimeter scan`: find exposed AI services on your own hosts, the way attackers find them."""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from aiperimeter.catalog.loader import fingerprints
from aiperimeter.catalog.schema import SEVERITIES, Probe
from aiperimeter.cli.common import console, err_console, fail
from aiperimeter.errors import ConfigError
from aiperimeter.report.html import render_html
from aiperimeter.report.json import render_json, render_jsonl_line
from aiperimeter.report.sarif import render_sarif
from aiperimeter.report.table import render_table
from aiperimeter.scan.findings import Finding, ScanResult
from aiperimeter.scan.probe import jsonrpc_body
from aiperimeter.scan.runner import Scanner, ScanOptions, default_ports
from aiperimeter.scan.targets import expand, parse_ports, parse_target, read_target_file

HELP = (
    "Find exposed AI services on your own hosts, the way attackers find them: a TCP connect sweep of the default "
    "ports of every catalogued product, then safe HTTP(S) probes (GET/HEAD, and read-only MCP JSON-RPC) on open "
    "ports. Names the product, its version, whether it answers without credentials, what an attacker could reach, "
    "and the fix.\n\n"
    "Targets: hosts, IPv4/IPv6 addresses, CIDR ranges, host:port, http(s)://host:port/base URLs, or -iL FILE. "
    "Public addresses need --i-own-these-targets; ranges above a /16 need --max-hosts.\n\n"
    "Examples:\n\n"
    "aiperimeter scan 192.168.1.0/24\n\n"
    "aiperimeter scan gpu-01.internal:11434 http://10.0.0.7:8000 --json > findings.json\n\n"
    "aiperimeter scan -iL hosts.txt --ports +9000-9010 --html report.html --fail-on critical\n\n"
    "aiperimeter scan --explain    (every request the scanner can send)\n\n"
    "Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage or runtime error."
)

FAIL_ON = (*SEVERITIES, "never")


def explain() -> None:
    """Print every request the scanner can send, and which products ask for it (plain lines: never truncated)."""
    catalog = fingerprints()
    users: dict[tuple[object, ...], list[str]] = defaultdict(list)
    probes: dict[tuple[object, ...], Probe] = {}
    for fp in catalog:
        for probe in fp.probes:
            users[probe.key].append(fp.id)
            probes.setdefault(probe.key, probe)
    lines = [
        f"TCP connect, then close: every target port (default ports: {', '.join(map(str, default_ports(catalog)))})"
    ]
    for key, probe in sorted(probes.items(), key=lambda kv: (kv[1].path, kv[1].method)):
        headers = "".join(f" [{k}: {v}]" for k, v in probe.headers.items())
        lines.append(f"{probe.method} {probe.path}{headers}    asked by: {', '.join(sorted(users[key]))}")
        if probe.jsonrpc:
            lines.append(f"    body: {jsonrpc_body(probe.jsonrpc, 1).decode()}")
    lines.append(
        "Nothing else is ever sent: no model pulls, deletes, generations, job submissions or tool calls. "
        "MCP servers receive 'initialize', 'notifications/initialized' and 'tools/list' only."
    )
    typer.echo("\n".join(lines))


def scan(
    targets: Annotated[list[str] | None, typer.Argument(help="What to scan.", show_default=False)] = None,
    target_file: Annotated[
        Path | None, typer.Option("-iL", "--input-list", help="File of targets, one a line.")
    ] = None,
    ports: Annotated[
        str | None,
        typer.Option("--ports", help="Ports to check: '8000,9000-9010' replaces the defaults, '+LIST' adds."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=10000, help="Connections in flight.")] = 100,
    rate: Annotated[float, typer.Option("--rate", min=0, help="New connections per second (0: unlimited).")] = 300,
    host_rate: Annotated[
        float, typer.Option("--host-rate", min=0, help="New connections per second to one host (0: unlimited).")
    ] = 20,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=120, help="Seconds per connection.")] = 3.0,
    retries: Annotated[int, typer.Option("--retries", min=0, max=5, help="Retries of a probe that got no answer.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    jsonl_out: Annotated[bool, typer.Option("--jsonl", help="Print one JSON finding per line as found.")] = False,
    sarif_out: Annotated[bool, typer.Option("--sarif", help="Print SARIF 2.1.0.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")] = None,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help=f"Exit 1 when a finding is at least this severe: {', '.join(FAIL_ON)}.")
    ] = "high",
    own: Annotated[
        bool, typer.Option("--i-own-these-targets", help="Allow public addresses (only hosts you are allowed to scan).")
    ] = False,
    max_hosts: Annotated[int | None, typer.Option("--max-hosts", min=1, help="Allow this many addresses.")] = None,
    show_explain: Annotated[bool, typer.Option("--explain", help="List every request the scanner can send.")] = False,
) -> None:
    if show_explain:
        explain()
        return
    if fail_on not in FAIL_ON:
        fail(f"--fail-on must be one of {', '.join(FAIL_ON)}")
    if sum([json_out, jsonl_out, sarif_out]) > 1:
        fail("choose one of --json, --jsonl, --sarif")
    texts = list(targets or []) + (read_target_file(target_file) if target_file else [])
    if not texts:
        fail("no targets: name hosts, addresses, ranges or URLs, or pass -iL FILE (see --help)")
    catalog = fingerprints()
    parsed = [parse_target(text) for text in texts]
    expansion = expand(parsed, parse_ports(ports, default_ports(catalog)), own_targets=own, max_hosts=max_hosts)
    options = ScanOptions(
        concurrency=concurrency,
        rate=rate,
        timeout=timeout,
        retries=retries,
        host_rate=host_rate,
        endpoint_budget=max(5.0, 5 * timeout),
    )
    scanner = Scanner(catalog, options)
    machine = json_out or jsonl_out or sarif_out
    interactive = sys.stderr.isatty() and not machine

    def emit(finding: Finding) -> None:
        sys.stdout.buffer.write(render_jsonl_line(finding))
        sys.stdout.flush()

    async def go() -> ScanResult:
        if not interactive:
            return await scanner.run(expansion, on_finding=emit if jsonl_out else None)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            tasks = {
                "sweep": bar.add_task("sweeping ports", total=len(expansion.endpoints)),
                "probe": bar.add_task("probing open ports", total=None),
            }

            def progress(phase: str, done: int, total: int) -> None:
                bar.update(tasks[phase], completed=done, total=total)

            return await scanner.run(expansion, progress=progress)

    try:
        result = asyncio.run(go())
    except OSError as exc:
        raise ConfigError(f"the scan could not run: {exc.strerror or exc}") from None
    if json_out:
        sys.stdout.buffer.write(render_json(result))
    elif sarif_out:
        sys.stdout.buffer.write(render_sarif(result))
    elif not jsonl_out:
        render_table(result, console)
    if html_out is not None:
        try:
            html_out.write_bytes(render_html(result))
        except OSError as exc:
            fail(f"cannot write {html_out}: {exc.strerror}")
        if not machine:
            console.print(f"HTML report written to {html_out}")
    worst = result.worst()
    if fail_on != "never" and worst is not None and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on):
        raise typer.Exit(1)


scan.__doc__ = HELP
