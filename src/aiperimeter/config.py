"""Settings: typed models, loaded from defaults < YAML file < environment < command-line flags.

Every validation error names its source (file or variable) and field, and says how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aiperimeter.errors import ConfigError
from aiperimeter.gateway.jwt import JWTSettings
from aiperimeter.sensitive import Secret

Kind = Literal["ollama", "openai", "vllm", "llamacpp", "anthropic"]
KINDS: tuple[Kind, ...] = ("ollama", "openai", "vllm", "llamacpp", "anthropic")
DEFAULT_LISTEN = "127.0.0.1:8787"
ENV_PREFIX = "AIPERIMETER_"


def default_data_dir() -> Path:
    """$AIPERIMETER_HOME, else the per-user data folder. The gateway and `keys` agree by calling this."""
    home = os.environ.get("AIPERIMETER_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aiperimeter"


def split_host_port(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse `host:port`, `[v6]:port` or `port`. Raises ValueError with a readable message."""
    value = value.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not [IPv6]:PORT")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, as [::1]:8787")
    else:
        host, port_text = value, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r} has no port; write HOST:PORT")
        port_text = str(default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    if not host:
        raise ValueError(f"{value!r} has no host; write 127.0.0.1:PORT to stay on this machine")
    return host, int(port_text)


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(5.0, gt=0, description="seconds to open a connection to the upstream")
    first_byte: float = Field(300.0, gt=0, description="seconds until the upstream sends response headers")
    idle: float = Field(120.0, gt=0, description="seconds of silence allowed between response chunks")
    total: float = Field(3600.0, gt=0, description="seconds a whole answer may take, streamed ones included")
    client_idle: float = Field(30.0, gt=0, description="seconds of silence allowed while a client sends its body")
    keepalive: float = Field(75.0, gt=0, description="seconds an idle client connection stays open")


class LimitSettings(BaseModel):
    """Limits per key (a key's own limits take precedence) and over all keys together; None is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="requests per minute, per key")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (prompt + completion), per key")
    concurrency: int | None = Field(None, ge=1, description="requests at once, per key")
    global_rpm: int | None = Field(None, ge=1)
    global_tpm: int | None = Field(None, ge=1)
    global_concurrency: int | None = Field(None, ge=1)
    default_max_tokens: int = Field(1024, ge=1, description="completion estimate when a request sets no limit")
    replicas: int = Field(1, ge=1, le=1000, description="when Redis is down, each replica enforces limits / this")
    lease: float = Field(60.0, ge=5, le=3600, description="seconds a dead replica's concurrency slots stay taken")


Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
AlertAction = Literal["suspend_key", "block_address"]


class BruteForceSettings(BaseModel):
    """Failed authentications from one client address: answered ever more slowly, then refused for a while."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    window: float = Field(300.0, gt=0, le=86400, description="seconds over which failures from an address count")
    slow_after: int = Field(5, ge=1, description="failures in the window before each further one is slowed")
    max_delay: float = Field(2.0, ge=0, le=30, description="the longest a failed attempt is held, in seconds")
    block_after: int = Field(30, ge=1, description="failures in the window that block the address")
    block_seconds: float = Field(900.0, gt=0, le=30 * 86400, description="how long a blocked address is refused")
    # Loopback by default: behind a reverse proxy on the same host every client arrives from 127.0.0.1, and blocking
    # it would refuse everyone. Set `exempt: []` to guard loopback clients too.
    exempt: tuple[str, ...] = Field(
        ("127.0.0.0/8", "::1/128"), description="networks (CIDR) never slowed or blocked, as 10.0.0.0/8"
    )

    @field_validator("exempt")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network; write it as 10.0.0.0/8 or 2001:db8::/32") from None
        return value

    @model_validator(mode="after")
    def _order(self) -> BruteForceSettings:
        if self.block_after < self.slow_after:
            raise ValueError("block_after must be at least slow_after")
        return self


class WatchSettings(BaseModel):
    """Metrics, anomaly alerts and the dashboard (aiperimeter.watch)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    enabled: bool = Field(True, description="learn per-key baselines from the audit stream and raise alerts")
    metrics_token: Secret | None = None  # a bearer token that opens only /admin/metrics, for Prometheus
    webhook_url: Secret | None = None  # alerts are POSTed here as Slack-compatible JSON; the URL is a secret
    webhook_timeout: float = Field(5.0, gt=0, le=60)
    min_severity: Severity = Field("medium", description="alerts below this are kept but not delivered")
    actions: dict[Severity, tuple[AlertAction, ...]] = Field(
        default_factory=dict, description="automatic actions per severity, as {critical: [suspend_key]}"
    )
    block_seconds: float = Field(3600.0, gt=0, le=30 * 86400, description="how long block_address blocks")
    stream: str = Field(
        "aiperimeter:audit",
        pattern=r"^[A-Za-z0-9:_.-]{1,100}$",
        description="the Redis stream a cluster's replicas share their audit lines on; one per cluster",
    )
    brute_force: BruteForceSettings = Field(default_factory=BruteForceSettings)

    @field_validator("metrics_token", "webhook_url", mode="before")
    @classmethod
    def _wrap_secret(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, Secret) or value is None:
            return value
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if not value:
            return None
        if info.field_name == "webhook_url":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL, as https://hooks.slack.com/services/...")
        elif len(value) < 16:
            raise ValueError("must be at least 16 characters; generate one with: openssl rand -hex 24")
        return Secret(value)


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    upstream: str
    kind: Kind = "openai"
    listen: str = DEFAULT_LISTEN
    expose: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    workers: int = Field(1, ge=1, le=64)
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    upstream_api_key: Secret | None = None
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    audit_log: str = "file"
    key_cache_ttl: float = Field(5.0, gt=0, le=60)
    key_stale_window: float = Field(60.0, ge=0, le=600)  # verified keys keep working this long in a store outage
    revocation_poll: float = Field(0.25, gt=0, le=1)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    jwt: JWTSettings | None = None  # JWT bearer tokens from an identity provider, besides aiperimeter keys
    database: Secret | None = None  # postgresql://... for a key store shared by several replicas; else SQLite
    redis: Secret | None = None  # redis://... for cluster-wide limits and revocation pushed to every replica
    # --- admin API (aiperimeter.gateway.admin): HOST:PORT of a separate key-management listener; off unless set ---
    admin_listen: str | None = None
    # --- tool policy (aiperimeter.policy): a folder of NAME.yaml policies; keys and JWT claims name one ---
    tool_policies: Path | None = None
    default_tool_policy: str | None = None  # for keys and tokens that name none; None: their tools are unrestricted
    # --- watch (aiperimeter.watch): metrics, anomaly alerts, brute-force protection, dashboard ---
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, as http://127.0.0.1:11434")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use upstream_api_key for an upstream key")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("admin_listen")  # admin API
    @classmethod
    def _admin_listen(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        split_host_port(value)
        return value.strip()

    @field_validator("upstream_api_key", mode="before")
    @classmethod
    def _wrap_secret(cls, value: object) -> object:
        if isinstance(value, str):
            return Secret(value) if value else None
        return value

    @field_validator("database", "redis", mode="before")
    @classmethod
    def _wrap_url(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, Secret):
            value = value.reveal()
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError("must be a URL")
        schemes = ("postgresql", "postgres") if info.field_name == "database" else ("redis", "rediss", "unix")
        scheme = urlsplit(value).scheme
        if scheme not in schemes:
            raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL")
        return Secret(value)  # URLs carry passwords: never printed

    @field_validator("audit_log")
    @classmethod
    def _audit(cls, value: str) -> str:
        if not value:
            raise ValueError("use 'file' (audit.jsonl in the data dir), 'stdout', or a file path")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    @model_validator(mode="after")
    def _default_policy(self) -> GatewaySettings:
        if self.default_tool_policy is not None and self.tool_policies is None:
            raise ValueError("default_tool_policy needs tool_policies: the folder the policy is loaded from")
        return self

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def audit_path(self) -> Path | None:
        if self.audit_log == "stdout":
            return None
        if self.audit_log == "file":
            return self.data_dir / "audit.jsonl"
        return Path(self.audit_log).expanduser()


_ENV_FIELDS = {
    "UPSTREAM": "upstream",
    "KIND": "kind",
    "LISTEN": "listen",
    "WORKERS": "workers",
    "UPSTREAM_API_KEY": "upstream_api_key",
    "AUDIT_LOG": "audit_log",
    "DATABASE": "database",
    "REDIS": "redis",
    "ADMIN_LISTEN": "admin_listen",  # admin API
    "TOOL_POLICIES": "tool_policies",
    "DEFAULT_TOOL_POLICY": "default_tool_policy",
}
# Settings inside `watch` that the environment may set: secrets belong there rather than in a file.
_ENV_WATCH_FIELDS = {
    "METRICS_TOKEN": "metrics_token",
    "ALERT_WEBHOOK": "webhook_url",
}


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling against the configuration reference in the README"
        lines.append(f"{field}: {message}")
    return "; ".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"is not valid YAML{where}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of settings (key: value)", source=str(path))
    return data


def load_gateway_settings(config_file: Path | None, overrides: dict[str, Any]) -> GatewaySettings:
    """Merge the file, the environment and explicit overrides (None values are ignored) into settings."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        for key, value in read_yaml(config_file).items():
            merged[key] = value
            sources[key] = str(config_file)
    for suffix, field in _ENV_FIELDS.items():
        value = os.environ.get(ENV_PREFIX + suffix)
        if value:
            merged[field] = value
            sources[field] = ENV_PREFIX + suffix
    for suffix, field in _ENV_WATCH_FIELDS.items():
        value = os.environ.get(ENV_PREFIX + suffix)
        if value:
            watch = merged.get("watch")
            if watch is not None and not isinstance(watch, dict):
                break  # the model reports the malformed section
            merged["watch"] = {**(watch or {}), field: value}
            sources.setdefault("watch", ENV_PREFIX + suffix)
    for key, value in overrides.items():
        if value is not None:
            merged[key] = value
            sources[key] = "command line"
    if "upstream" not in merged:
        raise ConfigError(
            "no upstream given: pass --upstream URL (for example --upstream http://127.0.0.1:11434 --kind ollama)"
        )
    if "kind" not in merged:
        merged["kind"] = "ollama" if urlsplit(str(merged["upstream"])).port == 11434 else "openai"
    try:
        return GatewaySettings(**merged)
    except ValidationError as exc:
        first = str(exc.errors()[0]["loc"][0]) if exc.errors() and exc.errors()[0]["loc"] else ""
        raise ConfigError(_describe(exc), source=sources.get(first, "settings")) from None
