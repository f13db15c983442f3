"""The whole watch path's CPU per request: what the watching process spends on each audit record it reads.

The same synthetic traffic as watch_eval.py, as the audit lines the gateway writes, shifted to end now (the
dashboard's rollup keeps only recent traffic), read in 1 MiB batches as the watcher reads its feed: JSON parsing,
the Observation, the dashboard's rollup and the detector, each timed with process_time over the whole run.

    .venv/bin/python benchmarks/watch_path.py [--seed 7] [--keys 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is on the path, the repository root is not
    sys.path.insert(0, str(ROOT))

from benchmarks.watch_traffic import add_arguments, scenario_from  # noqa: E402

from aiperimeter.watch.detector import Detector  # noqa: E402
from aiperimeter.watch.feed import READ_CHUNK, parse_lines  # noqa: E402
from aiperimeter.watch.observation import Observation  # noqa: E402
from aiperimeter.watch.rollup import Rollup  # noqa: E402

TARGET_US = 20.0


def batches(records: Iterable[dict[str, object]], shift: float) -> list[bytes]:
    """The records as 1 MiB batches of audit lines. Only the bytes are kept: a few hundred thousand live dicts would
    make every garbage collection slower and the numbers with it, which the watcher (holding a bounded ring) does
    not see."""
    out, lines, size = [], [], 0
    for record in records:
        record["time"] = float(record["time"]) + shift  # type: ignore[arg-type]
        line = orjson.dumps(record)
        lines.append(line)
        size += len(line) + 1
        if size >= READ_CHUNK:
            out.append(b"\n".join(lines) + b"\n")
            lines, size = [], 0
    if lines:
        out.append(b"\n".join(lines) + b"\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the numbers here")
    args = parser.parse_args(argv)
    scenario = scenario_from(args)
    chunks = batches(scenario.records(), time.time() - scenario.day_start(scenario.days))
    gc.collect()
    rollup, detector = Rollup(), Detector()
    spent = {"parse": 0.0, "observation": 0.0, "rollup": 0.0, "detector": 0.0}
    count = 0
    clock = time.process_time
    for chunk in chunks:
        t0 = clock()
        parsed = parse_lines(chunk)
        t1 = clock()
        observations = [o for o in map(Observation.from_record, parsed) if o is not None]
        t2 = clock()
        for obs in observations:
            rollup.add(obs)
        t3 = clock()
        for obs in observations:
            detector.observe(obs)
        t4 = clock()
        spent["parse"] += t1 - t0
        spent["observation"] += t2 - t1
        spent["rollup"] += t3 - t2
        spent["detector"] += t4 - t3
        count += len(observations)
    per = {step: 1e6 * seconds / count for step, seconds in spent.items()}
    total = sum(per.values())
    table = Table(title=f"Watch path: CPU per request, {count:,} audit records in 1 MiB batches")
    table.add_column("step")
    table.add_column("µs per request", justify="right")
    for step, value in per.items():
        table.add_row(step, f"{value:.2f}")
    table.add_row("all", f"{total:.2f}")
    Console(highlight=False).print(table)
    print(f"detector alone: {per['detector']:.2f} µs (target {TARGET_US:.0f}); whole path: {total:.2f} µs")
    if args.json:
        args.json.write_bytes(
            orjson.dumps({"requests": count, "us_per_request": per, "total_us": total}, option=orjson.OPT_INDENT_2)
        )
    return 0 if per["detector"] < TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
