"""A self-contained HTML report, to forward to a colleague: no scripts, no external resources, all values escaped."""

from __future__ import annotations

import time
from html import escape

from aiperimeter import __version__
from aiperimeter.catalog.schema import SEVERITIES
from aiperimeter.scan.findings import Finding, ScanResult

COLOURS = {"critical": "#b42318", "high": "#d9480f", "medium": "#b08800", "low": "#1c7ed6", "info": "#868e96"}

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;
color:#1f2328;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}.meta{color:#57606a}
.cards{display:flex;gap:.8rem;margin:1.2rem 0;flex-wrap:wrap}
.card{border-radius:8px;padding:.6rem 1rem;color:#fff;min-width:6rem}.card b{display:block;font-size:1.5rem}
table{border-collapse:collapse;width:100%;margin:1rem 0}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}th{background:#f6f8fa}
.sev{color:#fff;border-radius:4px;padding:.1rem .45rem;font-size:.8rem;text-transform:uppercase}
details{margin:.3rem 0 1rem}summary{cursor:pointer;font-weight:600}
code,pre{background:#f6f8fa;border-radius:4px;padding:.1rem .3rem;font-size:.85rem}
pre{padding:.6rem;white-space:pre-wrap;word-break:break-all}ul{margin:.3rem 0}
"""


def _badge(severity: str) -> str:
    return f'<span class="sev" style="background:{COLOURS[severity]}">{escape(severity)}</span>'


def _product(f: Finding) -> str:
    return f"{f.product_name} {f.version}" if f.version else f.product_name


def _finding(f: Finding) -> str:
    rows = "".join(
        f"<li><code>{escape(d['endpoint'])}</code> {_badge(d['severity'])} {escape(d['why'])}</li>" for d in f.dangerous
    )
    evidence = "\n".join(
        f"{escape(e['request'])} -> {escape(str(e['status']))}  {escape(e['excerpt'])}" for e in f.evidence
    )
    steps = "".join(f"<li>{escape(step)}</li>" for step in f.fix["steps"])
    models = ", ".join(escape(m) for m in f.models) or "none listed"
    return f"""
<details {"open" if f.severity in ("critical", "high") else ""}>
<summary>{_badge(f.severity)} {escape(f.url)}: {escape(_product(f))}, {escape(f.verdict)}</summary>
<p>{escape(f.verdict_note)}</p>
<p><b>Models:</b> {models}</p>
{f"<p><b>Reachable without credentials:</b></p><ul>{rows}</ul>" if rows else ""}
{f"<p><b>Fix:</b></p><ol>{steps}</ol>" if steps else ""}
<p><b>Evidence:</b></p><pre>{evidence}</pre>
<p class="meta">References: {" ".join(f'<a href="{escape(r)}">{escape(r)}</a>' for r in f.references)}</p>
</details>"""


def render_html(result: ScanResult) -> bytes:
    counts = {s: sum(1 for f in result.findings if f.severity == s) for s in reversed(SEVERITIES)}
    cards = "".join(
        f'<div class="card" style="background:{COLOURS[s]}"><b>{n}</b>{escape(s)}</div>' for s, n in counts.items()
    )
    rows = "".join(
        f"<tr><td>{_badge(f.severity)}</td><td>{escape(f.url)}</td><td>{escape(_product(f))}</td>"
        f"<td>{escape(f.verdict)}</td><td>{len(f.dangerous)}</td></tr>"
        for f in result.findings
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    errors = "".join(f"<li>{escape(e.target)}: {escape(e.error)}</li>" for e in result.errors)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>aiperimeter scan report</title><style>{CSS}</style></head><body>
<h1>Exposed AI services</h1>
<p class="meta">aiperimeter {escape(__version__)} scan of {result.hosts} hosts and {result.ports_checked} ports,
{result.open_ports} open, {when}, {result.seconds:.1f}s.</p>
<div class="cards">{cards}</div>
{
        "<table><tr><th>severity</th><th>service</th><th>product</th><th>verdict</th><th>dangerous endpoints</th></tr>"
        + rows
        + "</table>"
        if rows
        else "<p>No AI services were found.</p>"
    }
{"".join(_finding(f) for f in result.findings)}
{f"<h2>Could not scan</h2><ul>{errors}</ul>" if errors else ""}
</body></html>
"""
    return page.encode()
