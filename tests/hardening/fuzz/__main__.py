"""python -m tests.hardening.fuzz --inputs N --seed S --json out.json   (and --coverage, --replay TARGET FILE)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.hardening.fuzz import TARGETS, coverage, run
from tests.hardening.fuzz.engine import replay


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m tests.hardening.fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs in total, over all targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds in total (coverage mode: required)")
    parser.add_argument("--targets", nargs="*", choices=sorted(TARGETS), default=None)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--failures-dir", type=Path, default=Path(tempfile.gettempdir()) / "aiperimeter-fuzz")
    parser.add_argument("--coverage", action="store_true", help="coverage-guided, under atheris")
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "FILE"), help="run one saved input (hex) again")
    parser.add_argument("--raw", action="store_true", help="with --replay: the file holds raw bytes, not hex")
    args = parser.parse_args(argv)
    if args.replay:
        name, path = args.replay
        content = Path(path).read_bytes()
        data = content if args.raw else bytes.fromhex(content.decode().strip())
        outcome = replay(TARGETS[name], data)
        print(outcome)
        return 0 if outcome == "pass" else 1
    targets = args.targets or sorted(TARGETS)
    if args.coverage:
        if not coverage.available():
            parser.error("atheris is not installed")
        report = coverage.run(targets, args.inputs, args.seed, args.time_limit or 600.0, args.failures_dir)
    else:
        report = run(targets, args.inputs, args.seed, args.time_limit, args.failures_dir)
    result = report.as_dict()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(t) for t in targets)
    for t in result["targets"]:
        print(
            f"{t['target']:<{width}} inputs {t['inputs']:>9}  crashes {t['crashes']}  hangs {t['hangs']}  "
            f"oracle {t['oracle_failures']}  {t['exec_per_second']:>8.0f}/s  {t['seconds']:.1f} s"
        )
        for example in t["examples"]:
            print(f"    {example['kind']}: {example['error'][:300]}\n    reproduce: {example['reproduce']}")
    print(f"total inputs {result['inputs']}  failures {result['failures']}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
