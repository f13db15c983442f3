"""Configuration files read into subjects: compose, Kubernetes, env files, systemd units, scripts, Dockerfiles,
LiteLLM configs. Every file is hostile input: a parse error skips that file (and is counted), never the audit."""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import yaml
from dotenv.parser import parse_stream

from aiperimeter.audit.subjects import (
    FROM_CALLER,
    Published,
    Subject,
    command_subject,
    interpolate,
    parse_port_spec,
)
from aiperimeter.catalog.misconfig_rules import Source

MAX_CONFIG_BYTES = 2 * 1024 * 1024  # larger YAML is data, not configuration
_COMPOSE_NAME = re.compile(r"(^|.*[.-])(docker-)?compose(\.[\w-]+)?\.ya?ml$|^compose\.ya?ml$", re.IGNORECASE)
_SHELL_SUFFIXES = (".sh", ".bash", ".zsh", ".ksh")
_WORKLOADS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "ReplicationController"}


class ConfigParseError(ValueError):
    pass


# YAML that remembers the line of every mapping key and sequence item.
class LineDict(dict[Any, Any]):
    lines: dict[Any, int]


class LineList(list[Any]):
    lines: list[int]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's where installed), with line-keeping mappings and sequences."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            out[key] = loader.construct_object(value_node, deep=True)
        except TypeError:  # an unhashable key: not something a configuration uses
            continue
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(text: str) -> list[Any]:
    try:
        return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigParseError(f"not valid YAML: {str(exc).splitlines()[0]}") from None


def line_of(container: Any, key: Any, default: int) -> int:
    lines = getattr(container, "lines", None)
    if isinstance(container, LineDict) and lines is not None:
        return int(lines.get(key, default))
    if isinstance(container, LineList) and lines is not None and isinstance(key, int) and key < len(lines):
        return int(lines[key])
    return default


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def classify(path: str, text: str) -> Source | None:
    """What kind of configuration a file is, from its name and, for YAML, its shape."""
    name = PurePosixPath(path).name
    lowered = name.lower()
    if lowered == ".env" or lowered.startswith(".env.") or lowered.endswith(".env"):
        return "env"
    if lowered.endswith(".service"):
        return "systemd"
    if lowered in ("dockerfile", "containerfile") or lowered.endswith((".dockerfile", ".containerfile")):
        return "dockerfile"
    if lowered.startswith(("dockerfile.", "containerfile.")):
        return "dockerfile"
    if lowered.endswith(_SHELL_SUFFIXES) or (text.startswith("#!") and re.match(r"#!.*\b(ba|z|k|da)?sh\b", text)):
        return "shell"
    if lowered.endswith((".yaml", ".yml")):
        if _COMPOSE_NAME.match(name):
            return "compose"
        if re.search(r"^model_list\s*:", text, re.MULTILINE):
            return "litellm-config"
        if re.search(r"^apiVersion\s*:", text, re.MULTILINE) and re.search(r"^kind\s*:", text, re.MULTILINE):
            return "kubernetes"
        if re.search(r"^services\s*:", text, re.MULTILINE):
            return "compose"
    return None


def subjects(source: Source, path: str, text: str) -> list[Subject]:
    readers = {
        "compose": _compose,
        "kubernetes": _kubernetes,
        "env": _env,
        "systemd": _systemd,
        "shell": _shell,
        "dockerfile": _dockerfile,
        "litellm-config": _litellm,
    }
    return list(readers[source](path, text))


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _argv(value: Any) -> list[str]:
    if isinstance(value, list):
        return [scalar(v) for v in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return value.split()
    return []


def _compose(path: str, text: str) -> Iterator[Subject]:
    for doc in load_yaml(text):
        services = doc.get("services") if isinstance(doc, dict) else None
        if not isinstance(services, dict):
            continue
        for name, service in services.items():
            if not isinstance(service, dict):
                continue
            line = line_of(services, name, 1)
            subject = Subject("compose", path, str(name), line, image=scalar(service.get("image")) or None)
            argv = _argv(service.get("entrypoint")) + _argv(service.get("command"))
            subject.argv = [_env_value(word) for word in argv]
            subject.argv_line = line_of(service, "command", line_of(service, "entrypoint", line))
            subject.env = _compose_env(service.get("environment"), line_of(service, "environment", line))
            subject.env_files = _env_files(service.get("env_file"), line_of(service, "env_file", line))
            ports = service.get("ports")
            if isinstance(ports, list):
                for index, item in enumerate(ports):
                    if port := _compose_port(item, line_of(ports, index, line)):
                        subject.ports.append(port)
            if scalar(service.get("network_mode")) == "host":
                subject.host_network = line_of(service, "network_mode", line)
            yield subject


def _compose_env(value: Any, line: int) -> dict[str, tuple[str, int]]:
    env: dict[str, tuple[str, int]] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            shown = FROM_CALLER if item is None else _env_value(scalar(item))
            env[str(key)] = (shown, line_of(value, key, line))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            name, has, item_value = scalar(item).partition("=")
            env[name] = (_env_value(item_value) if has else FROM_CALLER, line_of(value, index, line))
    return env


def _env_files(value: Any, line: int) -> list[tuple[str, int]]:
    """`env_file: .env`, a list of paths, or a list of `{path: ..., required: ...}`."""
    items = value if isinstance(value, list) else [value] if value else []
    paths = [scalar(item.get("path")) if isinstance(item, dict) else scalar(item) for item in items]
    return [(path, line) for path in paths if path]


def read_env_text(text: str) -> dict[str, str]:
    """The variables an env file sets (for a compose service's env_file)."""
    return {b.key: b.value or "" for b in parse_stream(io.StringIO(text)) if b.key is not None and not b.error}


def _env_value(text: str) -> str:
    """A `${VAR}` without a default is set when the stack is deployed: unknown here, but not empty."""
    value, unresolved = interpolate(text)
    return text if unresolved and not value else value


def _compose_port(item: Any, line: int) -> Published | None:
    if isinstance(item, dict):  # long syntax
        target = scalar(item.get("target"))
        if not target:
            return None
        host_ip, unresolved = interpolate(scalar(item.get("host_ip")))
        return Published(host_ip or None, scalar(item.get("published")) or None, target, line, unresolved)
    if isinstance(item, int | str):
        return parse_port_spec(str(item), line)
    return None


def _pod_spec(doc: dict[str, Any]) -> tuple[Any, Any]:
    """The pod spec of a workload and the labels its pods carry."""
    kind = doc.get("kind")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return None, {}
    if kind == "Pod":
        metadata = doc.get("metadata")
        return spec, metadata.get("labels", {}) if isinstance(metadata, dict) else {}
    if kind == "CronJob":
        job = spec.get("jobTemplate")
        spec = job.get("spec") if isinstance(job, dict) else None
        if not isinstance(spec, dict):
            return None, {}
    template = spec.get("template")
    if not isinstance(template, dict):
        return None, {}
    metadata = template.get("metadata")
    labels = metadata.get("labels", {}) if isinstance(metadata, dict) else {}
    return template.get("spec"), labels


def _k8s_docs(text: str) -> Iterator[dict[str, Any]]:
    for doc in load_yaml(text):
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from (item for item in doc["items"] if isinstance(item, dict))
        elif isinstance(doc, dict):
            yield doc


def _namespace(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    return scalar(metadata.get("namespace")) or "default" if isinstance(metadata, dict) else "default"


def _kubernetes(path: str, text: str) -> Iterator[Subject]:
    """Containers of workloads; Services that expose them are attached later, across all files (see expose())."""
    for doc in _k8s_docs(text):
        if doc.get("kind") == "Service":
            yield _service(path, doc)
            continue
        if doc.get("kind") not in _WORKLOADS:
            continue
        spec, labels = _pod_spec(doc)
        if not isinstance(spec, dict):
            continue
        metadata = _dict(doc.get("metadata"))
        workload = scalar(metadata.get("name")) or "workload"
        host_network = line_of(spec, "hostNetwork", 1) if spec.get("hostNetwork") is True else None
        containers = spec.get("containers")
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            line = line_of(containers, index, 1)
            name = f"{workload}/{scalar(container.get('name')) or index}"
            subject = Subject("kubernetes", path, name, line, image=scalar(container.get("image")) or None)
            subject.argv = _argv(container.get("command")) + _argv(container.get("args"))
            subject.argv_line = line_of(container, "args", line_of(container, "command", line))
            subject.env = _k8s_env(container.get("env"), line)
            subject.host_network = host_network
            subject.labels = {str(k): scalar(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
            subject.namespace = _namespace(doc)
            ports = container.get("ports")
            for p_index, port in enumerate(ports if isinstance(ports, list) else []):
                if isinstance(port, dict) and port.get("hostPort"):
                    host_ip = scalar(port.get("hostIP")) or None
                    subject.ports.append(
                        Published(
                            host_ip,
                            scalar(port["hostPort"]),
                            scalar(port.get("containerPort")),
                            line_of(ports, p_index, line),
                        )
                    )
            yield subject


def _k8s_env(value: Any, line: int) -> dict[str, tuple[str, int]]:
    env: dict[str, tuple[str, int]] = {}
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict) and item.get("name"):
            # A value from a Secret or ConfigMap is set, but unknown here.
            shown = scalar(item.get("value")) if "value" in item else "<from a reference>"
            env[scalar(item["name"])] = (shown, line_of(value, index, line))
    return env


def _service(path: str, doc: dict[str, Any]) -> Subject:
    """A Service, kept as a pseudo-subject: its selector and how it exposes what it selects."""
    spec = _dict(doc.get("spec"))
    metadata = _dict(doc.get("metadata"))
    name = scalar(metadata.get("name")) or "service"
    subject = Subject("kubernetes", path, f"Service/{name}", line_of(doc, "kind", 1))
    selector = spec.get("selector")
    subject.labels = {str(k): scalar(v) for k, v in selector.items()} if isinstance(selector, dict) else {}
    subject.namespace = _namespace(doc)
    kind = scalar(spec.get("type"))
    if kind in ("LoadBalancer", "NodePort"):
        subject.exposures.append((kind, line_of(spec, "type", subject.line), f"Service/{name}"))
    if spec.get("externalIPs"):
        subject.exposures.append(("externalIPs", line_of(spec, "externalIPs", subject.line), f"Service/{name}"))
    subject.document = "service"
    return subject


def expose(all_subjects: list[Subject]) -> list[Subject]:
    """Attach each exposing Service to the containers it selects (same namespace); drop the Service subjects."""
    services = [s for s in all_subjects if s.document == "service"]
    others = [s for s in all_subjects if s.document != "service"]
    for service in services:
        if not service.exposures or not service.labels:
            continue
        for subject in others:
            if (
                subject.source == "kubernetes"
                and subject.namespace == service.namespace
                and service.labels.items() <= subject.labels.items()
            ):
                subject.exposures.extend(
                    (how, line, f"{what} in {service.file}") for how, line, what in service.exposures
                )
    return others


def _env(path: str, text: str) -> Iterator[Subject]:
    subject = Subject("env", path, PurePosixPath(path).name, 1)
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is not None and not binding.error:
            subject.env[binding.key] = (binding.value or "", binding.original.line)
    yield subject


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first physical line."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), 1):
        if not parts:
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return []


def _shell(path: str, text: str) -> Iterator[Subject]:
    env: dict[str, tuple[str, int]] = {}
    for number, line in _logical_lines(text):
        for command in re.split(r"\s(?:&&|\|\||;)\s|;\s*$", line):
            words = _words(command)
            if words[:1] == ["export"]:
                words = words[1:]
            if words and all("=" in w and re.match(r"[A-Za-z_]\w*=", w) for w in words):
                env.update({w.partition("=")[0]: (w.partition("=")[2], number) for w in words})
                continue
            if words:
                yield command_subject("shell", path, words, number, env)


def _systemd(path: str, text: str) -> Iterator[Subject]:
    env: dict[str, tuple[str, int]] = {}
    exec_start: tuple[int, list[str]] | None = None
    section = ""
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            section = stripped
            continue
        key, _, value = stripped.partition("=")
        if section != "[Service]":
            continue
        if key.strip() == "Environment":
            for word in _words(value):
                name, has, item = word.partition("=")
                if has:
                    env[name] = (item, number)
        elif key.strip() == "ExecStart" and value.strip():
            exec_start = (number, _words(value.strip().lstrip("-@+!:")))
    if exec_start is not None:
        number, argv = exec_start
        subject = command_subject("systemd", path, argv, number, env)
        subject.name = PurePosixPath(path).name
        yield subject


def _dockerfile(path: str, text: str) -> Iterator[Subject]:
    image: str | None = None
    env: dict[str, tuple[str, int]] = {}
    command: tuple[int, list[str]] | None = None
    entrypoint: list[str] = []
    for number, line in _logical_lines(text):
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":  # a new stage: what runs is the last stage's
            words = [w for w in rest.split() if not w.startswith("--")]
            image, env, command, entrypoint = (words[0] if words else None), {}, None, []
        elif instruction == "ENV":
            words = _words(rest)
            if len(words) >= 2 and "=" not in words[0]:
                env[words[0]] = (" ".join(words[1:]), number)
            else:
                env.update({w.partition("=")[0]: (w.partition("=")[2], number) for w in words if "=" in w})
        elif instruction in ("CMD", "ENTRYPOINT"):
            argv = _exec_form(rest)
            if instruction == "ENTRYPOINT":
                entrypoint = argv
            command = (number, entrypoint + argv if instruction == "CMD" else argv)
    if image is None and command is None:
        return
    number, argv = command if command is not None else (1, [])
    subject = command_subject("dockerfile", path, argv, number, env)
    subject.image, subject.name = image, PurePosixPath(path).name
    yield subject


def _exec_form(rest: str) -> list[str]:
    text = rest.strip()
    if text.startswith("["):
        try:
            docs = load_yaml(text)  # JSON arrays are YAML flow sequences
        except ConfigParseError:
            docs = []
        if docs and isinstance(docs[0], list):
            return [scalar(v) for v in docs[0]]
    return _words(text)


def _litellm(path: str, text: str) -> Iterator[Subject]:
    for doc in load_yaml(text):
        if isinstance(doc, dict) and "model_list" in doc:
            subject = Subject("litellm-config", path, PurePosixPath(path).name, line_of(doc, "model_list", 1))
            subject.document = doc
            subject.products = {"litellm"}
            yield subject
