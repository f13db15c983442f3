from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from aiperimeter.policy.constraints.values import SchemaConstraint, ValueConstraint

NAN = float("nan")


@pytest.mark.parametrize(
    ("fields", "value", "reason"),
    [
        # type
        pytest.param({"type": "string"}, "x", None, id="string"),
        pytest.param({"type": "string"}, 1, "value is not of type string", id="int-is-not-string"),
        pytest.param({"type": "number"}, 1.5, None, id="float-number"),
        pytest.param({"type": "number"}, 2, None, id="int-number"),
        pytest.param({"type": "number"}, True, "not of type number", id="bool-is-not-number"),
        pytest.param({"type": "number"}, "5", "not of type number", id="numeric-string"),
        pytest.param({"type": "integer"}, 3, None, id="integer"),
        pytest.param({"type": "integer"}, 3.0, "not of type integer", id="float-is-not-integer"),
        pytest.param({"type": "integer"}, False, "not of type integer", id="bool-is-not-integer"),
        pytest.param({"type": "boolean"}, 0, "not of type boolean", id="zero-is-not-boolean"),
        pytest.param({"type": "array"}, [], None, id="array"),
        pytest.param({"type": "object"}, {}, None, id="object"),
        pytest.param({"type": "object"}, None, "not of type object", id="null"),
        # in / not_in, exact with type
        pytest.param({"in": ["alice@example.com"]}, "alice@example.com", None, id="in"),
        pytest.param({"in": ["alice@example.com"]}, "Alice@example.com", "not one of the allowed", id="in-case"),
        pytest.param({"in": [1, 2]}, True, "not one of the allowed values", id="true-is-not-1"),
        pytest.param({"in": [1, 2]}, "1", "not one of the allowed values", id="string-is-not-1"),
        pytest.param({"in": [1, 2]}, 1.0, None, id="same-number"),
        pytest.param({"in": [True]}, 1, "not one of the allowed values", id="1-is-not-true"),
        pytest.param({"in": [[1, "a"]]}, [1, "a"], None, id="in-array"),
        pytest.param({"in": [[1, "a"]]}, [True, "a"], "not one of the allowed", id="in-array-typed"),
        pytest.param({"in": [{"a": 1}]}, {"a": True}, "not one of the allowed", id="in-object-typed"),
        pytest.param({"in": [None]}, None, None, id="in-null"),
        pytest.param({"not_in": [0]}, False, None, id="false-is-not-0"),
        pytest.param({"not_in": [0]}, 0, "one of the denied values", id="not-in"),
        pytest.param({"not_in": ["root"]}, "root", "one of the denied values", id="not-in-string"),
        # patterns
        pytest.param({"pattern": r"[a-z]+"}, "abc", None, id="pattern"),
        pytest.param({"pattern": r"[a-z]+"}, "abc1", "does not match the pattern", id="pattern-fullmatch"),
        pytest.param({"pattern": r"[a-z]+"}, "abc\n", "does not match the pattern", id="pattern-trailing-newline"),
        pytest.param({"pattern": r"[a-z]+"}, 5, "not a string (a pattern applies)", id="pattern-on-int"),
        pytest.param({"not_pattern": r"(?i)drop\s+table"}, "x; DROP  TABLE y", "matches the denied", id="not-pattern"),
        pytest.param({"not_pattern": "admin"}, ["admin"], "not a string", id="not-pattern-on-array"),
        # ranges
        pytest.param({"min": 0, "max": 100}, 100, None, id="max-inclusive"),
        pytest.param({"min": 0, "max": 100}, 0.0, None, id="min-inclusive"),
        pytest.param({"min": 0, "max": 100}, 100.01, "above the maximum 100", id="above"),
        pytest.param({"min": 0, "max": 100}, -1, "below the minimum 0", id="below"),
        pytest.param({"max": 100}, "5", "not a finite number", id="max-on-string"),
        pytest.param({"max": 100}, True, "not a finite number", id="max-on-bool"),
        pytest.param({"max": 100}, NAN, "not a finite number", id="nan"),
        pytest.param({"min": 0}, float("-inf"), "not a finite number", id="minus-infinity"),
        pytest.param({"max": 10**30}, 10**29, None, id="big-int"),
        # length
        pytest.param({"max_length": 3}, "abc", None, id="length"),
        pytest.param({"max_length": 3}, "abcd", "longer than 3", id="too-long"),
        pytest.param({"max_length": 1}, [1, 2], "longer than 1", id="array-too-long"),
        pytest.param({"max_length": 3}, 12345, "not a string or an array", id="length-on-int"),
        pytest.param({"max_length": 3}, {"a": 1}, "not a string or an array", id="length-on-object"),
        # nothing set
        pytest.param({}, {"anything": [1, None]}, None, id="no-checks"),
    ],
)
def test_value_constraint(fields: dict[str, Any], value: Any, reason: str | None) -> None:
    got = ValueConstraint(**fields).check(value)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_in_works_by_alias_and_by_name() -> None:
    assert ValueConstraint(**{"in": [1]}).in_ == [1]
    assert ValueConstraint(in_=[1]).in_ == [1]


def test_reasons_never_hold_the_value() -> None:
    secret = "sk-proj-4f9a8b7c6d5e4f3a2b1c"
    for fields in ({"in": ["x"]}, {"not_in": [secret]}, {"pattern": "[0-9]+"}, {"max_length": 3}, {"type": "number"}):
        reason = ValueConstraint(**fields).check(secret)
        assert reason is not None and secret not in reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"pattern": "(a"}, "is not a valid RE2 pattern", id="bad-pattern"),
        pytest.param({"not_pattern": "(?<=a)b"}, "is not a valid RE2 pattern", id="lookbehind"),
        pytest.param({"min": 5, "max": 1}, "min (5) is greater than max (1)", id="min-above-max"),
        pytest.param({"min": True}, "min", id="bool-min"),
        pytest.param({"max": "10"}, "max", id="string-max"),
        pytest.param({"max": NAN}, "must be a finite number", id="nan-max"),
        pytest.param({"max_length": -1}, "max_length must be 0 or more", id="negative-length"),
        pytest.param({"type": "float"}, "type", id="unknown-type"),
        pytest.param({"in": "abc"}, "in", id="in-not-a-list"),
        pytest.param({"enum": [1]}, "Extra inputs are not permitted", id="unknown-field"),
    ],
)
def test_value_load_time_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        ValueConstraint(**fields)
    assert message in str(error.value)


PAYMENT = SchemaConstraint(
    schema={
        "type": "object",
        "required": ["recipient", "amount"],
        "additionalProperties": False,
        "properties": {
            "recipient": {"$ref": "#/$defs/email"},
            "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            "memo": {"type": "string", "maxLength": 20},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        },
        "$defs": {"email": {"type": "string", "pattern": "^[^@]+@example\\.com$"}},
    }
)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        pytest.param({"recipient": "a@example.com", "amount": 5}, None, id="valid"),
        pytest.param({"recipient": "a@example.com", "amount": 500}, "at /amount: fails 'maximum'", id="maximum"),
        pytest.param({"recipient": "a@example.com", "amount": 0}, "at /amount: fails 'exclusiveMinimum'", id="zero"),
        pytest.param({"recipient": "a@example.com", "amount": "5"}, "at /amount: fails 'type'", id="type"),
        pytest.param({"recipient": "a@evil.com", "amount": 5}, "at /recipient: fails 'pattern'", id="local-ref"),
        pytest.param({"amount": 5}, "at /: fails 'required'", id="required"),
        pytest.param(
            {"recipient": "a@example.com", "amount": 5, "x": 1}, "at /: fails 'additionalProperties'", id="extra"
        ),
        pytest.param(
            {"recipient": "a@example.com", "amount": 5, "tags": ["a", "c"]}, "at /tags/1: fails 'enum'", id="array-item"
        ),
        pytest.param([], "at /: fails 'type'", id="not-an-object"),
    ],
)
def test_schema_constraint(arguments: Any, reason: str | None) -> None:
    assert PAYMENT.check(arguments) == reason


def test_schema_reasons_never_hold_the_value() -> None:
    secret = "4111-1111-1111-1111-secret"
    reason = PAYMENT.check({"recipient": "a@example.com", "amount": 5, "memo": secret})
    assert reason == "at /memo: fails 'maxLength'"


def test_schema_pointer_escapes_keys() -> None:
    constraint = SchemaConstraint(schema={"properties": {"a/b": {"type": "string"}}})
    assert constraint.check({"a/b": 1}) == "at /a~1b: fails 'type'"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        pytest.param({"$ref": "https://evil.example/schema.json"}, "reference at /$ref must be local", id="remote"),
        pytest.param({"properties": {"a": {"$ref": "other.json#/a"}}}, "at /properties/a/$ref", id="relative-file"),
        pytest.param({"$dynamicRef": "http://x/y"}, "must be local", id="dynamic-ref"),
        pytest.param({"type": "strin"}, "invalid JSON Schema at /type", id="bad-type"),
        pytest.param({"properties": {"a": {"maximum": "x"}}}, "at /properties/a/maximum", id="nested-error"),
        pytest.param({"required": "amount"}, "invalid JSON Schema at /required", id="required-not-list"),
    ],
)
def test_schema_load_time_errors(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        SchemaConstraint(schema=schema)
    assert message in str(error.value)


def test_unresolvable_local_reference_is_a_deny_not_a_crash() -> None:
    constraint = SchemaConstraint(schema={"properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert constraint.check({"a": 1}) == "arguments cannot be checked against the schema"
