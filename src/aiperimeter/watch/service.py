"""The watcher inside a running gateway: which audit stream it reads, where it keeps its baselines, and how its
automatic actions reach every worker and replica (the key cache, the revocation bus, the audit log)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiperimeter.state.redis_limits import connect
from aiperimeter.watch.deliver import Delivery
from aiperimeter.watch.feed import WARMUP_BYTES_DEFAULT, Feed, FileFeed, RedisFeed
from aiperimeter.watch.watcher import Actions, Watcher

if TYPE_CHECKING:
    from aiperimeter.gateway.app import Gateway

log = logging.getLogger("aiperimeter.watch")


def build_watcher(gateway: Gateway, dashboard: str | None = None) -> Watcher | None:
    """The watcher for this gateway, or None (with a log line saying why) when it cannot or should not run."""
    settings = gateway.settings
    if not settings.watch.enabled:
        return None
    feed: Feed
    if settings.redis is not None:
        # A cluster: every replica's processes append to one stream, so each watcher sees all of the traffic.
        feed = RedisFeed(connect(settings.redis.reveal(), timeout=2.0, max_connections=2), stream=settings.watch.stream)
    elif settings.audit_path is not None:
        feed = FileFeed(settings.audit_path, start_from_end=WARMUP_BYTES_DEFAULT)
    else:
        log.warning(
            "anomaly detection is off: the audit log goes to stdout, so there is no stream to read. "
            "Write the audit log to a file (audit_log: file) or configure Redis"
        )
        return None

    def blocked(address: str, until: float, reason: str) -> None:
        gateway.sink.write(
            {"time": time.time(), "event": "block", "client": address, "until": until, "reason": reason,
             "actor": "watch"}
        )  # fmt: skip
        gateway.sink.flush()

    watch = settings.watch
    return Watcher(
        feed,
        gateway.store,
        watch,
        state_path=settings.data_dir / "watch" / "state.json",
        delivery=Delivery(
            watch.webhook_url, min_severity=watch.min_severity, timeout=watch.webhook_timeout, dashboard=dashboard
        ),
        actions=Actions(gateway.store, watch, on_key_change=gateway.key_changed, on_block=blocked),
        on_alert=lambda alert: gateway.metrics.alert(alert.kind, alert.severity),
        on_lag=gateway.metrics.watch_lag,
    )
