"""`aiperimeter audit`: why services are exposed, from the inside: listeners, configurations, leaked keys."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from aiperimeter.audit.baseline import load_baseline, write_baseline
from aiperimeter.audit.files import DEFAULT_MAX_BYTES
from aiperimeter.audit.runner import AuditOptions, run_audit
from aiperimeter.catalog.schema import SEVERITIES
from aiperimeter.cli.common import console, err_console, fail
from aiperimeter.report.json import render_audit_json
from aiperimeter.report.sarif import render_audit_sarif
from aiperimeter.report.table import render_audit_table
from aiperimeter.scan.targets import parse_ports

HELP = (
    "Find the causes of exposure from the inside: AI services listening beyond loopback, configurations that "
    "publish them or switch their authentication off, and AI-provider keys committed to code.\n\n"
    "With no PATH, audits the listening sockets of this host (probing each one beyond loopback with the scanner's "
    "catalog, over loopback). With PATHs, audits the files under them: docker-compose, Kubernetes and "
    "Helm-rendered manifests, .env files, systemd units, shell scripts, Dockerfiles, LiteLLM configs, and every "
    "text file for secrets (.git, dependency folders, binary and large files are skipped).\n\n"
    "Examples:\n\n"
    "aiperimeter audit    (listeners on this host)\n\n"
    "aiperimeter audit . --format sarif > audit.sarif\n\n"
    "aiperimeter audit --staged    (what is staged in git: the pre-commit hook)\n\n"
    "aiperimeter audit . --write-baseline .aiperimeter-baseline.json, then "
    "aiperimeter audit . --baseline .aiperimeter-baseline.json\n\n"
    "Silence one line with a comment containing 'aiperimeter:ignore' (or 'aiperimeter:ignore[rule-id]').\n\n"
    "Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage or runtime error."
)
FAIL_ON = (*SEVERITIES, "never")
FORMATS = ("table", "json", "sarif")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a size; write a number with an optional unit: 500k, 10M, 1G")
    return int(float(match[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2].lower()])


def audit(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders to audit.", show_default=False)] = None,
    listeners: Annotated[
        bool, typer.Option("--listeners", help="Audit listening sockets (the default when no PATH is given).")
    ] = False,
    no_secrets: Annotated[bool, typer.Option("--no-secrets", help="Do not look for secrets.")] = False,
    no_config: Annotated[bool, typer.Option("--no-config", help="Do not check configurations.")] = False,
    staged: Annotated[
        bool, typer.Option("--staged", help="Audit what is staged in git (read from the index), for a pre-commit hook.")
    ] = False,
    output: Annotated[str, typer.Option("--format", help=f"Output: {', '.join(FORMATS)}.")] = "table",
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Do not report the findings accepted in this file.")
    ] = None,
    new_baseline: Annotated[
        Path | None,
        typer.Option("--write-baseline", help="Write every current finding to this file as accepted, and exit 0."),
    ] = None,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help=f"Exit 1 when a finding is at least this severe: {', '.join(FAIL_ON)}.")
    ] = "high",
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Skip files and folders matching this glob (repeatable).")
    ] = None,
    max_file_size: Annotated[
        str, typer.Option("--max-file-size", help="Skip files larger than this (e.g. 500k, 10M).")
    ] = f"{DEFAULT_MAX_BYTES >> 20}M",
    ports: Annotated[
        str | None, typer.Option("--ports", help="Listeners: audit only these ports, e.g. '11434,8000-8100'.")
    ] = None,
) -> None:
    if fail_on not in FAIL_ON:
        fail(f"--fail-on must be one of {', '.join(FAIL_ON)}")
    if output not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    if staged and paths:
        fail("--staged audits git's index; give either --staged or PATHs, not both")
    if no_secrets and no_config and (paths or staged):
        fail("--no-secrets and --no-config together leave nothing to check in files")
    options = AuditOptions(
        paths=list(paths or []),
        staged=staged,
        secrets=not no_secrets,
        config=not no_config,
        listeners=listeners or not (paths or staged),
        ports=frozenset(parse_ports(ports, [])) if ports else None,
        max_bytes=parse_size(max_file_size),
        exclude=tuple(exclude or ()),
        baseline=frozenset(load_baseline(baseline)) if baseline is not None else frozenset(),
    )
    result = run_audit(options)
    if new_baseline is not None:
        count = write_baseline(new_baseline, result.findings)
        err_console.print(f"{count} findings written to {new_baseline} as accepted")
        return
    if output == "json":
        sys.stdout.buffer.write(render_audit_json(result))
    elif output == "sarif":
        sys.stdout.buffer.write(render_audit_sarif(result))
    else:
        render_audit_table(result, console)
    worst = result.worst()
    if fail_on != "never" and worst is not None and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on):
        raise typer.Exit(1)


audit.__doc__ = HELP
