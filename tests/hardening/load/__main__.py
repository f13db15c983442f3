"""CLI: probe the capacity, then soak at a share of it. python -m tests.hardening.load --seconds 180 --share 0.7"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import orjson

from tests.hardening.load.client import measure_capacity
from tests.hardening.load.soak import soak
from tests.hardening.load.stack import start_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=float, default=20.0, help="seconds of closed-loop capacity probe")
    parser.add_argument("--rate", type=float, help="req/s (default: --share of the probed capacity)")
    parser.add_argument("--share", type=float, default=0.7)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--streamed", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aiperimeter-load-"))
    try:
        with start_stack(workdir, args.workers) as stack:
            capacity = None
            if args.rate is None:
                capacity = measure_capacity(stack, args.probe, args.streamed)
                print(f"capacity: {capacity}", file=sys.stderr, flush=True)
            rate = args.rate or round(capacity.rate * args.share, 1)  # type: ignore[union-attr]
            print(f"soak: {rate} req/s for {args.seconds} s", file=sys.stderr, flush=True)
            result = soak(stack, rate, args.seconds, args.streamed, args.window)
    finally:
        if args.workdir is None:  # a soak's audit log runs to gigabytes: keep it only where asked to
            shutil.rmtree(workdir, ignore_errors=True)
    out = {"capacity": asdict(capacity) if capacity else None, "soak": result.to_dict()}
    text = orjson.dumps(out, option=orjson.OPT_INDENT_2)
    if args.json:
        args.json.write_bytes(text)
    summary = {k: v for k, v in result.to_dict().items() if k not in ("windows", "rss_samples", "error_samples")}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    for w in result.windows:
        print(asdict(w))
    return 0 if all(result.verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
