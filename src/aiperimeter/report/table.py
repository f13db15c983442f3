"""The terminal view: a table of findings, then what to do about the worst of them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aiperimeter.scan.findings import ScanResult

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
                Text(f.severity, style=STYLE[f.severity]),
                Text(f.url),
                Text(product),
                Text(f.verdict),
                Text(reachable or "-"),
                Text(models or "-"),
            )
        console.print(table)
        for f in result.findings:
            if f.fix["steps"] and f.severity in ("critical", "high"):
                console.print(Text(f"\n{f.url} ({f.product_name}, {f.verdict}): {f.verdict_note}", style="bold"))
                for step in f.fix["steps"]:
                    console.print(Text(f"  - {step}"), soft_wrap=True)
    if result.unidentified:
        console.print(Text(f"\nOpen HTTP ports that match no catalogued AI service: {', '.join(result.unidentified)}"))
    for error in result.errors:
        console.print(Text(f"could not scan {error.target}: {error.error}", style="yellow"))
