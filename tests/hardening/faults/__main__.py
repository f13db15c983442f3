"""Run the fault scenarios from the command line; exit 1 if any failed."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import orjson

from tests.hardening.faults import SCENARIOS, run_all


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hardening.faults")
    parser.add_argument("--scale", type=float, default=1.0, help="repeat each fault this many times")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run_all(None, args.scale, args.only)
    for r in results:
        state = f"skipped ({r.skipped})" if r.skipped else "ok" if r.ok else "FAILED"
        print(f"{r.name:30} injected {r.injected:4}  answered {r.answered:6}  lost {r.records_lost}  "
              f"errors {r.gateway_errors}  recovered {r.recovered!s:5}  {r.seconds:6.1f} s  {state}")  # fmt: skip
        for line in r.violations:
            print(f"    violation: {line}")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps([dataclasses.asdict(r) for r in results], option=orjson.OPT_INDENT_2))
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
