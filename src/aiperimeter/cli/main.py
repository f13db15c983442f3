"""The `aiperimeter` command."""

from __future__ import annotations

import sys

import typer

from aiperimeter import __version__
from aiperimeter.cli import db, keys, watch
from aiperimeter.cli.audit import audit
from aiperimeter.cli.common import fail
from aiperimeter.cli.demo import demo
from aiperimeter.cli.gateway import gateway
from aiperimeter.cli.scan import scan
from aiperimeter.errors import AiperimeterError

app = typer.Typer(
    name="aiperimeter",
    help=(
        "Close the perimeter around self-hosted AI. Model servers such as Ollama, vLLM and llama.cpp answer anyone "
        "who can reach them; aiperimeter puts them behind keys.\n\n"
        "Start with 'aiperimeter keys create --name my-app', then "
        "'aiperimeter gateway --upstream http://127.0.0.1:11434 --kind ollama'."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(help=gateway.__doc__)(gateway)
app.add_typer(keys.app, name="keys")
app.add_typer(db.app, name="db")
app.add_typer(watch.app, name="watch")
app.command()(demo)
app.command(help=scan.__doc__)(scan)
app.command(help=audit.__doc__)(audit)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aiperimeter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Root options."""


def main() -> None:
    try:
        app(standalone_mode=True)
    except AiperimeterError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
