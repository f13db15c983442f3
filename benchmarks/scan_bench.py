"""Scanner benchmark: a sweep of 4,096 loopback addresses x the default ports, with mock AI services among them.

Method: every match example in the catalog becomes a mock service (python -m aiperimeter.demo.exposed) spread over
127.1.0.0/20; the mock process runs on CPU 1, the scanner on CPU 0. `aiperimeter scan 127.1.0.0/20` then sweeps
every default port of every address and probes what is open. We report ports/s, services identified/s, wall time,
and whether every mock service was identified as its product with its verdict. When nmap is installed, `nmap -sT`
(connect scan, same ports, same range) and `nmap -sV` (version detection on the open ports only) run on the same
targets for comparison.

Run: .venv/bin/python benchmarks/scan_bench.py [--cidr 127.1.0.0/20] [--concurrency 1000]
Output: a markdown table on stdout and in benchmarks/results/scan.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from aiperimeter.catalog.loader import fingerprints
from aiperimeter.demo.exposed import plan
from aiperimeter.scan.runner import default_ports

RESULTS = Path(__file__).parent / "results" / "scan.md"


def pinned(cpu: int) -> dict[str, object]:
    return {"preexec_fn": lambda: os.sched_setaffinity(0, {cpu})} if os.cpu_count() and os.cpu_count() > 1 else {}


def start_mocks(first: str, step: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "aiperimeter.demo.exposed", "--first", first, "--step", str(step)],
        stdout=subprocess.PIPE,
        **pinned(1),  # type: ignore[arg-type]
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        if line.startswith(b"ready:"):
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError("mock services did not start")


def run_scan(cidr: str, concurrency: int, timeout: float) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiperimeter",
            "scan",
            cidr,
            "--json",
            "--fail-on",
            "never",
            "--rate",
            "0",
            "--concurrency",
            str(concurrency),
            "--timeout",
            str(timeout),
        ],
        capture_output=True,
        timeout=600,
        check=True,
        **pinned(0),  # type: ignore[arg-type]
    )
    return time.monotonic() - started, orjson.loads(result.stdout)


def run_nmap(args: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(["nmap", *args], capture_output=True, timeout=900, check=False, text=True, **pinned(0))  # type: ignore[arg-type]
    return time.monotonic() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cidr", default="127.1.0.0/20")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--no-nmap", action="store_true")
    args = parser.parse_args()

    network = ipaddress.ip_network(args.cidr)
    if not network.is_loopback:
        parser.error("benchmark only loopback ranges")
    catalog = fingerprints()
    ports = default_ports(catalog)
    services = plan(catalog, str(network.network_address + 7), step=max(1, (network.num_addresses - 16) // 120))
    services = [s for s in services if ipaddress.ip_address(s.address) in network]
    mocks = start_mocks(str(network.network_address + 7), max(1, (network.num_addresses - 16) // 120))
    rows: list[tuple[str, str]] = []
    try:
        wall, document = run_scan(args.cidr, args.concurrency, args.timeout)
        summary = document["summary"]  # type: ignore[index]
        found = {f"{f['address']}:{f['port']}": f for f in document["findings"]}  # type: ignore[index, union-attr]
        wrong = []
        for service in services:
            finding = found.get(f"{service.address}:{service.port}")
            got = f"{finding['product']}/{finding['verdict']}" if finding else "missed"
            if got != f"{service.fingerprint.id}/{service.example.verdict}":
                wrong.append(
                    f"{service.address}:{service.port} {service.fingerprint.id}/{service.example.verdict} -> {got}"
                )
        probe_seconds = summary["seconds"] - summary["sweep_seconds"]  # type: ignore[index, operator]
        sweep_rate = summary["ports_checked"] / summary["sweep_seconds"]  # type: ignore[index, operator]
        rows += [
            ("addresses x ports", f"{summary['hosts']} x {len(ports)} = {summary['ports_checked']}"),  # type: ignore[index]
            ("mock AI services", str(len(services))),
            ("open ports found", str(summary["open_ports"])),  # type: ignore[index]
            ("aiperimeter wall time (process start to exit)", f"{wall:.1f} s"),
            ("  sweep", f"{summary['sweep_seconds']:.1f} s, {sweep_rate:,.0f} ports/s"),  # type: ignore[index]
            ("  probe + identify", f"{probe_seconds:.1f} s, {len(found) / max(probe_seconds, 1e-9):,.1f} services/s"),
            ("services identified correctly", f"{len(services) - len(wrong)} / {len(services)}"),
            ("target: full sweep < 60 s, all identified", "PASS" if wall < 60 and not wrong else "FAIL"),
        ]
        if not args.no_nmap and shutil.which("nmap"):
            port_list = ",".join(map(str, ports))
            seconds, _ = run_nmap(["-sT", "-n", "-Pn", "-T5", "--min-rate", "5000", "-p", port_list, args.cidr])
            rows.append(("nmap -sT -T5 --min-rate 5000, same ranges", f"{seconds:.1f} s"))
            open_targets = sorted({s.address for s in services})
            seconds, output = run_nmap(["-sV", "-n", "-Pn", "-T5", "-p", port_list, *open_targets])
            named = sum(1 for line in output.splitlines() if "/tcp" in line and "open" in line)
            ai = sum(
                1
                for line in output.splitlines()
                if "/tcp" in line
                and "open" in line
                and any(w in line.lower() for w in ("ollama", "vllm", "llama", "jupyter", "mlflow", "gradio"))
            )
            rows.append((f"nmap -sV on the {len(open_targets)} hosts with services only", f"{seconds:.1f} s"))
            rows.append(("  nmap -sV: open ports / named as an AI product", f"{named} / {ai}"))
    finally:
        mocks.send_signal(signal.SIGINT)
        try:
            mocks.wait(10)
        except subprocess.TimeoutExpired:
            mocks.kill()
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    if wrong:
        table += "\nMisidentified:\n" + "".join(f"- {w}\n" for w in wrong)
    invocation = " ".join(sys.argv[1:]) or "defaults"
    header = f"# Scanner benchmark\n\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, `{invocation}`\n\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(header + table)
    print(table)


if __name__ == "__main__":
    main()
