"""Serving captured examples back: the mock services of the tests and the benchmark answer from these.

A captured example answers the probes it recorded and 404 to every other request, as a real server answers an
unknown path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiperimeter.catalog.match import NOT_FOUND, Replies, Reply
from aiperimeter.catalog.schema import Example, Fingerprint, Probe

Answer = Callable[[Probe], Reply | None]  # None: no answer (connection refused, reset, timeout)


def example_answer(fp: Fingerprint, example: Example) -> Answer:
    recorded = {
        probe.key: Reply.from_example(example.responses[probe.id])
        for probe in fp.probes
        if probe.id in example.responses
    }

    def answer(probe: Probe) -> Reply:
        return recorded.get(probe.key, NOT_FOUND)

    return answer


def replies_for(fingerprints: Iterable[Fingerprint], answer: Answer) -> dict[str, Replies]:
    """Each fingerprint's view of one service: its probe ids mapped to that service's answers."""
    cache: dict[object, Reply | None] = {}
    out: dict[str, Replies] = {}
    for fp in fingerprints:
        replies = {}
        for probe in fp.probes:
            if probe.key not in cache:
                cache[probe.key] = answer(probe)
            reply = cache[probe.key]
            if reply is not None:
                replies[probe.id] = reply
        out[fp.id] = replies
    return out
