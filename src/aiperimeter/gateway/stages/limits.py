"""Requests, tokens and concurrency per key (or JWT subject) and overall, admitted atomically.

Before forwarding, one atomic step takes a request, a concurrency slot and an estimate of the tokens (the prompt's
size plus the completion limit the request names, or a configured default) from every subject's buckets; the
response's real usage settles the reservation when it ends, streamed or cut off (without reported usage, the
estimate stands). Parallel requests therefore cannot overshoot a token limit by more than one estimate each.

When the shared limiter (Redis) is down, each replica falls back to limits of its own, divided by the configured
number of replicas, and says so in its log; it returns to the shared limiter by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from aiperimeter.config import LimitSettings
from aiperimeter.errors import BackendUnavailable, RateLimited
from aiperimeter.gateway.pipeline import Exchange, Outcome, Stage
from aiperimeter.keys import KeyRecord
from aiperimeter.state.limits import Decision, Limiter, Limits

log = logging.getLogger("aiperimeter.gateway")
GLOBAL = "global"
_COMPLETION_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(slots=True)
class Reservation:
    limiter: Limiter
    subjects: list[tuple[str, Limits]]
    estimate: int


def estimate_tokens(ex: Exchange, default_completion: int) -> int:
    """Prompt (about four bytes a token) plus the completion the request allows itself."""
    completion = default_completion
    body = ex.json or {}
    for name in _COMPLETION_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            completion = value
            break
    else:
        options = body.get("options")  # Ollama
        if isinstance(options, dict):
            value = options.get("num_predict")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                completion = value
    return len(ex.body) // 4 + completion


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{rest}s"


def rate_headers(decision: Decision) -> dict[str, str]:
    headers = {}
    for kind in ("requests", "tokens"):
        limit = getattr(decision, f"limit_{kind}")
        if limit is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, getattr(decision, f"remaining_{kind}") or 0))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(getattr(decision, f"reset_{kind}") or 0.0)
    return headers


class Limit(Stage):
    name: ClassVar[str] = "limits"

    def __init__(
        self,
        limiter: Limiter,
        fallback: Limiter,
        settings: LimitSettings,
        *,
        local_share: int = 1,
        fallback_share: int = 1,
    ) -> None:
        """`local_share`: how many processes split the limits when the limiter is not shared (workers without
        Redis); `fallback_share`: how many split them while the shared limiter is down (replicas x workers)."""
        self.limiter = limiter
        self.fallback = fallback
        self.settings = settings
        self.local_share = local_share
        self.fallback_share = fallback_share
        self.degraded = False
        self.in_flight: dict[str, tuple[Limiter, list[tuple[str, Limits]]]] = {}
        self._renewer: asyncio.Task[None] | None = None

    def subjects(self, key: KeyRecord) -> list[tuple[str, Limits]]:
        s = self.settings
        own = Limits(key.rpm or s.rpm, key.tpm or s.tpm, key.concurrency or s.concurrency)
        overall = Limits(s.global_rpm, s.global_tpm, s.global_concurrency)
        return [(name, limits) for name, limits in ((f"key:{key.id}", own), (GLOBAL, overall)) if _any(limits)]

    @staticmethod
    def _share(subjects: list[tuple[str, Limits]], n: int) -> list[tuple[str, Limits]]:
        if n == 1:
            return subjects

        def share(value: int | None) -> int | None:
            return None if value is None else max(1, value // n)

        return [(name, Limits(share(lim.rpm), share(lim.tpm), share(lim.concurrency))) for name, lim in subjects]

    async def on_request(self, ex: Exchange) -> None:
        if ex.key is None:
            return
        subjects = self._share(self.subjects(ex.key), self.local_share)
        if not subjects:
            return
        estimate = estimate_tokens(ex, self.settings.default_max_tokens)
        limiter = self.limiter
        try:
            decision = await limiter.acquire(subjects, ex.request_id, estimate)
            if self.degraded:
                log.warning("shared limiter available again: cluster-wide limits restored")
                self.degraded = False
        except BackendUnavailable:
            if not self.degraded:
                log.warning(
                    "shared limiter unavailable: each process enforces 1/%d of the limits until it is back",
                    self.fallback_share,
                )
                self.degraded = True
            limiter, subjects = self.fallback, self._share(subjects, self.fallback_share)
            decision = await limiter.acquire(subjects, ex.request_id, estimate)
        headers = rate_headers(decision)
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            what = {"requests": "requests per minute", "tokens": "tokens per minute"}.get(
                decision.limit or "", "requests at once"
            )
            raise RateLimited(
                f"rate_limit_{decision.limit}",
                f"Rate limit reached: {what}. Retry after {retry} s.",
                headers={"Retry-After": str(retry), **headers},
            )
        ex.reservation = Reservation(limiter, subjects, estimate)
        ex.extra_headers = headers
        if any(limits.concurrency for _, limits in subjects):  # only leases need renewing
            self.in_flight[ex.request_id] = (limiter, subjects)

    async def on_finish(self, ex: Exchange, outcome: Outcome) -> None:
        reservation: Reservation | None = ex.reservation
        if reservation is None:
            return
        self.in_flight.pop(ex.request_id, None)
        reported = ex.prompt_tokens is not None or ex.completion_tokens is not None
        used = (ex.prompt_tokens or 0) + (ex.completion_tokens or 0) if reported else reservation.estimate
        try:
            await reservation.limiter.settle(reservation.subjects, ex.request_id, reservation.estimate, used)
        except BackendUnavailable:
            # The slot's lease frees it; the tokens stay charged at the estimate.
            log.warning("could not settle request %s with the shared limiter", ex.request_id)

    def start(self, lease: float) -> None:
        self._renewer = asyncio.create_task(self._renew(lease / 3), name="limit-lease-renewer")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def _renew(self, every: float) -> None:
        """Long streams keep their concurrency slots: leases of requests in flight are extended."""
        while True:
            await asyncio.sleep(every)
            groups: dict[tuple[int, str], tuple[Limiter, list[tuple[str, Limits]], list[str]]] = {}
            for request_id, (limiter, subjects) in list(self.in_flight.items()):
                key = (id(limiter), repr(subjects))
                groups.setdefault(key, (limiter, subjects, []))[2].append(request_id)
            for limiter, subjects, ids in groups.values():
                # On failure: renewed on the next round, or freed by the lease; never held forever.
                with contextlib.suppress(BackendUnavailable):
                    await limiter.renew(subjects, ids)


def _any(limits: Limits) -> bool:
    return limits.rpm is not None or limits.tpm is not None or limits.concurrency is not None
