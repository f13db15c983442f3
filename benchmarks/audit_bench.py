"""Secret-scanning benchmark: `aiperimeter audit` against detect-secrets and CredSweeper on one generated tree.

Method:
- Tree: audit_tree.py writes a deterministic ~220 MB monorepo (code, configs, docs, logs, CSV, lock files, minified
  bundles, node_modules, .git) with 306 fake AI-provider keys and 198 decoys planted at known (file, line) positions;
  it is made once under --out (default /tmp/aiperimeter-audit-bench) and reused while its parameters match.
- Tools: aiperimeter from this project's venv; detect-secrets (>= 1.5) and CredSweeper from a separate venv under
  /tmp/aiperimeter-bench-tools (benchmarks/.venv-tools would not be git-ignored), installed on first use; CredSweeper
  is skipped with a note when it does not install. Every tool runs from the tree's root on `.`, with its default
  rules, after one read of the whole tree so that all of them find it in the page cache. detect-secrets runs with -n
  (no network verification: there is no network here) and uses one process per core by default; CredSweeper gets
  --jobs <cores> to match.
- Measures: wall time from start to exit; MB/s = the tree's bytes / wall time (what a user waits for; tools that skip
  node_modules or .git gain from it, so bytes read are shown too: rchar of the tool's process tree, minus that of a
  run on an empty folder); peak RSS = largest sum of RSS over the tool's processes, sampled every 0.2 s, or the
  largest single process's maxrss if higher.
- Recall: a planted key counts as found when the tool reports anything at its file and line. Decoy false positives
  likewise; "other" findings are reported lines that hold neither.
- Each tool is bounded by --timeout; a run that hits it is shown as such. Results of a run are kept under
  OUT/runs; `--reuse detect-secrets,credsweeper` takes those tools' kept results instead of running them again when
  the tool's version, command and the tree match (each row says when it was measured).

Run: .venv/bin/python benchmarks/audit_bench.py [--quick] [--size-mb 220] [--tools aiperimeter,detect-secrets]
Output: a markdown report on stdout and in benchmarks/results/audit.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from audit_tree import DEFAULT_OUT, generate, load_truth

RESULTS = Path(__file__).parent / "results" / "audit.md"
TOOLS_VENV = Path("/tmp/aiperimeter-bench-tools/venv")
AIPERIMETER = Path(sys.executable).parent / "aiperimeter"
TOOLS = ("aiperimeter", "detect-secrets", "credsweeper")
# Runs the tool and, once it is reaped, writes its own /proc io counters: they include every waited-for descendant.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "io = open('/proc/self/io').read()\n"
    "open(sys.argv[1], 'w').write(io + 'maxrss: %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)

# What each tool leaves out by design, and how to read the columns; printed under every report.
NOTES = [
    "aiperimeter skips .git, dependency folders (node_modules ...), binary files and files over --max-file-size "
    "(default 64M, so every file of this tree outside those folders is read).",
    "detect-secrets with --all-files walks everything, node_modules and .git included, and skips files by extension "
    "and lock files by name; CredSweeper's default config skips /.git/, /node_modules/, *.min.js, package*.json "
    "and some extensions.",
    "MB read is rchar (bytes passed through read calls) of the tool's processes minus that of a run on an empty "
    "folder: it also counts data passed between a tool's own worker processes and files read twice, so it can "
    "exceed the tree's size.",
    "A planted key counts as found when the tool reports anything on its line; every tool here labels its findings "
    "with its own rule names, so a generic entropy or keyword finding counts as much as a named provider key.",
]

Hit = tuple[str, int, str]  # file relative to the tree, line, what the tool called it


@dataclass
class Run:
    tool: str
    version: str
    command: list[str]
    tree: dict[str, object]  # the tree's parameters, to know when a kept run still applies
    seconds: float = 0.0
    peak_rss: int = 0
    read_bytes: int | None = None
    timed_out: bool = False
    error: str = ""
    hits: list[Hit] = field(default_factory=list)
    summary: str = ""  # what the tool says it did, where it says so
    load: float | None = None  # mean 1-minute load average during the run: other work on the machine shows here
    measured: str = ""


def measure(command: list[str], cwd: Path, stdout: Path, timeout: float) -> tuple[float, int, int, bool, int, float]:
    """Run command under the io-reporting wrapper: (seconds, peak RSS bytes, rchar, timed out, exit code, load)."""
    io_path = stdout.with_suffix(".io")
    io_path.unlink(missing_ok=True)
    with stdout.open("wb") as out, stdout.with_suffix(".stderr").open("wb") as err:
        started = time.monotonic()
        wrapper = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(io_path), *command],
            cwd=cwd,
            stdout=out,
            stderr=err,
            start_new_session=True,  # so a timeout can end the tool's whole process group
        )
        parent = psutil.Process(wrapper.pid)
        peak, timed_out, loads = 0, False, [os.getloadavg()[0]]
        while wrapper.poll() is None:
            loads.append(os.getloadavg()[0])
            with contextlib.suppress(psutil.Error):  # a process ended between listing and reading
                peak = max(peak, sum(p.memory_info().rss for p in parent.children(recursive=True)))
            if time.monotonic() - started > timeout:
                os.killpg(wrapper.pid, signal.SIGKILL)
                timed_out = True
                wrapper.wait()
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
    counters = dict(
        line.split(": ") for line in (io_path.read_text().splitlines() if io_path.exists() else []) if ": " in line
    )
    peak = max(peak, int(counters.get("maxrss", 0)) * 1024)
    return seconds, peak, int(counters.get("rchar", 0)), timed_out, wrapper.returncode, sum(loads) / len(loads)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def output(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return (result.stdout or result.stderr).strip()


def audit_available() -> bool:
    return (
        subprocess.run([AIPERIMETER, "audit", "--help"], capture_output=True, timeout=60, check=False).returncode == 0
    )


def ensure_tools() -> list[str]:
    """The tools venv with detect-secrets and (if it installs) CredSweeper; returns notes for the report."""
    notes = []
    python = TOOLS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", TOOLS_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    if not (TOOLS_VENV / "bin" / "detect-secrets").exists():
        subprocess.run([python, "-m", "pip", "install", "--quiet", "detect-secrets>=1.5"], check=True)
    if not (TOOLS_VENV / "bin" / "credsweeper").exists():
        result = subprocess.run([python, "-m", "pip", "install", "--quiet", "credsweeper"], check=False)
        if result.returncode != 0:
            notes.append(f"CredSweeper did not install (pip exit {result.returncode}): skipped.")
    return notes


def command_for(tool: str, out: Path) -> tuple[list[str], str]:
    """The tool's command (run from the tree's root) and its version."""
    if tool == "aiperimeter":
        command = [str(AIPERIMETER), "audit", ".", "--no-config", "--format", "json", "--fail-on", "never"]
        if "--no-listeners" in output([str(AIPERIMETER), "audit", "--help"]):
            command.append("--no-listeners")  # the host's listening sockets are not part of the tree
        return command, output([str(AIPERIMETER), "--version"]).split()[-1]
    bin_dir = TOOLS_VENV / "bin"
    if tool == "detect-secrets":
        return [str(bin_dir / "detect-secrets"), "scan", "--all-files", "-n", "."], output(
            [str(bin_dir / "detect-secrets"), "--version"]
        )
    report = out / "runs" / "credsweeper-report.json"
    command = [str(bin_dir / "credsweeper"), "--path", ".", "--save-json", str(report), "--no-stdout"]
    return [*command, "--jobs", str(os.cpu_count() or 1)], output([str(bin_dir / "credsweeper"), "--version"]).split()[
        -1
    ]


def relative(path: str) -> str:
    return os.path.normpath(path).removeprefix("./")


def parse(tool: str, stdout: Path, out: Path) -> list[Hit]:
    if tool == "aiperimeter":
        findings = json.loads(stdout.read_bytes())["findings"]
        secrets = [f for f in findings if "secret" in str(f.get("kind", "secret"))] or findings
        return [(relative(f["file"]), int(f["line"]), f"{f.get('rule')} ({f.get('provider')})") for f in secrets]
    if tool == "detect-secrets":
        results = json.loads(stdout.read_bytes())["results"]
        return [(relative(name), s["line_number"], s["type"]) for name, found in results.items() for s in found]
    report = json.loads((out / "runs" / "credsweeper-report.json").read_bytes())
    return [
        (relative(line["path"]), int(line["line_num"]), candidate["rule"])
        for candidate in report
        for line in candidate["line_data_list"]
    ]


def run_tool(tool: str, tree: Path, out: Path, parameters: dict[str, object], timeout: float, reuse: bool) -> Run:
    command, version = command_for(tool, out)
    kept = out / "runs" / f"{tool}.json"
    if reuse and kept.exists():
        old = Run(**json.loads(kept.read_text()))
        if (old.version, old.command, old.tree) == (version, command, parameters) and not old.error:
            old.hits = [tuple(h) for h in old.hits]  # type: ignore[misc]
            return old
    run = Run(tool, version, command, parameters, measured=time.strftime("%Y-%m-%d %H:%M"))
    stdout = out / "runs" / f"{tool}.out"
    with tempfile.TemporaryDirectory() as empty:  # what the tool reads to start at all: its code and libraries
        baseline = measure(command, Path(empty), stdout, timeout)[2]
    print(f"running {tool}: {' '.join(command)}", file=sys.stderr)
    run.seconds, run.peak_rss, rchar, run.timed_out, code, run.load = measure(command, tree, stdout, timeout)
    run.read_bytes = max(rchar - baseline, 0)
    if not run.timed_out:
        try:
            run.hits = parse(tool, stdout, out)
            if tool == "aiperimeter":
                done = json.loads(stdout.read_bytes()).get("summary", {})
                run.summary = (
                    f"{done.get('files', '?'):,} files, {done.get('bytes', 0) / 1e6:.1f} MB read, "
                    f"skipped: {json.dumps(done.get('skipped', {}))}"
                )
        except (OSError, ValueError, KeyError, TypeError) as error:
            tail = stdout.with_suffix(".stderr").read_text(errors="replace")[-500:]
            run.error = f"exit {code}, output not readable ({error!r}): {tail}"
    kept.write_text(json.dumps(asdict(run)))
    return run


@dataclass
class Score:
    found: list[dict[str, object]]
    missed: list[dict[str, object]]
    decoys: list[dict[str, object]]
    other: list[Hit]
    skipped_dirs: dict[str, int]  # findings inside node_modules and .git


def score(run: Run, truth: dict[str, object]) -> Score:
    keys: list[dict[str, object]] = truth["keys"]  # type: ignore[assignment]
    decoys: list[dict[str, object]] = truth["decoys"]  # type: ignore[assignment]
    reported = {(file, line) for file, line, _ in run.hits}
    known = {(k["file"], k["line"]) for k in keys + decoys}
    found = [k for k in keys if (k["file"], k["line"]) in reported]
    missed = [k for k in keys if (k["file"], k["line"]) not in reported]
    other: dict[tuple[str, int], Hit] = {}
    for hit in run.hits:
        if (hit[0], hit[1]) not in known:
            other.setdefault((hit[0], hit[1]), hit)
    skipped = {d: sum(1 for file, _, _ in run.hits if file.startswith(f"{d}/")) for d in ("node_modules", ".git")}
    return Score(
        found, missed, [d for d in decoys if (d["file"], d["line"]) in reported], list(other.values()), skipped
    )


def report(runs: list[Run], truth: dict[str, object], tree: Path, notes: list[str], invocation: str) -> str:
    sizes: dict[str, int] = truth["bytes"]  # type: ignore[assignment]
    total = sizes["total"]
    n_keys, n_decoys = len(truth["keys"]), len(truth["decoys"])  # type: ignore[arg-type]
    scores = {run.tool: score(run, truth) for run in runs}
    rates = {run.tool: total / 1e6 / run.seconds for run in runs if not run.timed_out and not run.error}
    base = rates.get("detect-secrets")
    lines = [
        "# Secret-scanning benchmark: aiperimeter audit vs detect-secrets and CredSweeper",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, `benchmarks/audit_bench.py {invocation}`",
        "",
        f"Tree: `{tree}`, {truth['files']:,} files, {total / 1e6:.1f} MB, of which node_modules "
        f"{sizes['node_modules'] / 1e6:.1f} MB and .git {sizes['git'] / 1e6:.1f} MB (no keys in either); "
        f"{n_keys} fake AI-provider keys and {n_decoys} decoys planted (generator: benchmarks/audit_tree.py, "
        f"parameters {json.dumps(truth['parameters'])}).",
        "",
        "| tool | version | seconds | MB/s (tree) | MB read | peak RSS MB | recall on AI keys | decoy FPs "
        "| other lines reported | speed vs detect-secrets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = scores[run.tool]
        if run.timed_out or run.error:
            status = "timed out" if run.timed_out else "failed"
            lines.append(f"| {run.tool} | {run.version} | {status} after {run.seconds:.0f} | | | | | | | |")
            continue
        read = f"{run.read_bytes / 1e6:.0f}" if run.read_bytes is not None else "?"
        ratio = f"{rates[run.tool] / base:.1f}x" if base else "n/a"
        lines.append(
            f"| {run.tool} | {run.version} | {run.seconds:.1f} | {rates[run.tool]:.2f} | {read} "
            f"| {run.peak_rss / 1e6:.0f} | {len(s.found)}/{n_keys} ({len(s.found) / n_keys:.0%}) "
            f"| {len(s.decoys)}/{n_decoys} | {len(s.other)} | {ratio} |"
        )
    ours, theirs = scores.get("aiperimeter"), scores.get("detect-secrets")
    if ours is not None and theirs is not None and "aiperimeter" in rates and base:
        speed_ok = rates["aiperimeter"] >= 5 * base
        recall_ok = len(ours.found) >= len(theirs.found)
        lines += [
            "",
            f"Target (aiperimeter >= 5x detect-secrets' MB/s, recall on AI keys >= detect-secrets'): "
            f"{'PASS' if speed_ok and recall_ok else 'FAIL'} ({rates['aiperimeter'] / base:.1f}x, "
            f"{len(ours.found)} vs {len(theirs.found)} keys found).",
        ]
    lines += ["", "Commands, each run from the tree's root:", ""]
    for run in runs:
        load = f", mean load average {run.load:.1f}" if run.load is not None else ""
        measured = f" (measured {run.measured}{load})" if run.measured else ""
        lines.append(f"- {run.tool}{measured}: `{Path(run.command[0]).name} {' '.join(run.command[1:])}`")
    for run in runs:
        s = scores[run.tool]
        lines += ["", f"## {run.tool}", ""]
        if run.error:
            lines.append(f"Failed: {run.error}")
            continue
        if run.timed_out:
            lines.append("Timed out: no results.")
            continue
        by_provider = Counter(str(k["provider"]) for k in s.missed)
        keys_per_provider = Counter(str(k["provider"]) for k in truth["keys"])  # type: ignore[attr-defined]
        misses = ", ".join(f"{p} {n}/{keys_per_provider[p]}" for p, n in by_provider.most_common()) or "none"
        lines.append(f"- missed keys by provider: {misses}")
        context = {id(k): " ".join(str(k["context"]).split()) for k in s.missed}  # curl and k8s span lines
        by_format = Counter(f"{k['provider']} in {k['format']} `{context[id(k)]}`" for k in s.missed)
        for what, n in by_format.most_common(12):
            lines.append(f"  - {n} x {what}")
        if run.tool == "aiperimeter":  # ours in full, to look at
            lines += [f"  - missed: {k['provider']} at `{k['file']}:{k['line']}`" for k in s.missed[:12]]
        if s.decoys:
            kinds = Counter(str(d["kind"]) for d in s.decoys)
            lines.append("- decoys reported: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
        if run.summary:
            lines.append(f"- its own summary: {run.summary}")
        walked = ", ".join(f"{d}: {n} findings" for d, n in s.skipped_dirs.items())
        lines.append(f"- findings inside folders without keys ({walked})")
        if s.other:
            labels = Counter(label for _, _, label in s.other)
            lines.append("- other lines reported, by rule: " + ", ".join(f"{k} {n}" for k, n in labels.most_common(8)))
            if run.tool == "aiperimeter":
                for file, line, label in s.other[:10]:
                    lines.append(f"  - `{file}:{line}` {label}")
    lines += ["", "Notes:", "", *[f"- {n}" for n in [*notes, *NOTES]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=220)
    parser.add_argument("--quick", action="store_true", help="a 20 MB tree, for a smoke run")
    parser.add_argument("--out", type=Path, default=None, help=f"tree and raw results (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds each tool may run")
    parser.add_argument("--reuse", default="", help="comma-separated tools whose kept matching results to take")
    parser.add_argument("--wait-for-audit", type=float, default=0, help="minutes to wait for `aiperimeter audit`")
    args = parser.parse_args()
    size = 20.0 if args.quick else args.size_mb
    out = args.out or (DEFAULT_OUT.with_name(DEFAULT_OUT.name + "-quick") if args.quick else DEFAULT_OUT)
    tools = [t for t in args.tools.split(",") if t]
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")

    truth = load_truth(out, size, args.seed) or generate(out, size, args.seed)
    tree = out / "tree"
    (out / "runs").mkdir(exist_ok=True)
    notes = ensure_tools() if set(tools) - {"aiperimeter"} else []
    if "credsweeper" in tools and not (TOOLS_VENV / "bin" / "credsweeper").exists():
        tools.remove("credsweeper")
    if "aiperimeter" in tools:
        deadline = time.monotonic() + args.wait_for_audit * 60
        while not audit_available() and time.monotonic() < deadline:
            time.sleep(60)
        if not audit_available():
            notes.append("`aiperimeter audit` is not available in this checkout: skipped.")
            tools.remove("aiperimeter")
    # One read of everything first, so that no tool pays for the disk and none gets a warmer cache than another.
    for path in tree.rglob("*"):
        if path.is_file():
            path.read_bytes()
    reuse = set(args.reuse.split(","))
    runs = [run_tool(t, tree, out, truth["parameters"], args.timeout, t in reuse) for t in tools]  # type: ignore[arg-type]
    for run in runs:
        if run.timed_out:
            notes.append(f"{run.tool} hit the {args.timeout:.0f} s timeout and was stopped.")
    text = report(runs, truth, tree, notes, " ".join(sys.argv[1:]) or "(defaults)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
