"""What a configuration starts: one subject per service, container, unit or command, with where each fact was read.

Parsers (audit/configs.py) fill subjects; rules (audit/misconfig.py) judge them. Products are recognised from the
image and the command line with the catalog's `runs` facts. A `docker run` / `podman run` command line is unpacked
into the container it starts, because that is how a published port most often appears in scripts and units.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiperimeter.catalog.misconfig_rules import Source
from aiperimeter.catalog.schema import Fingerprint


@dataclass(frozen=True)
class Published:
    host_ip: str | None  # None: every interface (no address given)
    host_port: str | None
    container_port: str
    line: int
    unresolved: bool = False  # the address comes from a variable without a default

    @property
    def beyond_loopback(self) -> bool:
        if self.host_ip is None or self.unresolved:
            return True
        if self.host_ip == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host_ip.strip("[]")).is_loopback
        except ValueError:
            return True

    def describe(self) -> str:
        where = "all interfaces" if self.host_ip is None else self.host_ip
        host = f"{where}:{self.host_port}" if self.host_port else f"{where} (a random port)"
        return f"publishes {host} -> {self.container_port}"


@dataclass
class Subject:
    source: Source
    file: str
    name: str
    line: int
    image: str | None = None
    argv: list[str] = field(default_factory=list)
    argv_line: int | None = None
    env: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (value, line)
    ports: list[Published] = field(default_factory=list)
    host_network: int | None = None  # line where the host network is chosen
    exposures: list[tuple[str, int, str]] = field(default_factory=list)  # (how, line, what exposes it)
    document: Any = None  # the subject's own parsed document, for `missing` tests
    env_files: list[tuple[str, int]] = field(default_factory=list)  # compose env_file paths, as written
    inherited: dict[str, tuple[str, int]] = field(default_factory=dict)  # from env_file; `env` overrides it
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"
    products: set[str] = field(default_factory=set)


class ProductIndex:
    def __init__(self, catalog: Iterable[Fingerprint]) -> None:
        self._images = [(fp.id, re.compile(p)) for fp in catalog for p in fp.runs.images]
        self._commands = [(fp.id, re.compile(p)) for fp in catalog for p in fp.runs.commands]
        self._processes = {name: fp.id for fp in catalog for name in fp.runs.processes}

    def of(self, image: str | None, argv: list[str]) -> set[str]:
        found = set()
        if image:
            found |= {pid for pid, regex in self._images if regex.search(image.lower())}
        if argv:
            line = " ".join(argv)
            found |= {pid for pid, regex in self._commands if regex.search(line)}
        return found

    def of_process(self, name: str, argv: list[str]) -> set[str]:
        found = {self._processes[name]} if name in self._processes else set()
        return found | self.of(None, argv)


# Wrappers that run the command after them; their own options are skipped.
_WRAPPERS = {"exec", "nohup", "sudo", "time", "setsid", "nice", "stdbuf", "env", "uv", "poetry", "pipx", "npx"}
_WRAPPER_SUBCOMMANDS = {"run"}
# docker/podman run options that take a value as the next word.
_RUN_VALUED = frozenset({
    "-e", "--env", "-v", "--volume", "-p", "--publish", "--name", "--network", "--net", "-w", "--workdir",
    "--env-file", "--restart", "--entrypoint", "-u", "--user", "-h", "--hostname", "--mount", "--label", "-l",
    "--memory", "-m", "--cpus", "--shm-size", "--ipc", "--add-host", "--device", "--runtime", "--platform", "--pull",
    "--log-driver", "--log-opt", "--ulimit", "--cap-add", "--cap-drop", "--security-opt", "--tmpfs", "--expose",
    "--health-cmd", "--dns", "--gpus", "--pid", "--cidfile", "--cpu-shares", "-c", "--memory-swap", "--group-add",
    "--stop-signal", "--stop-timeout"
})  # fmt: skip
FROM_CALLER = "<from the caller's environment>"  # `-e NAME` or compose `- NAME`: set, value unknown here
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def strip_wrappers(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command proper and the variables set inline before it (`A=1 sudo -E env B=2 vllm serve`)."""
    env: dict[str, str] = {}
    words = list(argv)
    while words:
        head = words[0]
        if _ASSIGN.match(head):
            name, _, value = head.partition("=")
            env[name] = value
            words.pop(0)
        elif head.rsplit("/", 1)[-1] in _WRAPPERS:
            words.pop(0)
            while words and (words[0].startswith("-") or words[0] in _WRAPPER_SUBCOMMANDS):
                words.pop(0)
        else:
            break
    return words, env


def parse_port_spec(spec: str, line: int) -> Published | None:
    """Compose and `docker run -p` short syntax: [IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]."""
    text, unresolved = interpolate(spec.strip())
    text = text.split("/", 1)[0]
    if not text:
        return None
    if text.startswith("["):  # [v6]:host:container
        address, _, rest = text[1:].partition("]")
        host_port, _, container = rest.lstrip(":").rpartition(":")
        return Published(address, host_port or None, container or host_port, line, unresolved)
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        return Published(None, None, parts[0], line, unresolved)
    if len(parts) == 2:
        return Published(None, parts[0] or None, parts[1], line, unresolved)
    return Published(parts[0] or None, parts[1] or None, parts[2], line, unresolved)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str) -> tuple[str, bool]:
    """Compose-style `${VAR:-default}`: the default where one is given; unresolved otherwise (assume the worst)."""
    unresolved = False

    def one(match: re.Match[str]) -> str:
        nonlocal unresolved
        if match[2] is not None:
            return match[3]
        unresolved = True
        return ""

    return _VAR.sub(one, text), unresolved


def container_run(argv: list[str], line: int) -> tuple[str | None, list[str], dict[str, str], list[Published], bool]:
    """Unpack `docker|podman [container] run [OPTIONS] IMAGE [COMMAND...]`: image, command, env, ports, host net."""
    words = argv[1:]
    if words and words[0] == "container":
        words = words[1:]
    words = words[1:]  # "run"
    env: dict[str, str] = {}
    ports: list[Published] = []
    host_net = False
    image = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            image = word
            i += 1
            break
        flag, eq, inline = word.partition("=")
        value = inline if eq else None
        if value is None and flag in _RUN_VALUED:
            i += 1
            value = words[i] if i < len(words) else ""
        elif value is None and len(flag) > 2 and not flag.startswith("--") and flag[:2] in ("-p", "-e"):
            value = flag[2:]  # -p8080:80
            flag = flag[:2]
        if flag in ("-e", "--env") and value:
            name, has, val = value.partition("=")
            env[name] = val if has else FROM_CALLER
        elif flag in ("-p", "--publish") and value and (port := parse_port_spec(value, line)):
            ports.append(port)
        elif flag in ("--network", "--net") and value == "host":
            host_net = True
        i += 1
    return image, words[i:], env, ports, host_net


def is_container_run(argv: list[str]) -> bool:
    if not argv or argv[0].rsplit("/", 1)[-1] not in ("docker", "podman", "nerdctl"):
        return False
    rest = argv[1:]
    if rest[:1] == ["container"]:
        rest = rest[1:]
    return rest[:1] == ["run"]


def command_subject(source: Source, file: str, argv: list[str], line: int, env: dict[str, tuple[str, int]]) -> Subject:
    """A subject from a command line (script, unit, Dockerfile), unpacking container runs."""
    words, inline = strip_wrappers(argv)
    merged = dict(env) | {k: (v, line) for k, v in inline.items()}
    subject = Subject(source, file, words[0].rsplit("/", 1)[-1] if words else "command", line, argv_line=line)
    if is_container_run(words):
        image, command, run_env, ports, host_net = container_run(words, line)
        subject.image, subject.argv, subject.ports = image, command, ports
        subject.name = image or subject.name
        subject.env = merged | {k: (v, line) for k, v in run_env.items()}
        subject.host_network = line if host_net else None
    else:
        subject.argv, subject.env = words, merged
    return subject
