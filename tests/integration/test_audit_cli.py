"""`aiperimeter audit` as a user and a pre-commit hook run it: a realistic tree, git's index, baselines, SARIF."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from aiperimeter.catalog.fake import expand_with_values

TREE = Path(__file__).parent.parent / "data" / "audit_tree"
ROOT = Path(__file__).parent.parent.parent


def audit(cwd: Path, *args: str) -> tuple[int, bytes, str]:
    done = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "audit", *args],
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr.decode()


def audit_json(cwd: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = audit(cwd, *args, "--format", "json")
    assert code in (0, 1), err
    return code, orjson.loads(out)


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip


def materialise(target: Path) -> list[str]:
    """Copy the fixture tree with its fake keys generated; returns every generated secret."""
    secrets: list[str] = []
    for source in sorted(TREE.rglob("*")):
        if source.is_dir():
            continue
        relative = source.relative_to(TREE)
        text, values = expand_with_values(source.read_text(encoding="utf-8"), relative.as_posix())
        secrets += values
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_text(text, encoding="utf-8")
    return secrets


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "repo"
    root.mkdir()
    secrets = materialise(root)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "fixture")
    return root, secrets


def findings(doc: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    return sorted((f["kind"], f["rule"], f["file"], f["line"]) for f in doc["findings"])


EXPECTED = [
    ("misconfig", "ai-port-published", "deploy/docker-compose.yml", 6),  # "11434:11434": every interface
    ("misconfig", "ai-port-published", "deploy/docker-compose.yml", 19),  # the explicit 0.0.0.0: form
    ("misconfig", "jupyter-token-disabled", "scripts/serve.sh", 6),
    ("misconfig", "k8s-service-exposes-ai", "deploy/k8s/vllm.yaml", 15),  # a LoadBalancer selects it
    ("misconfig", "litellm-config-without-master-key", "litellm/config.yaml", 1),
    ("misconfig", "litellm-without-master-key", "deploy/docker-compose.yml", 16),
    ("misconfig", "llamacpp-public-without-api-key", "scripts/serve.sh", 4),
    ("misconfig", "ollama-host-public", ".env", 2),
    ("misconfig", "ollama-host-public", "systemd/ollama.service", 6),
    ("misconfig", "open-webui-auth-disabled", "deploy/docker-compose.yml", 15),
    ("misconfig", "vllm-without-api-key", "deploy/k8s/vllm.yaml", 15),
    ("secret", "aiperimeter-gateway-key", "src/client.py", 9),  # the look-alike on line 10 fails its check digits
    ("secret", "anthropic", "src/client.py", 7),
    ("secret", "committed-env-file", ".env", 1),
    ("secret", "google-ai", "src/config.ts", 2),
    ("secret", "mistral", "docs/README.md", 6),
    ("secret", "openai", ".env", 3),
]
# Not findings: placeholders (.env.example, docs, client.py, config.ts), UUIDs and digests, the Groq key with an
# inline ignore, loopback ports (webui), a database's published port, the ClusterIP Ollama with a loopback
# OLLAMA_HOST, the vLLM on 127.0.0.1 with --api-key, and everything under node_modules.


def test_the_fixture_tree_gives_exactly_the_expected_findings(repo: tuple[Path, list[str]]) -> None:
    root, _ = repo
    code, doc = audit_json(root, ".")
    assert code == 1
    assert findings(doc) == EXPECTED
    assert doc["summary"]["ignored_inline"] == 1
    assert doc["summary"]["files"] == 11  # node_modules and .git are not read


def test_secret_values_never_appear_in_any_output(repo: tuple[Path, list[str]]) -> None:
    root, secrets = repo
    outputs = [audit(root, ".", "--format", fmt) for fmt in ("table", "json", "sarif")]
    assert secrets
    for _, out, err in outputs:
        for secret in secrets:
            assert secret.encode() not in out and secret not in err


def test_staged_reads_the_index_not_the_working_tree(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "clean.py").write_text("x = 1\n")
    git(tmp_path, "add", "clean.py")
    git(tmp_path, "commit", "-qm", "clean")
    text, (key,) = expand_with_values('KEY = "{{fake sk-ant-api03- +b64url93 AA}}"\n', "staged")
    (tmp_path / "leak.py").write_text(text)
    git(tmp_path, "add", "leak.py")
    (tmp_path / "leak.py").write_text("KEY = os.environ['KEY']\n")  # fixed in the tree, not in the index
    unstaged, _ = expand_with_values('K = "{{fake sk-ant-api03- +b64url93 AA}}"\n', "unstaged")
    (tmp_path / "clean.py").write_text(unstaged)  # modified but not staged
    code, doc = audit_json(tmp_path, "--staged")
    assert code == 1
    assert findings(doc) == [("secret", "anthropic", "leak.py", 1)]
    assert key not in orjson.dumps(doc).decode()


def test_a_staged_env_file_is_a_committed_env_file(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".env").write_text("DATABASE_PASSWORD=hunter2hunter2\n")
    (tmp_path / ".env.example").write_text("DATABASE_PASSWORD=changeme\n")
    git(tmp_path, "add", ".env", ".env.example")
    _, doc = audit_json(tmp_path, "--staged")
    assert findings(doc) == [("secret", "committed-env-file", ".env", 1)]


def test_an_untracked_env_file_is_not_committed(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".env").write_text("DATABASE_PASSWORD=hunter2hunter2\n")
    _, doc = audit_json(tmp_path, ".")
    assert findings(doc) == []


def test_baseline_accepts_known_findings_and_reports_new_ones(repo: tuple[Path, list[str]]) -> None:
    root, secrets = repo
    code, before = audit_json(root, ".")
    assert code == 1 and before["findings"]
    code, _, err = audit(root, ".", "--write-baseline", "baseline.json")
    assert code == 0, err
    stored = (root / "baseline.json").read_text()
    assert all(secret not in stored for secret in secrets)
    code, after = audit_json(root, ".", "--baseline", "baseline.json")
    assert (code, after["findings"]) == (0, [])
    assert after["summary"]["ignored_baseline"] == len(before["findings"])
    # Lines moving above a finding keep it accepted; a new key is reported.
    client = root / "src" / "client.py"
    text, _ = expand_with_values('NEW = "{{fake pplx- +alnum48}}"\n', "new")
    client.write_text("# moved\n# down\n" + client.read_text() + text)
    code, later = audit_json(root, ".", "--baseline", "baseline.json")
    assert code == 1
    assert [(f["rule"], f["line"]) for f in later["findings"]] == [("perplexity", 15)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"{not json", "is not JSON", id="not-json"),
        pytest.param(b'{"findings": []}', "not an aiperimeter baseline", id="foreign"),
        pytest.param(b'{"aiperimeter_baseline": 1, "findings": [{"rule": "x"}]}', "fingerprint", id="no-fingerprint"),
    ],
)
def test_a_bad_baseline_is_a_usage_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "b.json").write_bytes(content)
    code, _, err = audit(tmp_path, ".", "--baseline", "b.json")
    assert code == 2
    assert message in err and "Traceback" not in err


def test_sarif_is_what_code_scanning_accepts(repo: tuple[Path, list[str]]) -> None:
    root, _ = repo
    code, out, _ = audit(root, ".", "--format", "sarif")
    assert code == 1
    doc = orjson.loads(out)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert run["results"]
    for result in run["results"]:
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert not location["artifactLocation"]["uri"].startswith("/")
        assert location["region"]["startLine"] >= 1
        assert len(result["partialFingerprints"]["aiperimeter/v1"]) == 32
        assert float(rules[result["ruleId"]]["properties"]["security-severity"]) > 0
        assert result["level"] in ("error", "warning", "note")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(("--fail-on", "critical"), 1, id="critical-key-fails"),
        pytest.param(("--fail-on", "never"), 0, id="never"),
        pytest.param(("--no-secrets", "--fail-on", "critical"), 0, id="only-high-misconfigs"),
    ],
)
def test_exit_codes(repo: tuple[Path, list[str]], args: tuple[str, ...], code: int) -> None:
    assert audit(repo[0], ".", *args)[0] == code


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((".", "--staged"), "not both", id="staged-and-paths"),
        pytest.param(("missing-folder",), "no such file", id="missing-path"),
        pytest.param((".", "--format", "xml"), "--format", id="bad-format"),
        pytest.param((".", "--fail-on", "severe"), "--fail-on", id="bad-fail-on"),
        pytest.param((".", "--max-file-size", "lots"), "not a size", id="bad-size"),
        pytest.param(("--staged",), "needs a git repository", id="staged-outside-git"),
    ],
)
def test_usage_errors_exit_2_with_a_reason(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = audit(tmp_path, *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_pre_commit_hook_definition_runs_the_staged_audit() -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "aiperimeter-audit"
    assert hook["entry"].split()[:3] == ["aiperimeter", "audit", "--staged"]
    assert hook["pass_filenames"] is False
    assert shutil.which(hook["entry"].split()[0]) or hook["language"] == "python"


def test_compose_env_file_settings_count_and_outside_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / ".env").write_text("LITELLM_MASTER_KEY=${MASTER}\nLANGFLOW_AUTO_LOGIN=true\n")
    (tmp_path / "outside.env").write_text("WEBUI_AUTH=False\n")
    (tmp_path / "stack" / "docker-compose.yml").write_text(
        "services:\n"
        "  litellm:\n    image: ghcr.io/berriai/litellm:main\n    env_file: .env\n"
        "  flow:\n    image: langflowai/langflow:1.5.0\n    env_file: [.env]\n"
        "  webui:\n    image: ghcr.io/open-webui/open-webui:main\n    env_file:\n      - path: /etc/hostname\n"
        "      - ../outside.env\n"
    )
    _, doc = audit_json(tmp_path / "stack", ".", "--no-secrets")
    # The master key set in .env satisfies LiteLLM; auto-login is reported once, in the env file that sets it
    # (not once per service that loads it); the file outside the audited folder is not read.
    assert findings(doc) == [("misconfig", "langflow-auto-login", ".env", 2)]
    assert [e.split(": ", 1)[1] for e in doc["errors"]] == [
        "env_file /etc/hostname is outside the audited paths",
        "env_file ../outside.env is outside the audited paths",
    ]
