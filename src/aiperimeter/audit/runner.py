"""The audit, in order: read files (or git's index), find secrets and misconfigurations in each, attach
Kubernetes Services to what they select, judge the rules, list and probe listeners, then apply ignores."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from aiperimeter.audit.configs import MAX_CONFIG_BYTES, ConfigParseError, classify, expose, read_env_text, subjects
from aiperimeter.audit.files import DEFAULT_MAX_BYTES, SourceFile, WalkStats, git_root, staged, tracked_files, walk
from aiperimeter.audit.findings import AuditFinding, AuditResult, fingerprint
from aiperimeter.audit.listeners import ListenerAudit, listening
from aiperimeter.audit.misconfig import violations
from aiperimeter.audit.secrets import SecretDetector, SecretHit, redact
from aiperimeter.audit.subjects import ProductIndex, Subject
from aiperimeter.catalog.loader import fingerprints, misconfig_rules, secret_rules
from aiperimeter.errors import ConfigError

# `# aiperimeter:ignore` on a line silences every finding on it; `aiperimeter:ignore[rule-a,rule-b]` only those.
IGNORE = re.compile(rb"aiperimeter:\s?ignore(?:\[([A-Za-z0-9, _-]*)\])?", re.IGNORECASE)
_CONFIG_SUFFIXES = (".yaml", ".yml", ".env", ".service", ".sh", ".bash", ".zsh", ".ksh", ".dockerfile")
MAX_ENV_FILE_BYTES = 1024 * 1024
_ENV_EXAMPLES = re.compile(r"\.(example|sample|template|dist|defaults?|tmpl|tpl)$", re.IGNORECASE)


@dataclass(frozen=True)
class AuditOptions:
    paths: list[Path] = field(default_factory=list)
    staged: bool = False
    secrets: bool = True
    config: bool = True
    listeners: bool = False
    ports: frozenset[int] | None = None  # listeners only on these ports
    max_bytes: int = DEFAULT_MAX_BYTES
    exclude: tuple[str, ...] = ()
    baseline: frozenset[str] = frozenset()


class _Lines:
    """Line numbers and line text of one file, counted only where a finding needs them."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def locate(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a byte offset."""
        line_start = self.data.rfind(b"\n", 0, offset) + 1
        return self.data.count(b"\n", 0, offset) + 1, offset - line_start + 1

    def around(self, offset: int) -> bytes:
        """The line holding a byte offset."""
        start = self.data.rfind(b"\n", 0, offset) + 1
        end = self.data.find(b"\n", offset)
        return self.data[start : end if end != -1 else len(self.data)]

    def text(self, line: int) -> bytes:
        start = 0
        for _ in range(line - 1):
            start = self.data.find(b"\n", start) + 1
            if start == 0:
                return b""
        end = self.data.find(b"\n", start)
        return self.data[start : end if end != -1 else len(self.data)]


def ignored(line: bytes, rule: str) -> bool:
    match = IGNORE.search(line)
    if match is None:
        return False
    if match[1] is None:
        return True
    return rule in {r.strip() for r in match[1].decode().split(",")}


def _looks_like_config(path: str, data: bytes) -> bool:
    name = PurePosixPath(path).name.lower()
    return (
        name.endswith(_CONFIG_SUFFIXES)
        or name.startswith((".env", "dockerfile", "containerfile"))
        or name in ("dockerfile", "containerfile")
        or data.startswith(b"#!")
    )


class Auditor:
    def __init__(self, options: AuditOptions) -> None:
        self.options = options
        self.catalog = fingerprints()
        self.detector = SecretDetector(secret_rules())
        self.rules = misconfig_rules()
        self.products = ProductIndex(self.catalog)
        self.result = AuditResult()
        self._subjects: list[Subject] = []
        self._lines: dict[str, _Lines] = {}
        self._tracked: dict[Path, set[Path]] = {}

    def run(self) -> AuditResult:
        started = time.monotonic()
        stats = WalkStats()
        if self.options.staged or self.options.paths:
            files = (
                staged(stats, self.options.max_bytes, self.options.exclude)
                if self.options.staged
                else walk(self.options.paths, stats, self.options.max_bytes, self.options.exclude)
            )
            for source in files:
                self._file(source)
            self._judge()
        if self.options.listeners:
            self._listeners()
        self.result.files, self.result.bytes, self.result.skipped = stats.files, stats.bytes, stats.skipped
        self.result.sort()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _keep(self, finding: AuditFinding) -> None:
        if finding.fingerprint in self.options.baseline:
            self.result.ignored_baseline += 1
        else:
            self.result.findings.append(finding)

    def _file(self, source: SourceFile) -> None:
        lines = _Lines(source.data)
        if self.options.secrets:
            for hit in self.detector.scan(source.data):
                self._secret(source, lines, hit)
        if not self.options.config or not _looks_like_config(source.path, source.data):
            return
        if len(source.data) > MAX_CONFIG_BYTES:
            self.result.skipped["over 2 MB: not parsed as configuration"] += 1
            return
        text = source.data.decode("utf-8", "replace")
        kind = classify(source.path, text)
        if kind is None:
            return
        try:
            found = subjects(kind, source.path, text)
        except ConfigParseError as exc:
            self.result.errors.append(f"{source.path}: {exc}")
            return
        self._lines[source.path] = lines
        for subject in found:
            subject.products |= self.products.of(subject.image, subject.argv)
            if subject.env_files and not self.options.staged:
                self._read_env_files(subject)
        self._subjects.extend(found)
        if kind == "env" and self.options.secrets:
            self._committed_env(source, found)

    def _read_env_files(self, subject: Subject) -> None:
        """A compose service's env_file, read when it lies below an audited folder or the compose file's own folder
        (a hostile compose file must not pull in /etc/...); `environment:` wins over it, as in compose."""
        roots = [path.resolve() for path in self.options.paths if path.is_dir()] + [Path(subject.file).parent.resolve()]
        for name, line in subject.env_files:
            path = (Path(subject.file).parent / name).resolve()
            if not any(path == root or root in path.parents for root in roots):
                self.result.errors.append(f"{subject.file}:{line}: env_file {name} is outside the audited paths")
                continue
            try:
                if path.stat().st_size > MAX_ENV_FILE_BYTES:
                    continue
                values = read_env_text(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue  # a missing env_file is a deployment problem, not an exposure
            subject.inherited |= {key: (value, line) for key, value in values.items()}

    def _secret(self, source: SourceFile, lines: _Lines, hit: SecretHit) -> None:
        line, column = lines.locate(hit.start)
        if ignored(lines.around(hit.start), hit.rule.id):
            self.result.ignored_inline += 1
            return
        rule = hit.rule
        self._keep(
            AuditFinding(
                kind="secret",
                rule=rule.id,
                title=rule.name,
                severity=rule.severity,
                why=rule.why,
                fix=rule.fix,
                fingerprint=fingerprint("secret", rule.id, source.path, fingerprint(hit.secret)),
                file=source.path,
                line=line,
                column=column,
                provider=rule.provider,
                redacted=redact(hit.secret),
                references=tuple(rule.references),
            )
        )

    def _is_tracked(self, path: str) -> bool:
        absolute = Path(path).absolute()
        root = git_root(absolute.parent)
        if root is None:
            return False
        if root not in self._tracked:
            try:
                self._tracked[root] = tracked_files(root)
            except ConfigError:
                self._tracked[root] = set()
        return absolute in self._tracked[root]

    def _committed_env(self, source: SourceFile, found: list[Subject]) -> None:
        """A real .env file (not an example) committed to git: whatever it holds is in every clone."""
        name = PurePosixPath(source.path).name
        values = [n for s in found for n, (v, _) in s.env.items() if v.strip()]
        if not values or _ENV_EXAMPLES.search(name):
            return
        tracked = source.tracked if source.tracked is not None else self._is_tracked(source.path)
        if not tracked:
            return
        lines = self._lines[source.path]
        if ignored(lines.text(1), "committed-env-file"):
            self.result.ignored_inline += 1
            return
        self._keep(
            AuditFinding(
                kind="secret",
                rule="committed-env-file",
                title=f"{name} is committed to git",
                severity="high",
                why=(
                    "Environment files hold credentials and are meant to stay on one machine; once committed, every "
                    f"clone and every fork has them ({len(values)} variables with values here)."
                ),
                fix=(
                    f"git rm --cached {source.path}, add it to .gitignore, commit an example file with placeholder "
                    "values instead, and rotate every credential it held."
                ),
                fingerprint=fingerprint("secret", "committed-env-file", source.path),
                file=source.path,
                line=1,
                evidence=f"tracked by git, {len(values)} variables with values",
                references=("https://12factor.net/config",),
            )
        )

    def _judge(self) -> None:
        seen: set[tuple[str, str, int, tuple[str, ...]]] = set()
        for found in violations(self.rules, expose(self._subjects)):
            subject, rule = found.subject, found.rule
            # A script's exported variable reaches every later command: one finding, not one per command.
            if (key := (rule.id, subject.file, found.line, found.evidence)) in seen:
                continue
            seen.add(key)
            lines = self._lines.get(subject.file)
            if lines is not None and ignored(lines.text(found.line), rule.id):
                self.result.ignored_inline += 1
                continue
            evidence = "; ".join(found.evidence)
            self._keep(
                AuditFinding(
                    kind="misconfig",
                    rule=rule.id,
                    title=f"{rule.title} ({subject.name})",
                    severity=rule.severity,
                    why=rule.why,
                    fix=rule.fix,
                    fingerprint=fingerprint("misconfig", rule.id, subject.file, subject.name, evidence),
                    file=subject.file,
                    line=found.line,
                    evidence=evidence,
                    product=sorted(subject.products)[0] if subject.products else None,
                    references=tuple(rule.references),
                )
            )

    def _listeners(self) -> None:
        found, notes = listening(set(self.options.ports) if self.options.ports is not None else None)
        self.result.errors.extend(notes)
        audit = ListenerAudit(self.catalog)
        findings, fine = asyncio.run(audit.run(found, named_ports=self.options.ports is not None))
        for finding in findings:
            self._keep(finding)
        self.result.listeners_fine = fine


def run_audit(options: AuditOptions) -> AuditResult:
    return Auditor(options).run()
