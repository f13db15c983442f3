"""What every command shares: the console, error exits, durations, the data dir option."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the key store and audit log. Default: $AIPERIMETER_HOME, else ~/.local/share/aiperimeter.",
        show_default=False,
    ),
]

_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '10m', '12h', '30d', '2w' -> seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration; write a number and a unit, as 90s, 10m, 12h, 30d or 2w")
    return int(match.group(1)) * _UNIT[match.group(2)]


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)
