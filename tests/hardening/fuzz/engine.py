"""The fuzzing engine: seeded generation and mutation, a per-input hang watchdog, and the counts of a run.

A target is a check over bytes plus a way to make inputs. The check raises `OracleFailure` when the code under test
did something the target's model forbids; any other exception escaping it is a crash, and an input that runs longer
than `HANG_SECONDS` is a hang. Every failing input is saved as hex with a command that replays it.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HANG_SECONDS = 2.0
MAX_EXAMPLES = 5  # failing inputs kept per target and kind, so a run that finds many stays readable


class OracleFailure(AssertionError):
    """The code under test allowed what the target's model forbids."""


class Hang(BaseException):
    """Raised by the watchdog in the middle of an input that ran too long (a BaseException so `except Exception`
    in the code under test cannot swallow it)."""


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[bytes], None]
    generate: Callable[[random.Random], bytes]  # one grammar-made input
    seeds: Sequence[bytes] = ()  # inputs from real traffic and the unit tests, to mutate
    tokens: Sequence[bytes] = ()  # fragments the mutator splices in (the format's syntax, known tricks)
    max_len: int = 4096


@dataclass
class TargetReport:
    target: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    oracle_failures: int = 0
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.crashes + self.hangs + self.oracle_failures

    @property
    def exec_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


@dataclass
class FuzzReport:
    seed: int
    targets: list[TargetReport]
    mode: str = "generate"

    @property
    def inputs(self) -> int:
        return sum(t.inputs for t in self.targets)

    @property
    def failures(self) -> int:
        return sum(t.failures for t in self.targets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "inputs": self.inputs,
            "failures": self.failures,
            "crashes": sum(t.crashes for t in self.targets),
            "hangs": sum(t.hangs for t in self.targets),
            "oracle_failures": sum(t.oracle_failures for t in self.targets),
            "seconds": round(sum(t.seconds for t in self.targets), 1),
            "targets": [{**asdict(t), "exec_per_second": round(t.exec_per_second, 1)} for t in self.targets],
        }


# --- making inputs ----------------------------------------------------------------------------------------------------

_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\r", b"\n", b"\r\n", b"\\", b'"', b"%", b"\xc0\xaf", b"\xed\xa0\x80")


def mutate(rng: random.Random, data: bytes, tokens: Sequence[bytes], others: Sequence[bytes], max_len: int) -> bytes:
    """`data` with one to four edits: byte flips, deletions, duplicated slices, spliced tokens or other inputs."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        roll = rng.random()
        if roll < 0.2 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif roll < 0.35 and out:
            del out[at : at + rng.randint(1, 8)]
        elif roll < 0.65 and tokens:
            out[at:at] = rng.choice(tokens)
        elif roll < 0.75:
            out[at:at] = rng.choice(_INTERESTING)
        elif roll < 0.9 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 32)]
        elif others:
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            out[at:] = other[cut:]
    return bytes(out[:max_len])


class Source:
    """The inputs of one target: grammar-made, and mutations of seeds and of earlier grammar-made inputs."""

    def __init__(self, target: Target, rng: random.Random) -> None:
        self.target = target
        self.rng = rng
        self.pool: list[bytes] = list(target.seeds)

    def next(self) -> bytes:
        rng, target = self.rng, self.target
        if not self.pool or rng.random() < 0.4:
            data = target.generate(rng)
            if len(self.pool) < 512:
                self.pool.append(data)
            elif rng.random() < 0.05:
                self.pool[rng.randrange(len(self.pool))] = data
            return data
        return mutate(rng, rng.choice(self.pool), target.tokens, self.pool, target.max_len)


# --- running ----------------------------------------------------------------------------------------------------------


class Watchdog:
    """Interrupts an input after `HANG_SECONDS` with `Hang` (SIGALRM, main thread only); elsewhere the time taken is
    checked after the input instead."""

    def __init__(self, seconds: float = HANG_SECONDS) -> None:
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        self._previous: Any = None

    def __enter__(self) -> Watchdog:
        if self.armed:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)

    @staticmethod
    def _fire(signum: int, frame: object) -> None:
        raise Hang

    def start(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def stop(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _save(target: Target, kind: str, data: bytes, error: BaseException, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target.name}-{kind}-{zlib.crc32(data):08x}.hex"
    path.write_text(data.hex() + "\n")
    return {
        "kind": kind,
        "error": f"{type(error).__name__}: {str(error)[:300]}",
        "input_hex": data[:512].hex(),
        "file": str(path),
        "reproduce": f"{sys.executable} -m tests.hardening.fuzz --replay {target.name} {path}",
    }


def check_one(target: Target, data: bytes, watchdog: Watchdog) -> tuple[str, BaseException] | None:
    """Runs one input: None when it passed, else the kind of failure and the error."""
    started = time.perf_counter()
    watchdog.start()
    try:
        target.check(data)
    except Hang as error:
        return "hang", error
    except OracleFailure as error:
        return "oracle", error
    except Exception as error:
        return "crash", error
    finally:
        watchdog.stop()
    if time.perf_counter() - started > watchdog.seconds:
        return "hang", Hang(f"took more than {watchdog.seconds} s")
    return None


def fuzz_target(
    target: Target, inputs: int, seed: int, *, deadline: float | None = None, failures_dir: Path | None = None
) -> TargetReport:
    """Runs `inputs` inputs of one target (fewer if `deadline`, a `time.monotonic()` value, passes first)."""
    report = TargetReport(target.name)
    folder = failures_dir or Path(tempfile.gettempdir()) / "aiperimeter-fuzz"
    source = Source(target, random.Random(f"{seed}:{target.name}"))
    started = time.perf_counter()
    with Watchdog() as watchdog:
        for count in range(inputs):
            if deadline is not None and count % 64 == 0 and time.monotonic() > deadline:
                break
            data = source.next()
            report.inputs += 1
            found = check_one(target, data, watchdog)
            if found is None:
                continue
            kind, error = found
            if kind == "hang":
                report.hangs += 1
            elif kind == "oracle":
                report.oracle_failures += 1
            else:
                report.crashes += 1
            if sum(e["kind"] == kind for e in report.examples) < MAX_EXAMPLES:
                report.examples.append(_save(target, kind, data, error, folder))
    report.seconds = time.perf_counter() - started
    return report


def measure_rates(
    targets: Sequence[Target], seed: int, seconds: float = 0.25, failures_dir: Path | None = None
) -> tuple[dict[str, float], dict[str, TargetReport]]:
    """Inputs per second of each target, from a short run whose inputs (and failures) count like any others."""
    rates, probes = {}, {}
    for target in targets:
        probe = fuzz_target(target, 10**9, seed + 1, deadline=time.monotonic() + seconds, failures_dir=failures_dir)
        rates[target.name] = max(probe.exec_per_second, 1.0)
        probes[target.name] = probe
    return rates, probes


def merged(report: TargetReport, probe: TargetReport) -> TargetReport:
    """One target's report with its speed probe's inputs, failures and time added."""
    report.inputs += probe.inputs
    report.crashes += probe.crashes
    report.hangs += probe.hangs
    report.oracle_failures += probe.oracle_failures
    report.seconds += probe.seconds
    report.examples = [*probe.examples, *report.examples][: MAX_EXAMPLES * 3]
    return report


def split_budget(total: int, rates: dict[str, float]) -> dict[str, int]:
    """Each target's share of `total` inputs, weighted by the square root of its speed: fast targets get more inputs,
    slow ones (whose inputs each exercise more) more time."""
    weights = {name: math.sqrt(rate) for name, rate in rates.items()}
    whole = sum(weights.values())
    shares = {name: max(1, int(total * weight / whole)) for name, weight in weights.items()}
    first = next(iter(shares))
    shares[first] = max(1, shares[first] + total - sum(shares.values()))
    return shares


def replay(target: Target, data: bytes) -> str:
    """What one saved input does now: 'pass', or the failure with its traceback printed."""
    import traceback

    with Watchdog() as watchdog:
        found = check_one(target, data, watchdog)
    if found is None:
        return "pass"
    kind, error = found
    traceback.print_exception(error)
    return f"{kind}: {type(error).__name__}: {error}"
