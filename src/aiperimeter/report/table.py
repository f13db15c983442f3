"""The terminal view: a table of findings, then what to do about the worst of them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aiperimeter.audit.findings import AuditResult
from aiperimeter.scan.findings import ScanResult


def _text(value: str, style: str = "") -> Text:
    """Terminal-safe: values come from scanned hosts, so no control characters (escape sequences) get through."""
    return Text("".join(c for c in value if c.isprintable()), style=style)


STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def render_table(result: ScanResult, console: Console) -> None:
    summary = (
        f"{result.hosts} hosts, {result.ports_checked} ports checked, {result.open_ports} open, "
        f"{len(result.findings)} AI services in {result.seconds:.1f}s"
    )
    if not result.findings:
        console.print(Text(f"No AI services found ({summary})."))
    else:
        table = Table(title=Text(summary), title_justify="left", show_lines=False)
        for column in ("severity", "service", "product", "verdict", "reachable without credentials", "models"):
            table.add_column(column)
        for f in result.findings:
            product = f.product_name + (f" {f.version}" if f.version else "")
            reachable = ", ".join(d["endpoint"] for d in f.dangerous[:4]) + (" …" if len(f.dangerous) > 4 else "")
            models = ", ".join(f.models[:3]) + (f" (+{len(f.models) - 3})" if len(f.models) > 3 else "")
            table.add_row(
                _text(f.severity, STYLE[f.severity]),
                _text(f.url),
                _text(product),
                _text(f.verdict),
                _text(reachable or "-"),
                _text(models or "-"),
            )
        console.print(table)
        for f in result.findings:
            if f.fix["steps"] and f.severity in ("critical", "high"):
                console.print()
                console.print(_text(f"{f.url} ({f.product_name}, {f.verdict}): {f.verdict_note}", "bold"))
                for step in f.fix["steps"]:
                    console.print(_text(f"  - {step}"), soft_wrap=True)
    if result.unidentified:
        console.print()
        console.print(_text(f"Open HTTP ports that match no catalogued AI service: {', '.join(result.unidentified)}"))
    for error in result.errors:
        console.print(_text(f"could not scan {error.target}: {error.error}", "yellow"))


def render_audit_table(result: AuditResult, console: Console) -> None:
    summary = (
        f"{result.files} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f}s, {len(result.findings)} findings"
    )
    if not result.findings:
        console.print(Text(f"No findings ({summary})."))
    else:
        table = Table(title=Text(summary), title_justify="left")
        for column in ("severity", "where", "finding", "shown"):
            table.add_column(column, overflow="fold")
        for f in result.findings:
            where = f"{f.file}:{f.line}" if f.file else f"{f.socket} {f.process or ''}".strip()
            table.add_row(
                _text(f.severity, STYLE[f.severity]),
                _text(where),
                Text.assemble(_text(f.title), _text(f" {f.rule}", "dim")),
                _text(f.redacted or f.evidence or "-"),
            )
        console.print(table)
        fixes: dict[str, list[str]] = {}
        for f in result.findings:
            fixes.setdefault(f.fix, []).append(f"{f.file}:{f.line}" if f.file else f.socket or "")
        console.print()
        console.print(Text("How to fix", style="bold"))
        for fix, places in fixes.items():
            shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
            console.print(_text(f"  - {shown}: {fix}"), soft_wrap=True)
    for item in result.listeners_fine:
        verdict = f", {item['verdict']}" if item.get("verdict") else ""
        console.print(_text(f"fine: {item['product']} on {item['socket']} listens on loopback only{verdict}", "green"))
    notes = []
    if result.ignored_inline:
        notes.append(f"{result.ignored_inline} ignored inline")
    if result.ignored_baseline:
        notes.append(f"{result.ignored_baseline} accepted by the baseline")
    notes += [f"{count} skipped ({why})" for why, count in sorted(result.skipped.items())]
    if notes:
        console.print(_text("; ".join(notes), "dim"))
    for error in result.errors:
        console.print(_text(error, "yellow"))
