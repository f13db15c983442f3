"""Reading what a configuration starts: port specs, container runs, wrappers, and the parsers of each source."""

from __future__ import annotations

import shlex

import pytest

from aiperimeter.audit.configs import ConfigParseError, classify, expose, subjects
from aiperimeter.audit.subjects import FROM_CALLER, Published, command_subject, parse_port_spec, strip_wrappers


@pytest.mark.parametrize(
    ("spec", "host_ip", "host_port", "container", "beyond"),
    [
        pytest.param("11434", None, None, "11434", True, id="container-only-random-host-port"),
        pytest.param("11434:11434", None, "11434", "11434", True, id="host-and-container"),
        pytest.param("0.0.0.0:8000:8000", "0.0.0.0", "8000", "8000", True, id="explicit-wildcard"),
        pytest.param("127.0.0.1:8000:8000/tcp", "127.0.0.1", "8000", "8000", False, id="loopback-with-protocol"),
        pytest.param("127.0.0.1::80", "127.0.0.1", None, "80", False, id="loopback-random-host-port"),
        pytest.param("[::1]:8080:80", "::1", "8080", "80", False, id="ipv6-loopback"),
        pytest.param("[::]:8080:80", "::", "8080", "80", True, id="ipv6-wildcard"),
        pytest.param("10.0.0.5:8080:80", "10.0.0.5", "8080", "80", True, id="private-address-is-beyond-loopback"),
        pytest.param("${BIND:-127.0.0.1}:11434:11434", "127.0.0.1", "11434", "11434", False, id="default-applies"),
        pytest.param("${BIND}:11434:11434", None, "11434", "11434", True, id="unresolved-assumes-worst"),
        pytest.param("localhost:3000:3000", "localhost", "3000", "3000", False, id="localhost"),
    ],
)
def test_port_specs(spec: str, host_ip: str | None, host_port: str | None, container: str, beyond: bool) -> None:
    port = parse_port_spec(spec, 7)
    assert port is not None
    assert (port.host_ip, port.host_port, port.container_port, port.line) == (host_ip, host_port, container, 7)
    assert port.beyond_loopback is beyond


def test_wrappers_and_inline_variables_are_peeled() -> None:
    argv = ["OLLAMA_HOST=0.0.0.0", "nohup", "sudo", "-E", "env", "A=1", "/usr/bin/ollama", "serve"]
    assert strip_wrappers(argv) == (["/usr/bin/ollama", "serve"], {"OLLAMA_HOST": "0.0.0.0", "A": "1"})


def test_docker_run_is_unpacked_into_its_container() -> None:
    argv = shlex.split(
        "docker run -d --gpus all -e VLLM_API_KEY=k -p 8000:8000 --network=host vllm/vllm-openai --model m"
    )
    subject = command_subject("shell", "run.sh", argv, 3, {})
    assert subject.image == "vllm/vllm-openai"
    assert subject.argv == ["--model", "m"]
    assert subject.env == {"VLLM_API_KEY": ("k", 3)}
    assert subject.ports == [Published(None, "8000", "8000", 3)]
    assert subject.host_network == 3


@pytest.mark.parametrize(
    ("name", "text", "source"),
    [
        pytest.param("docker-compose.yml", "services: {}\n", "compose", id="compose-name"),
        pytest.param("docker-compose.override.yaml", "services: {}\n", "compose", id="compose-override"),
        pytest.param("stack.yml", "services:\n  a: {}\n", "compose", id="compose-by-shape"),
        pytest.param("deploy.yaml", "apiVersion: v1\nkind: Service\n", "kubernetes", id="kubernetes"),
        pytest.param("config.yaml", "model_list: []\n", "litellm-config", id="litellm"),
        pytest.param(".env", "", "env", id="dotenv"),
        pytest.param(".env.production", "", "env", id="dotenv-suffix"),
        pytest.param("prod.env", "", "env", id="env-extension"),
        pytest.param("ollama.service", "", "systemd", id="systemd"),
        pytest.param("Dockerfile", "", "dockerfile", id="dockerfile"),
        pytest.param("start", "#!/usr/bin/env bash\n", "shell", id="shebang"),
        pytest.param("values.yaml", "replicaCount: 1\n", None, id="other-yaml"),
        pytest.param("app.py", "print()\n", None, id="code"),
    ],
)
def test_classify(name: str, text: str, source: str | None) -> None:
    assert classify(name, text) == source


def test_compose_environment_as_list_and_mapping_with_lines() -> None:
    text = (
        "services:\n"
        "  a:\n"
        "    image: ollama/ollama\n"
        "    environment:\n"
        "      - OLLAMA_HOST=0.0.0.0\n"
        "      - EMPTY\n"
        "  b:\n"
        "    image: x\n"
        "    environment:\n"
        "      WEBUI_AUTH: false\n"
        "      PORT: ${PORT:-8080}\n"
        "      LITELLM_MASTER_KEY: ${LITELLM_MASTER_KEY}\n"
        "    command: vllm serve m --host ${HOST:-127.0.0.1}\n"
    )
    a, b = subjects("compose", "c.yml", text)
    assert a.env == {"OLLAMA_HOST": ("0.0.0.0", 5), "EMPTY": (FROM_CALLER, 6)}
    assert b.env == {
        "WEBUI_AUTH": ("false", 10),
        "PORT": ("8080", 11),
        "LITELLM_MASTER_KEY": ("${LITELLM_MASTER_KEY}", 12),
    }
    assert b.argv == ["vllm", "serve", "m", "--host", "127.0.0.1"]


def test_kubernetes_service_attaches_to_the_workloads_it_selects() -> None:
    text = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llm, namespace: ai}\n"
        "spec:\n  template:\n    metadata: {labels: {app: llm, tier: gpu}}\n"
        "    spec:\n      containers:\n        - name: vllm\n          image: vllm/vllm-openai\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: llm, namespace: ai}\n"
        "spec:\n  type: LoadBalancer\n  selector: {app: llm}\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: other-namespace}\n"
        "spec:\n  type: NodePort\n  selector: {app: llm}\n"
    )
    (container,) = expose(subjects("kubernetes", "k.yaml", text))
    assert container.name == "llm/vllm"
    assert container.line == 9
    assert [(how, what) for how, _, what in container.exposures] == [("LoadBalancer", "Service/llm in k.yaml")]


def test_systemd_unit_reads_environment_and_execstart() -> None:
    text = (
        "[Unit]\nDescription=x\nEnvironment=IGNORED=1\n"
        '[Service]\nEnvironment="OLLAMA_HOST=0.0.0.0" "OLLAMA_ORIGINS=*"\n'
        "ExecStart=-/usr/bin/ollama \\\n  serve\n"
    )
    (unit,) = subjects("systemd", "ollama.service", text)
    assert unit.argv == ["/usr/bin/ollama", "serve"]
    assert unit.env == {"OLLAMA_HOST": ("0.0.0.0", 5), "OLLAMA_ORIGINS": ("*", 5)}
    assert unit.argv_line == 6


def test_shell_script_tracks_exports_and_splits_command_lists() -> None:
    text = "#!/bin/sh\nexport OLLAMA_HOST=0.0.0.0\ncd /srv && vllm serve m --host 0.0.0.0 # comment\n"
    found = subjects("shell", "run.sh", text)
    vllm = next(s for s in found if s.argv[:1] == ["vllm"])
    assert vllm.argv == ["vllm", "serve", "m", "--host", "0.0.0.0"]
    assert vllm.env == {"OLLAMA_HOST": ("0.0.0.0", 2)}


def test_dockerfile_uses_the_last_stage() -> None:
    text = (
        'FROM python:3.12 AS build\nENV A=1\nCMD ["build"]\n'
        'FROM vllm/vllm-openai:v0.9\nENV VLLM_API_KEY=\nENTRYPOINT ["vllm", "serve"]\nCMD ["--host", "0.0.0.0"]\n'
    )
    (subject,) = subjects("dockerfile", "Dockerfile", text)
    assert subject.image == "vllm/vllm-openai:v0.9"
    assert subject.argv == ["vllm", "serve", "--host", "0.0.0.0"]
    assert subject.env == {"VLLM_API_KEY": ("", 5)}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("services: [\n", id="unclosed"),
        pytest.param("a: &a [*a]\n", id="recursive-alias"),
        pytest.param("!!python/object/apply:os.system ['true']\n", id="unsafe-tag"),
    ],
)
def test_hostile_yaml_is_a_parse_error_not_a_crash(text: str) -> None:
    with pytest.raises(ConfigParseError):
        subjects("compose", "c.yml", text)
