"""Alert delivery: the log always, and a webhook (Slack-compatible JSON) for alerts at or above `min_severity`.

The webhook is posted from a bounded queue by one task: a slow or dead receiver delays nothing else and cannot grow
memory. Its URL is a secret (Slack's carries the credential) and never appears in a log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from aiperimeter.config import Severity
from aiperimeter.sensitive import Secret
from aiperimeter.watch.alerts import Alert, rank

log = logging.getLogger("aiperimeter.watch")

QUEUE = 1000
ATTEMPTS = 3
_EMOJI = {"low": ":information_source:", "medium": ":warning:", "high": ":rotating_light:", "critical": ":fire:"}


def escape(text: str) -> str:
    """Slack's escaping for message text: model names, tool names and paths come from clients, and `<!channel>` or
    `<https://evil|Resume the key>` must arrive as the characters they are, not as a mention or a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert, dashboard: str | None = None) -> dict[str, Any]:
    """`text` is what Slack (and Mattermost, Rocket.Chat, Teams workflows) show; `alert` carries every field for
    receivers that parse it."""
    lines = [
        f"{_EMOJI.get(alert.severity, '')} *{alert.severity.upper()}* aiperimeter alert: {alert.kind}",
        escape(alert.summary),
        f"usual: {escape(alert.baseline)}",
        f"seen: {escape(alert.observed)}",
    ]
    if alert.actions:
        lines.append("done: " + escape(", ".join(alert.actions)))
    if alert.evidence:
        lines.append("audit records: " + escape(", ".join(alert.evidence[:5])))
    if dashboard:
        lines.append(f"dashboard: {dashboard}")
    return {"text": "\n".join(lines), "alert": alert.to_dict()}


class Delivery:
    def __init__(
        self,
        webhook: Secret | None,
        *,
        min_severity: Severity = "medium",
        timeout: float = 5.0,
        dashboard: str | None = None,
    ) -> None:
        self.webhook = webhook
        self.min_severity = min_severity
        self.timeout = timeout
        self.dashboard = dashboard
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self.webhook is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def close(self, grace: float = 2.0) -> None:
        if self._task is not None:
            try:  # what is queued gets a moment to go out
                async with asyncio.timeout(grace):
                    await self._queue.join()
            except TimeoutError:
                pass
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def deliver(self, alert: Alert) -> None:
        log.log(
            logging.WARNING,
            "alert %s [%s] %s; usual: %s; seen: %s; evidence: %s%s",
            alert.kind,
            alert.severity,
            alert.summary,
            alert.baseline,
            alert.observed,
            ", ".join(alert.evidence[:5]) or "-",
            f"; done: {', '.join(alert.actions)}" if alert.actions else "",
        )
        if self.webhook is None or rank(alert.severity) < rank(self.min_severity):
            return
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("the alert webhook is behind by %d alerts; alert %s was not posted", QUEUE, alert.id)

    async def _run(self) -> None:
        assert self.webhook is not None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers={"User-Agent": "aiperimeter-watch"}
        )
        while True:
            alert = await self._queue.get()
            try:
                await self._post(alert)
            finally:
                self._queue.task_done()

    async def _post(self, alert: Alert) -> None:
        assert self.webhook is not None and self._session is not None
        body = orjson.dumps(slack_message(alert, self.dashboard))
        for attempt in range(ATTEMPTS):
            status: int | str
            try:
                async with self._session.post(
                    self.webhook.reveal(),
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if response.status < 300:
                        self.sent += 1
                        return
                    if 400 <= response.status < 500 and response.status != 429:
                        break  # the receiver refuses it: retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status = type(exc).__name__
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(0.5 * 4**attempt)
        self.failed += 1
        # The URL is a credential: the log names the alert and the failure, never the address.
        log.warning("could not post alert %s to the webhook: %s", alert.id, status)
