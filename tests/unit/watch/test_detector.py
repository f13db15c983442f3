"""The detector on hand-made traffic: what it must raise, what it must not, and how fast it sees it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiperimeter.config import SEVERITIES
from aiperimeter.watch.alerts import Alert
from aiperimeter.watch.detector import Detector, DetectorSettings
from aiperimeter.watch.observation import Observation, network_of
from tests.support.traffic import DAY, MONDAY, burst, office

LEARNED = MONDAY + 21 * DAY  # three weeks of history


def feed(detector: Detector, observations: Iterator[Observation] | list[Observation]) -> list[Alert]:
    alerts: list[Alert] = []
    for obs in observations:
        alerts.extend(detector.observe(obs))
    return alerts


def learned(**kwargs: object) -> Detector:
    detector = Detector()
    assert feed(detector, office(**kwargs)) == []  # type: ignore[arg-type]
    return detector


def kinds(alerts: list[Alert]) -> set[str]:
    return {a.kind for a in alerts}


def test_three_weeks_of_normal_office_traffic_raise_nothing() -> None:
    detector = Detector()
    assert feed(detector, office(days=28)) == []


def test_three_am_burst_is_an_idle_hour_and_a_volume_spike_within_minutes() -> None:
    detector = learned()
    start = LEARNED + 3 * 3600  # Monday 03:00
    alerts = feed(detector, burst(start, 200, 3.0))
    assert {"idle_hour", "volume_spike"} <= kinds(alerts)
    assert max(a.time for a in alerts if a.kind in ("idle_hour", "volume_spike")) - start < 300
    spike = next(a for a in alerts if a.kind == "volume_spike")
    assert spike.details["observed"] > spike.details["ceiling"]
    assert "03:00" in spike.baseline and spike.evidence and all(e.startswith("b") for e in spike.evidence[-3:])


def test_a_burst_no_larger_than_usual_peaks_is_not_a_spike() -> None:
    detector = learned()
    # 12 requests in 5 minutes at 11:00 on a weekday: twice the key's usual peak, under its ceiling.
    assert feed(detector, burst(LEARNED + 11 * 3600, 12, 25.0)) == []


def test_rates_are_not_judged_while_learning() -> None:
    detector = Detector()
    feed(detector, office(days=3))
    alerts = feed(detector, burst(MONDAY + 3 * DAY + 3 * 3600, 200, 1.0))
    assert not kinds(alerts) & {"idle_hour", "volume_spike", "token_spike"}


def test_token_spike_on_long_completions_at_a_normal_rate() -> None:
    detector = learned()
    alerts = feed(detector, burst(LEARNED + 10 * 3600, 12, 20.0, tokens_out=8000))
    assert "token_spike" in kinds(alerts)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param("198.51.100.20", {"new_network"}, id="another-network"),
        pytest.param("10.1.2.77", set(), id="same-slash-24-dhcp-move"),
        pytest.param("::ffff:10.1.2.3", set(), id="ipv4-mapped-same-address"),
    ],
)
def test_new_network(client: str, expected: set[str]) -> None:
    detector = learned()
    alerts = feed(detector, burst(LEARNED + 10 * 3600, 3, 60.0, client=client))
    assert kinds(alerts) == expected
    if expected:
        assert alerts[0].severity == "high" and "10.1.2.0/24" in alerts[0].baseline


def test_a_roaming_key_is_not_alerted_for_new_networks() -> None:
    detector = Detector()
    for n in range(6):  # six networks within a month: the key roams (a laptop, a phone app)
        feed(detector, office(start=MONDAY + n * 4 * DAY, days=3, client=f"172.16.{n}.9", seed=n))
    assert feed(detector, burst(MONDAY + 24 * DAY + 10 * 3600, 2, 60.0, client="203.0.113.5")) == []


def test_new_model_tool_and_route_after_learning_but_not_during() -> None:
    detector = Detector()
    early = feed(detector, burst(MONDAY + 9 * 3600, 3, 60.0, model="other-model", route="embeddings"))
    assert early == []
    feed(detector, office(start=MONDAY + DAY, days=20, tools=("search",)))
    alerts = feed(detector, burst(LEARNED + 10 * 3600, 1, 1.0, model="gpt-oss", tools=("run_shell",)))
    assert kinds(alerts) == {"new_model", "new_tool"}
    assert feed(detector, burst(LEARNED + 10 * 3600 + 5, 1, 1.0, model="other-model", route="embeddings")) == []
    assert kinds(feed(detector, burst(LEARNED + 10 * 3600 + 9, 1, 1.0, route="audio"))) == {"new_route"}


@pytest.mark.parametrize(
    ("count", "spacing", "alerted"),
    [
        pytest.param(20, 2.0, True, id="20-in-40s"),
        pytest.param(19, 2.0, False, id="19-in-40s"),
        pytest.param(40, 30.0, False, id="40-over-20-minutes"),
    ],
)
def test_denial_burst_from_one_address(count: int, spacing: float, alerted: bool) -> None:
    detector = Detector()
    refused = [
        Observation(
            time=MONDAY + i * spacing,
            request_id=f"d{i}",
            key=None,
            client="203.0.113.66",
            status=401,
            deny="invalid_key",
        )
        for i in range(count)
    ]
    alerts = feed(detector, refused)
    assert (kinds(alerts) == {"denial_burst"}) is alerted
    if alerted:
        alert = alerts[0]
        assert alert.key is None and alert.client == "203.0.113.66" and alert.severity == "high"
        assert alert.time - MONDAY < 300 and len(alert.evidence) == 10


def test_a_key_probing_routes_it_may_not_use() -> None:
    detector = learned()
    refused = burst(LEARNED + 10 * 3600, 15, 5.0, status=403, deny="route_not_allowed", route=None)
    assert "denial_burst" in kinds(feed(detector, refused))


def test_shape_change_needs_most_recent_requests_to_be_unusual() -> None:
    detector = learned()
    one_big = burst(LEARNED + 10 * 3600, 1, 1.0, bytes_in=200_000)
    assert feed(detector, one_big) == []
    alerts = feed(detector, burst(LEARNED + 11 * 3600, 20, 15.0, bytes_in=120_000, tokens_out=3000))
    assert "shape_change" in kinds(alerts)


def test_a_canary_is_critical_at_once_and_names_the_caller() -> None:
    detector = Detector()
    obs = Observation(
        time=MONDAY, request_id="c1", key="canarykey123", client="198.51.100.9", method="GET", path="/v1/models",
        status=401, deny="invalid_key", canary=True, user_agent="curl/8.5",
    )  # fmt: skip
    (alert,) = feed(detector, [obs])
    assert (alert.kind, alert.severity, alert.key, alert.client) == (
        "canary",
        "critical",
        "canarykey123",
        "198.51.100.9",
    )
    assert alert.details["user_agent"] == "curl/8.5" and "/v1/models" in alert.observed
    assert alert.evidence == ("c1",)


def test_a_growing_incident_is_raised_again_at_its_new_severity_only() -> None:
    detector = learned()
    alerts = feed(detector, burst(LEARNED + 10 * 3600, 120, 1.0))
    spikes = [a for a in alerts if a.kind == "volume_spike"]
    levels = [SEVERITIES.index(a.severity) for a in spikes]
    assert spikes[0].severity == "medium" and len(spikes) >= 2 and levels == sorted(set(levels))
    assert len({a.id for a in spikes}) == len(spikes)
    assert spikes[-1].severity == "critical"  # three times its ceiling (high), after a token spike (one level up)


def test_one_alert_per_kind_per_hour_and_two_kinds_escalate() -> None:
    detector = learned()
    first = feed(detector, burst(LEARNED + 3 * 3600, 200, 3.0))
    again = feed(detector, burst(LEARNED + 3 * 3600 + 1200, 200, 3.0))
    assert any(a.kind == "volume_spike" for a in first)
    assert not any(a.kind == "volume_spike" for a in again)  # the same burst again within the hour: not news
    assert first[0].kind == "idle_hour"
    spike = next(a for a in first if a.kind == "volume_spike")
    # On its own a spike under three times its ceiling is medium; after the idle-hour alert it is one level up.
    assert spike.details["observed"] < 3 * spike.details["ceiling"] and spike.severity == "high"


def test_an_incident_is_not_learned_as_normal() -> None:
    detector = learned()
    assert "volume_spike" in kinds(feed(detector, burst(LEARNED + 3 * 3600, 200, 3.0)))
    # A week later the same burst is still news: the flagged hour did not raise the ceiling.
    feed(detector, office(start=LEARNED + DAY, days=6, seed=9))
    assert "volume_spike" in kinds(feed(detector, burst(LEARNED + 7 * DAY + 3 * 3600, 200, 3.0)))


def test_alert_ids_agree_between_two_detectors_on_the_same_stream() -> None:
    stream = [*office(days=21), *burst(LEARNED + 3 * 3600, 200, 3.0)]
    first, second = feed(Detector(), stream), feed(Detector(), stream)
    assert [a.id for a in first] == [a.id for a in second] and first


def test_snapshot_restore_keeps_the_baselines() -> None:
    detector = learned()
    restored = Detector()
    assert restored.restore(detector.snapshot()) == 1
    alerts = feed(restored, burst(LEARNED + 3 * 3600, 200, 3.0, client="198.51.100.20"))
    assert {"idle_hour", "volume_spike", "new_network"} <= kinds(alerts)


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param({"keys": {"k": {"first_seen": "x"}}}, id="bad-number"),
        pytest.param({"keys": {"k": []}}, id="not-a-mapping"),
        pytest.param({"keys": "nope"}, id="keys-not-a-mapping"),
    ],
)
def test_a_malformed_snapshot_is_skipped_not_trusted(snapshot: dict[str, object]) -> None:
    detector = Detector()
    try:
        loaded = detector.restore(snapshot)
    except AttributeError:
        loaded = -1
    assert loaded in (0, -1) and not detector.keys


def test_out_of_order_and_hostile_observations_do_not_break_it() -> None:
    detector = learned()
    odd = [
        Observation(time=LEARNED - 3 * DAY, request_id="old", key="office", client="10.1.2.3"),
        Observation(time=LEARNED + 60, request_id="x", key="office", client="not-an-address"),
        Observation(time=LEARNED + 30, request_id="y", key="office", client="10.1.2.3", tokens_out=10**12),
    ]
    feed(detector, odd)
    assert feed(detector, burst(LEARNED + 10 * 3600, 2, 60.0)) == []


def test_keys_beyond_the_cap_evict_the_oldest() -> None:
    detector = Detector(DetectorSettings(max_keys=10))
    feed(detector, [Observation(time=MONDAY + i, request_id=str(i), key=f"k{i}", client="10.0.0.1") for i in range(25)])
    assert len(detector.keys) == 10 and "k24" in detector.keys and "k0" not in detector.keys


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param({"event": "key", "action": "revoke", "key_id": "k"}, None, id="lifecycle-event"),
        pytest.param({"time": "soon", "request_id": "r"}, None, id="bad-time"),
        pytest.param({"time": 1.0, "request_id": "r", "usage": "lots"}, None, id="bad-usage"),
        pytest.param({"time": 1.0}, None, id="no-request-id"),
        pytest.param({"time": float("nan"), "request_id": "r"}, None, id="nan-time"),
        pytest.param({"time": "inf", "request_id": "r"}, None, id="infinite-time"),
        pytest.param({"time": -5, "request_id": "r"}, None, id="negative-time"),
    ],
)
def test_observation_from_hostile_records(record: dict[str, object], expected: None) -> None:
    assert Observation.from_record(record) is expected


def test_observation_from_a_real_shaped_record() -> None:
    record = {"time": 5.0, "request_id": "r1", "key_id": "k1", "client": "10.0.0.1", "method": "POST",
              "path": "/v1/chat/completions", "route": "chat", "model": "m", "status": 200, "deny": None,
              "usage": {"prompt_tokens": 10, "completion_tokens": 20}, "bytes_in": 300, "bytes_out": 900,
              "tools": [{"tool": "run_sql", "decision": "allow"}], "tools_declared": ["search", "run_sql"],
              "stream": True, "total_ms": 12.5}  # fmt: skip
    obs = Observation.from_record(record)
    assert obs is not None
    assert (obs.key, obs.tokens_in, obs.tokens_out, obs.tools, obs.stream) == (
        "k1",
        10,
        20,
        ("run_sql", "search"),
        True,
    )


@pytest.mark.parametrize(
    ("address", "network"),
    [
        pytest.param("10.1.2.3", "10.1.2.0/24", id="v4"),
        pytest.param("2001:db8:1:2::5", "2001:db8:1::/48", id="v6"),
        pytest.param("::ffff:10.1.2.3", "10.1.2.0/24", id="v4-mapped"),
        pytest.param("unix-socket", "unix-socket", id="not-an-address"),
    ],
)
def test_network_of(address: str, network: str) -> None:
    assert network_of(address) == network


def test_client_chosen_names_cannot_forge_lines_in_logs_or_alerts() -> None:
    record = {"time": 5.0, "request_id": "r\n1", "key_id": "k1", "client": "10.0.0.1",
              "model": "x\n2099-01-01 WARNING alert canary [critical]", "tools_declared": ["t\r\nforged", "ok"],
              "user_agent": "agent\u0000\u001b[31m"}  # fmt: skip
    obs = Observation.from_record(record)
    assert obs is not None
    for text in (obs.request_id, obs.model, obs.user_agent, *obs.tools):
        assert text is not None and text.isprintable()
    assert obs.model is not None and obs.model.startswith("x\ufffd2099")


def test_a_key_cannot_make_the_detector_remember_unbounded_names() -> None:
    detector = learned()
    many = [
        Observation(time=LEARNED + 10 * 3600 + i, request_id=f"t{i}", key="office", client="10.1.2.3", route="chat",
                    model=f"model-{i}", tools=tuple(f"tool-{i}-{j}" for j in range(64)))
        for i in range(100)
    ]  # fmt: skip
    alerts = feed(detector, many)
    state = detector.keys["office"]
    assert len(state.tools) <= 256 and len(state.models) <= 256 and "tool-99-63" in state.tools
    assert sum(a.kind == "new_tool" for a in alerts) == 1  # once per hour, not once per name
    restored = Detector()
    snapshot = detector.snapshot()
    snapshot["keys"]["office"]["tools"] = {f"name-{i}": float(i) for i in range(5000)}
    assert restored.restore(snapshot) == 1  # an oversized set is trimmed, the key is kept
    assert len(restored.keys["office"].tools) == 256 and "name-4999" in restored.keys["office"].tools
