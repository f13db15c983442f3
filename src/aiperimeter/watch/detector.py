"""The anomaly detector: each Observation, in time order, against its key's learned baseline and its address's recent
failures. Pure (no I/O, the traffic's own clock), so weeks of traffic replay in seconds and replicas that read the
same stream raise the same alerts.

Cost matters: it runs for every request. The hot path is dictionary lookups, a 5-slot sliding window and
comparisons with thresholds the baseline computes once a day (see baseline.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiperimeter.config import SEVERITIES, Severity
from aiperimeter.watch.alerts import Alert
from aiperimeter.watch.baseline import HOURS, MAX_SEEN, RECENT, SIZE_BUCKETS, KeyBaseline
from aiperimeter.watch.observation import Observation, network_of

_FAILURES = frozenset({401, 403})
# A new tool is the most telling: tools act on the owner's systems.
NOVELTY_SEVERITY: dict[str, Severity] = {"model": "medium", "tool": "high", "route": "medium"}


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    learn_days: int = 7  # days of history before rates and idle hours are judged
    learn_requests: int = 50  # requests before new networks, models, tools and routes are news
    learn_age: float = 3 * 86400.0  # and seconds since the key was first seen
    idle_min: int = 10  # requests in 5 minutes at an idle hour that make an alert
    min_requests: float = 20.0  # a 5-minute request ceiling is never below this
    min_tokens: float = 20_000.0  # nor a token ceiling below this
    burst_failures: int = 20  # refused requests from one address in 5 minutes
    shape_outliers: int = 14  # of the last 20 requests outside the key's usual sizes
    roaming_networks: int = 6  # a key seen from this many networks roams: new networks are not news for it
    cooldown: float = 3600.0  # one alert per kind and subject per hour, unless it grows more severe
    forget_after: float = 30 * 86400.0  # networks, models, tools and routes unused this long are forgotten
    max_keys: int = 100_000
    max_seen: int = MAX_SEEN  # networks, models, tools and routes remembered per key
    max_addresses: int = 100_000


@dataclass(slots=True)
class _Address:
    minute: int = 0
    window: list[int] = field(default_factory=lambda: [0] * 5)
    total: int = 0
    evidence: list[str] = field(default_factory=list)


def _remember(seen: dict[str, float], name: str, now: float, cap: int) -> None:
    """Note `name` as used now; at the cap, the least recently used name is forgotten. A key's holder chooses model
    and tool names: the memory they take is bounded per key."""
    if name not in seen and len(seen) >= cap:
        del seen[min(seen, key=seen.__getitem__)]
    seen[name] = now


def _escalate(severity: Severity) -> Severity:
    return SEVERITIES[min(SEVERITIES.index(severity) + 1, len(SEVERITIES) - 1)]


def _advance(window: list[int], old: int, new: int, total: int) -> int:
    """Move a 5-slot per-minute window from minute `old` to `new`; return the new total."""
    if new - old >= 5:
        window[:] = [0, 0, 0, 0, 0]
        return 0
    for minute in range(old + 1, new + 1):
        total -= window[minute % 5]
        window[minute % 5] = 0
    return total


class Detector:
    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.keys: OrderedDict[str, KeyBaseline] = OrderedDict()
        self.addresses: OrderedDict[str, _Address] = OrderedDict()
        self._cooldown: dict[tuple[str, str], tuple[float, int]] = {}  # (kind, subject) -> (until, severity)
        self._recent_kinds: dict[str, dict[str, float]] = {}  # key -> alert kind -> when
        self._evidence: dict[str, list[str]] = {}  # key -> the last request ids
        self._networks: dict[str, str] = {}  # address -> network, cached (parsing costs microseconds)

    # --- the hot path ---

    def observe(self, obs: Observation) -> list[Alert]:
        alerts: list[Alert] = []
        if obs.status in _FAILURES and obs.deny != "client_blocked":  # a blocked address is already dealt with
            self._failure(obs, alerts)
        if obs.canary:
            self._raise(alerts, obs, "canary", "critical", obs.key or obs.client,
                        summary=f"canary key {obs.key} used from {obs.client}",
                        baseline="a canary key is never used", observed=f"{obs.method} {obs.path}",
                        details={"user_agent": obs.user_agent, "client": obs.client}, key=obs.key,
                        evidence=(obs.request_id,))  # fmt: skip
            return alerts
        if obs.key is None:
            return alerts
        state = self.keys.get(obs.key)
        if state is None:
            state = self._new_key(obs)
        else:
            self.keys.move_to_end(obs.key)
        day = int(obs.time // 86400)
        if day != state.day:
            if day < state.day:  # out of order by more than a day: count it, judge nothing
                return alerts
            state.close_day(day, self.settings.min_requests, self.settings.min_tokens)
            state.forget(obs.time - self.settings.forget_after)
        evidence = self._evidence[obs.key]
        evidence.append(obs.request_id)
        if len(evidence) > 20:
            del evidence[0]
        state.requests += 1
        self._rates(state, obs, alerts)
        if obs.status < 400:
            self._novelty(state, obs, alerts)
            self._shape(state, obs, alerts)
        return alerts

    def _rates(self, st: KeyBaseline, obs: Observation, alerts: list[Alert]) -> None:
        minute = int(obs.time // 60)
        if minute != st.minute:
            if minute > st.minute:
                st.sum_req = _advance(st.win_req, st.minute, minute, st.sum_req)
                st.sum_tok = _advance(st.win_tok, st.minute, minute, st.sum_tok)
                st.sum_deny = _advance(st.win_deny, st.minute, minute, st.sum_deny)
                st.minute = minute
            else:
                minute = st.minute  # slightly out of order: counted in the newest minute
        slot = minute % 5
        tokens = obs.tokens_in + obs.tokens_out
        st.win_req[slot] += 1
        st.win_tok[slot] += tokens
        st.sum_req += 1
        st.sum_tok += tokens
        hour = minute // 60 % HOURS
        if st.sum_req > st.today_req[hour]:
            st.today_req[hour] = st.sum_req
        if st.sum_tok > st.today_tok[hour]:
            st.today_tok[hour] = st.sum_tok
        if obs.deny is not None:
            st.win_deny[slot] += 1
            st.sum_deny += 1
            if st.sum_deny > st.today_deny:
                st.today_deny = st.sum_deny
            if st.sum_deny > st.ceil_deny:
                self._key_alert(alerts, st, obs, "denial_burst", "medium", hour,
                                summary=f"key {obs.key}: {st.sum_deny} refused requests in 5 minutes",
                                baseline=f"at most {st.ceil_deny:.0f} refused in 5 minutes",
                                observed=f"{st.sum_deny} refused, the last for {obs.deny}",
                                details={"observed": st.sum_deny, "ceiling": st.ceil_deny})  # fmt: skip
        if len(st.hist_req) < self.settings.learn_days:
            return
        for kind, unit, observed, ceiling in (
            ("volume_spike", "requests", st.sum_req, st.ceil_req[hour]),
            ("token_spike", "tokens", st.sum_tok, st.ceil_tok[hour]),
        ):
            if observed > ceiling:
                self._key_alert(alerts, st, obs, kind, "high" if observed > 3 * ceiling else "medium", hour,
                                summary=f"key {obs.key}: {observed} {unit} in 5 minutes",
                                baseline=f"at most {ceiling:.0f} {unit} in 5 minutes around {hour:02d}:00 UTC",
                                observed=f"{observed} {unit} in 5 minutes",
                                details={"observed": observed, "ceiling": ceiling, "hour": hour})  # fmt: skip
        if st.idle[hour] and st.sum_req >= self.settings.idle_min:
            self._key_alert(alerts, st, obs, "idle_hour", "high", hour,
                            summary=f"key {obs.key} active at {hour:02d}:00 UTC, an hour it is normally idle",
                            baseline=f"no request between {(hour - 2) % 24:02d}:00 and {(hour + 3) % 24:02d}:00 UTC "
                                     f"on any of the last {len(st.hist_req)} days",
                            observed=f"{st.sum_req} requests in 5 minutes",
                            details={"observed": st.sum_req, "hour": hour})  # fmt: skip

    def _novelty(self, st: KeyBaseline, obs: Observation, alerts: list[Alert]) -> None:
        s = self.settings
        learned = st.requests > s.learn_requests and obs.time - st.first_seen >= s.learn_age
        now = obs.time
        if obs.client != st.last_client:
            network = self._networks.get(obs.client)
            if network is None:
                if len(self._networks) > s.max_addresses:
                    self._networks.clear()
                network = self._networks[obs.client] = network_of(obs.client)
            st.last_client, st.last_network = obs.client, network
        network = st.last_network
        if network not in st.networks and learned and len(st.networks) < s.roaming_networks:
            usual = ", ".join(sorted(st.networks)[:5])
            self._key_alert(alerts, st, obs, "new_network", "high" if len(st.networks) <= 2 else "medium", None,
                            summary=f"key {obs.key} used from a new network, {network} ({obs.client})",
                            baseline=f"used from {len(st.networks)} network(s): {usual}",
                            observed=f"a request from {obs.client}",
                            details={"network": network, "known": sorted(st.networks)[:20]})  # fmt: skip
        _remember(st.networks, network, now, s.max_seen)
        for kind, seen, names in (
            ("model", st.models, (obs.model,) if obs.model is not None else ()),
            ("tool", st.tools, obs.tools),
            ("route", st.routes, (obs.route,) if obs.route is not None else ()),
        ):
            for name in names:
                if name not in seen and learned:
                    self._key_alert(alerts, st, obs, f"new_{kind}", NOVELTY_SEVERITY[kind], None,
                                    summary=f"key {obs.key} used a {kind} it never used: {name}",
                                    baseline=f"{kind}s used: {', '.join(sorted(seen)[:8]) or 'none'}",
                                    observed=f"{kind} {name}", details={kind: name})  # fmt: skip
                _remember(seen, name, now, s.max_seen)

    def _shape(self, st: KeyBaseline, obs: Observation, alerts: list[Alert]) -> None:
        size_in = min(obs.bytes_in.bit_length(), SIZE_BUCKETS - 1)
        size_out = min(obs.tokens_out.bit_length(), SIZE_BUCKETS - 1)
        if st.shaped:
            low_in, high_in = st.range_in
            low_out, high_out = st.range_out
            # Outside by more than a factor of four beyond the usual 1st-99th percentile range: sizes of a few
            # bytes or tokens never count as a change of shape.
            outside = not (low_in - 2 <= size_in <= high_in + 2 and low_out - 2 <= size_out <= high_out + 2) and (
                obs.bytes_in >= 1024 or obs.tokens_out >= 256
            )
            at = st.recent_at
            st.recent_out += outside - st.recent[at]
            st.recent[at] = outside
            st.recent_at = (at + 1) % RECENT
            if st.recent_out >= self.settings.shape_outliers:
                self._key_alert(alerts, st, obs, "shape_change", "medium", None,
                                summary=f"key {obs.key}: {st.recent_out} of its last {RECENT} requests are unlike "
                                        "its usual ones in size",
                                baseline=f"prompts of {1 << max(low_in - 1, 0)} to {1 << high_in} bytes, "
                                         f"completions of {1 << max(low_out - 1, 0)} to {1 << high_out} tokens",
                                observed=f"this one: {obs.bytes_in} bytes in, {obs.tokens_out} tokens out",
                                details={"outside": st.recent_out, "bytes_in": obs.bytes_in,
                                         "tokens_out": obs.tokens_out})  # fmt: skip
                if outside:
                    return  # an unusual request does not teach what is usual
        st.size_in[size_in] += 1
        st.size_out[size_out] += 1
        if not st.shaped and st.requests >= self.settings.learn_requests:
            st.recompute(min_requests=self.settings.min_requests, min_tokens=self.settings.min_tokens)

    def _failure(self, obs: Observation, alerts: list[Alert]) -> None:
        """Refused requests from one address: credential stuffing, key guessing, route scanning."""
        address = self.addresses.get(obs.client)
        if address is None:
            if len(self.addresses) >= self.settings.max_addresses:
                self.addresses.popitem(last=False)
            address = self.addresses[obs.client] = _Address()
        else:
            self.addresses.move_to_end(obs.client)
        minute = int(obs.time // 60)
        if minute > address.minute:
            address.total = _advance(address.window, address.minute, minute, address.total)
            address.minute = minute
        address.window[address.minute % 5] += 1
        address.total += 1
        address.evidence.append(obs.request_id)
        if len(address.evidence) > 20:
            del address.evidence[0]
        if address.total >= self.settings.burst_failures:
            self._raise(alerts, obs, "denial_burst", "high", f"address:{obs.client}",
                        summary=f"{address.total} refused requests from {obs.client} in 5 minutes",
                        baseline=f"fewer than {self.settings.burst_failures} refusals from one address in 5 minutes",
                        observed=f"{address.total} refused requests, the last {obs.status} {obs.deny}",
                        details={"observed": address.total, "client": obs.client}, key=None,
                        evidence=tuple(address.evidence))  # fmt: skip

    # --- alerts ---

    def _key_alert(
        self,
        alerts: list[Alert],
        st: KeyBaseline,
        obs: Observation,
        kind: str,
        severity: Severity,
        hour: int | None,
        **text: Any,
    ) -> None:
        if hour is not None:
            st.flagged[hour] = True  # not learned from
        assert obs.key is not None
        kinds = self._recent_kinds.setdefault(obs.key, {})
        if any(k != kind and obs.time - at < self.settings.cooldown for k, at in kinds.items()):
            severity = _escalate(severity)  # two different departures within the hour: likely one incident
        if self._raise(alerts, obs, kind, severity, obs.key, key=obs.key, **text):
            kinds[kind] = obs.time

    def _raise(
        self,
        alerts: list[Alert],
        obs: Observation,
        kind: str,
        severity: Severity,
        subject: str,
        *,
        key: str | None,
        summary: str,
        baseline: str,
        observed: str,
        details: dict[str, Any],
        evidence: tuple[str, ...] | None = None,
    ) -> bool:
        level = SEVERITIES.index(severity)
        held = self._cooldown.get((kind, subject))
        if held is not None and obs.time < held[0] and (level <= held[1] or level < SEVERITIES.index("high")):
            return False  # raised within the hour, and not grown into one that calls for action since
        if len(self._cooldown) > 4 * self.settings.max_keys:
            self._cooldown = {k: v for k, v in self._cooldown.items() if v[0] > obs.time}
        self._cooldown[(kind, subject)] = (obs.time + self.settings.cooldown, level)
        if evidence is None:
            evidence = tuple(self._evidence.get(key, ())) if key is not None else (obs.request_id,)
        alerts.append(
            Alert(
                id=Alert.make_id(f"{kind}/{severity}", subject, obs.time // self.settings.cooldown),
                time=obs.time,
                kind=kind,
                severity=severity,
                key=key,
                client=obs.client or None,
                summary=summary,
                baseline=baseline,
                observed=observed,
                evidence=evidence[-10:],
                details=details,
            )
        )
        return True

    # --- keys ---

    def _new_key(self, obs: Observation) -> KeyBaseline:
        assert obs.key is not None
        if len(self.keys) >= self.settings.max_keys:
            old, _ = self.keys.popitem(last=False)
            self._evidence.pop(old, None)
            self._recent_kinds.pop(old, None)
        state = KeyBaseline(first_seen=obs.time, day=int(obs.time // 86400), minute=int(obs.time // 60))
        self.keys[obs.key] = state
        self._evidence[obs.key] = []
        return state

    def snapshot(self) -> dict[str, Any]:
        return {"keys": {key: state.to_dict() for key, state in self.keys.items()}}

    def restore(self, doc: dict[str, Any]) -> int:
        """Load a snapshot's baselines (a malformed key entry is skipped); returns how many were loaded."""
        loaded = 0
        for key, entry in (doc.get("keys") or {}).items():
            try:
                state = KeyBaseline.from_dict(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            state.minute = int(state.day * 1440)
            self.keys[str(key)[:256]] = state
            self._evidence[str(key)[:256]] = []
            loaded += 1
        return loaded
