"""The evaluation dataset as a regression suite: every example policy loads, and every call in
benchmarks/data/tool_calls.yaml gets the decision the data expects from its policy (benchmarks/toolcall_eval.py
measures the same calls). A call marked `known_gap` still fails here until the engine judges it right."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiperimeter.gateway.tools.base import parse_arguments
from aiperimeter.policy.calls import ToolCall, Verdict
from aiperimeter.policy.engine import Policy
from aiperimeter.policy.loader import load_policies, load_policy

ROOT = Path(__file__).resolve().parents[3]
POLICIES = ROOT / "examples" / "tool-policies"
DATASET = ROOT / "benchmarks" / "data" / "tool_calls.yaml"
CATEGORIES = {"sql", "shell", "url", "path", "values", "schema", "listing", "malformed"}
REQUIRED = {"id", "policy", "tool", "expect", "category", "note"}
OPTIONAL = {"arguments", "raw_arguments", "decision", "known_gap"}
ID_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
MIN_BENIGN_SHARE = 0.4
# A reason may name a table, a command or a host; a string argument this long appearing in it is a leaked value.
LEAK_LENGTH = 24


def _load_calls() -> list[Any]:
    """The entries as written: the schema test checks their shape, so nothing here assumes it."""
    data = yaml.safe_load(DATASET.read_text(encoding="utf-8"))
    return list(data["calls"]) if isinstance(data, dict) and isinstance(data.get("calls"), list) else []


CALLS = _load_calls()
POLICY_FILES = sorted(POLICIES.glob("*.yaml"))


@pytest.fixture(scope="module")
def policies() -> dict[str, Policy]:
    return load_policies(POLICIES).policies


def as_call(entry: dict[str, Any]) -> ToolCall:
    """The call as the gateway judges it: raw argument text is parsed first, as the guards parse it."""
    raw = entry.get("raw_arguments")
    if isinstance(raw, str):
        arguments, error = parse_arguments(raw)
        return ToolCall(entry["tool"], arguments, "call_1", error=error, raw_size=len(raw.encode()))
    return ToolCall(entry["tool"], entry["arguments"], "call_1")


def expected(entry: dict[str, Any], policy: Policy) -> str:
    if "decision" in entry:
        return str(entry["decision"])
    return "allow" if entry["expect"] == "allow" else policy.spec.action.value


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in POLICY_FILES])
def test_example_policy_loads_and_says_why(path: Path) -> None:
    policy = load_policy(path)
    assert policy.spec.tools, "an example policy lists tools"
    assert path.read_text(encoding="utf-8").startswith("#"), "an example policy opens with a comment saying what it is"


def test_there_are_the_five_example_policies() -> None:
    assert {p.stem for p in POLICY_FILES} == {"analytics", "devops", "research", "payments", "support"}


def test_dataset_is_well_formed(policies: dict[str, Policy]) -> None:
    assert len(CALLS) >= 200
    problems: list[str] = []
    for number, entry in enumerate(CALLS):
        label = entry.get("id", f"#{number}") if isinstance(entry, dict) else f"#{number}"
        if not isinstance(entry, dict):
            problems.append(f"{label}: not a mapping")
            continue
        keys = set(entry)
        if REQUIRED - keys or keys - REQUIRED - OPTIONAL:
            problems.append(f"{label}: missing {sorted(REQUIRED - keys)}, unknown {sorted(keys - REQUIRED - OPTIONAL)}")
            continue
        if not all(isinstance(entry[k], str) and entry[k] for k in REQUIRED):
            problems.append(f"{label}: {sorted(REQUIRED)} must be non-empty strings")
            continue
        if not ID_RE.fullmatch(entry["id"]):
            problems.append(f"{label}: id must be lowercase words joined by -")
        if entry["category"] not in CATEGORIES:
            problems.append(f"{label}: unknown category {entry['category']!r}")
        if entry["expect"] not in ("allow", "deny"):
            problems.append(f"{label}: expect is allow or deny")
        if ("arguments" in entry) == ("raw_arguments" in entry):
            problems.append(f"{label}: give arguments or raw_arguments, not both or neither")
        elif "arguments" in entry and not isinstance(entry["arguments"], dict):
            problems.append(f"{label}: arguments must be an object (raw_arguments carries anything else)")
        elif "raw_arguments" in entry and not isinstance(entry["raw_arguments"], str):
            problems.append(f"{label}: raw_arguments must be text")
        if entry["category"] == "malformed" and "raw_arguments" not in entry:
            problems.append(f"{label}: a malformed call gives raw_arguments")
        if "decision" in entry and (entry["expect"] != "deny" or entry["decision"] not in ("block", "strip", "audit")):
            problems.append(f"{label}: decision is block, strip or audit, on a call expected to be denied")
        if "known_gap" in entry and not (isinstance(entry["known_gap"], str) and entry["known_gap"].strip()):
            problems.append(f"{label}: known_gap is one line saying what is misjudged")
        policy = policies.get(entry["policy"])
        if policy is None:
            problems.append(f"{label}: no example policy named {entry['policy']!r}")
        elif (entry["tool"] in policy.spec.tools) == (entry["category"] == "listing"):
            problems.append(f"{label}: category listing is for, and only for, tools the policy does not list")
    counts = Counter(e.get("id") for e in CALLS if isinstance(e, dict))
    duplicates = [name for name, count in counts.items() if count > 1]
    if duplicates:
        problems.append(f"duplicate ids: {duplicates}")
    assert not problems, "\n".join(problems)


def test_dataset_is_balanced() -> None:
    benign = [e for e in CALLS if e["expect"] == "allow"]
    assert len(benign) >= MIN_BENIGN_SHARE * len(CALLS), f"{len(benign)} of {len(CALLS)} calls are benign"
    for category in CATEGORIES - {"listing"}:
        outcomes = {e["expect"] for e in CALLS if e["category"] == category}
        assert outcomes == {"allow", "deny"}, f"{category} needs benign near-misses and attacks"


@pytest.mark.parametrize("entry", [pytest.param(e, id=str(e.get("id"))) for e in CALLS])
def test_call_gets_the_expected_decision(entry: dict[str, Any], policies: dict[str, Policy]) -> None:
    policy = policies[entry["policy"]]
    verdict = policy.judge(as_call(entry))
    gap = f" (known gap: {entry['known_gap']})" if "known_gap" in entry else ""
    assert verdict.decision == expected(entry, policy), f"{verdict.rule}: {verdict.reason}{gap}"


def test_reasons_never_repeat_an_argument_value(policies: dict[str, Policy]) -> None:
    leaks: list[str] = []
    for entry in CALLS:
        verdict: Verdict = policies[entry["policy"]].judge(as_call(entry))
        said = f"{verdict.rule or ''} {verdict.reason or ''}"
        values = strings(entry.get("arguments")) if "arguments" in entry else iter([entry["raw_arguments"]])
        if any(len(value) >= LEAK_LENGTH and value in said for value in values):
            leaks.append(entry["id"])
    assert not leaks, f"reasons that repeat an argument value: {leaks}"
