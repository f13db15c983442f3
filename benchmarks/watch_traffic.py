"""Synthetic gateway traffic for the watch part: weeks of per-key behaviour, with labelled incidents.

Run: `.venv/bin/python benchmarks/watch_traffic.py` prints a summary of the default scenario; `--jsonl PATH` writes
its audit records (one JSON line per request, as the gateway's audit log does) and `--labels PATH` its incidents.
benchmarks/watch_eval.py runs the detector over the same stream and scores it.

Seeded and deterministic: the same seed, keys and weeks give the same records, byte for byte. Every observation is
made the way the watcher makes it: an audit record, read back by `Observation.from_record`. Clock: UTC, starting on
a Monday at 00:00; the first `learn_weeks` are honest traffic only, incidents come in the `eval_weeks` after.

Honest key kinds (each key draws its own volume, networks, models and weekly growth):
- office: an interactive app; weekday rhythm with a lunch dip, sessions of a few questions (Poisson arrivals),
  1-2 office networks with addresses moving inside the /24 (DHCP), 1-3 models (one tried only now and then),
  log-normal prompt and completion sizes; occasional late-evening and weekend sessions.
- batch: a nightly job, 02:00-03:00 every night, hundreds of embedding requests from one server.
- ci: a bot, a few bursts per working day; fast bursts meet the rate limit (a few 429s).
- agent: a tool-using agent, long working hours, chains of calls declaring a fixed tool set.
- low: a handful of requests a day, at any hour.
- service: a 24/7 backend, steady with a daily rhythm, from a few replicas.
- roaming: a mobile client: home Wi-Fi, mobile carriers (a new /24 inside the carrier's range almost every
  session) and now and then a hotel network.
Plus a canary key or two (no honest use), internet scanners (a few 401s a day from random addresses), gradual
growth, a quiet holiday and a busy day (+50%) in the evaluation weeks, a few 403s (model_not_allowed) and upstream
errors. With 20 keys or more, one office key is created on the first evaluation day (no incident targets it: a
detector cannot judge a key it has not learned yet).

Incidents (evaluation weeks only, `per_type` of each, at random days and hours):
- burst_3am: a key idle at night (office, ci, agent, roaming) sends a burst of 150-400 requests in 5-15 minutes
  between 01:00 and 05:00, from its usual network.
- leaked_key: a key (any kind but roaming, whose normal is new networks) used from a network no one uses, at
  1.5-5 requests a minute for 30-90 minutes, with requests like its owner's.
- slow_exfil: a key sends 30-45 requests a minute (under a 60 rpm limit) with completions four times its usual,
  for 45-75 minutes, from its usual network, at an hour it is normally active.
- denial_burst: an address sends 150-600 requests with invalid or malformed keys in 2-10 minutes (401, no key).
- route_probe: a key probes routes it may not use: 20-80 requests in 1-5 minutes, 403 route_not_allowed or
  admin_scope_required, from its usual network, at an hour it is normally active.
- canary: a canary key presented 1-4 times from an unknown address (401 invalid_key, as the gateway answers it).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from aiperimeter.watch.observation import Observation

MINUTE = 60.0
HOUR = 3_600.0
DAY = 86_400.0
WEEK = 7 * DAY
START = float(calendar.timegm((2025, 1, 6, 0, 0, 0)))  # a Monday

KINDS = ("office", "batch", "ci", "agent", "low", "service", "roaming")
_SHARE = {"office": 12, "batch": 4, "ci": 4, "agent": 5, "low": 5, "service": 6, "roaming": 4}  # of 40 keys
INCIDENT_TYPES = ("burst_3am", "leaked_key", "slow_exfil", "denial_burst", "route_probe", "canary")
RPM_LIMIT = 60

# Hourly weights, hour 0..23 (UTC, the keys' local time).
_OFFICE = (0, 0, 0, 0, 0, 0, 0, 0.1, 0.5, 0.9, 1, 1, 0.45, 0.8, 1, 1, 0.9, 0.6, 0.25, 0.08, 0, 0, 0, 0)
_AGENT = (0, 0, 0, 0, 0, 0, 0, 0.3, 0.7, 1, 1, 1, 0.8, 1, 1, 1, 0.9, 0.8, 0.6, 0.4, 0.3, 0.2, 0, 0)
_ROAMING = (0, 0, 0, 0, 0, 0, 0, 0.4, 0.8, 0.6, 0.4, 0.4, 1, 0.5, 0.4, 0.4, 0.5, 0.8, 1, 0.9, 0.8, 0.6, 0.4, 0.1)

# Sizes in tokens: prompt median, sigma, completion median, sigma (log-normal).
_SIZES = {
    "office": (300, 0.9, 200, 0.7),
    "batch": (400, 0.4, 0, 0.0),
    "ci": (2000, 0.6, 600, 0.6),
    "agent": (1500, 0.5, 150, 0.8),
    "low": (250, 0.8, 300, 0.7),
    "service": (200, 0.5, 80, 0.5),
    "roaming": (150, 0.8, 250, 0.7),
}
_MODELS = {
    "office": ("llama3.1:8b", "qwen2.5:14b", "mistral-small:24b", "gemma2:9b"),
    "batch": ("nomic-embed-text", "bge-m3", "mxbai-embed-large"),
    "ci": ("qwen2.5-coder:32b", "deepseek-coder-v2:16b"),
    "agent": ("llama3.1:70b", "qwen2.5:72b"),
    "low": ("llama3.1:8b", "gemma2:9b", "phi3:mini"),
    "service": ("llama3.2:3b", "phi3:mini"),
    "roaming": ("llama3.1:8b", "gemma2:9b"),
}
_PATHS = {"office": "/v1/chat/completions", "batch": "/v1/embeddings", "ci": "/v1/completions"}
_TOOLS = ("search_docs", "get_ticket", "update_ticket", "run_sql", "http_get", "send_email", "read_file", "calendar")
_PROBE_PATHS = (
    ("POST", "/api/pull", "admin"),
    ("POST", "/api/create", "admin"),
    ("DELETE", "/api/delete", "admin"),
    ("GET", "/api/ps", None),
    ("GET", "/slots", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/fine_tuning/jobs", None),
    ("GET", "/v1/files", None),
    ("GET", "/admin", None),
    ("GET", "/.env", None),
)
_AGENTS = ("python-requests/2.31.0", "curl/8.5.0", "Go-http-client/1.1", "OpenAI/Python 1.40.0", "axios/1.7.2")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
# First octets per population keep them apart: an attacker's network is new to every key by construction.
_SCANNER_OCTETS = (45, 61, 103, 167, 194, 218)
_ATTACKER_OCTETS = (141, 146, 185, 212)
_HOTEL_OCTETS = (62, 77, 88, 94, 109, 176)
_CARRIERS = ("172.56", "174.205", "92.40", "31.94")


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    kind: str  # one of KINDS, or "canary"
    networks: tuple[str, ...] = ()  # the /24 prefixes ("a.b.c") it is used from
    models: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    tools: tuple[str, ...] = ()
    volume: float = 0.0  # the kind's volume unit for this key (sessions, requests or bursts per hour or day)
    growth: float = 0.0  # traffic growth per week
    stream: bool = False
    hosts: int = 1  # machines using it (addresses drawn inside its networks)
    carriers: tuple[str, ...] = ()  # roaming: /16 prefixes ("a.b") of its mobile carriers
    since: int = 0  # the day it was created (its first traffic)

    @property
    def canary(self) -> bool:
        return self.kind == "canary"


@dataclass(frozen=True, slots=True)
class Incident:
    type: str
    key: str | None  # the key it is about (None for an address's denial burst)
    client: str | None  # the one address that sent it (an attacker's own, or the key's usual machine)
    start: float  # the first injected request
    end: float  # the last injected request
    requests: int
    victim_kind: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Event:
    time: float
    record: dict[str, Any]


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _lognormal(rng: random.Random, median: float, sigma: float) -> int:
    if median <= 0:
        return 0
    return max(1, int(rng.lognormvariate(math.log(median), sigma)))


def _key_id(seed: int, label: str) -> str:
    digest = hashlib.sha256(f"{seed}|{label}".encode()).digest()
    return "".join(_B32[b % 32] for b in digest[:12])


def allocate(n: int) -> list[str]:
    """Key kinds for n honest keys, in the shares of the default 40, every kind present from 7 keys on."""
    total = sum(_SHARE.values())
    counts = {k: (1 if n >= len(KINDS) else 0) for k in KINDS}
    while sum(counts.values()) < n:
        kind = max(KINDS, key=lambda k: _SHARE[k] / total * n - counts[k])
        counts[kind] += 1
    return [k for k in KINDS for _ in range(counts[k])]


def _make_keys(seed: int, n: int, first_eval_day: int) -> list[Key]:
    rng = random.Random(f"{seed}|keys")
    keys: list[Key] = []
    office_nets = [f"10.1.{i}" for i in range(1, 5)]
    vpn = "10.8.0"
    for i, kind in enumerate(allocate(n)):
        kid = _key_id(seed, f"key{i}")
        pool = _MODELS[kind]
        count = {"office": rng.choice((1, 2, 2, 3)), "batch": 1, "ci": rng.choice((1, 2))}.get(kind, 1)
        models = tuple(rng.sample(pool, min(count, len(pool))))
        weights = {1: (1.0,), 2: (0.95, 0.05), 3: (0.85, 0.13, 0.02)}[len(models)]
        growth = rng.uniform(0.0, 0.05)
        common: dict[str, Any] = {"id": kid, "kind": kind, "models": models, "weights": weights, "growth": growth}
        if kind == "office":
            nets = (rng.choice(office_nets),) + ((vpn,) if rng.random() < 0.5 else ())
            key = Key(**common, networks=nets, volume=rng.uniform(6, 18), stream=rng.random() < 0.7,
                      hosts=rng.randint(3, 25))  # fmt: skip
        elif kind == "batch":
            key = Key(**common, networks=(f"10.2.{i}",), volume=rng.uniform(600, 1500), hosts=1)
        elif kind == "ci":
            key = Key(**common, networks=(f"10.3.{i}",), volume=rng.uniform(3, 6), hosts=rng.randint(2, 8))
        elif kind == "agent":
            tools = tuple(rng.sample(_TOOLS, rng.randint(3, 5)))
            key = Key(**common, networks=(f"10.4.{i}",), tools=tools, volume=rng.uniform(3, 8), hosts=rng.randint(1, 3))
        elif kind == "low":
            key = Key(**common, networks=(f"10.5.{i}",), volume=rng.uniform(3, 10), hosts=rng.randint(1, 2))
        elif kind == "service":
            key = Key(**common, networks=(f"10.6.{i}",), volume=rng.uniform(20, 50), hosts=rng.randint(2, 4))
        else:  # roaming
            home = f"{rng.choice((84, 86))}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"
            key = Key(**common, networks=(home,), volume=rng.uniform(3, 6), stream=True, hosts=1,
                      carriers=tuple(rng.sample(_CARRIERS, 2)))  # fmt: skip
        keys.append(key)
    if n >= 20:  # one office key is created when the evaluation weeks begin: a new key must not raise alerts
        late = max(i for i, k in enumerate(keys) if k.kind == "office")
        keys[late] = replace(keys[late], since=first_eval_day)
    for j in range(max(1, n // 20)):
        keys.append(Key(id=_key_id(seed, f"canary{j}"), kind="canary"))
    return keys


class Scenario:
    """One generated world: keys, benign episodes, incidents, and the observation stream in time order."""

    def __init__(
        self,
        seed: int = 7,
        keys: int = 40,
        learn_weeks: int = 3,
        eval_weeks: int = 2,
        per_type: int = 10,
        start: float = START,
    ) -> None:
        if keys < len(KINDS) or learn_weeks < 1 or eval_weeks < 1 or per_type < 0:
            raise ValueError(f"need keys >= {len(KINDS)}, learn_weeks >= 1, eval_weeks >= 1, per_type >= 0")
        self.seed = seed
        self.start = start
        self.learn_weeks = learn_weeks
        self.eval_weeks = eval_weeks
        self.days = 7 * (learn_weeks + eval_weeks)
        self.eval_start = start + learn_weeks * WEEK
        self.end = start + self.days * DAY
        self.keys = _make_keys(seed, keys, 7 * learn_weeks)
        self.by_id = {k.id: k for k in self.keys}
        self.honest = [k for k in self.keys if not k.canary]
        first = 7 * learn_weeks
        self.holiday = first + 3  # Thursday of the first evaluation week: most people are off
        self.busy_day = first + (8 if eval_weeks > 1 else 1)  # a Tuesday with half again the usual traffic
        self.notes: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        self._hosts: dict[tuple[str, int], list[int]] = {}  # each key's machines' host numbers, per day
        self.incidents: list[Incident] = []
        self._incident_events: dict[int, list[_Event]] = defaultdict(list)
        self._plant(per_type)

    # --- the clock --------------------------------------------------------------------------------------------------

    def day_start(self, day: int) -> float:
        return self.start + day * DAY

    @staticmethod
    def weekday(day: int) -> int:
        return day % 7  # 0 is Monday

    def factor(self, key: Key, day: int) -> float:
        """Traffic multiplier of a day: growth, and the holiday or busy day for people-driven kinds."""
        value = float((1 + key.growth) ** (day / 7))
        people = key.kind in ("office", "ci", "agent", "roaming")
        if day == self.holiday:
            value *= 0.08 if people else 0.8
        elif day == self.busy_day and key.kind != "batch":
            value *= 1.5
        return value

    def day_label(self, t: float) -> str:
        day = int((t - self.start) // DAY)
        names = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
        label = f"{names[self.weekday(day)]} week {day // 7 + 1} {_clock(t)}"
        if day == self.holiday:
            label += " (holiday)"
        elif day == self.busy_day:
            label += " (busy day)"
        return label

    def context(self, subject: str | None, t: float, window: float = 10 * MINUTE) -> list[str]:
        """The benign episodes of a key or address around a time: what the traffic was doing."""
        if subject is None:
            return []
        return [label for start, end, label in self.notes.get(subject, ()) if start - window <= t <= end + window]

    def _note(self, subject: str, start: float, end: float, label: str) -> None:
        self.notes[subject].append((start, end, label))

    # --- records ----------------------------------------------------------------------------------------------------

    def _address(self, rng: random.Random, key: Key, day: int) -> str:
        """One of the key's machines today: the host part moves inside the /24 from day to day (DHCP)."""
        hosts = self._hosts.get((key.id, day))
        if hosts is None:
            draw = random.Random(f"{self.seed}|dhcp|{key.id}|{day}")
            hosts = self._hosts[(key.id, day)] = [draw.randint(2, 254) for _ in range(key.hosts)]
        return f"{rng.choice(key.networks)}.{rng.choice(hosts)}"

    def _request(
        self,
        rng: random.Random,
        key: Key,
        t: float,
        client: str,
        *,
        model: str | None = None,
        out_scale: float = 1.0,
        status: int = 200,
        deny: str | None = None,
    ) -> _Event:
        """An inference request of the key's kind, as its audit record."""
        t = round(t, 6)
        kind = key.kind
        if model is None:
            model = key.models[0] if len(key.models) == 1 else rng.choices(key.models, key.weights)[0]
        in_med, in_sig, out_med, out_sig = _SIZES[kind]
        served = status < 400
        prompt = _lognormal(rng, in_med, in_sig)
        tin = prompt if served else 0
        tout = _lognormal(rng, out_med * out_scale, out_sig) if served else 0
        called: list[str] = []
        if key.tools and served and rng.random() < 0.6:
            called.append(rng.choice(key.tools))
        stream = key.stream and rng.random() < 0.9
        path = _PATHS.get(kind, "/v1/chat/completions")
        if not served:
            ms = rng.uniform(0.2, 1.5)
        elif kind == "batch":
            ms = rng.uniform(20, 80)
        else:
            ms = 150 + tout * rng.uniform(15, 30)
        body_in = 4 * prompt + 120 + len(model) + 180 * len(key.tools)  # the tools' schemas travel in each request
        record: dict[str, Any] = {
            "time": t,
            "key_id": key.id,
            "client": client,
            "method": "POST",
            "path": path,
            "route": "inference",
            "model": model,
            "status": status,
            "outcome": _outcome(status),
            "deny": deny,
            "stream": stream,
            "upstream_ms": round(ms - 1.0, 3) if served else None,
            "total_ms": round(ms, 3),
            "bytes_in": body_in,
            "bytes_out": (6 * tout + 400 if stream else 4 * tout + 250) if served else 150,
            "usage": {"prompt_tokens": tin, "completion_tokens": tout} if served else None,
            "tools": [_decision(name, rng) for name in called] or None,
        }
        if key.tools:
            record["tools_declared"] = list(key.tools)
        return _Event(t, record)

    @staticmethod
    def _simple(
        t: float,
        key_id: str | None,
        client: str,
        method: str,
        path: str,
        route: str | None,
        status: int,
        deny: str | None,
        **extra: Any,
    ) -> _Event:
        """A request without a model call: a listing, or a refusal before the upstream."""
        t = round(t, 6)
        served = status < 400
        record: dict[str, Any] = {
            "time": t,
            "key_id": key_id,
            "client": client,
            "method": method,
            "path": path,
            "route": route,
            "model": None,
            "status": status,
            "outcome": _outcome(status),
            "deny": deny,
            "stream": False,
            "upstream_ms": 2.1 if served else None,
            "total_ms": 3.0 if served else 0.4,
            "bytes_in": 0,
            "bytes_out": 900 if served else 150,
            "usage": None,
            "tools": None,
            **extra,
        }
        return _Event(t, record)

    # --- honest traffic ---------------------------------------------------------------------------------------------

    def _honest(self, key: Key, day: int) -> list[_Event]:
        if day < key.since:
            return []
        rng = random.Random(f"{self.seed}|{key.id}|{day}")
        make = _KIND_MAKERS.get(key.kind)
        events = make(self, rng, key, day) if make is not None else []
        for event in events:  # rare benign failures on any key: a model not allowed, an upstream error
            roll = rng.random()
            record = event.record
            if record["route"] != "inference" or record["status"] != 200:
                continue
            if roll < 0.001:
                record.update(status=403, outcome="denied", deny="model_not_allowed", usage=None, tools=None,
                              upstream_ms=None, bytes_out=150, model="gpt-4o")  # fmt: skip
                self._note(key.id, event.time, event.time, "a request for a model the key may not use (403)")
            elif roll < 0.0025:
                status, code = rng.choice(((502, "upstream_unavailable"), (504, "upstream_timeout")))
                record.update(status=status, outcome="upstream_error", deny=code, usage=None, tools=None)
        return events

    def _sessions(
        self,
        rng: random.Random,
        day: int,
        shape: tuple[float, ...],
        per_hour: float,
        mean_len: float,
        think: float,
    ) -> Iterator[tuple[float, list[float]]]:
        """Sessions of a few requests: Poisson arrivals by hour, geometric length, exponential think time."""
        t0 = self.day_start(day)
        for hour, weight in enumerate(shape):
            for _ in range(poisson(rng, per_hour * weight)):
                t = t0 + hour * HOUR + rng.random() * HOUR
                times = [t]
                while rng.random() > 1 / mean_len:
                    t += rng.expovariate(1 / think)
                    times.append(t)
                yield times[0], times

    def _office(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        events: list[_Event] = []
        weekend = self.weekday(day) >= 5
        per_hour = key.volume * self.factor(key, day) * (0.0 if weekend else 1.0)
        t0 = self.day_start(day)
        extra: list[tuple[tuple[float, ...], str]] = []
        if not weekend and day != self.holiday and rng.random() < 0.15:
            hour = rng.randint(19, 22)
            extra.append((tuple(1.2 if h == hour else 0 for h in range(24)), "a late-evening session"))
        if weekend and rng.random() < 0.25:
            hour = rng.randint(10, 17)
            extra.append((tuple(1.5 if h == hour else 0 for h in range(24)), "a weekend session"))
        runs = [(_OFFICE, per_hour, None)] + [(shape, 1.0, label) for shape, label in extra]
        for shape, rate, label in runs:
            for first, times in self._sessions(rng, day, shape, rate, 4, 40):
                client = self._address(rng, key, day)
                if rng.random() < 0.1:
                    events.append(self._simple(first - 0.5, key.id, client, "GET", "/v1/models", "models", 200, None))
                events.extend(self._request(rng, key, t, client) for t in times)
                if label:
                    self._note(key.id, first, times[-1], f"{label} ({len(times)} requests)")
        rare = [e for e in events if e.record["model"] is not None and e.record["model"] != key.models[0]]
        for event in rare:
            self._note(key.id, event.time, event.time, f"a request for its less used model {event.record['model']}")
        if day == self.holiday or day == self.busy_day:
            self._note(key.id, t0, t0 + DAY, "holiday" if day == self.holiday else "busy day (+50%)")
        return events

    def _batch(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        start = self.day_start(day) + 2 * HOUR + rng.uniform(0, 300)
        length = rng.uniform(40, 60) * MINUTE
        n = max(1, round(key.volume * self.factor(key, day) * rng.gauss(1, 0.1)))
        client = f"{key.networks[0]}.10"
        times = sorted(start + rng.random() * length for _ in range(n))
        self._note(key.id, start, start + length, f"the nightly batch run ({n} requests)")
        return [self._request(rng, key, t, client) for t in times]

    def _ci(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        events: list[_Event] = []
        weekend = self.weekday(day) >= 5
        bursts = poisson(rng, (0.3 if weekend else key.volume) * self.factor(key, day))
        for _ in range(bursts):
            start = self.day_start(day) + rng.uniform(8, 20) * HOUR
            n = rng.randint(20, 120)
            length = rng.uniform(120, 480)
            rpm = n / length * MINUTE
            refused = max(0.0, 1 - RPM_LIMIT / rpm) if rpm > RPM_LIMIT * 0.8 else 0.0
            client = self._address(rng, key, day)
            denied = 0
            for t in sorted(start + rng.random() * length for _ in range(n)):
                if rng.random() < refused:
                    denied += 1
                    events.append(self._request(rng, key, t, client, status=429, deny="rate_limit_requests"))
                else:
                    events.append(self._request(rng, key, t, client))
            tail = f", {denied} refused at the rate limit" if denied else ""
            self._note(key.id, start, start + length, f"a CI burst ({n} requests in {length / 60:.0f} min{tail})")
        return events

    def _agent(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        weekend = self.weekday(day) >= 5
        per_hour = key.volume * self.factor(key, day) * (0.3 if weekend else 1.0)
        events: list[_Event] = []
        for _, times in self._sessions(rng, day, _AGENT, per_hour, 5, 6):
            client = self._address(rng, key, day)
            events.extend(self._request(rng, key, t, client) for t in times)
        return events

    def _low(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        t0 = self.day_start(day)
        n = poisson(rng, key.volume * self.factor(key, day))
        return [self._request(rng, key, t0 + rng.random() * DAY, self._address(rng, key, day)) for _ in range(n)]

    def _service(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        t0 = self.day_start(day)
        weekend = 0.8 if self.weekday(day) >= 5 else 1.0
        events: list[_Event] = []
        for hour in range(24):
            rhythm = 1 + 0.4 * math.cos(2 * math.pi * (hour - 14) / 24)
            n = poisson(rng, key.volume * rhythm * weekend * self.factor(key, day))
            for _ in range(n):
                events.append(self._request(rng, key, t0 + (hour + rng.random()) * HOUR, self._address(rng, key, day)))
        return events

    def _roaming(self, rng: random.Random, key: Key, day: int) -> list[_Event]:
        events: list[_Event] = []
        per_hour = key.volume * self.factor(key, day) / sum(_ROAMING)
        for first, times in self._sessions(rng, day, _ROAMING, per_hour, 6, 30):
            roll = rng.random()
            if roll < 0.35:
                client, label = f"{key.networks[0]}.{rng.randint(2, 30)}", None
            elif roll < 0.95:
                client = f"{rng.choice(key.carriers)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                label = "a session from a mobile carrier network"
            else:
                octets = (rng.choice(_HOTEL_OCTETS), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))
                client, label = ".".join(map(str, octets)), "a session from a hotel network"
            events.extend(self._request(rng, key, t, client) for t in times)
            if label:
                self._note(key.id, first, times[-1], f"{label} ({client.rsplit('.', 1)[0]}.0/24)")
        return events

    def _scanners(self, day: int) -> list[_Event]:
        """Internet background: a few addresses a day try the API without a key, or with a made-up one."""
        rng = random.Random(f"{self.seed}|scanners|{day}")
        events: list[_Event] = []
        for _ in range(poisson(rng, 6)):
            client = f"{rng.choice(_SCANNER_OCTETS)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            t = self.day_start(day) + rng.random() * DAY
            n = rng.randint(1, 4)
            for i in range(n):
                method, path = rng.choice((("GET", "/v1/models"), ("GET", "/api/tags"), ("POST", "/api/generate")))
                code = rng.choice(("missing_credentials", "missing_credentials", "malformed_credentials"))
                events.append(self._simple(t + i * rng.uniform(0.2, 3), None, client, method, path, None, 401, code))
            self._note(client, t, t + 12, f"an internet scanner ({n} requests without a valid key)")
        return events

    # --- incidents --------------------------------------------------------------------------------------------------

    def _plant(self, per_type: int) -> None:
        rng = random.Random(f"{self.seed}|incidents")
        first_day = 7 * self.learn_weeks
        busy: dict[str, list[tuple[float, float]]] = defaultdict(list)
        attackers: set[str] = set()

        def attacker() -> str:
            while True:
                octets = (rng.choice(_ATTACKER_OCTETS), rng.randint(0, 255), rng.randint(0, 255))
                net = ".".join(map(str, octets))
                if net not in attackers:
                    attackers.add(net)
                    return f"{net}.{rng.randint(1, 254)}"

        def free(key: str, start: float, end: float) -> bool:
            margin = 2 * HOUR  # an incident's alerts never overlap another's window on the same key
            return all(end + margin < s or start - margin > e for s, e in busy[key])

        planters: dict[str, Callable[[random.Random, int, Callable[[], str]], tuple[Incident, list[_Event]] | None]]
        planters = {
            "burst_3am": self._burst_3am,
            "leaked_key": self._leaked_key,
            "slow_exfil": self._slow_exfil,
            "denial_burst": self._denial_burst,
            "route_probe": self._route_probe,
            "canary": self._canary,
        }
        for kind in INCIDENT_TYPES:
            planted = 0
            for _ in range(1000 * max(1, per_type)):
                if planted == per_type:
                    break
                day = first_day + rng.randrange(7 * self.eval_weeks)
                made = planters[kind](rng, day, attacker)
                if made is None:
                    continue
                incident, events = made
                # Times as the records carry them (rounded to the microsecond).
                incident = replace(incident, start=min(e.time for e in events), end=max(e.time for e in events))
                subject = incident.key or incident.client or ""
                if incident.end >= self.end or not free(subject, incident.start, incident.end):
                    continue
                busy[subject].append((incident.start, incident.end))
                self.incidents.append(incident)
                for event in events:
                    self._incident_events[int((event.time - self.start) // DAY)].append(event)
                planted += 1
        self.incidents.sort(key=lambda i: i.start)

    def _victim(self, rng: random.Random, kinds: tuple[str, ...]) -> Key:
        return rng.choice([k for k in self.honest if k.kind in kinds and k.since == 0])

    def _active_time(self, rng: random.Random, key: Key, day: int) -> float | None:
        """A time of day at which the key is normally busy (None when it is not on this day)."""
        weekday = self.weekday(day) < 5
        hours = {
            "office": (10, 16) if weekday else None,
            "agent": (9, 18) if weekday else None,
            "ci": (10, 17) if weekday else None,
            "roaming": (9, 21),
            "service": (0, 23),
            "low": (0, 23),
            "batch": None,
        }[key.kind]
        if hours is None or day == self.holiday:
            return None
        return self.day_start(day) + rng.uniform(hours[0], hours[1]) * HOUR

    def _burst_3am(self, rng: random.Random, day: int, _: Callable[[], str]) -> tuple[Incident, list[_Event]]:
        key = self._victim(rng, ("office", "ci", "agent", "roaming"))
        start = self.day_start(day) + rng.uniform(1, 4.5) * HOUR
        n, length = rng.randint(150, 400), rng.uniform(5, 15) * MINUTE
        client = self._address(rng, key, day)
        times = sorted(start + rng.random() * length for _ in range(n))
        events = [self._request(rng, key, t, client) for t in times]
        detail = f"{n} requests in {length / 60:.0f} min at {_clock(times[0])} from its usual network"
        return Incident("burst_3am", key.id, client, times[0], times[-1], n, key.kind, detail), events

    def _leaked_key(self, rng: random.Random, day: int, attacker: Callable[[], str]) -> tuple[Incident, list[_Event]]:
        key = self._victim(rng, ("office", "batch", "ci", "agent", "low", "service"))
        start = self.day_start(day) + rng.random() * DAY
        rpm, length = rng.uniform(1.5, 5), rng.uniform(30, 90) * MINUTE
        client = attacker()
        times, t = [], start
        while t < start + length:
            times.append(t)
            t += rng.expovariate(rpm / MINUTE)
        events = [self._request(rng, key, t, client) for t in times]
        detail = f"{len(times)} requests ({rpm:.1f}/min for {length / 60:.0f} min) from {_net(client)}"
        return Incident("leaked_key", key.id, client, times[0], times[-1], len(times), key.kind, detail), events

    def _slow_exfil(self, rng: random.Random, day: int, _: Callable[[], str]) -> tuple[Incident, list[_Event]] | None:
        key = self._victim(rng, ("office", "agent", "low", "service", "roaming"))
        start = self._active_time(rng, key, day)
        if start is None:
            return None
        rpm, length = rng.uniform(30, 45), rng.uniform(45, 75) * MINUTE
        client = self._address(rng, key, day)
        times, t = [], start
        while t < start + length:
            times.append(t)
            t += rng.uniform(0.9, 1.1) * MINUTE / rpm  # a script: evenly paced, under the limit
        model = key.models[0]
        events = [self._request(rng, key, t, client, model=model, out_scale=4.0) for t in times]
        detail = f"{len(times)} requests ({rpm:.0f}/min for {length / 60:.0f} min, completions x4) from its network"
        return Incident("slow_exfil", key.id, client, times[0], times[-1], len(times), key.kind, detail), events

    def _denial_burst(self, rng: random.Random, day: int, attacker: Callable[[], str]) -> tuple[Incident, list[_Event]]:
        start = self.day_start(day) + rng.random() * DAY
        n, length = rng.randint(150, 600), rng.uniform(2, 10) * MINUTE
        client = attacker()
        events = []
        for t in sorted(start + rng.random() * length for _ in range(n)):
            code = rng.choices(("invalid_key", "malformed_credentials", "missing_credentials"), (0.7, 0.2, 0.1))[0]
            events.append(self._simple(t, None, client, "POST", "/v1/chat/completions", None, 401, code))
        detail = f"{n} requests with invalid keys in {length / 60:.0f} min"
        return Incident("denial_burst", None, client, events[0].time, events[-1].time, n, None, detail), events

    def _route_probe(self, rng: random.Random, day: int, _: Callable[[], str]) -> tuple[Incident, list[_Event]] | None:
        key = self._victim(rng, KINDS)
        start = self._active_time(rng, key, day)
        if start is None:
            return None
        n, length = rng.randint(20, 80), rng.uniform(1, 5) * MINUTE
        client = self._address(rng, key, day)
        events = []
        for t in sorted(start + rng.random() * length for _ in range(n)):
            method, path, route = rng.choice(_PROBE_PATHS)
            code = "admin_scope_required" if route == "admin" else "route_not_allowed"
            events.append(self._simple(t, key.id, client, method, path, route, 403, code))
        detail = f"{n} requests to routes it may not use in {length / 60:.0f} min"
        return Incident("route_probe", key.id, client, events[0].time, events[-1].time, n, key.kind, detail), events

    def _canary(self, rng: random.Random, day: int, attacker: Callable[[], str]) -> tuple[Incident, list[_Event]]:
        key = rng.choice([k for k in self.keys if k.canary])
        start = self.day_start(day) + rng.random() * DAY
        client, agent = attacker(), rng.choice(_AGENTS)
        n = rng.randint(1, 4)
        events = []
        for i in range(n):
            t = start + i * rng.uniform(1, 15)
            events.append(self._simple(t, key.id, client, "POST", "/v1/chat/completions", None, 401, "invalid_key",
                                       canary=True, user_agent=agent))  # fmt: skip
        detail = f"{n} uses of a canary key from {_net(client)}"
        return Incident("canary", key.id, client, events[0].time, events[-1].time, n, "canary", detail), events

    # --- the stream -------------------------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Audit records in time order, day by day (memory holds one day)."""
        prefix = hashlib.sha256(f"{self.seed}|ids".encode()).hexdigest()[:16]
        counter = 0
        carry: list[_Event] = []
        for day in range(self.days):
            events = carry
            for key in self.honest:
                events.extend(self._honest(key, day))
            events.extend(self._scanners(day))
            events.extend(self._incident_events.get(day, ()))
            events.sort(key=lambda e: e.time)
            cut = self.day_start(day + 1)
            split = next((i for i, e in enumerate(events) if e.time >= cut), len(events))
            if day == self.days - 1:
                split = next((i for i, e in enumerate(events) if e.time >= self.end), len(events))
            events, carry = events[:split], events[split:]
            for event in events:
                record = event.record
                record["time"] = event.time
                record["request_id"] = f"{prefix}{counter:08x}"
                record["pid"] = 4242
                counter += 1
                yield record

    def observations(self) -> Iterator[Observation]:
        for record in self.records():
            obs = Observation.from_record(record)
            if obs is None:  # every record here is a request: a None is a generator bug
                raise AssertionError(f"record {record['request_id']} does not make an observation")
            yield obs

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "keys": Counter(k.kind for k in self.keys),
            "learn_weeks": self.learn_weeks,
            "eval_weeks": self.eval_weeks,
            "start": self.start,
            "eval_start": self.eval_start,
            "end": self.end,
            "incidents": Counter(i.type for i in self.incidents),
        }


_KIND_MAKERS: dict[str, Callable[[Scenario, random.Random, Key, int], list[_Event]]] = {
    "office": Scenario._office,
    "batch": Scenario._batch,
    "ci": Scenario._ci,
    "agent": Scenario._agent,
    "low": Scenario._low,
    "service": Scenario._service,
    "roaming": Scenario._roaming,
}


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "upstream_error" if status >= 500 else "denied"


def _decision(name: str, rng: random.Random) -> dict[str, Any]:
    return {"tool": name, "call_id": f"call_{rng.getrandbits(40):010x}", "decision": "allow", "rule": None,
            "side": "response", "args": {}, "reason": None, "error": None, "policy": "agents"}  # fmt: skip


def _clock(t: float) -> str:
    seconds = int(t % DAY)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _net(address: str) -> str:
    return address.rsplit(".", 1)[0] + ".0/24"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--keys", type=int, default=40, help="honest keys (default 40; canary keys come on top)")
    parser.add_argument("--learn-weeks", type=int, default=3, help="weeks of honest traffic first (default 3)")
    parser.add_argument("--eval-weeks", type=int, default=2, help="weeks with incidents after (default 2)")
    parser.add_argument("--per-type", type=int, default=10, help="incidents of each type (default 10)")


def scenario_from(args: argparse.Namespace) -> Scenario:
    return Scenario(args.seed, args.keys, args.learn_weeks, args.eval_weeks, args.per_type)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--jsonl", type=Path, metavar="PATH", help="write the audit records here")
    parser.add_argument("--labels", type=Path, metavar="PATH", help="write the incidents here (JSON)")
    args = parser.parse_args(argv)
    scenario = scenario_from(args)
    count = Counter[str]()
    out = args.jsonl.open("wb") if args.jsonl else None
    try:
        for record in scenario.records():
            count["requests"] += 1
            count["denied" if record["status"] >= 400 else "served"] += 1
            if out is not None:
                out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    finally:
        if out is not None:
            out.close()
    if args.labels:
        args.labels.write_bytes(orjson.dumps([i.to_dict() for i in scenario.incidents], option=orjson.OPT_INDENT_2))
    summary = scenario.summary()
    print(f"{count['requests']} requests ({count['denied']} refused) over {scenario.days} days, seed {scenario.seed}")
    print("keys:", ", ".join(f"{n} {kind}" for kind, n in summary["keys"].items()))
    print("incidents:", ", ".join(f"{n} {kind}" for kind, n in summary["incidents"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
