"""Soak load: a mock model server and the real gateway as processes, a capacity probe, an open-loop load generator.

The load is open-loop: request i is scheduled at t0 + i / rate whether or not earlier ones have answered, and its
latency is measured from that scheduled time, so a stalled gateway shows up as latency instead of as a politely
slowed client (coordinated omission). A mix of streamed and plain chat completions is sent through one pooled
aiohttp session on uvloop; every stream is read to the end and must close with `data: [DONE]`.

The mock is benchmarks/mock_upstream.py (20 SSE events 5 ms apart, or a 610-byte completion) run as its own process,
with one addition: SIGUSR1 turns on a fault mode (plain requests get a 500, streams are cut after two events) and
SIGUSR2 turns it off, so a test can prove that the error counters count.

API: `start_stack(workdir)` -> Stack (context manager), `probe_capacity(stack)` -> req/s,
`soak(stack, rate, seconds)` -> SoakResult (`to_dict()` for the report).
CLI: `python -m tests.hardening.load --seconds 180 --share 0.7 [--json F]`;
the mock alone: `python -m tests.hardening.load.upstream`.
"""

from tests.hardening.load.client import Capacity, measure_capacity, probe_capacity
from tests.hardening.load.soak import SoakResult, Window, soak
from tests.hardening.load.stack import Stack, start_stack

__all__ = ["Capacity", "SoakResult", "Stack", "Window", "measure_capacity", "probe_capacity", "soak", "start_stack"]
