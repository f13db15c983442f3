"""`aiperimeter gateway`: put a model server behind credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aiperimeter.cli.common import DataDir, err_console
from aiperimeter.config import KINDS, load_gateway_settings

HELP = (
    "Run the zero-trust gateway in front of a model server.\n\n"
    "Every request needs an aiperimeter key (create one with 'aiperimeter keys create --name NAME'). Only the routes "
    "the upstream kind's allowlist admits are forwarded, admin routes (model pull, delete, ...) only for admin keys. "
    "Listens on 127.0.0.1 unless told otherwise.\n\n"
    "Examples:\n\n"
    "aiperimeter gateway --upstream http://127.0.0.1:11434 --kind ollama\n\n"
    "aiperimeter gateway --upstream http://10.0.0.5:8000 --kind vllm --listen 0.0.0.0:8787 --expose "
    "--tls-cert cert.pem --tls-key key.pem --workers 2\n\n"
    f"Kinds: {', '.join(KINDS)}. Settings can also come from --config FILE (YAML) and AIPERIMETER_* variables."
)


def gateway(
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="The model server's URL, as http://127.0.0.1:11434.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help=f"API of the upstream: {', '.join(KINDS)}. Default: ollama on port 11434, else openai.",
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT to serve on. Default: 127.0.0.1:8787.")
    ] = None,
    expose: Annotated[
        bool,
        typer.Option("--expose", help="Allow a non-loopback --listen address (other machines can connect)."),
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate chain for HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key for HTTPS.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes sharing the port. Default: 1.")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database", help="postgresql://... key store shared by replicas. Default: SQLite in the data dir."
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option("--redis", help="redis://... for cluster-wide limits and instant revocation on every replica."),
    ] = None,
    admin_listen: Annotated[
        str | None,
        typer.Option(
            "--admin-listen",
            help="HOST:PORT of the admin API, to manage keys on the running gateway with "
            "'aiperimeter keys ... --server URL' (as 127.0.0.1:8788). Off by default; off loopback it needs "
            "--expose and TLS.",
            show_default=False,
        ),
    ] = None,
    tool_policies: Annotated[
        Path | None,
        typer.Option(
            "--tool-policies",
            help="Folder of tool policies (NAME.yaml each); keys created with --tool-policy NAME are held to them.",
        ),
    ] = None,
    default_tool_policy: Annotated[
        str | None,
        typer.Option("--default-tool-policy", help="The policy for keys and tokens that name none."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file (see the README).")] = None,
    data_dir: DataDir = None,
) -> None:
    settings = load_gateway_settings(
        config,
        {
            "upstream": upstream,
            "kind": kind,
            "listen": listen,
            "expose": expose or None,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "workers": workers,
            "data_dir": data_dir,
            "database": database,
            "redis": redis,
            "admin_listen": admin_listen,
            "tool_policies": tool_policies,
            "default_tool_policy": default_tool_policy,
        },
    )
    # Imported here: the server stack is heavy, and every other command starts faster without it.
    from aiperimeter.gateway.app import exposure_warning, load_tool_policies
    from aiperimeter.gateway.server import run

    policies = load_tool_policies(settings)  # an invalid policy stops the start here, with its file and field
    warning = exposure_warning(settings)
    if warning:
        err_console.print(f"[bold yellow]{warning}[/]", soft_wrap=True)
    err_console.print(
        f"upstream {settings.upstream} (kind {settings.kind}); keys and audit log in {settings.data_dir}",
        soft_wrap=True,
    )
    if settings.tool_policies is not None:
        default = f"; default {settings.default_tool_policy}" if settings.default_tool_policy else ""
        err_console.print(
            f"tool policies from {settings.tool_policies}: {', '.join(policies.names()) or 'none'}{default}",
            soft_wrap=True,
        )
    run(settings)


gateway.__doc__ = HELP
