"""Accepted findings: a baseline file of fingerprints. A finding whose fingerprint is listed is not reported.

Fingerprints hash the rule, the file and what was found (the secret itself for secrets, the settings for
misconfigurations), not the line number, so editing other parts of a file keeps its accepted findings accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import orjson

from aiperimeter import __version__
from aiperimeter.audit.findings import AuditFinding
from aiperimeter.errors import ConfigError

FORMAT = 1


def load_baseline(path: Path) -> set[str]:
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the baseline: {exc.strerror}", source=str(path)) from None
    except orjson.JSONDecodeError:
        raise ConfigError("the baseline is not JSON; recreate it with --write-baseline", source=str(path)) from None
    entries = doc.get("findings") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("aiperimeter_baseline") != FORMAT or not isinstance(entries, list):
        raise ConfigError(
            f"not an aiperimeter baseline (format {FORMAT}); recreate it with --write-baseline", source=str(path)
        )
    prints = set()
    for index, entry in enumerate(entries):
        value = entry.get("fingerprint") if isinstance(entry, dict) else None
        if not isinstance(value, str) or not value:
            raise ConfigError("each entry needs a fingerprint string", source=str(path), field=f"findings[{index}]")
        prints.add(value)
    return prints


def write_baseline(path: Path, findings: Iterable[AuditFinding]) -> int:
    """Write the findings as accepted; returns how many. The file holds no secret (only redacted forms)."""
    entries = sorted(
        (
            {
                "fingerprint": f.fingerprint,
                "kind": f.kind,
                "rule": f.rule,
                "file": f.file or f.socket,
                "line": f.line,
                "shown": f.redacted or f.evidence,
            }
            for f in findings
        ),
        key=lambda e: (str(e["file"]), e["line"] or 0, str(e["rule"]), str(e["fingerprint"])),
    )
    unique = list({e["fingerprint"]: e for e in entries}.values())
    doc = {"aiperimeter_baseline": FORMAT, "generated_by": f"aiperimeter {__version__}", "findings": unique}
    try:
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the baseline: {exc.strerror}", source=str(path)) from None
    return len(unique)
