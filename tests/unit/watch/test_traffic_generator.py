"""The watch benchmark's traffic generator and scoring (benchmarks/watch_traffic.py, benchmarks/watch_eval.py): the
stream is deterministic, looks like the gateway's audit records, has the rhythms it claims, and its incidents are
labelled inside the evaluation weeks; scoring matches alerts to incidents as documented."""

from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator

import orjson
import pytest
from benchmarks.watch_eval import GRACE, score
from benchmarks.watch_traffic import DAY, HOUR, INCIDENT_TYPES, KINDS, MINUTE, Incident, Scenario, allocate

from aiperimeter.watch.alerts import Alert
from aiperimeter.watch.observation import Observation
from aiperimeter.watch.observation import network_of as _network_of

# A small world: every kind once, one learning week, one evaluation week, 8 incidents of each type.
SMALL = {"seed": 3, "keys": 7, "learn_weeks": 1, "eval_weeks": 1, "per_type": 8}
DENY_CODES = {
    "invalid_key", "malformed_credentials", "missing_credentials", "route_not_allowed", "admin_scope_required",
    "model_not_allowed", "rate_limit_requests", "upstream_unavailable", "upstream_timeout",
}  # fmt: skip


@pytest.fixture(scope="module")
def world() -> tuple[Scenario, list[Observation]]:
    scenario = Scenario(**SMALL)
    return scenario, list(scenario.observations())


@functools.cache
def network_of(address: str) -> str:  # few distinct addresses, many requests
    return _network_of(address)


def kind_of(scenario: Scenario) -> dict[str, str]:
    return {k.id: k.kind for k in scenario.keys}


def hour(t: float) -> int:
    return int(t % DAY // HOUR)


def day(scenario: Scenario, t: float) -> int:
    return int((t - scenario.start) // DAY)


# --- the stream -------------------------------------------------------------------------------------------------------


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    def head(seed: int) -> list[dict[str, object]]:
        return list(itertools.islice(Scenario(**{**SMALL, "seed": seed, "per_type": 0}).records(), 3000))

    first, again, other = head(3), head(3), head(4)
    assert first == again
    assert [r["time"] for r in first] != [r["time"] for r in other]
    planted = {**SMALL, "per_type": 2}
    assert Scenario(**planted).incidents == Scenario(**planted).incidents
    assert Scenario(**planted).incidents != Scenario(**{**planted, "seed": 4}).incidents


def test_stream_is_in_time_order_with_unique_ids(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    times = [o.time for o in stream]
    assert times == sorted(times)
    assert scenario.start <= times[0] and times[-1] < scenario.end
    assert len({o.request_id for o in stream}) == len(stream)


def test_observations_are_what_from_record_makes_of_the_audit_records(
    world: tuple[Scenario, list[Observation]],
) -> None:
    scenario, stream = world
    for record, obs in zip(itertools.islice(scenario.records(), 2000), stream, strict=False):
        assert Observation.from_record(orjson.loads(orjson.dumps(record))) == obs
    kinds = kind_of(scenario)
    for obs in stream:
        assert obs.route in {"inference", "models", "admin", None}
        assert obs.deny is None or obs.deny in DENY_CODES
        assert (obs.deny is None) == (obs.status < 400)
        if obs.status == 401:  # refused at authentication: no key, unless a canary key was presented
            assert obs.key is None or (obs.canary and kinds[obs.key] == "canary")
            assert obs.route is None and obs.model is None
        if obs.status == 200 and obs.route == "inference":
            assert obs.model is not None and obs.tokens_in > 0


def test_every_kind_present_in_the_default_shares() -> None:
    assert Counter(allocate(40)) == {"office": 12, "batch": 4, "ci": 4, "agent": 5, "low": 5, "service": 6,
                                     "roaming": 4}  # fmt: skip
    assert set(allocate(7)) == set(KINDS)
    with pytest.raises(ValueError):
        Scenario(keys=3)


# --- rhythms ----------------------------------------------------------------------------------------------------------


def learning_counts(scenario: Scenario, stream: list[Observation]) -> dict[str, Counter[tuple[bool, int]]]:
    """Per key kind: requests by (weekday?, hour) in the learning weeks."""
    kinds = kind_of(scenario)
    counts: dict[str, Counter[tuple[bool, int]]] = defaultdict(Counter)
    for obs in stream:
        if obs.key is not None and obs.time < scenario.eval_start:
            counts[kinds[obs.key]][(day(scenario, obs.time) % 7 < 5, hour(obs.time))] += 1
    return counts


def test_each_kind_has_its_rhythm(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    counts = learning_counts(scenario, stream)
    office = counts["office"]
    assert office[(True, 14)] > 5 * max(office[(True, 3)], 1)
    assert office[(True, 12)] < office[(True, 11)]  # the lunch dip
    assert sum(v for (weekday, _), v in office.items() if not weekday) < 0.2 * sum(office.values())
    batch = counts["batch"]
    assert batch[(True, 2)] + batch[(False, 2)] > 0.95 * sum(batch.values())  # 02:00-03:00, every night
    assert batch[(False, 2)] > 0
    service = counts["service"]
    per_hour = [service[(True, h)] + service[(False, h)] for h in range(24)]
    assert min(per_hour) > 0 and 1.5 < max(per_hour) / min(per_hour) < 4  # never idle, a daily rhythm
    low = counts["low"]
    assert sum(low.values()) < 25 * 7 and len({h for _, h in low}) >= 10  # a handful a day, at any hour
    ci = counts["ci"]
    assert all(ci[(True, h)] == 0 for h in range(0, 8))


def test_ci_bursts_agent_tools_and_roaming_networks(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    keys = {k.kind: k for k in scenario.keys}
    learning = [o for o in stream if o.time < scenario.eval_start]
    ci_minutes = Counter(int(o.time // MINUTE) for o in learning if o.key == keys["ci"].id)
    assert max(ci_minutes.values()) >= 10  # bursts, not a trickle
    agent = [o for o in learning if o.key == keys["agent"].id]
    assert agent and all(o.tools and set(o.tools) <= set(keys["agent"].tools) for o in agent if o.status == 200)
    roaming = {network_of(o.client) for o in learning if o.key == keys["roaming"].id}
    office = {network_of(o.client) for o in learning if o.key == keys["office"].id}
    assert len(roaming) > 10 and len(office) <= 2
    office_addresses = {o.client for o in learning if o.key == keys["office"].id}
    assert len(office_addresses) > len(office)  # DHCP: addresses move inside the /24


def test_holiday_is_quiet_and_busy_day_busier(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    kinds = kind_of(scenario)
    injected = defaultdict(list)
    for incident in scenario.incidents:
        injected[incident.client].append((incident.start, incident.end))
    people: Counter[int] = Counter()  # honest office, agent and ci requests per day
    for obs in stream:
        if obs.key is None or kinds[obs.key] not in ("office", "agent", "ci"):
            continue
        if not any(start <= obs.time <= end for start, end in injected.get(obs.client, ())):
            people[day(scenario, obs.time)] += 1
    week_before = 7  # the same weekday in the learning week
    assert people[scenario.holiday] < 0.3 * people[scenario.holiday - week_before]
    assert people[scenario.busy_day] > 1.25 * people[scenario.busy_day - week_before]


# --- incidents --------------------------------------------------------------------------------------------------------


def test_incidents_are_labelled_and_inside_the_evaluation_weeks(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    assert Counter(i.type for i in scenario.incidents) == dict.fromkeys(INCIDENT_TYPES, 8)
    kinds = kind_of(scenario)
    by_client: dict[str, list[Observation]] = defaultdict(list)
    for obs in stream:
        by_client[obs.client].append(obs)
    for incident in scenario.incidents:
        assert scenario.eval_start <= incident.start <= incident.end < scenario.end
        assert incident.client is not None
        if incident.type == "denial_burst":
            assert incident.key is None
        else:
            assert incident.key is not None and kinds[incident.key] == incident.victim_kind
        sent = [o for o in by_client[incident.client or ""] if incident.start <= o.time <= incident.end]
        assert len([o for o in sent if o.key == incident.key]) >= incident.requests
    assert all(o.time >= scenario.eval_start for o in stream if o.canary or o.deny == "route_not_allowed")


def test_incidents_have_the_features_they_are_named_for(world: tuple[Scenario, list[Observation]]) -> None:
    scenario, stream = world
    by_key: dict[str | None, list[Observation]] = defaultdict(list)
    for obs in stream:
        by_key[obs.key].append(obs)
    learned = {key: [o for o in seen if o.time < scenario.eval_start] for key, seen in by_key.items()}
    networks = {key: {network_of(o.client) for o in seen} for key, seen in learned.items()}
    for incident in scenario.incidents:
        during = [o for o in by_key[incident.key] if incident.start <= o.time <= incident.end]
        network = network_of(incident.client or "")
        if incident.type == "burst_3am":
            assert 1 <= hour(incident.start) <= 4
            before = learned[incident.key]
            assert sum(1 <= hour(o.time) <= 4 for o in before) < 0.01 * len(before)  # the key is idle at night
            assert len(during) >= 150
        elif incident.type == "leaked_key":
            earlier = {network_of(o.client) for o in by_key[incident.key] if o.time < incident.start}
            assert network not in earlier
        elif incident.type == "slow_exfil":
            minutes = Counter(int(o.time // MINUTE) for o in during if o.client == incident.client)
            assert max(minutes.values()) < 60 and incident.end - incident.start > 40 * MINUTE
            assert network in networks[incident.key]
        elif incident.type == "denial_burst":
            refused = [o for o in by_key[None] if o.client == incident.client]
            assert len(refused) >= 150 and all(o.status == 401 for o in refused)
        elif incident.type == "route_probe":
            refused = [o for o in during if o.client == incident.client and o.status == 403]
            assert len(refused) >= incident.requests
        else:
            assert all(o.canary and o.status == 401 for o in during)


# --- scoring ----------------------------------------------------------------------------------------------------------

T0 = 1_000_000.0
EVAL = T0 + 7 * DAY


def alert(t: float, kind: str = "volume_spike", key: str | None = "k1", client: str | None = "10.0.0.1") -> Alert:
    return Alert(id=Alert.make_id(kind, f"{key}{client}", t), time=t, kind=kind, severity="high", key=key,
                 client=client, summary="", baseline="", observed="")  # fmt: skip


def incidents() -> list[Incident]:
    return [
        Incident("burst_3am", "k1", "10.0.0.1", EVAL + 100, EVAL + 700, 200, "office", ""),
        Incident("denial_burst", None, "203.0.113.9", EVAL + 5000, EVAL + 5300, 300, None, ""),
    ]


def scored(alerts: list[Alert]) -> dict[str, object]:
    result = score(incidents(), alerts, eval_start=EVAL, key_kinds={"k1": "office", "k2": "ci"}, honest_keys=2,
                   eval_weeks=1, learn_weeks=1)  # fmt: skip
    burst, denial = result.types["burst_3am"], result.types["denial_burst"]
    return {
        "burst": (burst.detected, burst.within_target, burst.delays),
        "denial": (denial.detected, denial.within_target, denial.delays),
        "false": sorted(a.kind for a in result.false_alerts),
        "learning": len(result.learning_alerts),
        "per_key_week": result.false_per_key_week,
        "precision": round(result.precision, 3),
        "burst_precision": round(burst.precision, 3),
    }


def cases() -> Iterator[object]:
    yield pytest.param(
        [alert(EVAL + 130)],
        {"burst": (1, 1, [30.0]), "denial": (0, 0, []), "false": [], "precision": 1.0},
        id="key-alert-inside-the-window-detects",
    )
    yield pytest.param(
        [alert(EVAL + 700 + GRACE)],
        {"burst": (1, 0, [600.0 + GRACE]), "false": []},
        id="alert-at-end-plus-grace-still-matches-but-late",
    )
    yield pytest.param(
        [alert(EVAL + 701 + GRACE)],
        {"burst": (0, 0, []), "false": ["volume_spike"], "per_key_week": 0.5, "precision": 0.0},
        id="alert-after-the-grace-is-false",
    )
    yield pytest.param(
        [alert(EVAL + 99)],
        {"burst": (0, 0, []), "false": ["volume_spike"]},
        id="alert-before-the-start-is-false",
    )
    yield pytest.param(
        [alert(EVAL + 200, key="k2", client="10.0.0.7")],
        {"burst": (0, 0, []), "false": ["volume_spike"]},
        id="another-key-from-another-address-is-false",
    )
    yield pytest.param(
        [alert(EVAL + 200, "denial_burst", key=None, client="10.0.0.1")],
        {"burst": (1, 1, [100.0]), "false": []},
        id="address-alert-about-the-incident-address-matches",
    )
    yield pytest.param(
        [alert(EVAL + 5100, "denial_burst", key=None, client="203.0.113.9"), alert(EVAL + 5200, "denial_burst",
                                                                                   key=None, client="203.0.113.9")],
        {"denial": (1, 1, [100.0]), "false": []},
        id="first-matching-alert-sets-time-to-detect",
    )  # fmt: skip
    duplicate = alert(EVAL + 150)
    yield pytest.param([duplicate, duplicate], {"burst": (1, 1, [50.0]), "precision": 1.0}, id="one-count-per-id")
    yield pytest.param(
        [alert(T0 + DAY), alert(EVAL + 150)],
        {"learning": 1, "false": [], "burst": (1, 1, [50.0])},
        id="learning-week-alerts-are-apart",
    )
    yield pytest.param(
        [alert(EVAL + 150), alert(EVAL + 150, "new_model"), alert(EVAL + 9000), alert(EVAL + 9000, "idle_hour")],
        {"false": ["idle_hour", "volume_spike"], "precision": 0.5, "burst_precision": 0.667, "per_key_week": 1.0},
        id="type-precision-counts-false-alerts-of-the-kinds-that-detected-it",
    )


@pytest.mark.parametrize(("alerts", "expected"), list(cases()))
def test_scoring(alerts: list[Alert], expected: dict[str, object]) -> None:
    got = scored(alerts)
    assert {k: got[k] for k in expected} == expected
