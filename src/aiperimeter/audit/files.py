"""Which files an audit reads, and how: a walk that skips what is not the user's own text, or git's index.

Files are read as bytes. Symlinks are not followed (no loops, no escape from the tree). Binary files (a NUL byte
in the first block, unless the file starts with a UTF-16 byte-order mark) and files above the size limit are
skipped and counted, never silently.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiperimeter.errors import ConfigError

SKIP_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", "node_modules", "bower_components", ".venv", "venv", "site-packages",
        "dist-packages", "__pycache__", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
        ".terraform", ".next", ".nuxt", ".gradle", ".idea", ".cache",
    }
)  # fmt: skip
BINARY_SUFFIXES = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz",
        ".zst", ".7z", ".tar", ".whl", ".jar", ".class", ".so", ".dylib", ".dll", ".exe", ".o", ".a", ".pyc",
        ".woff", ".woff2", ".ttf", ".otf", ".mp3", ".mp4", ".wav", ".mov", ".gguf", ".safetensors", ".pt", ".pth",
        ".onnx", ".bin", ".npy", ".npz", ".parquet", ".sqlite", ".db",
    }
)  # fmt: skip
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # logs of tens of MB hold keys too; beyond this, data, not text
_SNIFF = 8192


@dataclass(frozen=True)
class SourceFile:
    path: str  # as reported: relative to the working directory when below it
    data: bytes
    tracked: bool | None = None  # known for staged files; None when not asked


@dataclass
class WalkStats:
    files: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def display_path(path: Path | str) -> str:
    """Relative to the working directory when below it (stable for baselines and SARIF), else absolute."""
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    if absolute.startswith(cwd + os.sep):
        return Path(absolute[len(cwd) + 1 :]).as_posix()
    return Path(absolute).as_posix()


def decode_for_scan(data: bytes) -> bytes | None:
    """Bytes the rules can read (UTF-16 re-encoded to UTF-8), or None for a binary file."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            return None
    if b"\0" in data[:_SNIFF]:
        return None
    return data.removeprefix(b"\xef\xbb\xbf")


def _excluded(relative: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def walk(
    paths: list[Path], stats: WalkStats, max_bytes: int = DEFAULT_MAX_BYTES, exclude: tuple[str, ...] = ()
) -> Iterator[SourceFile]:
    """Readable text files under paths, in a stable order. Plain strings, not Path objects: on trees of tens of
    thousands of files, object churn costs more than reading them."""
    for root in paths:
        if not root.exists() and not root.is_symlink():
            raise ConfigError(f"{root}: no such file or directory")
        if root.is_file():
            yield from _read(str(root), stats, max_bytes)
            continue
        base = str(root)
        for folder, dirs, files in os.walk(base):
            relative = os.path.relpath(folder, base) if exclude else ""
            dirs[:] = sorted(
                d for d in dirs if d not in SKIP_DIRS and not (exclude and _excluded(_join(relative, d), d, exclude))
            )
            for name in sorted(files):
                if exclude and _excluded(_join(relative, name), name, exclude):
                    stats.skipped["excluded"] += 1
                    continue
                yield from _read(os.path.join(folder, name), stats, max_bytes)


def _join(relative: str, name: str) -> str:
    return name if relative in ("", ".") else f"{Path(relative).as_posix()}/{name}"


def _read(path: str, stats: WalkStats, max_bytes: int) -> Iterator[SourceFile]:
    try:
        info = os.lstat(path)
    except OSError:
        stats.skipped["unreadable"] += 1
        return
    if not stat.S_ISREG(info.st_mode):  # symlinks included: never followed
        stats.skipped["not a regular file"] += 1
        return
    if os.path.splitext(path)[1].lower() in BINARY_SUFFIXES:
        stats.skipped["binary"] += 1
        return
    if info.st_size > max_bytes:
        stats.skipped["too large"] += 1
        return
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        stats.skipped["unreadable"] += 1
        return
    if (data := _counted(raw, stats)) is not None:
        yield SourceFile(display_path(path), data)


def _counted(raw: bytes, stats: WalkStats) -> bytes | None:
    data = decode_for_scan(raw)
    if data is None:
        stats.skipped["binary"] += 1
        return None
    stats.files += 1
    stats.bytes += len(raw)
    return data


def _git(args: list[str], cwd: Path, data: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run git: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(f"git {args[0]} failed: {message[-1] if message else done.returncode}")
    return done.stdout


def git_root(where: Path) -> Path | None:
    try:
        out = _git(["rev-parse", "--show-toplevel"], where)
    except ConfigError:
        return None
    return Path(os.fsdecode(out.strip()))


def tracked_files(root: Path) -> set[Path]:
    """Files git tracks in the repository at root (absolute paths)."""
    out = _git(["ls-files", "-z"], root)
    return {root / os.fsdecode(p) for p in out.split(b"\0") if p}


def staged(stats: WalkStats, max_bytes: int = DEFAULT_MAX_BYTES, exclude: tuple[str, ...] = ()) -> Iterator[SourceFile]:
    """What is staged for the next commit, read from git's index (not the working tree, which may differ)."""
    root = git_root(Path.cwd())
    if root is None:
        raise ConfigError("--staged needs a git repository: run it inside one")
    names = [
        os.fsdecode(p)
        for p in _git(["diff", "--cached", "--name-only", "-z", "--diff-filter=ACMR", "--no-renames"], root).split(
            b"\0"
        )
        if p
    ]
    for name in names:
        if any(part in SKIP_DIRS for part in Path(name).parts[:-1]) or _excluded(name, Path(name).name, exclude):
            stats.skipped["excluded"] += 1
            continue
        if Path(name).suffix.lower() in BINARY_SUFFIXES:
            stats.skipped["binary"] += 1
            continue
        size = int(_git(["cat-file", "-s", f":{name}"], root).strip() or b"0")
        if size > max_bytes:
            stats.skipped["too large"] += 1
            continue
        if (data := _counted(_git(["cat-file", "blob", f":{name}"], root), stats)) is not None:
            yield SourceFile(display_path(root / name), data, tracked=True)
